"""q-FFL's q-FedAvg: fair resource allocation, the clients with larger losses weighted up.

T. Li, M. Sanjabi, A. Beirami, V. Smith, "Fair Resource Allocation in Federated Learning", ICLR
2020, Algorithm 2 (q-FedAvg). The objective ``f_q(w) = sum_k p_k F_k^(q+1)(w) / (q + 1)``
reweights the sites by their loss: ``q = 0`` is FedAvg's objective, larger ``q`` pushes towards
a more uniform accuracy across sites. Each sampled client ``k`` receives ``w^t``, evaluates its
loss ``F_k(w^t)`` on its whole training set, runs FedAvg's local SGD to ``wbar_k`` and computes,
with ``L = 1 / lr`` the paper's estimate of the Lipschitz constant of the local gradients,

    Delta w_k = L (w^t - wbar_k)
    Delta_k   = F_k^q(w^t) Delta w_k
    h_k       = q F_k^(q-1)(w^t) ||Delta w_k||^2 + L F_k^q(w^t)

and the server steps ``w^(t+1) = w^t - sum_k Delta_k / sum_k h_k`` over the clients whose update
arrived (uniformly: the paper samples clients with probability ``p_k`` and sums without
weights). With ``q = 0`` the step is the unweighted mean of the local models. The client sends
its model delta (``wbar_k - w^t``, through the update transforms like every delta) and two
scalars, ``L F_k^q`` and ``h_k``; the server forms ``sum_k L F_k^q delta_k / sum_k h_k``. A
compressed delta is therefore weighted by scalars computed from the uncompressed one.

``q`` is sweepable (``sweep.q``). Under client-level DP the loss-dependent scalars would have to
be released too, and under DP-SGD ``F_k(w^t)`` is computed on the raw training set, so both
refuse it. Not implemented: q-FedSGD (the paper's Algorithm 1) and the paper's tuning of ``L``
on a subset of ``q``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench import hparams
from fedbench.algorithm.base import Algorithm, Messages, non_negative


def _entry(params):
    del params
    return {"loss": jnp.zeros((), jnp.float32)}


def _prepare(params, entry, loss):
    """``F_k(w^t)``: the client's mean training loss at the model it received."""
    return {**entry, "loss": loss(params)}


def _aggregate(uploads, weights, stats, valid, num_clients):
    """``sum_k (L F_k^q) delta_k / sum_k h_k`` over the valid clients (0 if the sum is 0)."""
    del weights, stats, num_clients
    kept = valid.astype(jnp.float32)
    scale, h = uploads["scale"] * kept, uploads["h"] * kept
    total = jnp.sum(h)
    coef = scale / jnp.where(total > 0, total, 1.0)
    return {"delta": jax.tree.map(lambda d: jnp.tensordot(coef, d, axes=1), uploads["delta"])}


def _messages(algorithm, sent):
    del algorithm
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    return Messages(down={"model": sent}, up={"delta": sent, "scale": scalar, "h": scalar})


def qffl(cfg: Mapping[str, Any]) -> Algorithm:
    q = non_negative(cfg, "q")

    def finish(deltas, stats, entries, server_state, valid, hp):
        del stats, server_state, valid
        qq = hparams.get(hp, "q", q)
        lipschitz = 1.0 / hparams.get(hp, "lr", None)
        loss = entries["loss"]
        sq = jax.vmap(lambda d: optax.tree_utils.tree_norm(d, squared=True))(deltas)
        fq = jnp.power(loss, qq)  # 0^0 = 1: q = 0 weighs every client alike
        slope = jnp.where(qq > 0, qq * jnp.power(jnp.maximum(loss, 1e-30), qq - 1.0), 0.0)
        h = slope * lipschitz**2 * sq + lipschitz * fq  # ||Delta w_k||^2 = L^2 ||delta_k||^2
        return {"delta": deltas, "scale": lipschitz * fq, "h": h}, entries

    return Algorithm(
        "qffl", "federated", optax.sgd(1.0), settings={"q": q},
        client_state=_entry, client_prepare=_prepare, client_finish=finish,
        aggregate=_aggregate, messages=_messages, hyperparameters=("q",),
        releases=("delta", "scale", "h"),
        dp_client="q-FFL's clients also send their loss-weighted scale and h_k, which the "
                  "clipped-and-noised sum does not cover",
        dp_sample="each client's loss F_k(w) on its whole training set is computed and sent "
                  "outside DP-SGD",
    )
