"""Baselines run by the same simulator: pooled data (``centralized``) and no communication
(``local``). Each keeps its own round function, built from the simulator's pieces.

* ``centralized``: one learner on the pooled training data; each round it takes as many examples
  (a uniform sample without replacement) as ``clients_per_round`` average clients hold, and runs
  the same local schedule on them.
* ``local``: every client trains its own model on its own data, all clients every round; the
  state's ``params`` carry a leading ``[num_clients]`` axis (each client's personal model), and
  evaluation scores each client with its own model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm
from fedbench.local import map_over_clients

NO_DP = "a baseline has no federated release to privatise"


def centralized(cfg: Mapping[str, Any]) -> Algorithm:
    return Algorithm("centralized", "centralized", optax.sgd(1.0), dp_client=NO_DP)


def local(cfg: Mapping[str, Any]) -> Algorithm:
    return Algorithm("local", "local", optax.sgd(1.0), personal=True, dp_client=NO_DP)


def centralized_round(sim, state, pooled):
    sample_key, clients_key = sim.round_keys(state)
    pooled_x, pooled_y = pooled
    idx = jax.random.permutation(sample_key, pooled_y.shape[0])[: sim.centralized_size]
    delta, _ = sim.local_update(
        state.params, pooled_x[idx], pooled_y[idx], jnp.int32(sim.centralized_size), clients_key,
        hp=state.hparams,
    )
    params = jax.tree.map(jnp.add, state.params, delta)
    return state.replace(params=params, round=state.round + 1)


def local_round(sim, state, data):
    _, clients_key = sim.round_keys(state)
    keys = jax.random.split(clients_key, data.num_clients)
    update = map_over_clients(
        lambda p, x, y, n, k: sim.local_update(p, x, y, n, k, hp=state.hparams), sim.client_axis,
        (0, 0, 0, 0, 0))
    deltas, _ = update(state.params, data.train_x, data.train_y, data.train_counts, keys)
    params = jax.tree.map(jnp.add, state.params, deltas)
    return state.replace(params=params, round=state.round + 1)
