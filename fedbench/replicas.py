"""Several runs as replicas of one compiled program: ``seeds`` and in-program sweeps.

``seeds=S`` runs seeds ``seed .. seed + S - 1``; ``sweep.<name>=[...]`` adds values of a scalar
hyper-parameter that does not change any shape (:data:`SWEEP_KEYS`): the product of every swept
list and the seeds runs as ``jax.vmap`` replicas of one round program, each replica's values
carried in its state (:mod:`fedbench.hparams`). Every replica writes its own run directory
(``<out_dir>/<name>=<value>,...,seed=<s>/``, or ``seed=<s>/`` for seeds alone) with the config
of the separate job it stands for, so ``fedbench-collect``, the notebooks and resumable sweeps
see no difference; replica ``i`` is bit-for-bit that job (tested).

``sweep.target_epsilon`` values are calibrated to noise multipliers per replica before training
(the same calibration as a separate job); ``sweep.noise_multiplier`` and ``sweep.clip`` set
them directly. The replicas share the data and partition (``partition.seed``, else ``seed``).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.errors import ConfigError
from fedbench.provenance import source
from fedbench.results import CompileCounter, write_json, write_jsonl

from fedbench.sweep_config import (  # noqa: F401  (the replicas' configs: public here too)
    SWEEP_KEYS, algorithm_hyperparameters, check_members, replica_configs, simulator_config,
    sweep_keys, swept,
)


def run_values(run_cfg: Mapping[str, Any], plan) -> dict[str, Any]:
    """What a run carries in ``ServerState.hparams`` (:mod:`fedbench.hparams`): its client
    ``lr``, FedProx's ``mu``, and under DP with a fixed clip its ``clip``, noise std
    ``noise_multiplier * clip`` and noise salt, computed on the host. Every run of
    ``fedbench`` carries them, plain or replica, so a replica and the separate job it stands
    for trace the same program (XLA rewrites arithmetic on constants differently from
    arithmetic on data, so constants in one and data in the other would differ in the last
    bits)."""
    values: dict[str, Any] = {"lr": float(run_cfg["lr"])}
    if run_cfg.get("members") is not None:  # a sub-federation: a 0/1 mask over the clients
        mask = np.zeros(run_cfg["num_clients"], np.float32)
        mask[list(run_cfg["members"])] = 1.0
        values["members"] = mask
    algorithm = run_cfg.get("algorithm") or {}
    for key in algorithm_hyperparameters(algorithm):  # declared beside the algorithm's code
        if algorithm.get(key) is not None:
            values[key] = float(algorithm[key])
    carried = {} if plan is None else plan.mechanism.carried()  # e.g. clip and noise std
    if carried:
        values.update(carried)
        if not plan.shared_noise:  # its config's and the data's (fedbench.privacy.release)
            values["noise_salt"] = plan.salt_of(run_cfg)
    return values


def replica_axis(axis: str) -> str:
    """``auto``: ``map`` on CPU (one replica after another inside the program: no gain from
    batching on two cores, and each replica is its separate job bit for bit), ``vmap`` on
    accelerators (benchmarks/NOTES.md)."""
    if axis not in ("auto", "vmap", "map"):
        raise ConfigError("replica_axis", axis, "one of: auto, vmap, map")
    if axis == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return axis


def replica_chunk(cfg: Mapping[str, Any], sim, count: int, axis: str,
                  data_mb: float = 0.0) -> tuple[int, float]:
    """Replicas per program call under ``replica_memory_mb`` (null: all of them), and the
    estimated MB of one replica: its state, plus under ``vmap`` its cohort's gathered training
    data (what batching the replicas multiplies; ``map`` holds one replica's at a time), plus
    ``data_mb``, its own data when partitions are replicas."""
    states = jax.eval_shape(sim.init)
    memory = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(states))
    if axis == "vmap":
        row = sim.data.example_input()
        memory += sim.settings.clients_per_round * sim.data.max_train * row.size * row.dtype.itemsize
    memory = memory / 2**20 + data_mb
    budget = cfg.get("replica_memory_mb")
    if budget is None:
        return count, memory
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise ConfigError("replica_memory_mb", budget, "null or a number of MB > 0")
    return max(1, min(count, int(budget // max(memory, 1e-9)))), memory


def run_in_chunks(sim, states, rounds: int, axis: str, chunk: int, payload=None):
    """``sim.run_replicas`` on ``chunk`` replicas at a time (the last chunk padded with copies
    of its last replica, dropped after, so every call has one shape: one compilation);
    ``payload``: the replicas' own stacked data, chunked alike."""
    count = jax.tree.leaves(states)[0].shape[0]
    if chunk >= count:
        return sim.run_replicas(states, rounds, axis, payload)
    pad = -count % chunk
    grow = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)])  # noqa: E731
    padded = jax.tree.map(grow, states)
    data = None if payload is None else jax.tree.map(grow, payload)
    cut = lambda tree, i: None if tree is None else jax.tree.map(  # noqa: E731
        lambda a: a[i:i + chunk], tree)
    parts = [sim.run_replicas(cut(padded, i), rounds, axis, cut(data, i))
             for i in range(0, count + pad, chunk)]
    return jax.tree.map(lambda *a: jnp.concatenate(a)[:count], *parts)


