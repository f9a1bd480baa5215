"""FedBuff: buffered asynchronous aggregation.

J. Nguyen, K. Malik, H. Zhan, A. Yousefpour, M. Rabbat, M. Malek, D. Huba, "Federated Learning
with Buffered Asynchronous Aggregation", AISTATS 2022, Algorithm 1. ``concurrency`` clients
train at once, each from the model version current when it started; the server adds every
delta it receives to a buffer, each weighted by its client's examples and by the staleness
weight ``1 / sqrt(1 + staleness)``, and applies an update every ``buffer_size`` deltas.
FedBuff keeps its own round function (:func:`fedbuff_round`), built from the simulator's
pieces; a "round" is one server update.

When a finished client's slot is refilled (``algorithm.restart``):

* ``at_arrival`` (default, the paper): a client that finishes frees its slot at once, and a new
  client (one not in flight) starts at that instant on the model current then: the server's
  current version between updates, the new version at the ``buffer_size``-th arrival (the update
  happens at that instant). A fast client may finish again within the same buffer.
* ``at_flush``: the ``buffer_size`` freed slots stay empty until the buffer's last arrival and
  restart together on the new model. Not the paper: slower (every buffer waits for its slowest
  member) and, with ``buffer_size = concurrency = clients_per_round``, exactly synchronous FedAvg.

Key schedule (``run_key`` the state's base key): at time 0 ``sample_key, clients_key =
split(fold_in(run_key, 0))`` draw the first ``concurrency`` clients (``choice`` without
replacement) and their training keys (``split(clients_key, concurrency)``). Under
``at_arrival``, the client replacing arrival ``a`` (0-based) of server update ``r`` (the version
before the update) is drawn with ``sample_key, client_key = split(fold_in(fold_in(run_key, r),
a))``: the argmax over idle clients of ``gumbel(sample_key, (num_clients,))`` (uniform among
clients not in flight), trained with ``client_key``. Under ``at_flush`` the new clients of
version ``v`` use ``split(fold_in(run_key, v))`` like a synchronous round (``choice`` when every
slot is free, else the top Gumbel scores among idle clients).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, positive, server_step
from fedbench.errors import ConfigError
from fedbench.local import map_over_clients

RESTARTS = ("at_arrival", "at_flush")


def fedbuff(cfg: Mapping[str, Any], clients_per_round: int | None) -> Algorithm:
    k = cfg.get("buffer_size") or clients_per_round
    m = cfg.get("concurrency") or clients_per_round
    for key, value in (("buffer_size", k), ("concurrency", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"algorithm.{key}", value, "an integer >= 1 (null: clients_per_round)")
    if k > m:
        raise ConfigError("algorithm.buffer_size", k, f"<= algorithm.concurrency={m}")
    restart = cfg.get("restart")
    if restart not in RESTARTS:
        raise ConfigError("algorithm.restart", restart, "one of: " + ", ".join(RESTARTS))
    server_lr = positive(cfg, "server_lr")
    return Algorithm("fedbuff", "async", server_step(server_lr),
                     settings={"server_lr": server_lr, "buffer_size": k, "concurrency": m,
                               "restart": restart},
                     buffer_size=k, concurrency=m, hyperparameters=("server_lr",),
                     dp_client="asynchronous buffers are not covered by the DP-FedAvg accountant")


def start_inflight(sim, state, data):
    """At time 0, ``concurrency`` clients start from the initial model (version 0)."""
    m = sim.algorithm.concurrency
    sample_key, clients_key = sim.round_keys(state)
    ids = jax.random.choice(sample_key, data.num_clients, (m,), replace=False)
    counts = data.train_counts[ids]
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

    The server receives ``buffer_size`` deltas, in finish-time order, each computed from the
    model version its client started with; it applies ``sum_i n_i s(tau_i) delta_i / sum_i n_i``
    with staleness weight ``s(tau) = 1 / sqrt(1 + tau)`` through its optimiser, and the clock
    moves to the last arrival. Freed slots restart as ``algorithm.restart`` says (module
    docstring). ``round`` counts server updates.
    """
    if sim.algorithm.settings.get("restart", "at_arrival") == "at_flush":
        return _flush_round(sim, state, data)
    return _arrival_round(sim, state, data)


