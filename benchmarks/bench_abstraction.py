"""Where the simulator's time goes against a minimal FedAvg program (issue 30 item 3).

One process, one data set, alternating passes: a ladder of jit + ``lax.fori_loop`` FedAvg
programs at a workload's shapes, from the minimal one of ``benchmarks/minimal_fedavg.py`` to the
simulator's way of doing each piece, one piece added per rung, then fedbench's ``Simulator``
itself (``sim.run``, no evaluation inside the timed rounds). Each rung differs from the one
before in one respect, so the difference of their round times is what that piece costs:

  minimal       a fixed cohort (the first ``k`` clients), each client's data permuted once per
                epoch and scanned in contiguous batches (``minimal_fedavg.py``)
  +cohort       ``k`` of the ``n`` clients drawn each round without replacement and their data
                gathered (``[k, N, F]``), as the simulator's round does
  +batch gather each step gathers its batch rows by index from an argsort order (the
                simulator's ``epoch_order`` and ``x[idx]``) instead of a permuted copy
  +while        a ``lax.while_loop`` to the client's own step count instead of a fixed ``scan``
  +masks        the masked mean loss over the batch's valid rows, and the loss summed for the
                client's statistics (``masked_cross_entropy``, ``ClientStats``)
  simulator     ``fedbench.simulator.Simulator`` with the same model, data and settings

Usage::

    python benchmarks/bench_abstraction.py [--workload W1|W3] [--rounds 30] [--passes 3]

Prints and writes ``benchmarks/results_abstraction_<workload>.json``: every pass's seconds per
round for each rung, the median over passes, and each rung's ratio to ``minimal``.
Results and their reading: benchmarks/NOTES.md ("The abstraction tax").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = {  # the suite's W1 and W3 (benchmarks/suite.py)
    "W1": dict(clients=100, examples=600, per_round=10, batch=10, lr=0.1),
    "W3": dict(clients=3400, examples=100, per_round=100, batch=20, lr=0.1),
}
RUNGS = ("minimal", "+cohort", "+batch gather", "+while", "+masks")
D, K = 784, 10


def ladder_program(rung: str, x, y, spec: dict):
    """``rounds(params, key, n)``: FedAvg at ``rung`` of the ladder (module docstring)."""
    level = RUNGS.index(rung)
    n_clients, N = x.shape[0], x.shape[1]
    k, B, lr = spec["per_round"], spec["batch"], spec["lr"]
    steps = N // B

    def logits(p, xb):
        return xb @ p[0] + p[1]

    def plain_loss(p, xb, yb):
        return -jnp.mean(jax.nn.log_softmax(logits(p, xb))[jnp.arange(B), yb])

    def masked_loss(p, xb, yb, valid):
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits(p, xb)), yb[:, None], 1)[:, 0]
        w = valid.astype(jnp.float32)
        return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)

    def client(p, xc, yc, count, key):
        if level < 2:  # a permuted copy, scanned in contiguous batches
            order = jax.random.permutation(key, N)
            xs, ys = xc[order].reshape(steps, B, D), yc[order].reshape(steps, B)

            def step(p, batch):
                g = jax.grad(plain_loss)(p, *batch)
                return jax.tree.map(lambda a, b: a - lr * b, p, g), None

            return jax.lax.scan(step, p, (xs, ys))[0]
        u = jnp.where(jnp.arange(N) < count, jax.random.uniform(key, (N,)), jnp.inf)
        order = jnp.argsort(u).astype(jnp.int32)  # the simulator's epoch_order

        def grads(p, s):
            idx = jax.lax.dynamic_slice(order, (s * B,), (B,))
            if level < 4:
                return jnp.zeros(()), jax.grad(plain_loss)(p, xc[idx], yc[idx])
            valid = s * B + jnp.arange(B) < count
            return jax.value_and_grad(masked_loss)(p, xc[idx], yc[idx], valid)

        if level < 3:
            def step(p, s):
                return jax.tree.map(lambda a, b: a - lr * b, p, grads(p, s)[1]), None

            return jax.lax.scan(step, p, jnp.arange(steps))[0]
        total = (count + B - 1) // B

        def body(carry):
            p, s, loss_sum = carry
            loss, g = grads(p, s)
            return jax.tree.map(lambda a, b: a - lr * b, p, g), s + 1, loss_sum + loss

        return jax.lax.while_loop(lambda c: c[1] < total, body,
                                  (p, jnp.zeros((), jnp.int32), jnp.zeros(())))[0]

    counts = jnp.full((n_clients,), N, jnp.int32)

    @jax.jit
    def rounds(p, key, n):
        def body(i, p):
            key_i = jax.random.fold_in(key, i)
            if level == 0:
                ids = jnp.arange(k)
            else:
                ids = jax.random.choice(jax.random.fold_in(key_i, 1), n_clients, (k,),
                                        replace=False)
            keys = jax.random.split(key_i, k)
            xs, ys, cs = x[ids], y[ids], counts[ids]
            new = jax.lax.map(lambda a: client(p, *a), (xs, ys, cs, keys))
            return jax.tree.map(lambda a: a.mean(0), new)

        return jax.lax.fori_loop(0, n, body, p)

    return rounds


def simulator_program(x, y, spec: dict):
    """``rounds(state, n)`` of fedbench's Simulator (FedAvg, LogReg, ``client_axis=map``)."""
    sys.path.insert(0, str(HERE))
    from bench_simulator import settings_for

    from fedbench.algorithm import build_algorithm
    from fedbench.dataset.federated import from_client_arrays
    from fedbench.model import LogReg
    from fedbench.simulator import Simulator

    xs, ys = np.asarray(x), np.asarray(y)
    data = from_client_arrays(list(xs), list(ys), list(xs[:, :2]), list(ys[:, :2]), K)
    full = dict(spec, epochs=1)
    sim = Simulator(LogReg(num_classes=K), build_algorithm({"name": "fedavg"}), data,
                    settings_for(full, "map", 1), seed=0)
    return sim


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", default="W1", choices=sorted(SHAPES))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    spec = SHAPES[args.workload]
    rng = np.random.default_rng(0)
    x = rng.random((spec["clients"], spec["examples"], D), dtype=np.float32)
    w = rng.standard_normal((D, K), dtype=np.float32)
    y = np.argmax(x @ w - 0.5 * w.sum(0), axis=-1).astype(np.int32)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    params = (jnp.zeros((D, K)), jnp.zeros(K))
    runs = {}
    for rung in RUNGS:
        f = ladder_program(rung, xj, yj, spec)
        jax.block_until_ready(f(params, jax.random.PRNGKey(0), args.rounds))  # compile
        runs[rung] = lambda f=f: jax.block_until_ready(f(params, jax.random.PRNGKey(1),
                                                          args.rounds))
    sim = simulator_program(x, y, spec)
    state = sim.init()
    jax.block_until_ready(sim.run(state, args.rounds))  # compile
    runs["simulator"] = lambda: jax.block_until_ready(sim.run(state, args.rounds))
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.passes):  # alternating: each pass runs every rung once
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - start) / args.rounds)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    out = {"workload": args.workload, "shapes": spec, "rounds_per_pass": args.rounds,
           "passes": args.passes, "device": jax.devices()[0].device_kind,
           "seconds_per_round": seconds, "median_seconds_per_round": median,
           "ratio_to_minimal": {n: median[n] / median["minimal"] for n in median}}
    for name in runs:
        print(f"{name:14} {1e3 * median[name]:8.2f} ms/round  "
              f"{1 / median[name]:7.1f} rounds/s  x{median[name] / median['minimal']:.2f}")
    path = args.out or HERE / f"results_abstraction_{args.workload}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
