"""FedBuff: buffered asynchronous aggregation.

J. Nguyen, K. Malik, H. Zhan, A. Yousefpour, M. Rabbat, M. Malek, D. Huba, "Federated Learning
with Buffered Asynchronous Aggregation", AISTATS 2022, Algorithm 1. ``concurrency`` clients
train at once, each from the model version current when it started; the server applies an
update every ``buffer_size`` received deltas, each weighted by its examples and by the staleness
weight ``1 / sqrt(1 + staleness)``. FedBuff keeps its own round function (:func:`fedbuff_round`),
built from the simulator's pieces; a "round" is one server update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, positive
from fedbench.errors import ConfigError
from fedbench.local import map_over_clients


def fedbuff(cfg: Mapping[str, Any], clients_per_round: int | None) -> Algorithm:
    k = cfg.get("buffer_size") or clients_per_round
    m = cfg.get("concurrency") or clients_per_round
    for key, value in (("buffer_size", k), ("concurrency", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"algorithm.{key}", value, "an integer >= 1 (null: clients_per_round)")
    if k > m:
        raise ConfigError("algorithm.buffer_size", k, f"<= algorithm.concurrency={m}")
    server_lr = positive(cfg, "server_lr")
    return Algorithm("fedbuff", "async", optax.sgd(server_lr),
                     settings={"server_lr": server_lr, "buffer_size": k, "concurrency": m},
                     buffer_size=k, concurrency=m,
                     dp_client="asynchronous buffers are not covered by the DP-FedAvg accountant")


def start_inflight(sim, state):
    """At time 0, ``concurrency`` clients start from the initial model (version 0)."""
    m = sim.algorithm.concurrency
    sample_key, clients_key = sim.round_keys(state)
    ids = jax.random.choice(sample_key, sim.data.num_clients, (m,), replace=False)
    counts = sim.data.train_counts[ids]
    full = jnp.full((m,), sim.local_epochs, jnp.int32)
    return {
        "ids": ids.astype(jnp.int32),
        "keys": jax.random.split(clients_key, m),
        "params": jax.tree.map(lambda p: jnp.broadcast_to(p, (m,) + p.shape), state.params),
        "version": jnp.zeros((m,), jnp.int32),
        "finish": sim.durations(ids, counts, full),
        "staleness_sum": jnp.zeros((), jnp.float32),
        "staleness_max": jnp.zeros((), jnp.int32),
    }

def fedbuff_round(sim, state, data):
    """One FedBuff server update (Nguyen et al. 2022, Algorithm 1).

    The ``buffer_size`` in-flight clients that finish first (in simulated time) deliver
    deltas computed from the model version each started with; the server applies
    ``sum_i n_i s(tau_i) delta_i / sum_i n_i`` with staleness weight
    ``s(tau) = 1 / sqrt(1 + tau)`` through its optimiser, the clock moves to the last of
    those finish times, and as many new clients (not already in flight) start from the new
    model. ``round`` counts server updates.
    """
    flight = state.inflight
    k, m = sim.algorithm.buffer_size, sim.algorithm.concurrency
    done = jnp.argsort(flight["finish"])[:k]
    ids = flight["ids"][done]
    counts = data.train_counts[ids]
    start = jax.tree.map(lambda p: p[done], flight["params"])
    update = map_over_clients(sim.local_update, sim.client_axis, (0, 0, 0, 0, 0))
    deltas, _ = update(start, data.train_x[ids], data.train_y[ids], counts,
                       flight["keys"][done])
    staleness = state.round - flight["version"][done]
    weights = counts.astype(jnp.float32) / jnp.sum(counts)
    weights = weights / jnp.sqrt(1.0 + staleness.astype(jnp.float32))
    mean_delta = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), deltas)
    updates, opt_state = sim.algorithm.server_optimizer.update(
        jax.tree.map(jnp.negative, mean_delta), state.opt_state, state.params
    )
    params = optax.apply_updates(state.params, updates)
    clock = flight["finish"][done].max()
    version = state.round + 1
    # New clients for the freed slots, keyed like a synchronous round with this version.
    sample_key, clients_key = jax.random.split(jax.random.fold_in(state.key, version))
    if k == m:  # every slot is free: the same draw as a synchronous round
        new_ids = jax.random.choice(sample_key, data.num_clients, (k,), replace=False)
    else:  # uniformly among clients not still in flight (Gumbel top-k)
        busy = jnp.zeros((data.num_clients,), bool).at[flight["ids"]].set(True)
        busy = busy.at[ids].set(False)
        scores = jnp.where(busy, -jnp.inf, jax.random.gumbel(sample_key, (data.num_clients,)))
        new_ids = jax.lax.top_k(scores, k)[1]
    new_ids = new_ids.astype(jnp.int32)
    full = jnp.full((k,), sim.local_epochs, jnp.int32)
    flight = {
        "ids": flight["ids"].at[done].set(new_ids),
        "keys": flight["keys"].at[done].set(jax.random.split(clients_key, k)),
        "params": jax.tree.map(
            lambda store, p: store.at[done].set(jnp.broadcast_to(p, (k,) + p.shape)),
            flight["params"], params,
        ),
        "version": flight["version"].at[done].set(version),
        "finish": flight["finish"].at[done].set(
            clock + sim.durations(new_ids, data.train_counts[new_ids], full)
        ),
        "staleness_sum": flight["staleness_sum"] + staleness.sum(),
        "staleness_max": jnp.maximum(flight["staleness_max"], staleness.max()),
    }
    participation = state.participation.at[ids].add(1)
    return state.replace(
        params=params, opt_state=opt_state, round=version, clock=clock,
        inflight=flight, participation=participation,
    )

