"""Sweeps (``fedbench -m``): resumable job directories, failures kept per job, a final report.

A sweep's jobs live in ``hydra.sweep.dir/<overrides>`` (``multirun/${sweep_name}`` and
``${hydra.job.override_dirname}`` in ``conf/config.yaml``), so the same command always maps a
job to the same directory. In a sweep the CLI (``fedbench/cli.py``)

- skips a job whose ``summary.json`` has a finished status (:data:`FINISHED`), printing one line,
  so a sweep started again only runs what is missing, failed or was interrupted;
- runs every other job and, if it raises, writes ``error.json`` (:func:`write_error`) into its
  directory and goes on with the next job;
- ends with :class:`SweepReport` (a Hydra callback) listing the jobs that failed in this
  invocation; the ``fedbench`` command then exits with status 1. Failures are recognised by
  identity, never by clock: each ``error.json`` carries a unique ``error_id`` and the sweep
  invocation's id (``$FEDBENCH_SWEEP_ID``, set when the sweep starts and inherited by launcher
  processes), so a failure left by an earlier sweep is never reported as one of this sweep's.

Nothing here imports JAX: the thread settings of :func:`limit_threads_for_parallel_jobs` must be
in place before JAX starts its backend.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fedbench.atomic import json_ready, write_json

FINISHED = ("completed", "diverged")  # rerunning would give the same result
#: Keys that do not change results (nor the job directory's name).
IGNORED_CONFIG_KEYS = ("tracking", "sweep_name", "resume", "checkpoint_every", "compilation_cache")

# Failed jobs of the sweep that ran last in this process (set by SweepReport).
failed_jobs: list[Path] = []
# The running sweep invocation's id, for the jobs it launches (set by SweepReport).
SWEEP_ID_ENV = "FEDBENCH_SWEEP_ID"


def finished_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``summary.json`` of ``run_dir`` if it records a finished run (:data:`FINISHED`)."""
    path = Path(run_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") in FINISHED else None


def config_differences(stored: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between a stored run config and ``config``.

    Both are compared as JSON stores them; :data:`IGNORED_CONFIG_KEYS` are left out.
    """

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, Mapping):
            return {prefix[:-1]: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            if prefix or k not in IGNORED_CONFIG_KEYS:
                out.update(flat(v, f"{prefix}{k}."))
        return out

    missing = object()
    a, b = flat(json_ready(stored)), flat(json_ready(config))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))


def write_error(run_dir: str | Path, error: BaseException, config: Any) -> Path:
    """Writes ``run_dir/error.json`` atomically: type, message, traceback, config, time."""
    path = Path(run_dir) / "error.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {
            "status": "failed",
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(
                traceback.format_exception(type(error), error, error.__traceback__)
            ),
            "config": config,
            "time": time.time(),
            "error_id": uuid.uuid4().hex,
            "sweep_invocation": os.environ.get(SWEEP_ID_ENV),
        },
    )
    return path


def _error_ids(sweep_dir: Path) -> dict[Path, str | None]:
    """``error_id`` of every readable ``error.json`` under ``sweep_dir``."""
    ids: dict[Path, str | None] = {}
    for path in sweep_dir.rglob("error.json") if sweep_dir.is_dir() else ():
        try:
            ids[path] = json.loads(path.read_text()).get("error_id")
        except (OSError, ValueError, AttributeError):
            ids[path] = None
    return ids


def clear_error(run_dir: str | Path) -> None:
    """Removes an ``error.json`` left by an earlier attempt of this job."""
    Path(run_dir, "error.json").unlink(missing_ok=True)


def limit_threads_for_parallel_jobs(launcher: Mapping[str, Any] | None) -> None:
    """Per-process settings for ``hydra/launcher=joblib`` (each job is its own process).

    With more than one job at a time, XLA's multi-threaded Eigen is turned off
    (``--xla_cpu_multi_thread_eigen=false``) so ``n_jobs`` processes do not each spread over
    every core, and GPU memory preallocation is turned off
    (``XLA_PYTHON_CLIENT_PREALLOCATE=false``) so the processes can share one accelerator.
    Settings the user already made in the environment win. Must run before JAX initialises its
    backend in the process (the CLI calls it before it imports anything that touches devices).
    """
    if not launcher or "joblib" not in str(launcher.get("_target_", "")).lower():
        return
    n_jobs = launcher.get("n_jobs") or 1
    if n_jobs < 0:  # joblib: -1 is every CPU, -2 all but one, ...
        n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    if n_jobs == 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


class SweepReport(Callback):
    """Hydra callback: after a sweep, one line per job that failed during this invocation.

    Jobs can run in other processes or on other machines (joblib, Slurm), so the report reads
    the job directories. A job's ``error.json`` belongs to this invocation when it names this
    invocation's id (``sweep_invocation``), or, where a launcher did not pass the environment
    on, when it was written after the sweep started: its ``error_id`` was not there at the
    start. No clock is read, so two sweeps back to back cannot mix their failures. The failed
    directories are left in :data:`failed_jobs` for the CLI's exit status.
    """

    def __init__(self) -> None:
        self.invocation = uuid.uuid4().hex
        self.before: dict[Path, str | None] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.invocation = uuid.uuid4().hex
        os.environ[SWEEP_ID_ENV] = self.invocation
        self.before = _error_ids(Path(str(config.hydra.sweep.dir)))
        failed_jobs.clear()

    def _launched_by_us(self, path: Path) -> bool:
        try:
            error = json.loads(path.read_text())
        except (OSError, ValueError):
            return path not in self.before  # unreadable: ours only if it is new
        if not isinstance(error, dict):
            return path not in self.before
        if error.get("sweep_invocation"):
            return error["sweep_invocation"] == self.invocation
        return path not in self.before or error.get("error_id") != self.before[path]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed = sorted(
            p.parent for p in (sweep_dir.rglob("error.json") if sweep_dir.is_dir() else ())
            if self._launched_by_us(p)
        )
        os.environ.pop(SWEEP_ID_ENV, None)
        failed_jobs[:] = failed
        if not failed:
            print(
                f"fedbench: sweep done, no job failed; results table: fedbench-collect {sweep_dir}",
                flush=True,
            )
            return
        lines = [f"fedbench: {len(failed)} job(s) of the sweep failed (details in error.json):"]
        for run_dir in failed:
            try:
                error = json.loads((run_dir / "error.json").read_text())
                what = f"{error.get('type')}: {error.get('message')}".splitlines()[0]
            except (OSError, ValueError):
                what = "(error.json unreadable)"
            lines.append(f"  {run_dir}: {what}")
        lines.append("Fix and run the same command again: finished jobs are skipped.")
        print("\n".join(lines), file=sys.stderr, flush=True)
