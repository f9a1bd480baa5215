"""Sweeps: deterministic job directories, resuming, failures kept per job, launcher configs.

The end-to-end checks run the real ``python -m fedbench -m ...`` on a tiny problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose as compose_run
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench import sweep
from fedbench.run import validate

REPO = Path(__file__).resolve().parent.parent
TINY = ["rounds=2", "eval_every=1", "dataset=breast_cancer", "model=logreg", "num_clients=4",
        "clients_per_round=2"]
GOOD = ("clients_per_round=2,dataset=breast_cancer,eval_every=1,lr=0.1,model=logreg,"
        "num_clients=4,rounds=2")
BAD = GOOD.replace("lr=0.1", "lr=-1")


def _multirun(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_DIR")}
    env["WANDB_SILENT"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "fedbench", "-m", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def _hydra_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


# ------------------------------------------------------------------------ config only


def test_sweep_dir_is_deterministic_and_ignores_tracking():
    cfg = _hydra_cfg("sweep_name=alpha")
    assert cfg.hydra.sweep.dir == "multirun/alpha"
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == (
        "${hydra.job.override_dirname}")
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert {"sweep_name", "tracking", "tracking.mode", "tracking.group"} <= excluded
    assert "seed" not in excluded and "lr" not in excluded


def test_documented_privacy_sweep_composes():
    # README: fedbench -m privacy=dp_client partition.alpha=... privacy.target_epsilon=1,4,inf ...
    for epsilon in ("1", "4", "inf"):
        cfg = compose_run(["privacy=dp_client", "partition.alpha=0.05",
                           f"privacy.target_epsilon={epsilon}", "seed=2"])
        assert cfg["privacy"]["target_epsilon"] == float(epsilon)
        validate(cfg)
    with pytest.raises(Exception, match="target_epsilon"):  # privacy=none has no such key
        compose_run(["privacy.target_epsilon=1"])


def test_slurm_launcher_config_checks_against_the_plugin_schema():
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    launcher = _hydra_cfg("hydra/launcher=slurm").hydra.launcher
    checked = OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), launcher)  # raises if not
    assert checked._target_.endswith("hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    assert (checked.gpus_per_node, checked.tasks_per_node) == (1, 1)
    assert checked.partition is None and checked.cpus_per_task >= 1 and checked.mem_gb >= 1
    assert checked.timeout_min > 0 and checked.array_parallelism >= 1
    assert set(launcher.keys()) <= set(OmegaConf.structured(SlurmQueueConf).keys())
    with pytest.raises(Exception, match="gpus_per_node"):  # typed: a typo in a value fails
        _hydra_cfg("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=one")


def test_joblib_launcher_composes():
    launcher = _hydra_cfg("hydra/launcher=joblib", "hydra.launcher.n_jobs=2").hydra.launcher
    assert launcher.n_jobs == 2 and "JoblibLauncher" in launcher._target_


def test_parallel_jobs_limit_xla_threads(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    sweep.limit_threads_for_parallel_jobs({"_target_": "hydra._internal.BasicLauncher"})
    assert "XLA_FLAGS" not in os.environ
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    sweep.limit_threads_for_parallel_jobs({"_target_": joblib, "n_jobs": 1})
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    sweep.limit_threads_for_parallel_jobs({"_target_": joblib, "n_jobs": -1})
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false"
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")  # the user's choice wins
    sweep.limit_threads_for_parallel_jobs({"_target_": joblib, "n_jobs": 4})
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"


def test_finished_summary_and_config_differences(tmp_path):
    assert sweep.finished_summary(tmp_path) is None
    for status, finished in [("completed", True), ("diverged", True), ("running", False)]:
        (tmp_path / "summary.json").write_text(json.dumps({"status": status}))
        assert (sweep.finished_summary(tmp_path) is not None) == finished
    (tmp_path / "summary.json").write_text("{trunc")
    assert sweep.finished_summary(tmp_path) is None
    stored = {"lr": 0.1, "privacy": {"target_epsilon": None}, "tracking": {"name": "wandb"}}
    same = {"lr": 0.1, "privacy": {"target_epsilon": float("inf")}, "sweep_name": "x"}
    assert sweep.config_differences(stored, same) == []
    assert sweep.config_differences(stored, {**same, "lr": 0.2, "seed": 1}) == ["lr", "seed"]


def test_sweep_report_counts_only_this_invocations_failures(tmp_path, monkeypatch):
    """Two sweeps back to back, no delay: the second reports none of the first's failures."""
    monkeypatch.delenv(sweep.SWEEP_ID_ENV, raising=False)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    report = sweep.SweepReport()

    report.on_multirun_start(config)  # sweep 1: job a fails
    sweep.write_error(tmp_path / "a", ValueError("boom"), {})
    report.on_multirun_end(config)
    assert sweep.failed_jobs == [tmp_path / "a"]
    assert sweep.SWEEP_ID_ENV not in os.environ  # the id lives only while the sweep runs

    report.on_multirun_start(config)  # sweep 2 at once: job b succeeds, a is not launched
    (tmp_path / "b").mkdir()
    report.on_multirun_end(config)
    assert sweep.failed_jobs == []

    report.on_multirun_start(config)  # sweep 3: a runs again and fails again
    sweep.clear_error(tmp_path / "a")
    sweep.write_error(tmp_path / "a", ValueError("boom again"), {})
    report.on_multirun_end(config)
    assert sweep.failed_jobs == [tmp_path / "a"]

    # A launcher that does not pass the environment on: the job's error.json has no invocation
    # id; it still counts because it is a new error (its error_id was not there at the start).
    report.on_multirun_start(config)
    monkeypatch.delenv(sweep.SWEEP_ID_ENV)
    sweep.write_error(tmp_path / "c", ValueError("remote"), {})
    report.on_multirun_end(config)
    assert sweep.failed_jobs == [tmp_path / "c"]

    # Another sweep's failure written meanwhile into the same directory is not ours.
    report.on_multirun_start(config)
    monkeypatch.setenv(sweep.SWEEP_ID_ENV, "another-invocation")
    sweep.write_error(tmp_path / "d", ValueError("theirs"), {})
    report.on_multirun_end(config)
    assert sweep.failed_jobs == []


