"""APFL: adaptive personalised federated learning.

Y. Deng, M. M. Kamani, M. Mahdavi, "Adaptive Personalized Federated Learning",
arXiv:2003.13461, 2020, Algorithm 1. Each client ``i`` keeps a local model ``v_i`` and a mixing
weight ``alpha_i``; its personalised model is ``vbar_i = alpha_i v_i + (1 - alpha_i) w``. At every
local step, on one minibatch ``xi`` and from the previous step's values:

* ``w_i <- w_i - lr grad f_i(w_i; xi)`` (FedAvg's local step; the server averages the ``w_i``);
* ``v_i <- v_i - lr grad_v f_i(vbar_i; xi) = v_i - lr alpha_i grad f_i(vbar_i; xi)``, with
  ``vbar_i = alpha_i v_i + (1 - alpha_i) w_i`` (the client's current local ``w_i``);
* with ``algorithm.mixing=adaptive``: ``alpha_i <- clip(alpha_i - alpha_lr <v_i - w_i, grad
  f_i(vbar_i; xi)>, 0, 1)``, the gradient of ``f_i(vbar_i)`` with respect to ``alpha`` (the
  paper's adaptive mixing, projected on [0, 1] as in the authors' code; ``alpha_lr =
  algorithm.alpha_lr``); with ``mixing=fixed`` ``alpha_i`` stays ``algorithm.alpha``.

The global model trains exactly as FedAvg (the main pass); ``(w_i, v_i, alpha_i)`` then run
together in a :class:`PersonalPass` over the main pass's minibatches (``same_order``), so its
``w_i`` retraces the main pass's and ``v_i`` sees the same ``xi`` at each step. ``v_i`` starts
at ``w^0`` (the store keeps ``v_i - w^0``, the server state ``w^0``) and never leaves the site.
Each client is evaluated with ``alpha_i v_i + (1 - alpha_i) w`` (``w``: the current global model).
``privacy=dp_client`` is allowed (only FedAvg's delta is released); ``dp_sample`` is refused (the
personal pass retraces ``w_i`` with plain minibatch gradients, not DP-SGD's noisy ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, PersonalPass, positive
from fedbench.errors import ConfigError
from fedbench.local import GradientEstimator, minibatch_estimator

MIXINGS = ("fixed", "adaptive")


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def apfl_estimator(adaptive: bool, alpha_lr: float):
    """A builder of the joint gradient of ``{"w", "v", "alpha"}`` on one minibatch (the loop's
    step ``p - lr g`` then gives Algorithm 1's updates; the ``alpha`` entry is the projected
    step written as a gradient)."""

    def build(apply_fn, *, local_epochs, batch_size, loss_fn):
        base = minibatch_estimator(apply_fn, local_epochs=local_epochs, batch_size=batch_size,
                                   loss_fn=loss_fn)

        def grad(p, x, y, count, key, aux, s, lr, hp=None):
            del hp
            w, v, a = p["w"], p["v"], p["alpha"]
            _, g_w, _ = base.grad(w, x, y, count, key, aux, s)
            mixed = jax.tree.map(lambda vv, ww: a * vv + (1 - a) * ww, v, w)
            loss, g_mix, _ = base.grad(mixed, x, y, count, key, aux, s)
            g_alpha = jnp.zeros_like(a)
            if adaptive:
                d_alpha = _dot(jax.tree.map(jnp.subtract, v, w), g_mix)  # d f(vbar) / d alpha
                new = jnp.clip(a - alpha_lr * d_alpha, 0, 1)
                g_alpha = (a - new) / lr
            g = {"w": g_w, "v": jax.tree.map(lambda gm: a * gm, g_mix), "alpha": g_alpha}
            return loss, g, jnp.zeros((), jnp.int32)

        return GradientEstimator(base.prepare, grad, base.steps)

    return build


def _copy(params):
    return jax.tree.map(jnp.asarray, params)


def _context(w0, entries):
    return {"v": jax.tree.map(lambda w, o: w + o.astype(w.dtype), w0, entries["v"]),
            "alpha": entries["alpha"]}


def _start(params, context, delta):
    del delta
    return {"w": params, "v": context["v"], "alpha": context["alpha"]}


def _keep(entries, deltas, starts):
    del starts
    alpha = jnp.clip(entries["alpha"] + deltas["alpha"].astype(entries["alpha"].dtype), 0, 1)
    return {"v": jax.tree.map(lambda o, d: o + d.astype(o.dtype), entries["v"], deltas["v"]),
            "alpha": alpha}


def _client_models(params, w0, entries):
    v = _context(w0, entries)["v"]
    a = entries["alpha"]
    return jax.tree.map(
        lambda vv, w: a.reshape((-1,) + (1,) * w.ndim) * vv
        + (1 - a.reshape((-1,) + (1,) * w.ndim)) * w[None], v, params)


def apfl(cfg: Mapping[str, Any]) -> Algorithm:
    alpha, mixing = cfg.get("alpha"), cfg.get("mixing")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError("algorithm.alpha", alpha, "a number in [0, 1] (the mixing weight)")
    if mixing not in MIXINGS:
        raise ConfigError("algorithm.mixing", mixing, "one of: " + ", ".join(MIXINGS))
    alpha, alpha_lr = float(alpha), positive(cfg, "alpha_lr")

    def entry(params):
        return {"v": jax.tree.map(jnp.zeros_like, params), "alpha": jnp.float32(alpha)}

    return Algorithm(
        "apfl", "federated", optax.sgd(1.0),
        settings={"alpha": alpha, "mixing": mixing, "alpha_lr": alpha_lr},
        client_state=entry, server_state=_copy, client_context=_context,
        personal_pass=PersonalPass(start=_start, grad_adjust=None, keep=_keep,
                                   estimator=apfl_estimator(mixing == "adaptive", alpha_lr),
                                   same_order=True),
        client_models=_client_models,
        dp_sample="its personal pass retraces the local global model with plain minibatch "
                  "gradients, not the DP-SGD ones that trained it",
    )
