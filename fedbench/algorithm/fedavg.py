"""FedSGD, FedAvg and FedProx: local SGD from the server model, example-weighted mean of deltas.

* FedSGD: one full-batch gradient step per client per round (McMahan et al., AISTATS 2017,
  Sec. 2); the server applies the mean with learning rate 1.
* FedAvg: ``local_epochs`` epochs of minibatch SGD, ``w <- w + sum_k n_k/n delta_k``
  (McMahan et al. 2017, Algorithm 1).
* FedProx: FedAvg with the proximal term ``mu/2 ||w - w_server||^2`` added to every client's
  objective, gradient ``mu (w - w_server)`` (Li et al., MLSys 2020, Eq. 2); ``mu = 0`` is FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from fedbench import hparams
from fedbench.algorithm.base import Algorithm, non_negative


def fedsgd(cfg: Mapping[str, Any]) -> Algorithm:
    return Algorithm("fedsgd", "federated", optax.sgd(1.0), settings={}, full_batch=True)


def fedavg(cfg: Mapping[str, Any]) -> Algorithm:
    return Algorithm("fedavg", "federated", optax.sgd(1.0), settings={})


def proximal_term(mu: float):
    """``grads + mu (w - w_server)``: the gradient of FedProx's proximal term (Li et al. Eq. 2)."""

    def grad_adjust(grads, params, anchor, context, hp=None):
        del context
        m = hparams.get(hp, "mu", mu)  # a replica's own mu in an in-program sweep
        return jax.tree.map(lambda g, p, p0: g + m * (p - p0), grads, params, anchor)

    return grad_adjust


def fedprox(cfg: Mapping[str, Any]) -> Algorithm:
    mu = non_negative(cfg, "mu", " (FedProx proximal coefficient)")
    return Algorithm("fedprox", "federated", optax.sgd(1.0), settings={"mu": mu},
                     grad_adjust=proximal_term(mu) if mu else None, hyperparameters=("mu",))
