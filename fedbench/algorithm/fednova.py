"""FedNova: normalised averaging of client deltas by their local step counts.

J. Wang, Q. Liu, H. Liang, G. Joshi, H. V. Poor, "Tackling the Objective Inconsistency Problem
in Heterogeneous Federated Optimization", NeurIPS 2020, Eq. 6-7 (local SGD). With
``p_i = n_i / sum n`` and ``tau_i`` local steps, the server applies
``tau_eff * sum_i p_i delta_i / tau_i``, ``tau_eff = sum_i p_i tau_i`` (equal ``tau_i``: FedAvg).

Under ``privacy=dp_client`` the normalisation would rescale each client's clipped delta by a
data-dependent ``tau_eff / tau_i`` after clipping, which the fixed-sensitivity analysis does
not cover, so the combination is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fedbench.algorithm.base import Algorithm, positive, server_step


def fednova_mean(deltas, weights: jax.Array, steps: jax.Array):
    """FedNova's normalised average (Wang et al. 2020, Eq. 6-7) over the leading client axis."""
    total = jnp.sum(weights)
    p = weights.astype(jnp.float32) / jnp.where(total > 0, total, 1)
    tau = steps.astype(jnp.float32)
    tau_eff = jnp.sum(p * tau)
    scale = p / jnp.maximum(tau, 1.0)
    return jax.tree.map(lambda d: tau_eff * jnp.tensordot(scale, d, axes=1), deltas)


def _aggregate(uploads, weights, stats, valid, num_clients):
    del valid, num_clients
    return {"delta": fednova_mean(uploads["delta"], weights, stats.num_steps)}


def fednova(cfg: Mapping[str, Any]) -> Algorithm:
    server_lr = positive(cfg, "server_lr")
    return Algorithm(
        "fednova", "federated", server_step(server_lr), settings={"server_lr": server_lr},
        hyperparameters=("server_lr",),  # a sweep replica's own (server_step reads it)
        aggregate=_aggregate,
        dp_client="FedNova rescales each clipped delta by tau_eff / tau_i, a data-dependent "
                  "factor the accounted sensitivity does not cover",
    )
