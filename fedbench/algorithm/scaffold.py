"""SCAFFOLD: control variates correct client drift.

S. P. Karimireddy, S. Kale, M. Mohri, S. J. Reddi, S. U. Stich, A. T. Suresh, "SCAFFOLD:
Stochastic Controlled Averaging for Federated Learning", ICML 2020, Algorithm 1, option II.

* Each client ``i`` keeps ``c_i`` in the per-client store (zeros at first); the server keeps
  ``c``. A sampled client corrects every local gradient by ``c - c_i`` (line 10).
* After ``K_i`` local steps of size ``lr``: ``c_i+ = c_i - c + (x - y_i) / (K_i lr)``, so it
  sends ``delta_i`` and ``dc_i = -c - delta_i / (K_i lr)`` (lines 12-13) and keeps ``c_i+``.
* The server: ``x <- x + server_lr * mean delta`` and ``c <- c + sum_i dc_i / N`` (lines
  16-17, ``N`` the number of clients).

``algorithm.weighting`` says how the model deltas are averaged: ``uniform`` (default, the
paper's ``1/|S| sum_i (y_i - x)``, line 16, the same uniform average as the control deltas) or
``examples`` (each delta weighted by its client's examples, FedAvg's weighting; the control
update stays the paper's).

Clients release their control deltas too, which client-level DP-FedAvg does not privatise, so
``privacy=dp_client`` is refused (:func:`fedbench.algorithm.base.check_client_dp`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fedbench.algorithm.base import (
    Algorithm, optimizer_update, positive, server_step, weighted_mean,
)
from fedbench.errors import ConfigError


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _context(server_c, client_c):
    """``c - c_i``: the correction added to every local gradient (one client)."""
    return jax.tree.map(jnp.subtract, server_c, client_c)


def _grad_adjust(grads, params, anchor, correction, hp=None):
    del params, anchor, hp
    return jax.tree.map(jnp.add, grads, correction)


def _finish(deltas, stats, entries, server_c, valid, hp):
    """Option II over the cohort: ``dc_i`` of clients that reported and took steps (else 0),
    with the run's own ``lr`` (``hp["lr"]``: a sweep replica's)."""
    lr = hp["lr"]
    steps = stats.num_steps
    use = valid & (steps > 0)
    factor = jnp.where(use, 1.0 / (jnp.maximum(steps, 1) * lr), 0.0)

    def dc(c, d):
        shape = (-1,) + (1,) * (d.ndim - 1)
        return jnp.where(use.reshape(shape), -c[None] - d * factor.reshape(shape), 0.0)

    dcs = jax.tree.map(dc, server_c, deltas)
    return {"delta": deltas, "control": dcs}, jax.tree.map(jnp.add, entries, dcs)


WEIGHTINGS = ("uniform", "examples")


def _aggregate(uploads, weights, stats, valid, num_clients, weighting="uniform"):
    """``Delta x``: the mean of the reporting clients' deltas (uniform over them, or weighted
    by ``weights``, their examples); ``Delta c``: ``sum_i dc_i / N`` (Algorithm 1, line 17)."""
    del stats
    if weighting == "uniform":
        weights = valid.astype(jnp.float32)
    return {
        "delta": weighted_mean(uploads["delta"], weights),
        "control": jax.tree.map(lambda d: d.sum(0) / num_clients, uploads["control"]),
    }


def _server_update(params, opt_state, server_c, aggregates, optimizer, hp=None):
    params, opt_state, _ = optimizer_update(params, opt_state, None, aggregates, optimizer, hp)
    return params, opt_state, jax.tree.map(jnp.add, server_c, aggregates["control"])


def scaffold(cfg: Mapping[str, Any]) -> Algorithm:
    server_lr = positive(cfg, "server_lr")
    weighting = cfg.get("weighting")
    if weighting not in WEIGHTINGS:
        raise ConfigError("algorithm.weighting", weighting, "one of: " + ", ".join(WEIGHTINGS))
    return Algorithm(
        "scaffold", "federated", server_step(server_lr), hyperparameters=("server_lr",),
        settings={"server_lr": server_lr, "weighting": weighting},
        grad_adjust=_grad_adjust, client_state=_zeros, server_state=_zeros,
        client_context=_context, client_finish=_finish,
        aggregate=functools.partial(_aggregate, weighting=weighting),
        server_update=_server_update, releases=("delta", "control"),
        dp_client="its control deltas dc_i would be released without clipping or noise",
    )
