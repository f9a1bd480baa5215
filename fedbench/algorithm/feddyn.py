"""FedDyn: federated learning with dynamic regularisation.

D. A. E. Acar, Y. Zhao, R. Matas Navarro, M. Mattina, P. N. Whatmough, V. Saligrama,
"Federated Learning Based on Dynamic Regularization", ICLR 2021, Algorithm 1. With ``alpha`` the
regularisation strength:

* client ``k`` keeps ``g_k`` (the gradient of its previous local objective; zeros at first) in
  the per-client store and minimises
  ``L_k(w) - <g_k, w> + alpha/2 ||w - w_server||^2``: gradient ``grad - g_k + alpha (w - w_s)``;
* after training, ``g_k <- g_k - alpha (w_k - w_server)``;
* the server keeps ``h`` (zeros at first):
  ``h <- h - alpha / m * sum_{k in P} (w_k - w_server)`` (``m``: all clients) and
  ``w_server <- mean_{k in P} w_k - h / alpha`` (a uniform mean over the participants ``P``).

The server state is a sum of raw deltas over the cohort, which client-level DP-FedAvg does not
privatise here, so ``privacy=dp_client`` is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench import hparams
from fedbench.algorithm.base import Algorithm, positive


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _context(h, g_k):
    del h
    return g_k


def _grad_adjust_for(alpha: float):
    def grad_adjust(grads, params, anchor, g_k, hp=None):
        a = hparams.get(hp, "alpha", alpha)  # a replica's own alpha in an in-program sweep
        return jax.tree.map(lambda g, gk, p, p0: g - gk + a * (p - p0),
                            grads, g_k, params, anchor)

    return grad_adjust


def _finish_for(alpha: float):
    def finish(deltas, stats, entries, h, valid, hp):
        del stats, h
        a = hparams.get(hp, "alpha", alpha)
        shape = lambda d: (-1,) + (1,) * (d.ndim - 1)  # noqa: E731
        new = jax.tree.map(lambda g, d: jnp.where(valid.reshape(shape(d)), g - a * d, g),
                           entries, deltas)
        return {"delta": deltas}, new

    return finish


def _aggregate(uploads, weights, stats, valid, num_clients):
    del weights, stats
    w = valid.astype(jnp.float32)
    total = jax.tree.map(lambda d: jnp.tensordot(w, d, axes=1), uploads["delta"])
    count = jnp.maximum(w.sum(), 1.0)
    return {"delta": jax.tree.map(lambda t: t / count, total),
            "sum_over_clients": jax.tree.map(lambda t: t / num_clients, total)}


def _server_update_for(alpha: float):
    def server_update(params, opt_state, h, aggregates, optimizer, hp=None):
        del optimizer
        a = hparams.get(hp, "alpha", alpha)
        h = jax.tree.map(lambda h, s: h - a * s, h, aggregates["sum_over_clients"])
        params = jax.tree.map(lambda w, d, hh: w + d - hh / a, params, aggregates["delta"], h)
        return params, opt_state, h

    return server_update


def feddyn(cfg: Mapping[str, Any]) -> Algorithm:
    alpha = positive(cfg, "alpha")
    return Algorithm(
        "feddyn", "federated", optax.identity(), settings={"alpha": alpha},
        hyperparameters=("alpha",),
        grad_adjust=_grad_adjust_for(alpha), client_state=_zeros, server_state=_zeros,
        client_context=_context, client_finish=_finish_for(alpha), aggregate=_aggregate,
        server_update=_server_update_for(alpha),
        dp_client="its server state sums the cohort's raw deltas, outside the clip-and-noise "
                  "mechanism",
    )
