"""The scale target of the GPU check (#14 item 6): W1's model and client size at 10,000 clients
per round.

100,000 clients of 60 examples (logistic regression 784 -> 10, inputs uniform, labels from a
fixed random linear map), FedAvg with E = 1, B = 10, ``client_axis=vmap``; reports compile
seconds, rounds/s and client updates/s as JSON. Target on one H100/H200-class GPU: 100 rounds/s
or more (a million client updates per second). ``--quick`` runs a tiny version (CPU smoke test).

    python benchmarks/gpu_scale.py [--clients 100000] [--per-round 10000] [--rounds 50]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--per-round", type=int, default=10_000)
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--devices", default="1", help="an integer or 'all'")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.per_round, args.rounds = 200, 20, 3

    from fedbench.algorithm import build_algorithm
    from fedbench.dataset.federated import FederatedData
    from fedbench.model import LogReg
    from fedbench.simulator import Settings, Simulator

    rng = np.random.default_rng(0)
    c, n, dim = args.clients, args.examples, 784
    w = rng.standard_normal((dim, 10), dtype=np.float32)
    x = rng.random((c, n, dim), dtype=np.float32)
    y = np.argmax((x - 0.5) @ w, axis=-1).astype(np.int32)
    tx = rng.random((1000, dim), dtype=np.float32)
    ty = np.argmax((tx - 0.5) @ w, axis=-1).astype(np.int32)
    data = FederatedData(
        train_x=jnp.asarray(x), train_y=jnp.asarray(y),
        train_counts=jnp.full((c,), n, jnp.int32),
        test_x=jnp.zeros((c, 1, dim), jnp.float32), test_y=jnp.zeros((c, 1), jnp.int32),
        test_counts=jnp.zeros((c,), jnp.int32),
        pooled_test_x=jnp.asarray(tx), pooled_test_y=jnp.asarray(ty), num_classes=10,
    )
    devices = jax.device_count() if args.devices == "all" else int(args.devices)
    settings = Settings(clients_per_round=args.per_round, local_epochs=1, batch_size=10, lr=0.1,
                        client_axis="vmap", devices=devices)
    sim = Simulator(LogReg(num_classes=10), build_algorithm({"name": "fedavg"}, args.per_round),
                    data, settings, seed=0)
    state = sim.init()
    start = time.perf_counter()
    state = jax.block_until_ready(sim.run(state, 1))  # compile + one round
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state = jax.block_until_ready(sim.run(state, args.rounds))
    seconds = time.perf_counter() - start
    print(json.dumps({
        "backend": jax.default_backend(), "device": str(jax.devices()[0]), "devices": devices,
        "clients": c, "per_round": args.per_round, "examples": n, "rounds": args.rounds,
        "compile_plus_first_round_s": compile_s, "rounds_per_s": args.rounds / seconds,
        "client_updates_per_s": args.rounds * args.per_round / seconds,
        "test_accuracy": sim.evaluate(state)["test_accuracy"],
        "target": ">= 100 rounds/s on one H100/H200-class GPU",
    }, indent=2))


if __name__ == "__main__":
    main()
