"""The ``fedbench`` command: a Hydra app over ``conf/``.

Bad input ends the run before any training with one line on stderr naming the key, the value and
what is allowed, and exit status 2: a misspelt key (with the nearest valid one), a value of the
wrong type or an unknown group option (with the available options) before Hydra composes the
config (:mod:`fedbench.config_check`), a run directory fedbench cannot write to before Hydra
writes there, a value out of range when the run checks its settings.

In a sweep (``fedbench -m``) a job never ends the sweep: a finished job is skipped, an
interrupted one continues from its checkpoint, a failing one (bad input included) leaves
``error.json`` in its directory, and after the last job the command lists the failures and exits
with status 1 (:mod:`fedbench.sweep`).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedbench.errors import BufferOverflowError, ConfigError
from fedbench.paths import CONF_DIR  # noqa: F401  (also fedbench.cli.CONF_DIR)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> str | None:
    # JAX logs at INFO that it found no TPU; that is not news to a CPU user. dp-accounting's
    # RDP accountant warns for every fractional order it drops (it then uses the others).
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return _sweep_job(cfg)

    from fedbench.interrupts import Interrupted
    from fedbench.run import run_experiment
    from fedbench.tracking import build_tracker

    tracker, finished = None, False
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        out_dir = HydraConfig.get().runtime.output_dir
        tracker = build_tracker(container.get("tracking"), out_dir)
        print(f"fedbench: writing to {out_dir}", flush=True)
        run_experiment(container, out_dir, tracker=tracker)
        finished = True
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (main): one line on how to continue
        again = " ".join(shlex.quote(a) for a in sys.argv[1:] if not a.startswith("hydra.run.dir="))
        command = (f"fedbench {again} hydra.run.dir={shlex.quote(out_dir)}"
                   .replace("fedbench  hydra", "fedbench hydra"))
        if isinstance(err, Interrupted) and err.resume_round is not None:
            where = (f"interrupted at round {err.round}; the same command resumes from round "
                     f"{err.resume_round}")
        elif isinstance(err, Interrupted):
            where = f"interrupted at round {err.round} (checkpoint_every=0: it starts afresh)"
        else:
            where = "interrupted; it resumes from the last checkpoint"
        print(f"\nfedbench: {where}. To continue: {command}", file=sys.stderr, flush=True)
        sys.exit(130)
    except ConfigError as err:
        print(f"fedbench: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except BufferOverflowError as err:
        print(f"fedbench: error: {err}", file=sys.stderr, flush=True)
        sys.exit(3)
    finally:
        if tracker is not None and not finished:
            tracker.finish(None, exit_code=1)  # the tracked run is marked failed


def _sweep_job(cfg: DictConfig) -> str:
    """One job of a sweep; returns ``skipped``, ``failed`` or the run's status.

    The job's directory depends only on its overrides, so a finished run there is this job
    done before: it is skipped; an unfinished one with a checkpoint of the same config continues
    from it (:mod:`fedbench.checkpoint`). Any exception is written to ``error.json`` and the
    sweep goes on.
    """
    from fedbench import sweep

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    done = sweep.finished_summary(out_dir)
    if done is not None:
        note = ""
        with contextlib.suppress(Exception):
            changed = sweep.config_differences(
                done.get("config", {}), OmegaConf.to_container(cfg, resolve=True)
            )
            if changed:
                note = (
                    f"; its config differs from this job's in {', '.join(changed[:3])}: "
                    "set a new sweep_name to run it"
                )
        print(f"fedbench: skipped {out_dir} (summary.json: {done.get('status')}){note}", flush=True)
        return "skipped"
    sweep.clear_error(out_dir)
    sweep.limit_threads_for_parallel_jobs(OmegaConf.to_container(hydra_cfg.launcher))

    from fedbench.run import run_experiment  # JAX starts only after the thread settings
    from fedbench.tracking import build_tracker

    container, tracker, finished = None, None, False
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        tracker = build_tracker(
            container.get("tracking"),
            out_dir,
            group=Path(str(hydra_cfg.sweep.dir)).name,
            run_name=hydra_cfg.job.override_dirname or None,
        )
        print(f"fedbench: writing to {out_dir}", flush=True)
        status = run_experiment(container, out_dir, tracker=tracker)["status"]
        finished = True
        return status
    except Exception as err:  # noqa: BLE001 - one job's failure must not end the sweep
        if container is None:
            container = OmegaConf.to_container(cfg, resolve=False)
        sweep.write_error(out_dir, err, container)
        print(
            f"fedbench: job failed: {out_dir}: {type(err).__name__}: {err} "
            "(error.json written; the sweep goes on)",
            file=sys.stderr,
            flush=True,
        )
        return "failed"
    finally:
        if tracker is not None and not finished:
            with contextlib.suppress(Exception):
                tracker.finish(None, exit_code=1)  # the tracked run is marked failed


def main() -> None:
    """Console entry point (``fedbench`` and ``python -m fedbench``).

    The command-line overrides are checked before Hydra composes anything
    (:mod:`fedbench.config_check`): a misspelt key, a value of the wrong type, an unknown group
    option or an override Hydra cannot parse ends the command with one line and exit status 2.
    """
    from fedbench import interrupts, sweep
    from fedbench.cli_help import answer
    from fedbench.config_check import check_command_line
    from fedbench.errors import quiet_warnings
    from fedbench.sweep_group import group_argv

    answer(sys.argv[1:], "fedbench",
           "Runs one federated-learning experiment (or a sweep with -m) and writes metrics.jsonl,\n"
           "summary.json and checkpoints into outputs/<date>/<time>/ (hydra.run.dir=... to choose).",
           ["fedbench                                   # digits, FedAvg, 20 sites",
            "fedbench dataset=tcga_brca algorithm=fedprox algorithm.mu=0.01",
            "fedbench privacy=dp_client privacy.target_epsilon=4 rounds=50",
            "fedbench compression=topk compression.fraction=0.1 compression.error_feedback=true",
            "fedbench -m algorithm=fedavg,scaffold seed=0,1,2 sweep_name=study"])
    try:
        argv, notes = group_argv(sys.argv[1:])  # sweep_group=true: in-program where possible
        for note in notes:
            print(f"fedbench: sweep_group: {note}", flush=True)
        sys.argv[1:] = argv
        check_command_line(sys.argv[1:], CONF_DIR, check_settings=True)
    except ConfigError as err:
        print(f"fedbench: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    # SIGTERM (a scheduler's stop) ends a run as Ctrl-C does: cleanly, saying how to continue.
    interrupts.install()
    quiet_warnings()  # fedbench's own warnings as one line each (fedbench.errors)
    try:
        _app()
    except KeyboardInterrupt:  # in a sweep: the same command continues it
        print("\nfedbench: interrupted; run the same command again to continue (finished jobs "
              "are skipped, an interrupted one continues from its last checkpoint)",
              file=sys.stderr, flush=True)
        sys.exit(130)
    if sweep.failed_jobs:  # set by the SweepReport callback at the end of a sweep
        sys.exit(1)


if __name__ == "__main__":
    main()