# ------------------------------------------------------------------------ the real CLI


@pytest.mark.slow
def test_sweep_resumes_and_keeps_failures_per_job(tmp_path):
    sweep_dir = tmp_path / "mysweep"
    command = [*TINY, "lr=0.1,-1", "tracking=wandb", "tracking.mode=offline",
               f"hydra.sweep.dir={sweep_dir}"]
    first = _multirun(tmp_path, *command)
    assert first.returncode == 1, first.stderr  # a job failed; the sweep still finished
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == [BAD, GOOD]

    good, bad = sweep_dir / GOOD, sweep_dir / BAD
    assert json.loads((good / "summary.json").read_text())["status"] == "completed"
    assert not (good / "error.json").exists()
    error = json.loads((bad / "error.json").read_text())
    assert error["type"] == "ConfigError" and error["message"].startswith("lr=-1 is not allowed")
    assert "Traceback" in error["traceback"] and error["config"]["lr"] == -1
    assert not (bad / "summary.json").exists()
    assert f"fedbench: job failed: {bad}: ConfigError: lr=-1" in first.stderr
    assert "1 job(s) of the sweep failed" in first.stderr
    assert str(bad) in first.stderr.splitlines()[-2]

    # The sweep's jobs share a W&B group (the sweep's name), each named by its overrides.
    (wandb_run,) = (good / "wandb").glob("offline-run-*")
    leet = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_run)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    records = [json.loads(line) for line in leet.stdout.splitlines() if line]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_group"] == "mysweep" and run["display_name"] == GOOD

    # Started again: the finished job is skipped, the failed one runs (and fails) again.
    summary_mtime = (good / "summary.json").stat().st_mtime_ns
    metrics_mtime = (good / "metrics.jsonl").stat().st_mtime_ns
    error_mtime = (bad / "error.json").stat().st_mtime_ns
    second = _multirun(tmp_path, *command)
    assert second.returncode == 1, second.stderr
    assert f"fedbench: skipped {good} (summary.json: completed)" in second.stdout
    assert f"skipped {bad}" not in second.stdout
    assert (good / "summary.json").stat().st_mtime_ns == summary_mtime
    assert (good / "metrics.jsonl").stat().st_mtime_ns == metrics_mtime
    assert (bad / "error.json").stat().st_mtime_ns > error_mtime
    assert len(list((good / "wandb").glob("offline-run-*"))) == 1  # no new tracked run

    # Only the finished job: nothing to do, nothing failed, exit status 0.
    third = _multirun(tmp_path, *TINY, "lr=0.1", f"hydra.sweep.dir={sweep_dir}")
    assert third.returncode == 0, third.stderr
    assert f"fedbench: skipped {good}" in third.stdout and "no job failed" in third.stdout


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep_dir = tmp_path / "par"
    proc = _multirun(tmp_path, *TINY, "seed=0,1", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr
    for seed in (0, 1):
        run_dir = sweep_dir / (GOOD.replace("lr=0.1,", "") + f",seed={seed}")
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert "no job failed" in proc.stdout
