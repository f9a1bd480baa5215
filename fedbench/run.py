"""One configured experiment, from config to result files.

:func:`run_experiment` is the single entry point used by the CLI, tests and notebooks. It checks
every setting in one pass before loading data or compiling anything
(:func:`fedbench.checked.check_config`), then runs the rounds
in compiled blocks of ``eval_every`` rounds, evaluating and rewriting ``metrics.jsonl`` after each
block, and finally writes ``summary.json``. Both files are replaced atomically.
"""

from __future__ import annotations

import functools
import json

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np

from fedbench.checked import CheckedRun, check_config, check_messages, check_with_data
from fedbench.checkpoint import RunCheckpoints
from fedbench.compression.traffic import dense_bits, other_up_bits, traffic
from fedbench.dataset import load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench import compile_cache, interrupts
from fedbench.errors import BufferOverflowError
from fedbench.model import build_model
from fedbench.progress import Timer, _print_progress, _print_table, bar, step_rounds
from fedbench.replicas import run_replicas, run_values, swept
from fedbench.distributed import initialize as initialize_distributed
from fedbench.results import CompileCounter, write_json, write_jsonl
from fedbench.results import dp_steps as _dp_steps
from fedbench.results import finite as _finite
from fedbench.results import loss_finite as _loss_finite
from fedbench.results import run_summary as _run_summary
from fedbench.results import without_model_metrics as _without_model_metrics
from fedbench.simulator import Simulator
from fedbench.tracking import Tracker, build_tracker
from fedbench.validation import build_stragglers, validate  # noqa: F401  (public here too)

#: Clients with fewer test examples than this are left out of ``client_accuracy_p10`` (their
#: number is ``client_accuracy_p10_skipped``): on 5 examples one error moves the accuracy by 20
#: points, so a few tiny test splits set the 10th percentile on their own.
MIN_CLIENT_TEST = 10


def build_simulator(cfg: Mapping[str, Any] | CheckedRun, progress=None,
                    transforms=()) -> SimpleNamespace:
    """Everything a run is made of, before any training: ``sim``, ``privacy`` (the plan, or
    None), ``plan_for(cfg)`` (another config's plan on the same data), ``algorithm``,
    ``model``, ``data``, ``partition_stats``. ``cfg``: a config, checked here by
    :func:`fedbench.checked.check_config`, or a :class:`CheckedRun` already checked (nothing is
    checked twice). ``transforms``: update transforms applied after DP's clip and before the
    configured compressor (an audit's canaries, :mod:`fedbench.audit.canaries`).

    Raises:
      ConfigError: for any bad setting.
    """
    run = cfg if isinstance(cfg, CheckedRun) else check_config(cfg)
    cfg, settings, algorithm = run.cfg, run.settings, run.algorithm
    raw = load_dataset(cfg["dataset"])
    storage, no_flat = check_with_data(run, raw.task)  # task and storage, before building
    data, partition_stats = build_federated(
        raw,
        cfg["partition"],
        cfg["num_clients"],
        seed=cfg["seed"] if cfg["partition"].get("seed") is None else cfg["partition"]["seed"],
        test_fraction=float(cfg["dataset"].get("test_fraction", 0.2)),
        normalization=cfg["dataset"].get("normalize"),
        storage=storage,
        no_flat=no_flat,
    )
    model = build_model(cfg["model"], data.feature_shape, data.num_classes, data.task)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), data.example_input())
    check_messages(run, shapes["params"])  # error feedback only around a contractive compressor
    from fedbench.privacy.release import data_digest, evaluates_own_models, secret_key

    # Reproducible noise also hashes the training data: a changed record draws new noise.
    digest = data_digest(data) if run.mechanism is not None else None

    if progress and cfg.get("privacy", {}).get("target_epsilon") is not None:
        print("fedbench: calibrating the noise multiplier to privacy.target_epsilon", flush=True)
    def plan_for(run_cfg):  # the privacy plan of a config (calibrated to its target epsilon)
        if (run_cfg.get("privacy") or {}).get("name", "none") == "none":
            return None  # without DP, no import of the accountants (dp-accounting, SciPy: 1.5 s)
        from fedbench.privacy.plan import build_privacy

        return build_privacy(
            run_cfg.get("privacy"),
            algorithm_kind=algorithm.kind,
            num_clients=run_cfg["num_clients"],
            clients_per_round=settings.clients_per_round,
            rounds=run_cfg["rounds"],
            local_epochs=1 if algorithm.full_batch else settings.local_epochs,
            batch_size=data.max_train if algorithm.full_batch else settings.batch_size,
            client_sizes=np.asarray(data.train_counts),
            data_digest=digest,
            # release_metrics=false also withholds what non-DP per-client models score
            per_client_models=evaluates_own_models(algorithm),
            num_params=sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"])),
        )

    privacy = plan_for(cfg)
    sim = Simulator(
        model, algorithm, data, settings, seed=cfg["seed"],
        privacy=privacy.mechanism if privacy else None,
        stragglers=run.stragglers,
        store_dtype=run.store_dtype,
        transforms=tuple(transforms) + ((run.compressor.transform(),)
                                        if run.compressor is not None else ()),
        # DP noise keyed by the whole config and data too: runs that differ in any setting or
        # record draw independent noise (privacy.shared_noise=true: seed and round only);
        # privacy.noise=secure: every round's randomness from a key nobody holds afterwards.
        noise_salt=privacy.salt_of(cfg) if privacy else None,
        secret_key=secret_key() if privacy and privacy.noise == "secure" else None,
        links=run.links,
        downlink=run.downlink,
    )
    if privacy is not None and not privacy.release_metrics:
        partition_stats = {}  # client sizes and label histograms: not covered by epsilon

    return SimpleNamespace(sim=sim, privacy=privacy, plan_for=plan_for, algorithm=algorithm,
                           model=model, data=data, partition_stats=partition_stats, raw=raw)


