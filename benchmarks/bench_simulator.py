#!/usr/bin/env python
"""fedbench's vectorised Simulator against a per-client Python loop, on synthetic data.

Usage::

    python benchmarks/bench_simulator.py                      # W1, W3, W4 (about 10 min, 2 cores)
    python benchmarks/bench_simulator.py --quick              # smoke test (1-2 min, 2 cores)
    python benchmarks/bench_simulator.py --workloads W1 --rounds 200 --out
    python benchmarks/bench_simulator.py --out benchmarks/results_mybox.json

Workloads (FedAvg, 1 local epoch, client lr 0.1, 10 classes, inputs uniform in [0, 1), label =
argmax of a fixed random linear map of the centred input, so the task is learnable):

  W1  LogReg 784->10, 100 clients x 600 examples, 10 clients/round, batch 10
  W3  LogReg 784->10, 3,400 clients x 100 examples, 100 clients/round, batch 20
  W4  CNN (McMahan et al.) on 28x28x1, 100 clients x 600 images, 10 clients/round, batch 50

Variants per workload:

  sim <axis> u<k> [conv]  ``Simulator`` with ``client_axis`` in {vmap, map} and ``unroll`` in
                          {1, 8}; for W4 also the CNN's ``conv_impl`` in {im2col, lax}.
  client loop [conv]      the baseline: per round, a Python loop over the sampled clients calling
                          one jitted single-client ``make_local_update`` (unroll 1) on that
                          client's unpadded, already-on-device arrays, then one jitted call that
                          averages the deltas (weighted by counts) and applies the server step.
                          It samples clients and keys exactly as the simulator does, so it trains
                          the same trajectory (checked: max |param difference| after one round).

Measurement. The variants of a workload run one after another in a child process that
generates the data once (W3's 1 GB takes several seconds); a variant that runs too long ends
that process and the rest continue in a fresh one. ``--isolate`` gives every variant its own
process (fully cold compiles, at the cost of regenerating the data each time).

  * compile s: simulator: wall time of the first ``sim.run(state, 0)``; the round loop's trip
    count is a runtime argument, so this traces, lowers and compiles the whole program and runs
    no round. Client loop: one call of each of its three jitted functions (plan, one client's
    update, aggregate) minus a second identical call.
  * then one untimed warm-up block of R rounds and B timed blocks of R rounds each
    (``jax.block_until_ready`` around each); rounds/s = R / median block time. Every variant
    runs the same 1 + B blocks from the same initial state and keys, so the final test accuracy
    should agree across variants (up to float rounding).
  * a variant whose first block takes longer than ``--slow-round-s`` (60) seconds per round is
    stopped and reported as skipped; its unroll-8 sibling is then skipped without running. If
    the first block takes more than ``--single-sample-s`` (15) seconds per round, it is the only
    sample (W4's slow variants would otherwise eat the time budget).

Speed-up = rounds/s divided by the rounds/s of the fastest client loop of the same workload.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

NUM_CLASSES = 10
SEED = 0

# rounds: rounds per timed block; blocks: timed blocks (after one untimed warm-up block).
WORKLOADS = {
    "W1": dict(model="logreg", clients=100, examples=600, test=10, per_round=10, batch=10,
               epochs=1, lr=0.1, rounds=50, blocks=3, check=True),
    "W3": dict(model="logreg", clients=3400, examples=100, test=2, per_round=100, batch=20,
               epochs=1, lr=0.1, rounds=20, blocks=3, check=True),
    "W4": dict(model="cnn", clients=100, examples=600, test=10, per_round=10, batch=50,
               epochs=1, lr=0.1, rounds=1, blocks=2, check=False),
}
QUICK = {
    "W1": dict(clients=12, examples=60, per_round=4, rounds=10, blocks=2),
    "W3": dict(clients=40, examples=40, per_round=10, rounds=10, blocks=2),
    "W4": dict(clients=4, examples=20, per_round=2, batch=10, rounds=1, blocks=2, check=True),
}
# --quick also runs only these variants: together they cover both client axes, both unroll
# factors and both conv implementations (the client loop's one-round check runs the simulator
# with map/unroll 1 on the loop's model, here im2col).
QUICK_VARIANTS = {
    "W1": {"client loop", "sim map u1", "sim vmap u8"},
    "W3": {"client loop", "sim map u8"},
    "W4": {"client loop im2col", "sim map u1 lax"},
}
#: client_chunk values tried per workload (groups of clients vmapped inside the lax.map).
CHUNKS = {"W1": (5, 10), "W3": (10, 25, 50)}
TARGETS = {
    "W1": "1,000 rounds in under 20 s",
    "W3": ">= 4x the client loop",
    "W4": "no slower than a PyTorch per-client loop (4.1-6.0 s/round, measured elsewhere)",
}


# --------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------
def variants_for(workload: str, quick: bool = False, only: list[str] | None = None) -> list[dict]:
    """im2col before lax (the slow one last), the client loop first within each model."""
    model = WORKLOADS[workload]["model"]
    convs = ["im2col", "lax"] if model == "cnn" else [None]
    out = []
    for conv in convs:
        out.append(dict(kind="loop", axis=None, unroll=1, conv=conv))
        for axis in ("map", "vmap"):
            for unroll in (1, 8):
                out.append(dict(kind="sim", axis=axis, unroll=unroll, conv=conv))
        for chunk in CHUNKS.get(workload, ()):  # client_chunk: vmap inside lax.map
            out.append(dict(kind="sim", axis="map", unroll=1, conv=conv, chunk=chunk))
    if only:  # explicit choice, also under --quick
        return [v for v in out if any(o in label(v) for o in only)]
    if quick:
        return [v for v in out if label(v) in QUICK_VARIANTS[workload]]
    return out


def label(v: dict) -> str:
    conv = f" {v['conv']}" if v["conv"] else ""
    if v["kind"] == "loop":
        return f"client loop{conv}"
    chunk = f" c{v['chunk']}" if v.get("chunk") else ""
    return f"sim {v['axis']} u{v['unroll']}{chunk}{conv}"


def skip_reason(v: dict, earlier: list[dict]) -> str | None:
    """Skip an unroll-8 variant whose unroll-1 sibling was too slow to measure."""
    if v["kind"] != "sim" or v["unroll"] == 1:
        return None
    for r in earlier:
        sib = r["variant"]
        if (
            sib["kind"] == "sim"
            and sib["axis"] == v["axis"]
            and sib["conv"] == v["conv"]
            and sib["unroll"] == 1
            and r["status"] == "skipped"
        ):
            return f"not run: its unroll-1 sibling was skipped ({r['reason']})"
    return None


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict:
    import jax

    from fedbench.results import device_info, package_versions

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "packages": package_versions(),
        "device": device_info(),
    }


# --------------------------------------------------------------------------------------------
# worker side: one process measures one or more variants of one workload
# --------------------------------------------------------------------------------------------
def emit(row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)


class Watchdog:
    """Reports ``row`` as skipped and ends this worker process if a phase runs past ``limit``.

    The compiled computation cannot be interrupted from Python, so the worker exits; the parent
    starts a fresh worker for any variants left.
    """

    def __init__(self, limit: float, row: dict, reason: str):
        self.row, self.reason = row, reason
        self.timer = threading.Timer(limit, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        emit(dict(self.row, status="skipped", reason=self.reason))
        sys.stdout.flush()
        os._exit(3)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        return False


def make_data(spec: dict):
    """Synthetic federated data (NumPy, fixed seed) plus host views of the unpadded train sets."""
    import numpy as np

    from fedbench.dataset.federated import from_client_arrays

    rng = np.random.default_rng(SEED)
    feat = (28, 28, 1) if spec["model"] == "cnn" else (784,)
    dim = math.prod(feat)
    n, m, c = spec["examples"], spec["test"], spec["clients"]
    x = rng.random((c, n + m, dim), dtype=np.float32)
    w = rng.standard_normal((dim, NUM_CLASSES), dtype=np.float32)
    y = np.argmax(x @ w - 0.5 * w.sum(0), axis=-1).astype(np.int32)  # = argmax((x - 0.5) @ w)
    x = x.reshape((c, n + m) + feat)
    data = from_client_arrays(
        list(x[:, :n]), list(y[:, :n]), list(x[:, n:]), list(y[:, n:]), NUM_CLASSES
    )
    return data, x[:, :n], y[:, :n]


def make_model(spec: dict, conv: str | None):
    from fedbench.model import CNN, LogReg

    if spec["model"] == "cnn":
        return CNN(num_classes=NUM_CLASSES, conv_impl=conv)
    return LogReg(num_classes=NUM_CLASSES)


def make_accuracy(model, data, chunk: int = 250):
    """Jitted pooled-test accuracy (``Simulator.evaluate`` also sweeps every training example,
    which for W4 costs more than several rounds)."""
    import jax
    import jax.numpy as jnp

    x, y = data.pooled_test_x, data.pooled_test_y
    n = y.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape((-1, chunk) + x.shape[1:])
    ys = jnp.pad(y, (0, pad)).reshape(-1, chunk)
    valid = (jnp.arange(n + pad) < n).reshape(-1, chunk)

    @jax.jit
    def accuracy(params):
        def one(args):
            xb, yb, vb = args
            pred = jnp.argmax(model.apply({"params": params}, xb), -1)
            return jnp.sum((pred == yb) & vb)

        return jax.lax.map(one, (xs, ys, valid)).sum() / n

    return lambda params: float(accuracy(params))


def settings_for(spec: dict, axis: str, unroll: int, chunk: int | None = None):
    from fedbench.simulator import Settings

    return Settings(
        clients_per_round=spec["per_round"],
        local_epochs=spec["epochs"],
        batch_size=spec["batch"],
        lr=spec["lr"],
        client_axis=axis,
        unroll=unroll,
        client_chunk=chunk,
    )


def timed_blocks(run_block, state, row: dict, spec: dict, opts: dict):
    """Warm-up block under the watchdog, then the timed blocks. Returns (state, first, times)."""
    import jax

    rounds, blocks = spec["rounds"], spec["blocks"]
    limit = opts["slow_round_s"] * rounds
    reason = f"first block ran past {limit:g} s ({opts['slow_round_s']:g} s/round limit)"
    with Watchdog(limit, row, reason):
        t = time.perf_counter()
        state = jax.block_until_ready(run_block(state, rounds))
        first = time.perf_counter() - t
    times = []
    if first / rounds > opts["single_sample_s"]:
        row["note"] = f"first block {first / rounds:.1f} s/round: used as the only sample"
        return state, first, [first]
    for _ in range(blocks):
        t = time.perf_counter()
        state = jax.block_until_ready(run_block(state, rounds))
        times.append(time.perf_counter() - t)
    return state, first, times


def measure_sim(spec, data, v, row, opts):
    import jax

    from fedbench.algorithm import build_algorithm
    from fedbench.results import CompileCounter
    from fedbench.simulator import Simulator

    model = make_model(spec, v["conv"])
    sim = Simulator(model, build_algorithm({"name": "fedavg"}), data,
                    settings_for(spec, v["axis"], v["unroll"], v.get("chunk")), seed=SEED)
    state = jax.block_until_ready(sim.init())
    c0 = CompileCounter.snapshot()
    with Watchdog(opts["compile_limit_s"], row, f"compile ran past {opts['compile_limit_s']:g} s"):
        t = time.perf_counter()
        state = jax.block_until_ready(sim.run(state, 0))  # compiles, runs no round
        row["compile_s"] = time.perf_counter() - t
    c1 = CompileCounter.snapshot()
    row["compile_counter_s"] = c1[0] - c0[0]
    state, first, times = timed_blocks(sim.run, state, row, spec, opts)
    c2 = CompileCounter.snapshot()
    row["recompiles_after_first_call"] = c2[1] - c1[1]
    row["trace_count"] = sim.trace_count
    return state, first, times, model


def measure_loop(spec, data, host_x, host_y, v, row, opts):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fedbench.algorithm import build_algorithm
    from fedbench.results import CompileCounter
    from fedbench.simulator import Simulator, make_local_update, weighted_mean

    model = make_model(spec, v["conv"])
    algorithm = build_algorithm({"name": "fedavg"})
    # The Simulator is used only for init() (same initial model) and sample_clients().
    sim = Simulator(model, algorithm, data, settings_for(spec, "map", 1), seed=SEED)
    k = spec["per_round"]

    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    local_update = jax.jit(
        make_local_update(apply_fn, lr=spec["lr"], local_epochs=spec["epochs"],
                          batch_size=spec["batch"])
    )

    @jax.jit
    def plan(run_key, r):
        # Same derivation as Simulator.round_keys / _federated_round: round r uses
        # fold_in(run_key, r), split into (sample_key, clients_key).
        sample_key, clients_key = jax.random.split(jax.random.fold_in(run_key, r))
        return sim.sample_clients(sample_key), tuple(jax.random.split(clients_key, k))

    @jax.jit
    def aggregate(state, deltas, counts):
        stacked = jax.tree.map(lambda *d: jnp.stack(d), *deltas)
        mean = weighted_mean(stacked, counts)
        updates, opt_state = algorithm.server_optimizer.update(
            jax.tree.map(jnp.negative, mean), state.opt_state, state.params
        )
        return state.replace(params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state, round=state.round + 1)

    # Each client's unpadded arrays, placed on the device once (the loop does no transfers).
    counts_host = np.asarray(data.train_counts)
    xs = [jax.device_put(host_x[c, : counts_host[c]]) for c in range(len(counts_host))]
    ys = [jax.device_put(host_y[c, : counts_host[c]]) for c in range(len(counts_host))]
    counts = [jnp.int32(n) for n in counts_host]
    round_counter = [0]

    def one_round(state):
        ids, keys = plan(state.key, round_counter[0])
        round_counter[0] += 1
        ids = np.asarray(ids)
        deltas = [
            local_update(state.params, xs[c], ys[c], counts[c], keys[i])[0]
            for i, c in enumerate(ids)
        ]
        return aggregate(state, deltas, jnp.asarray(counts_host[ids]))

    def run_block(state, rounds):
        for _ in range(rounds):
            state = one_round(state)
        return state

    def warm_calls(state):
        # One call of each jitted function (one client's update, results discarded).
        ids, keys = plan(state.key, 0)
        c = int(np.asarray(ids)[0])
        delta = local_update(state.params, xs[c], ys[c], counts[c], keys[0])[0]
        return aggregate(state, [delta] * k, jnp.asarray(counts_host[np.asarray(ids)]))

    state0 = jax.block_until_ready(sim.init())
    c0 = CompileCounter.snapshot()
    # Compile = the first warm call minus a second, identical one.
    with Watchdog(opts["compile_limit_s"], row, f"compile ran past {opts['compile_limit_s']:g} s"):
        t = time.perf_counter()
        jax.block_until_ready(warm_calls(state0))
        cold = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(warm_calls(state0))
        row["compile_s"] = max(cold - (time.perf_counter() - t), 0.0)
    c1 = CompileCounter.snapshot()
    row["compile_counter_s"] = c1[0] - c0[0]
    state, first, times = timed_blocks(run_block, state0, row, spec, opts)
    row["recompiles_after_first_call"] = CompileCounter.snapshot()[1] - c1[1]

    if spec["check"]:
        # One round of the simulator and one of the loop from the same state must agree.
        round_counter[0] = 0
        looped = jax.block_until_ready(one_round(state0))
        simmed = jax.block_until_ready(sim.run(state0, 1))
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)),
                                             looped.params, simmed.params))
        row["check_max_abs_diff"] = float(max(diffs))
    return state, first, times, model


def worker(payload: dict) -> None:
    import jax

    workload, spec, opts = payload["workload"], payload["spec"], payload["opts"]
    t = time.perf_counter()
    data, host_x, host_y = make_data(spec)
    jax.block_until_ready(data)
    setup_s = time.perf_counter() - t
    done: list[dict] = []
    for v in payload["variants"]:
        row = dict(workload=workload, variant=v, label=label(v), status="ok", reason="",
                   rounds_per_block=spec["rounds"], setup_s=setup_s)
        why = skip_reason(v, done)
        if why:
            row.update(status="skipped", reason=why)
            emit(row)
            done.append(row)
            continue
        t0 = time.perf_counter()
        try:
            if v["kind"] == "sim":
                state, first, times, model = measure_sim(spec, data, v, row, opts)
            else:
                state, first, times, model = measure_loop(spec, data, host_x, host_y, v, row, opts)
            med = statistics.median(times)
            row.update(
                first_block_s=first,
                block_s=times,
                rounds_per_s=spec["rounds"] / med,
                s_per_round=med / spec["rounds"],
                rounds_run=int(state.round),
                test_accuracy=make_accuracy(model, data)(state.params),
            )
        except Exception as e:  # report and go on with the next variant
            row.update(status="failed", reason=f"{type(e).__name__}: {e}"[:300])
        row["wall_s"] = time.perf_counter() - t0
        emit(row)
        done.append(row)


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------
def launch(workload: str, spec: dict, variants: list[dict], opts: dict, hard_limit: float):
    """Runs one worker process; yields result rows as they arrive."""
    payload = json.dumps(dict(workload=workload, spec=spec, variants=variants, opts=opts))
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--_worker", payload],
        stdout=subprocess.PIPE, text=True, bufsize=1,
    )
    killer = threading.Timer(hard_limit, proc.kill)
    killer.daemon = True
    killer.start()
    try:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                yield json.loads(line[len("RESULT "):])
            else:
                print("    " + line.rstrip(), flush=True)
        proc.wait()
        killed = not killer.is_alive() and proc.returncode != 0
        yield {"_exit": proc.returncode, "_killed": killed}
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_workload(workload: str, spec: dict, opts: dict, pending: list[dict],
                 per_variant: bool) -> list[dict]:
    results: list[dict] = []
    while pending:
        why = skip_reason(pending[0], results)
        if why:
            row = dict(workload=workload, variant=pending[0], label=label(pending[0]),
                       status="skipped", reason=why)
            report(row)
            results.append(row)
            pending.pop(0)
            continue
        batch = pending[:1] if per_variant else list(pending)
        per = opts["compile_limit_s"] + opts["slow_round_s"] * spec["rounds"] * (spec["blocks"] + 1)
        hard = len(batch) * (per + 120)
        got, exit_info = 0, {}
        for row in launch(workload, spec, batch, opts, hard):
            if "_exit" in row:
                exit_info = row
                continue
            report(row)
            results.append(row)
            got += 1
        if got < len(batch) and exit_info.get("_exit") != 3:
            # The worker died (or was killed) inside variant batch[got] without reporting it;
            # exit code 3 is the watchdog, which reports before exiting.
            why = (f"killed after the {hard:.0f} s hard limit" if exit_info.get("_killed")
                   else f"worker exited with code {exit_info.get('_exit')} without a result")
            row = dict(workload=workload, variant=batch[got], label=label(batch[got]),
                       status="failed", reason=why)
            report(row)
            results.append(row)
            got += 1
        pending = pending[got:]
    return results


def report(row: dict) -> None:
    if row["status"] == "ok":
        extra = f"  [{row['note']}]" if row.get("note") else ""
        chk = row.get("check_max_abs_diff")
        chk = f", one-round max|sim-loop| = {chk:.2e}" if chk is not None else ""
        comp = row.get("compile_s")
        comp = f"{comp:.2f}" if comp is not None else "n/a"
        print(f"  {row['workload']} {row['label']:<22} compile {comp} s, "
              f"{row['rounds_per_s']:.3f} rounds/s ({row['s_per_round']:.4f} s/round), "
              f"blocks {[round(b, 3) for b in row['block_s']]}, "
              f"test acc {row['test_accuracy']:.3f}{chk}{extra}", flush=True)
    else:
        print(f"  {row['workload']} {row['label']:<22} {row['status'].upper()}: {row['reason']}",
              flush=True)


def add_speedups(results: list[dict]) -> None:
    loops = [r for r in results if r["variant"]["kind"] == "loop" and r["status"] == "ok"]
    best = max((r["rounds_per_s"] for r in loops), default=None)
    for r in results:
        r["speedup_vs_client_loop"] = (
            r["rounds_per_s"] / best if best and r["status"] == "ok" else None
        )


def fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def markdown_table(rows: list[dict], auto: dict) -> str:
    lines = [
        "| workload | variant | compile s | rounds/s | s/round | speed-up vs client loop "
        "| test acc |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r["variant"]
        name = r["label"]
        if v["kind"] == "sim" and v["axis"] == auto["axis"] and v["unroll"] == 1 and (
            v["conv"] in (None, auto["conv"])
        ):
            name += " (default)"
        if r["status"] != "ok":
            lines.append(f"| {r['workload']} | {name} | {fmt(r.get('compile_s'))} | "
                         f"{r['status']}: {r['reason']} | | | |")
            continue
        sp = r["speedup_vs_client_loop"]
        lines.append(
            f"| {r['workload']} | {name} | {fmt(r.get('compile_s'))} | "
            f"{fmt(r['rounds_per_s'], '.3f' if r['rounds_per_s'] < 10 else '.1f')} | "
            f"{fmt(r['s_per_round'], '.4f')} | {fmt(sp, '.2f') + 'x' if sp else '—'} | "
            f"{fmt(r['test_accuracy'], '.3f')} |"
        )
    return "\n".join(lines)


def target_lines(workload: str, rows: list[dict], quick: bool) -> list[str]:
    sims = [r for r in rows if r["variant"]["kind"] == "sim" and r["status"] == "ok"]
    if not sims:
        return [f"{workload}: no simulator variant measured"]
    best = max(sims, key=lambda r: r["rounds_per_s"])
    caveat = "; --quick sizes, not the target workload" if quick else ""
    head = f"{workload} (target: {TARGETS[workload]}{caveat}): "
    if workload == "W1":
        secs = 1000 / best["rounds_per_s"]
        return [head + f"best {best['label']}: 1,000 rounds in {secs:.1f} s "
                + ("(met)" if secs < 20 else "(NOT met)")]
    sp = best["speedup_vs_client_loop"]
    if workload == "W3":
        return [head + f"best {best['label']}: {fmt(sp)}x the client loop "
                + ("(met)" if sp and sp >= 4 else "(NOT met)")]
    s = best["s_per_round"]
    return [head + f"best {best['label']}: {s:.2f} s/round "
            + ("(met)" if s <= 6.0 else "(NOT met)")
            + (f", {fmt(sp)}x the fastest JAX client loop" if sp else "")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="W1,W3,W4", help="comma list of W1,W3,W4")
    p.add_argument("--rounds", type=int, help="rounds per timed block (default W1 50, W3 20, W4 1)")
    p.add_argument("--blocks", type=int,
                   help="timed blocks after the warm-up (default W1/W3 3, W4 2)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and a subset of variants: a smoke test (1-2 min on 2 cores)")
    p.add_argument("--isolate", action="store_true",
                   help="run every variant in its own process (default: one per workload)")
    p.add_argument("--variants", default="",
                   help="comma list of label substrings to run, e.g. 'client loop,map u1' "
                        "(replaces --quick's subset)")
    p.add_argument("--out", nargs="?", const="", default=None,
                   help="write JSON results; without a value: benchmarks/results_<hostname>.json")
    p.add_argument("--slow-round-s", type=float, default=60.0,
                   help="skip a variant whose first block exceeds this many s per round")
    p.add_argument("--single-sample-s", type=float, default=15.0,
                   help="above this many s/round the first block is the only sample")
    p.add_argument("--compile-limit-s", type=float, default=300.0,
                   help="skip a variant whose compilation takes longer than this")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        worker(json.loads(args._worker))
        return

    import jax

    from fedbench.model import resolve_conv_impl
    from fedbench.results import write_json
    from fedbench.simulator import resolve_client_axis

    env = environment()
    print(f"CPU: {env['cpu']} ({env['cpu_count']} logical cores), host {env['hostname']}")
    print(f"jax {env['jax']}, jaxlib {env['packages'].get('jaxlib')}, flax "
          f"{env['packages'].get('flax')}, backend {env['device']['backend']}"
          + (f", XLA_FLAGS={env['xla_flags']}" if env["xla_flags"] else ""))
    auto = dict(axis=resolve_client_axis("auto"), conv=resolve_conv_impl("auto"))
    print(f"auto defaults on this backend: client_axis={auto['axis']}, conv_impl={auto['conv']}")
    opts = dict(slow_round_s=args.slow_round_s, single_sample_s=args.single_sample_s,
                compile_limit_s=args.compile_limit_s)

    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    only = [o.strip() for o in args.variants.split(",") if o.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")

    t_all = time.perf_counter()
    all_rows, specs, targets = [], {}, []
    for w in workloads:
        spec = dict(WORKLOADS[w])
        if args.quick:
            spec.update(QUICK[w])
        if args.rounds:
            spec["rounds"] = args.rounds
        if args.blocks:
            spec["blocks"] = args.blocks
        specs[w] = spec
        print(f"\n== {w}: {spec['model']}, {spec['clients']} clients x {spec['examples']} "
              f"examples, {spec['per_round']}/round, batch {spec['batch']}, "
              f"{spec['epochs']} epoch, lr {spec['lr']}; "
              f"warm-up + {spec['blocks']} timed blocks of {spec['rounds']} round(s)")
        t = time.perf_counter()
        variants = variants_for(w, args.quick, only)
        if not variants:
            print("  no variant matches --variants")
            continue
        rows = run_workload(w, spec, opts, variants, per_variant=args.isolate)
        add_speedups(rows)
        print(f"  ({w} took {time.perf_counter() - t:.0f} s)")
        all_rows += rows
        targets += target_lines(w, rows, args.quick)

    table = markdown_table(all_rows, auto)
    print("\n" + table)
    print("\nspeed-up: rounds/s over the fastest client loop of the same workload; "
          "(default) marks client_axis/conv_impl 'auto' with unroll 1")
    print("\n".join(targets))
    print(f"total {time.perf_counter() - t_all:.0f} s")

    if args.out is not None:
        host = socket.gethostname() or cpu_model().replace(" ", "_")
        path = Path(args.out) if args.out else Path(__file__).parent / f"results_{host}.json"
        write_json(path, dict(environment=env, quick=args.quick, auto=auto, workloads=specs,
                              targets=targets, results=all_rows, table=table))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
