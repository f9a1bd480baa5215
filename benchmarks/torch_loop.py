#!/usr/bin/env python
"""W1-W5 through a plain PyTorch per-client loop: the yardstick of #14 items 2 and 5.

Usage (needs the ``bench`` extra: ``pip install -e ".[bench]"``, a CPU build of torch)::

    python benchmarks/torch_loop.py                       # W1-W5, about 3 min on 2 CPU cores
    python benchmarks/torch_loop.py --workloads W4 --out benchmarks/results_torch.json

What a researcher would write: one ``nn.Module`` (the same architectures as fedbench's LogReg,
2NN and McMahan et al.'s CNN), ``torch.optim.SGD``, tensors already in memory. Per round: sample
``per_round`` clients without replacement; for each, load the global weights, run ``epochs``
epochs of a fresh random order cut into batches by slicing (the last batch may be short), and
keep the delta; then the example-weighted mean of the deltas is added to the global weights.
The data are those of ``benchmarks/suite.py`` (same shapes and generator; W5 the flat
Synthetic-IID rows of the vectorised generator), so the work per round matches. Timing: one
untimed round, then ``blocks`` timed blocks of ``rounds`` rounds; rounds/s = rounds / median.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from suite import QUICK, WORKLOADS  # noqa: E402  (the same workload definitions)


def make_model(kind: str, features: int) -> nn.Module:
    if kind == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 10))
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 200), nn.ReLU(),
                             nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))
    return nn.Sequential(  # McMahan et al.'s CNN, SAME 5x5 convolutions, 2x2 max-pools
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 10))


def make_clients(name: str, spec: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each client's training tensors (the suite's data)."""
    if name == "W5":
        from fedbench.dataset.synthetic import generate_synthetic_vectorised

        x, y, client, is_test = generate_synthetic_vectorised(
            0.0, 0.0, iid=True, num_clients=spec["clients"], sizes=(3.0, 1.0, 5))
        keep = ~is_test
        x, y, client = x[keep], y[keep], client[keep]
        bounds = np.searchsorted(client, np.arange(spec["clients"] + 1))
        return [(torch.from_numpy(x[a:b]), torch.from_numpy(y[a:b]).long())
                for a, b in zip(bounds[:-1], bounds[1:])]
    from bench_simulator import make_data

    _, host_x, host_y = make_data(spec)
    if spec["model"] == "cnn":
        host_x = np.moveaxis(host_x, -1, 2)  # [C, N, 28, 28, 1] -> [C, N, 1, 28, 28]
    return [(torch.from_numpy(np.ascontiguousarray(host_x[c])),
             torch.from_numpy(host_y[c]).long()) for c in range(host_x.shape[0])]


def run_round(model, clients, spec, rng, loss_fn) -> None:
    global_state = [p.detach().clone() for p in model.parameters()]
    total = [torch.zeros_like(p) for p in global_state]
    weight = 0
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"])
    for c in rng.choice(len(clients), spec["per_round"], replace=False):
        x, y = clients[c]
        with torch.no_grad():
            for p, g in zip(model.parameters(), global_state):
                p.copy_(g)
        n, b = x.shape[0], spec["batch"]
        for _ in range(spec["epochs"]):
            order = torch.from_numpy(rng.permutation(n))
            xs, ys = x[order], y[order]
            for start in range(0, n, b):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(xs[start:start + b]), ys[start:start + b]).backward()
                opt.step()
        with torch.no_grad():
            for t, p, g in zip(total, model.parameters(), global_state):
                t.add_(p - g, alpha=n)
        weight += n
    with torch.no_grad():
        for p, g, t in zip(model.parameters(), global_state, total):
            p.copy_(g + t / weight)


def measure(name: str, spec: dict) -> dict:
    t = time.perf_counter()
    clients = make_clients(name, spec)
    features = math.prod(clients[0][0].shape[1:])
    model = make_model(spec["model"], features)
    setup = time.perf_counter() - t
    rng, loss_fn = np.random.default_rng(0), nn.CrossEntropyLoss()
    run_round(model, clients, spec, rng, loss_fn)  # warm-up
    times = []
    for _ in range(spec["blocks"]):
        t = time.perf_counter()
        for _ in range(spec["rounds"]):
            run_round(model, clients, spec, rng, loss_fn)
        times.append(time.perf_counter() - t)
    rate = spec["rounds"] / sorted(times)[len(times) // 2]
    return {"workload": name, "setup_s": setup, "rounds_per_s": rate,
            "updates_per_s": rate * spec["per_round"], "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    rows = []
    for name in args.workloads.split(","):
        spec = {**WORKLOADS[name], **(QUICK[name] if args.quick else {})}
        if name != "W4":  # cheap rounds: a few blocks of the suite's length
            spec["rounds"] = max(1, spec["rounds"] // 2)
        rows.append(measure(name, spec))
        print(f"{name}: {rows[-1]['rounds_per_s']:.3f} rounds/s "
              f"({1 / rows[-1]['rounds_per_s']:.3f} s/round)", flush=True)
        print("ROW " + json.dumps(rows[-1]), flush=True)  # read by suite.py --torch
    if args.out:
        Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "quick": args.quick,
                                              "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
