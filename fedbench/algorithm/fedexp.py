"""FedExP: FedAvg with an adaptive server step size that extrapolates.

D. Jhunjhunwala, S. Wang, G. Joshi, "FedExP: Speeding Up Federated Averaging via
Extrapolation", ICLR 2023, Algorithm 1. Clients run FedAvg's local SGD; with ``Delta_i`` client
``i``'s model delta and ``Delta = sum_i p_i Delta_i`` their average, the server steps
``w <- w + eta_g Delta`` with

    eta_g = max(1, sum_i p_i ||Delta_i||^2 / (2 (||Delta||^2 + epsilon)))

(the paper's Eq. for ``eta_g^(t)`` with ``p_i = 1/M`` over the ``M`` participating clients;
here ``p_i`` are the round's aggregation weights, the example-weighted ones of FedAvg, which are
``1/M`` for clients of equal size). ``eta_g = 1`` is FedAvg; the more the clients' deltas
disagree, the further the server extrapolates along their average. ``epsilon`` keeps the step
bounded when the average delta is small (the paper tunes it per task).

The step size is a function of each client's own delta, which client-level DP would have to
release too, so ``privacy=dp_client`` and ``dp_ftrl`` refuse it. Not implemented: the paper's
evaluation of the average of the last two iterates (its Sec. 5 remark on oscillation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, positive, weighted_mean


def _aggregate(uploads, weights, stats, valid, num_clients):
    """The weighted mean delta and the weighted mean of the clients' squared delta norms."""
    del stats, valid, num_clients
    deltas = uploads["delta"]
    per_client = jax.vmap(lambda d: optax.tree_utils.tree_norm(d, squared=True))(deltas)
    return {"delta": weighted_mean(deltas, weights), "sq_norm": weighted_mean(per_client, weights)}


def fedexp(cfg: Mapping[str, Any]) -> Algorithm:
    epsilon = positive(cfg, "epsilon")

    def server_update(params, opt_state, server_state, aggregates, optimizer, hp=None):
        del optimizer, hp
        delta = aggregates["delta"]
        spread = optax.tree_utils.tree_norm(delta, squared=True)
        eta = jnp.maximum(1.0, aggregates["sq_norm"] / (2.0 * (spread + epsilon)))
        return jax.tree.map(lambda w, d: w + eta * d, params, delta), opt_state, server_state

    return Algorithm(
        "fedexp", "federated", optax.identity(), settings={"epsilon": epsilon},
        aggregate=_aggregate, server_update=server_update,
        dp_client="FedExP's server step size is a function of each client's own delta norm, a "
                  "release the clipped-and-noised sum does not cover",
    )