def _arrival_schedule(sim, state, data):
    """The buffer's arrivals and restarts under ``at_arrival`` (timing only, no training).

    Which clients arrive, in which order, and who replaces them depends only on the clock, the
    sites' speeds and the keys, never on the deltas; so the schedule is worked out first (a
    ``lax.fori_loop`` over the ``buffer_size`` arrivals: the slot finishing first arrives, a
    client not in flight takes its slot at once, from the current model version) and the
    arrivals' local updates then run together over the client axis.

    Returns:
      ``(arrivals, slots)``: per arrival (leading ``[buffer_size]`` axis) its ``slot``,
      client ``ids``, training ``keys``, start ``version``, ``time`` and the client that
      replaced it (``new``); and the slots (``ids``, ``keys``, ``version``, ``finish``)
      after the last restart.
    """
    k, num_clients = sim.algorithm.buffer_size, data.num_clients
    flight = state.inflight
    round_key = jax.random.fold_in(state.key, state.round)
    slots = {name: flight[name] for name in ("ids", "keys", "version", "finish")}
    arrivals = {
        "slot": jnp.zeros((k,), jnp.int32),
        "ids": jnp.zeros((k,), jnp.int32),
        "keys": jnp.zeros((k,) + flight["keys"].shape[1:], flight["keys"].dtype),
        "version": jnp.zeros((k,), jnp.int32),
        "time": jnp.zeros((k,), flight["finish"].dtype),
        "new": jnp.zeros((k,), jnp.int32),
    }

    def arrive(a, carry):
        slots, arrivals = carry
        j = jnp.argmin(slots["finish"])  # ties: the lowest slot
        now = slots["finish"][j]
        sample_key, client_key = jax.random.split(jax.random.fold_in(round_key, a))
        busy = jnp.zeros((num_clients,), bool).at[slots["ids"]].set(True)
        busy = busy.at[slots["ids"][j]].set(False)
        scores = jnp.where(busy, -jnp.inf, jax.random.gumbel(sample_key, (num_clients,)))
        new = jnp.argmax(scores).astype(jnp.int32)
        finish = now + sim.durations(new, data.train_counts[new], sim.local_epochs)
        arrived = {"slot": j, "ids": slots["ids"][j], "keys": slots["keys"][j],
                   "version": slots["version"][j], "time": now, "new": new}
        arrivals = {name: arrivals[name].at[a].set(arrived[name]) for name in arrivals}
        slots = {
            "ids": slots["ids"].at[j].set(new),
            "keys": slots["keys"].at[j].set(client_key),
            "version": slots["version"].at[j].set(state.round),
            "finish": slots["finish"].at[j].set(finish.astype(slots["finish"].dtype)),
        }
        return slots, arrivals

    slots, arrivals = jax.lax.fori_loop(0, k, arrive, (slots, arrivals))
    return arrivals, slots


def _arrival_round(sim, state, data):
    """``at_arrival``: each freed slot restarts at its own finish time (the paper)."""
    flight = state.inflight
    arrivals, slots = _arrival_schedule(sim, state, data)
    # An arrival of version r started on the current model: at the last flush (its slot holds
    # state.params) or within this buffer (its slot is only written below): use state.params.
    fresh = arrivals["version"] == state.round

    def start_params(store, current):
        shape = (-1,) + (1,) * current.ndim
        return jnp.where(fresh.reshape(shape), current[None], store[arrivals["slot"]])

    start = jax.tree.map(start_params, flight["params"], state.params)
    ids = arrivals["ids"]
    staleness = state.round - arrivals["version"]
    params, opt_state = _server_update(sim, state, data, start, ids, arrivals["keys"], staleness)
    version = state.round + 1
    last = arrivals["slot"][-1]  # restarted at the update's instant: on the new model

    def slot_params(store, current, new):
        shape = (-1,) + (1,) * current.ndim
        store = jnp.where((slots["version"] == state.round).reshape(shape), current[None], store)
        return store.at[last].set(new)

    flight = {
        "ids": slots["ids"],
        "keys": slots["keys"],
        "params": jax.tree.map(slot_params, flight["params"], state.params, params),
        "version": slots["version"].at[last].set(version),
        "finish": slots["finish"],
        "staleness_sum": flight["staleness_sum"] + staleness.sum(),
        "staleness_max": jnp.maximum(flight["staleness_max"], staleness.max()),
    }
    return state.replace(
        params=params, opt_state=opt_state, round=version, clock=arrivals["time"][-1],
        inflight=flight, participation=state.participation.at[ids].add(1),
        downloads=count_downloads(state.downloads, arrivals["new"]),
    )


def _flush_round(sim, state, data):
    """``at_flush``: the ``buffer_size`` first finishers' slots restart together on the new
    model at the last one's finish time (not the paper; see the module docstring)."""
    flight = state.inflight
    k, m = sim.algorithm.buffer_size, sim.algorithm.concurrency
    done = jnp.argsort(flight["finish"])[:k]
    ids = flight["ids"][done]
    start = jax.tree.map(lambda p: p[done], flight["params"])
    staleness = state.round - flight["version"][done]
    params, opt_state = _server_update(sim, state, data, start, ids, flight["keys"][done],
                                       staleness)
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
    return state.replace(
        params=params, opt_state=opt_state, round=version, clock=clock, inflight=flight,
        participation=state.participation.at[ids].add(1),
        downloads=count_downloads(state.downloads, new_ids),
    )


def _server_update(sim, state, data, start, ids, keys, staleness):
    """The buffer's local updates (over the client axis) and the server step on their
    example- and staleness-weighted mean. Returns ``(params, opt_state)``."""
    counts = data.train_counts[ids]
    update = map_over_clients(
        lambda p, x, y, n, k: sim.local_update(p, x, y, n, k, hp=state.hparams), sim.client_axis,
        (0, 0, 0, 0, 0))
    deltas, _ = update(start, *data.cohort(ids), counts, keys)
    weights = counts.astype(jnp.float32) / jnp.maximum(jnp.sum(counts), 1)  # all empty: 0
    weights = weights / jnp.sqrt(1.0 + staleness.astype(jnp.float32))
    mean_delta = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), deltas)
    updates, opt_state = optax.with_extra_args_support(sim.algorithm.server_optimizer).update(
        jax.tree.map(jnp.negative, mean_delta), state.opt_state, state.params,
        hparams=state.hparams)
    return optax.apply_updates(state.params, updates), opt_state


def count_downloads(downloads, ids):
    """``downloads`` plus one for each of ``ids`` (repeats count): a client that starts
    training downloads the server model (``None`` stays ``None``)."""
    return None if downloads is None else downloads.at[ids].add(1)
