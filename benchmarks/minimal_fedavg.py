"""The smallest jit + scan FedAvg for workload W1: a yardstick for the simulator's per-step cost.

Plain logistic regression 784->10, 10 clients x 600 random examples, batch 10, 1 local epoch,
lr 0.1: each client's data is permuted once per epoch and scanned in batches; no padding, masks,
FedProx term or evaluation. Rounds run in one ``lax.fori_loop``.

Usage::

    python benchmarks/minimal_fedavg.py map 1      # client axis: map | vmap; scan unroll
    python benchmarks/minimal_fedavg.py map 1 2    # ... sharded over 2 CPU devices (shard_map)

Prints rounds/s over 50 rounds after a compiling warm-up call. Results: benchmarks/NOTES.md.
"""

from __future__ import annotations

import os
import sys
import time

MODE = sys.argv[1] if len(sys.argv) > 1 else "map"
UNROLL = int(sys.argv[2]) if len(sys.argv) > 2 else 1
DEVICES = int(sys.argv[3]) if len(sys.argv) > 3 else 1
if DEVICES > 1:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

C, N, D, K, B = 10, 600, 784, 10, 10
x = jnp.asarray(np.random.default_rng(0).random((C, N, D), dtype=np.float32))
y = jnp.asarray(np.random.default_rng(1).integers(0, K, (C, N)))


def loss(p, xb, yb):
    logits = xb @ p[0] + p[1]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(B), yb])


def client(p, xc, yc, key):
    order = jax.random.permutation(key, N)
    xs, ys = xc[order].reshape(N // B, B, D), yc[order].reshape(N // B, B)

    def step(p, batch):
        g = jax.grad(loss)(p, *batch)
        return (p[0] - 0.1 * g[0], p[1] - 0.1 * g[1]), None

    return jax.lax.scan(step, p, (xs, ys), unroll=UNROLL)[0]


def clients(p, xs, ys, keys):
    if MODE == "vmap":
        return jax.vmap(client, (None, 0, 0, 0))(p, xs, ys, keys)
    return jax.lax.map(lambda a: client(p, *a), (xs, ys, keys))


if DEVICES > 1:
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("clients",))
    clients = jax.shard_map(  # noqa: F811
        clients, mesh=mesh, in_specs=(P(), P("clients"), P("clients"), P("clients")),
        out_specs=P("clients"),
    )


@jax.jit
def rounds(p, key, n):
    def body(i, p):
        keys = jax.random.split(jax.random.fold_in(key, i), C)
        return jax.tree.map(lambda a: a.mean(0), clients(p, x, y, keys))

    return jax.lax.fori_loop(0, n, body, p)


if __name__ == "__main__":
    params = (jnp.zeros((D, K)), jnp.zeros(K))
    jax.block_until_ready(rounds(params, jax.random.PRNGKey(0), 1))
    start = time.perf_counter()
    jax.block_until_ready(rounds(params, jax.random.PRNGKey(0), 50))
    print(f"{MODE} unroll={UNROLL} devices={len(jax.devices())}: "
          f"{50 / (time.perf_counter() - start):.1f} rounds/s")