def _progress_line(metrics, rounds, rate, timer, live):
    """The default progress: an evaluation's line with the elapsed time and ETA, written above
    the progress bar when there is one, whose metrics it also updates."""
    _print_progress(metrics, rounds, rate, timer.text(int(metrics["round"]), rounds),
                    None if live is None else live.write)
    if live is not None:
        live.show(metrics)


def _replica_data(job, built, replicas):
    """Partitions as replicas (``sweep.alpha``, ``sweep.partition_seed``): the stacked padded
    data, each replica's evaluation view and partition statistics; None without them."""
    from fedbench import replica_data as rd

    keys = rd.data_swept(swept(job))
    if not keys:
        return None
    rd.check_partition_sweep(job, built.algorithm, keys[0])
    datasets = rd.replica_datasets(built.raw, [c for _, c in replicas])
    payload = rd.stack_padded([d for d, _ in datasets])
    views = {id(d): rd.evaluation_view(built.sim, d) for d, _ in datasets}  # one per partition
    return payload, [views[id(d)] for d, _ in datasets], [s for _, s in datasets]


def run_experiment(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    progress: Callable[[dict[str, Any], int, float | None], None] | None = _print_progress,
    tracker: Tracker | None = None,
    on_finish: Callable[[Simulator, Any], None] | None = None,
) -> dict[str, Any]:
    """Runs one experiment and writes ``metrics.jsonl`` and ``summary.json`` into ``out_dir``.

    Args:
      cfg: the resolved config as plain containers (see ``conf/config.yaml`` for the keys).
      out_dir: the run directory.
      progress: called after every evaluation with ``(metrics, rounds, rounds_per_second)``;
        ``None`` for silence.
      tracker: experiment tracker (:mod:`fedbench.tracking`); ``None``: built from
        ``cfg["tracking"]`` (absent: no tracking).
      on_finish: called as ``on_finish(simulator, final_state)`` at the end of a single-seed
        run (``fedbench-compare`` reads per-example test outputs this way).

    Returns:
      The summary written to ``summary.json``.

    Raises:
      ConfigError: for any bad setting, before training starts.
    """
    out_dir = Path(out_dir)
    initialize_distributed(cfg)  # several hosts: before anything touches JAX's devices
    run = check_config(cfg)  # every setting, before anything is loaded or built
    cached = compile_cache.configure(run.cfg)  # compiled programs from disk where they exist
    job, replicas = run.job, run.replicas
    checkpoints = RunCheckpoints(out_dir, job)  # checkpoint settings; out_dir writable
    built = build_simulator(run, progress)
    cfg = run.cfg
    sim, privacy, plan_for, algorithm = built.sim, built.privacy, built.plan_for, built.algorithm
    model, data, partition_stats = built.model, built.data, built.partition_stats
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), data.example_input())  # no compute
    # e.g. SCAFFOLD also sends (and receives) control variates; only parts that leave a site
    up_bits = dense_bits(shapes["params"], algorithm)
    others_up = other_up_bits(shapes["params"], algorithm)

    def make_evaluate(privacy, view=sim):  # a state's metrics, under a replica's plan and data
        def evaluate(state) -> dict[str, Any]:
            metrics = view.evaluate(state, min_client_test=MIN_CLIENT_TEST)
            if not _finite(state):
                metrics = _without_model_metrics(metrics)
            if algorithm.kind in ("federated", "async"):
                metrics.update(traffic(state, up_bits, others_up, sim.links, sim.down_bits))
            if privacy is not None:
                if int(state.overflow):
                    raise BufferOverflowError(
                        f"{int(state.overflow)} Poisson-sampled cohorts/batches exceeded their "
                        "buffer; the run is stopped instead of dropping sampled units"
                    )
                spent = privacy.report(int(state.round), np.asarray(state.participation),
                                       steps=_dp_steps(state))
                metrics["epsilon"] = spent["epsilon"]
                if state.wraps is not None:  # privacy=ddp: the modular sums' wrapped coordinates
                    metrics["modular_wraps"] = int(state.wraps)
                # privacy.release_metrics=false: only what epsilon covers and the pooled test set.
                metrics = privacy.released(metrics)
            return metrics
        return evaluate

    evaluate = make_evaluate(privacy)
    if replicas is not None:
        plans, calibrated = [], {}  # seeds of one swept value share its calibration
        for _, c in replicas:
            key = json.dumps([c.get("privacy"), c["num_clients"], c["rounds"]], sort_keys=True,
                             default=str)
            if key not in calibrated:
                calibrated[key] = privacy if not swept(job) else plan_for(c)
            plans.append(calibrated[key])
        return run_replicas(job, out_dir, sim, replicas, plans, make_evaluate, partition_stats,
                            progress, tracker, checkpoints, _replica_data(job, built, replicas))

    tracker = tracker if tracker is not None else build_tracker(cfg.get("tracking"), out_dir)
    tracker.start(cfg, partition_stats)

    rounds, eval_every = cfg["rounds"], cfg["eval_every"]
    compile_before, _ = CompileCounter.snapshot()
    state = sim.init(values=run_values(cfg, privacy))  # lr, mu, DP noise as data
    restored = checkpoints.restore(state)  # None: start afresh
    if restored is None:
        status, run_wall, compile_earlier = "completed", 0.0, 0.0
        history = [evaluate(state)]
    else:  # the history so far; metrics.jsonl loses any rows written after the checkpoint
        state, host = restored
        history, status = host["history"], host["status"]
        run_wall, compile_earlier = host["run_seconds"], host["compile_seconds"]
        write_jsonl(out_dir / "metrics.jsonl", history)
    for row in history:
        tracker.log(row, row["round"])
    # A progress bar on a terminal, the rounds run in steps of about two seconds under it
    # (fedbench/progress.py); otherwise one line per evaluation with the elapsed time and ETA.
    live = bar(rounds, int(state.round)) if progress is _print_progress else None
    timer = Timer(int(state.round))
    if progress is _print_progress:
        progress = functools.partial(_progress_line, timer=timer, live=live)
    if progress:
        if restored is not None:
            print(f"fedbench: resuming from round {int(state.round)} ({checkpoints.directory})",
                  flush=True)
        progress(history[-1], rounds, None)
    # run_wall: wall time inside the round loop, compilation excluded
    ran, ran_wall = 0, 0.0  # rounds and seconds run here (the progress bar's speed)
    saved = int(state.round) if restored is not None else None  # the last checkpoint's round

    def host() -> dict[str, Any]:  # the run loop's own state, saved beside the simulator's
        return {"history": history, "status": status, "run_seconds": run_wall,
                "compile_seconds": (compile_earlier + CompileCounter.snapshot()[0]
                                    - compile_before)}

    try:
        while int(state.round) < rounds and status == "completed":
            stop = checkpoints.next_stop(int(state.round), rounds, eval_every)
            while int(state.round) < stop:  # one call, or ~2 s steps under a progress bar
                block = stop - int(state.round)
                if live is not None:
                    block = step_rounds(block, ran / ran_wall if ran_wall > 0 else None)
                compiled_before, _ = CompileCounter.snapshot()
                start = time.perf_counter()
                with interrupts.protected(forceable=True):  # Ctrl-C: after this block
                    state = jax.block_until_ready(sim.run(state, block))
                wall = time.perf_counter() - start - (CompileCounter.snapshot()[0]
                                                      - compiled_before)
                run_wall += wall
                if live is not None:
                    ran, ran_wall = ran + block, ran_wall + max(wall, 0.0)
                    live.advance(int(state.round))
            done = int(state.round)
            evaluated = done % eval_every == 0 or done == rounds
            if evaluated:
                history.append(evaluate(state))
                tracker.log(history[-1], done)
                with interrupts.protected():
                    write_jsonl(out_dir / "metrics.jsonl", history)
                if not (_finite(state) and _loss_finite(history[-1])):
                    status = "diverged"
            if checkpoints.due(done, rounds, evaluated, finished=status != "completed"):
                with interrupts.protected():  # an interrupt waits for the save to be handed off
                    checkpoints.save(done, state, host())
                saved = done
            if evaluated and progress:
                progress(history[-1], rounds, done / run_wall if run_wall > 0 else None)
            if status == "diverged":
                print(
                    f"fedbench: training diverged by round {done} (parameters or training "
                    "loss not finite); stopping. Lower lr (or algorithm.server_lr), or for DP raise "
                    "the number of clients per round or privacy.target_epsilon.",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM (fedbench.cli): after the block under way,
        done = int(state.round)  # a checkpoint of the round reached, so nothing is lost
        if checkpoints.every != 0 and saved != done and status == "completed":
            with interrupts.protected():
                due = done % eval_every == 0 or done == rounds
                if due and history[-1]["round"] != done:  # the resumed run skips no evaluation
                    history.append(evaluate(state))
                    tracker.log(history[-1], done)
                    write_jsonl(out_dir / "metrics.jsonl", history)
                checkpoints.save(done, state, host())
            saved = done
        checkpoints.close()
        raise interrupts.Interrupted(done, saved if checkpoints.every != 0 else None) from None
    finally:
        if live is not None:
            live.close()
    checkpoints.close()
    write_jsonl(out_dir / "metrics.jsonl", history)
    # Tracing, lowering and XLA compilation of the round loop and of evaluation.
    compile_seconds = compile_earlier + CompileCounter.snapshot()[0] - compile_before
    run_seconds = max(run_wall, 1e-9)
    timing = {
        "compile_seconds": compile_seconds,
        "run_seconds": run_seconds,
        "rounds_per_second": int(state.round) / run_seconds,
        "round_program_traces": sim.trace_count,
        "compilation_cache": cached is not None,  # programs read from / written to disk
    }
    summary = _run_summary(status, history[-1], dict(cfg), timing, partition_stats, sim, state,
                           privacy)
    write_json(out_dir / "summary.json", summary)
    tracker.finish(summary)
    if progress:
        _print_table(history[-1], timing)
    if on_finish is not None:
        on_finish(sim, state)
    return summary