def _replica_tracker(tracker, cfg: Mapping[str, Any], out_dir: Path, name: str):
    """A tracked run per replica: the job's tracker settings with ``/<name>`` appended."""
    from fedbench.tracking import Tracker, build_tracker

    if tracker is None or type(tracker) is Tracker:
        return build_tracker(cfg.get("tracking"), out_dir)
    replica = copy.copy(tracker)
    replica.run = None
    replica.run_name = f"{tracker.run_name or out_dir.parent.name}/{name}"
    return replica


def run_replicas(cfg, out_dir: Path, sim, replicas, plans, make_evaluate, partition_stats,
                 progress, tracker, checkpoints, data=None) -> dict[str, Any]:
    """Every replica of :func:`replica_configs` as one compiled program (``jax.vmap`` over the
    replica axis of the stacked states).

    The replicas share the data, partition and sites and differ in initialisation, client
    sampling, SGD order, stragglers and DP noise (their seeds) and in their swept values; each
    writes its own run directory (metrics.jsonl, summary.json with its own config);
    ``<out_dir>/summary.json`` lists them (``replicas``). The job's checkpoints
    (``<out_dir>/checkpoints``) hold the stacked states. ``plans``: each replica's privacy
    plan (its epsilon and disclosure), ``make_evaluate(plan)``: its metrics function.
    """
    from fedbench.results import finite as _finite
    from fedbench.results import loss_finite as _loss_finite
    from fedbench.results import run_summary as _run_summary

    names = [name for name, _ in replicas]
    configs = [c for _, c in replicas]
    seeds = [c["seed"] for c in configs]
    dirs = [out_dir / name for name in names]
    payload, views, stats = data if data is not None else (
        None, [sim] * len(replicas), [partition_stats] * len(replicas))
    evaluators = [make_evaluate(plan, view) for plan, view in zip(plans, views)]
    trackers = [_replica_tracker(tracker, c, d, n) for c, d, n in zip(configs, dirs, names)]
    for t, c, st in zip(trackers, configs, stats):
        t.start(c, st)
    rounds, eval_every = cfg["rounds"], cfg["eval_every"]
    count = len(replicas)
    axis = replica_axis(cfg.get("replica_axis", "auto"))
    if payload is not None:
        from fedbench.replica_data import payload_mb
    chunk, memory = replica_chunk(cfg, sim, count, axis,
                                  0.0 if payload is None else payload_mb(payload) / count)
    if progress and chunk < count:
        print(f"fedbench: {count} replicas in {-(-count // chunk)} chunks of {chunk} "
              f"(replica_memory_mb={cfg.get('replica_memory_mb')}, about {memory:.0f} MB each)",
              flush=True)
    compile_before, _ = CompileCounter.snapshot()
    states = sim.init_replicas(seeds, [run_values(c, p) for c, p in zip(configs, plans)])
    restored = checkpoints.restore(states)  # None: start afresh
    if restored is None:
        histories = [[evaluators[i](sim.replica(states, i))] for i in range(count)]
        statuses = ["completed"] * count
        run_wall, done, compile_earlier = 0.0, 0, 0.0
    else:
        states, host = restored
        histories, statuses = host["histories"], host["statuses"]
        run_wall, done = host["run_seconds"], host["round"]
        compile_earlier = host["compile_seconds"]
        for d, h in zip(dirs, histories):
            write_jsonl(d / "metrics.jsonl", h)  # without rows written after the checkpoint
        if progress:
            print(f"fedbench: resuming from round {done} ({checkpoints.directory})", flush=True)
    for t, h in zip(trackers, histories):
        for row in h:
            t.log(row, row["round"])
    stopped: dict[int, Any] = {}  # replica -> its state when it diverged (not across a resume)
    while done < rounds and "completed" in statuses:
        block = checkpoints.next_stop(done, rounds, eval_every) - done
        compiled_before, _ = CompileCounter.snapshot()
        start = time.perf_counter()
        states = jax.block_until_ready(run_in_chunks(sim, states, block, axis, chunk, payload))
        run_wall += time.perf_counter() - start
        run_wall -= CompileCounter.snapshot()[0] - compiled_before
        done += block
        evaluated = done % eval_every == 0 or done == rounds
        for i in range(count if evaluated else 0):
            if statuses[i] != "completed":
                continue  # a diverged replica keeps its last finite record
            state = sim.replica(states, i)
            histories[i].append(evaluators[i](state))
            trackers[i].log(histories[i][-1], done)
            write_jsonl(dirs[i] / "metrics.jsonl", histories[i])
            if not (_finite(state) and _loss_finite(histories[i][-1])):
                statuses[i] = "diverged"
                stopped[i] = state  # where its separate job stops: its summary's state
                print(f"fedbench: replica {names[i]} diverged by round {done}", file=sys.stderr,
                      flush=True)
        if checkpoints.due(done, rounds, evaluated, finished="completed" not in statuses):
            checkpoints.save(done, states, {
                "histories": histories, "statuses": statuses, "run_seconds": run_wall,
                "compile_seconds": compile_earlier + CompileCounter.snapshot()[0] - compile_before,
            })
        if progress and evaluated:
            key = "test_cindex" if "test_cindex" in histories[0][-1] else "test_accuracy"
            got = [h[-1][key] for h in histories]
            print(f"round {done:>5}/{rounds} | {key} over {count} replicas: mean "
                  f"{np.mean(got):.4f}, min {np.min(got):.4f}, max {np.max(got):.4f} | "
                  f"{done * count / run_wall if run_wall > 0 else float('nan'):8.1f} "
                  "rounds/s (all replicas)", flush=True)
    checkpoints.close()
    compile_seconds = compile_earlier + CompileCounter.snapshot()[0] - compile_before
    run_seconds = max(run_wall, 1e-9)
    timing = {
        "compile_seconds": compile_seconds,
        "run_seconds": run_seconds,
        "rounds_per_second": done / run_seconds,
        "replicas_in_program": count,
        "replica_axis": axis,
        "replica_chunks": -(-count // chunk),
        "replica_memory_mb_estimate": memory,
        "round_program_traces": sim.trace_count,
    }
    if payload is not None:
        timing["replica_data_mb"] = payload_mb(payload)
    for i in range(count):
        state = stopped[i] if i in stopped else sim.replica(states, i)
        summary = _run_summary(statuses[i], histories[i][-1], configs[i], timing,
                               stats[i], views[i], state, plans[i])
        write_json(dirs[i] / "summary.json", summary)
        trackers[i].finish(summary)
    overall = {
        "status": "completed" if all(s == "completed" for s in statuses) else "diverged",
        "replicas": names,
        "seeds": seeds,
        "swept": swept(cfg),
        "statuses": statuses,
        "config": dict(cfg),
        "timing": timing,
        "provenance": source(),  # as every replica's own summary (fedbench/provenance.py)
    }
    write_json(out_dir / "summary.json", overall)
    if progress:
        print(f"fedbench: {count} replicas in one program; their runs in {out_dir}/*", flush=True)
    return overall
