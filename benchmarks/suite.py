#!/usr/bin/env python
"""The W1-W5 benchmark suite (#14 item 5): one command, a Markdown table and JSON.

Usage::

    python benchmarks/suite.py                          # W1-W5, about 4 min on 2 CPU cores
    python benchmarks/suite.py --workloads W1,W5 --axis vmap --out benchmarks/results_suite.json
    python benchmarks/suite.py --quick                  # tiny sizes: checks the script runs

Workloads (FedAvg, 1 local epoch; W1-W4 on the synthetic 784-feature data of
``bench_simulator.py``, W5 built from the CLI's own config):

  W1  LogReg 784->10, 100 clients x 600 examples, 10 clients/round, batch 10
  W2  2NN (784-200-200-10, McMahan et al.), 100 clients x 600, all 100 per round, batch 50
  W3  LogReg 784->10, 3,400 clients x 100 examples, 100 clients/round, batch 20
  W4  CNN (McMahan et al.) on 28x28x1, 100 clients x 600 images, 10 clients/round, batch 50
      (``conv_impl=auto`` and ``cpu_fusions=auto``, the CLI's defaults: on CPU the hybrid
      convolution and YNNPACK dots)
  W5  LogReg 60->10 on Synthetic-IID (Li et al. 2020), 100,000 clients of
      int(lognormal(3, 1)) + 5 examples (90% train), 1,000 clients/round, batch 10, lr 0.01,
      ``client_storage=flat``, the vectorised generator

Each workload runs in its own process (so its peak memory is its own): ``setup s`` (data and
simulator), ``compile s`` (the first ``sim.run(state, 0)``: the whole program, no round), one
untimed block, then timed blocks; ``rounds/s`` = rounds / median block time; ``updates/s`` =
clients per round x rounds/s; ``examples/s`` = training examples the cohorts' clients hold x
epochs x rounds/s (the work the algorithm asks for: padding and masked steps not counted);
``first block s``: the parent's clock from starting the workload's process to the end of the
first (untimed) block of rounds, i.e. interpreter start, imports, setup, compilation and one
block: what a user waits for before a run shows progress; ``process s``: to the process's exit,
every block included. ``GFLOP/s`` = examples/s x 3 x the model's forward FLOPs per example (XLA's cost analysis of a
one-example forward pass; backward ~ 2x forward), beside the machine's float32 matmul peak
measured by this script (2048^2 x 2048^2, jitted, best of 5); ``peak GiB``: the process's
maximum resident set. With ``--torch`` (the ``bench`` extra) each workload also runs through
``torch_loop.py``'s plain PyTorch per-client loop in its own process, right after the
simulator's, and the table adds its rounds/s and the simulator's ratio to it.
``--cpu-fusions`` sets the simulator's ``cpu_fusions`` (``fedbench/xla_options.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "W1": dict(model="logreg", clients=100, examples=600, test=10, per_round=10, batch=10,
               epochs=1, lr=0.1, rounds=100, blocks=3),
    "W2": dict(model="mlp", clients=100, examples=600, test=10, per_round=100, batch=50,
               epochs=1, lr=0.1, rounds=5, blocks=3),
    "W3": dict(model="logreg", clients=3400, examples=100, test=2, per_round=100, batch=20,
               epochs=1, lr=0.1, rounds=20, blocks=3),
    "W4": dict(model="cnn", clients=100, examples=600, test=10, per_round=10, batch=50,
               epochs=1, lr=0.1, rounds=1, blocks=2),
    "W5": dict(model="logreg", clients=100_000, per_round=1000, batch=10, epochs=1, lr=0.01,
               rounds=5, blocks=3),
}
QUICK = {"W1": dict(clients=12, examples=60, per_round=4, rounds=5, blocks=2),
         "W2": dict(clients=8, examples=60, per_round=8, rounds=2, blocks=2),
         "W3": dict(clients=40, examples=40, per_round=10, rounds=5, blocks=2),
         "W4": dict(clients=4, examples=20, per_round=2, batch=10, rounds=1, blocks=2),
         "W5": dict(clients=2000, per_round=100, rounds=2, blocks=2)}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 ``[n, n] @ [n, n]`` through XLA, best of ``repeats``: 2 n^3 FLOPs per call."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def forward_flops(model, params, example) -> float:
    """XLA's FLOP count of the model's forward pass on one example."""
    import jax

    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, example).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def build(name: str, spec: dict, axis: str):
    """``(simulator, mean training examples per client)`` of a workload."""
    import numpy as np

    if name == "W5":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from conftest import compose

        from fedbench.run import build_simulator

        cfg = compose(["dataset=synthetic", "dataset.iid=true",
                       f"dataset.num_clients={spec['clients']}", "dataset.size_mean=3",
                       "dataset.size_sigma=1", "dataset.size_offset=5",
                       "dataset.generator=vectorised", f"client_storage={spec['storage']}",
                       f"clients_per_round={spec['per_round']}", f"batch_size={spec['batch']}",
                       f"local_epochs={spec['epochs']}", f"lr={spec['lr']}",
                       f"client_axis={axis}", f"cpu_fusions={spec['cpu_fusions']}"])
        sim = build_simulator(cfg).sim
        return sim, float(np.mean(np.asarray(sim.data.train_counts)))
    sys.path.insert(0, str(HERE))
    from bench_simulator import NUM_CLASSES, SEED, make_data, settings_for

    from fedbench.algorithm import build_algorithm
    from fedbench.model import CNN, MLP, LogReg, resolve_conv_impl
    from fedbench.simulator import Simulator

    data, _, _ = make_data(spec)
    model = {"logreg": lambda: LogReg(num_classes=NUM_CLASSES),
             "mlp": lambda: MLP(NUM_CLASSES, (200, 200)),
             "cnn": lambda: CNN(num_classes=NUM_CLASSES,  # the CLI's default: conv_impl=auto
                                conv_impl=resolve_conv_impl(os.environ.get("FEDBENCH_CONV", "auto")))}[spec["model"]]()
    settings = dataclasses.replace(settings_for(spec, axis, 1), cpu_fusions=spec["cpu_fusions"])
    sim = Simulator(model, build_algorithm({"name": "fedavg"}), data, settings, seed=SEED)
    return sim, float(spec["examples"])


def measure(name: str, spec: dict, axis: str, started: float | None = None) -> dict:
    """One workload in this process (``--one``); ``started``: the parent's ``time.time()``
    just before it started this process (for ``first_block_s``)."""
    import jax

    t = time.perf_counter()
    sim, mean_examples = build(name, spec, axis)
    state = jax.block_until_ready(sim.init())
    row = {"workload": name, "axis": sim.client_axis, "setup_s": time.perf_counter() - t,
           "clients": spec["clients"], "per_round": spec["per_round"],
           "storage": spec.get("storage", "padded"), "cpu_fusions": spec["cpu_fusions"],
           "compiler_options": sim.compiler_options,
           "conv_impl": getattr(sim.model, "conv_impl", None)}
    t = time.perf_counter()
    state = jax.block_until_ready(sim.run(state, 0))
    row["compile_s"] = time.perf_counter() - t
    state = jax.block_until_ready(sim.run(state, spec["rounds"]))  # warm-up block
    if started is not None:  # what a user waits for: process start to a first block of rounds
        row["first_block_s"] = time.time() - started
    times = []
    for _ in range(spec["blocks"]):
        t = time.perf_counter()
        state = jax.block_until_ready(sim.run(state, spec["rounds"]))
        times.append(time.perf_counter() - t)
    rate = spec["rounds"] / sorted(times)[len(times) // 2]
    reference = sim.model.clone(conv_impl="lax") if hasattr(sim.model, "conv_impl") else sim.model
    flops = 3 * forward_flops(reference, state.params, sim.data.example_input())  # one count
    examples = spec["per_round"] * mean_examples * spec["epochs"] * rate
    row.update(rounds_per_s=rate, updates_per_s=spec["per_round"] * rate,
               examples_per_s=examples, gflops=examples * flops / 1e9,
               train_flops_per_example=flops, trace_count=sim.trace_count,
               peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return row


def table(rows: list[dict], peak: float) -> str:
    head = ("| workload | axis | setup s | compile s | first block s | process s | rounds/s | "
            "updates/s | examples/s | GFLOP/s | % of matmul peak | peak GiB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    torch_cols = any("torch_rounds_per_s" in r for r in rows)
    if torch_cols:
        head = head.replace(" peak GiB |\n", " peak GiB | PyTorch rounds/s | vs PyTorch |\n")
        head += "---|---|"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r.get('axis', '')} | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['workload']} | {r['axis']} | {r['setup_s']:.1f} | {r['compile_s']:.1f} | "
            f"{_secs(r, 'first_block_s')} | {_secs(r, 'process_s')} | {r['rounds_per_s']:.2f} | {r['updates_per_s']:,.0f} | {r['examples_per_s']:,.0f} | "
            f"{r['gflops']:.1f} | {100 * r['gflops'] / peak:.0f}% | {r['peak_gib']:.2f} |"
            + (f" {r['torch_rounds_per_s']:.3f} | {r['rounds_per_s'] / r['torch_rounds_per_s']:.2f}x |"
               if "torch_rounds_per_s" in r else " - | - |" if torch_cols else ""))
    return "\n".join(lines)


def _secs(row: dict, key: str) -> str:
    return f"{row[key]:.1f}" if key in row else "-"


def torch_row(name: str, quick: bool) -> dict:
    """``torch_loop.py``'s rounds/s for ``name`` (own process), or why there is none."""
    if importlib.util.find_spec("torch") is None:
        return {"torch_error": "torch is not installed (pip install -e '.[bench]')"}
    cmd = [sys.executable, str(HERE / "torch_loop.py"), "--workloads", name]
    done = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
    found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if not found or done.returncode:
        return {"torch_error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    row = json.loads(found[0])
    return {"torch_rounds_per_s": row["rounds_per_s"], "torch": row["torch"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    p.add_argument("--axis", default="auto", help="client_axis: auto | map | vmap")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--out", help="JSON file for the rows, the machine and the matmul peak")
    p.add_argument("--clients", type=int, help="W5's number of clients (default 100,000)")
    p.add_argument("--per-round", type=int, help="W5's clients per round (default 1,000)")
    p.add_argument("--storage", default="flat", help="W5's client_storage: flat | padded")
    p.add_argument("--cpu-fusions", default="auto", help="cpu_fusions: auto | xla | dots")
    p.add_argument("--torch", action="store_true",
                   help="also each workload through torch_loop.py (the bench extra)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one workload, JSON on stdout
    p.add_argument("--started", type=float, help=argparse.SUPPRESS)  # internal: parent's clock
    args = p.parse_args(argv)
    specs = {k: {**v, **(QUICK[k] if args.quick else {})} for k, v in WORKLOADS.items()}
    specs["W5"]["storage"] = args.storage
    for spec in specs.values():
        spec["cpu_fusions"] = args.cpu_fusions
    for key, value in (("clients", args.clients), ("per_round", args.per_round)):
        if value is not None:
            specs["W5"][key] = value
    if args.one:
        print("ROW " + json.dumps(measure(args.one, specs[args.one], args.axis, args.started)),
              flush=True)
        return
    import jax

    peak = matmul_peak_gflops()
    rows = []
    for name in args.workloads.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--axis", args.axis]
        cmd += ["--quick"] if args.quick else []
        cmd += [f"--clients={args.clients}"] if args.clients else []
        cmd += [f"--per-round={args.per_round}"] if args.per_round else []
        cmd += [f"--storage={args.storage}", f"--cpu-fusions={args.cpu_fusions}"]
        started = time.time()
        done = subprocess.run(cmd + [f"--started={started!r}"], capture_output=True, text=True,
                              env=dict(os.environ))
        process_s = time.time() - started  # process start to its row written, every block
        found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
        rows.append({**json.loads(found[0]), "process_s": process_s}
                    if found and done.returncode == 0 else
                    {"workload": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
        if args.torch and "error" not in rows[-1]:
            rows[-1].update(torch_row(name, args.quick))
        print(table(rows[-1:], peak).splitlines()[-1], flush=True)
    machine = {"platform": jax.default_backend(), "devices": str(jax.devices()),
               "cpu_count": os.cpu_count(), "jax": jax.__version__,
               "date": time.strftime("%Y-%m-%d"), "matmul_peak_gflops": peak}
    print(f"\nfloat32 matmul peak: {peak:.1f} GFLOP/s ({machine['platform']}, "
          f"{machine['cpu_count']} CPUs)\n")
    print(table(rows, peak))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "quick": args.quick,
                                              "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
