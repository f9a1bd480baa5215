"""pFedMe: personalised federated learning with Moreau envelopes.

C. T. Dinh, N. H. Tran, T. D. Nguyen, "Personalized Federated Learning with Moreau Envelopes",
NeurIPS 2020, Algorithm 1. Client ``i``'s personalised model is the proximal point of its loss
at the local model ``w`` (Eq. 3)::

    theta_i(w) = argmin_theta  f_i(theta) + lam/2 ||theta - w||^2,

and the local model descends the Moreau envelope ``F_i(w) = min_theta ...``, whose gradient is
``lam (w - theta_i(w))`` (Eq. 5 / Prop. 1). One local step ``r`` (Algorithm 1, lines 6-8):

* draw a minibatch ``D`` and solve the inner problem approximately by ``K`` gradient steps on
  ``f_i(theta; D) + lam/2 ||theta - w_r||^2`` from ``theta = w_r``, learning rate
  ``algorithm.personal_lr`` (Eq. 7): ``theta <- theta - plr (grad f_i(theta; D) + lam (theta -
  w_r))``;
* ``w_{r+1} = w_r - lr lam (w_r - theta)`` (``lr``: the client learning rate ``eta``).

The client sends ``w_R - w^t``; the server mixes ``w^{t+1} = (1 - beta) w^t + beta mean_i w_i
= w^t + beta mean_i (w_i - w^t)`` (line 11; ``algorithm.beta``; the example-weighted mean of the
authors' code; ``beta = 1`` is FedAvg's server step). The local loop is the one every algorithm
runs, with the Moreau-envelope gradient as its gradient estimator (``Algorithm.estimator``).

The personalised model each client is evaluated with is ``theta_i(w_i)`` at its last
participation: after the local steps, ``K`` inner steps on one fresh minibatch from the
client's final local model (a :class:`PersonalPass`), kept in the per-client store; a client
never sampled is evaluated with the global model. Differences from the authors' code (where
every client trains every round and ``theta`` is warm-started from the previous local step's):
each inner solve starts at its prox centre ``w_r`` (Algorithm 1 leaves the start open), and
only sampled clients refresh their personalised model.

Privacy: only the local model's delta is released (``theta_i`` never leaves the site), so
``privacy=dp_client`` is allowed; ``dp_sample`` is refused (the inner solver's gradients are not
DP-SGD's).
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


def moreau_estimator(lam: float, steps: int, personal_lr: float):
    """A builder of the gradient estimator ``lam (w - theta)`` with ``theta`` from ``steps``
    inner steps on the step's minibatch (Dinh et al. Eq. 7-8); its loss is the minibatch loss
    of the last inner iterate."""

    def build(apply_fn, *, local_epochs, batch_size, loss_fn):
        base = minibatch_estimator(apply_fn, local_epochs=local_epochs, batch_size=batch_size,
                                   loss_fn=loss_fn)

        def grad(w, x, y, count, key, aux, s, lr=None, hp=None):
            del lr, hp

            def inner(_, carry):
                theta, _ = carry
                loss, g, _ = base.grad(theta, x, y, count, key, aux, s)  # step s's minibatch
                theta = jax.tree.map(lambda t, g, c: t - personal_lr * (g + lam * (t - c)),
                                     theta, g, w)
                return theta, loss

            theta, loss = jax.lax.fori_loop(0, steps, inner, (w, jnp.zeros((), jnp.float32)))
            return loss, jax.tree.map(lambda c, t: lam * (c - t), w, theta), jnp.zeros((),
                                                                                  jnp.int32)

        return GradientEstimator(base.prepare, grad, base.steps)

    return build


def one_batch_estimator(apply_fn, *, local_epochs, batch_size, loss_fn):
    """Every step on the first minibatch of a fresh order (the inner problem's ``D``)."""
    base = minibatch_estimator(apply_fn, local_epochs=local_epochs, batch_size=batch_size,
                               loss_fn=loss_fn)
    return GradientEstimator(
        base.prepare, lambda p, x, y, count, key, aux, s, lr=None, hp=None: base.grad(p, x, y, count, key, aux,
                                                                          0),
        base.steps)


def _entry(params):
    return {"theta": jax.tree.map(jnp.zeros_like, params), "seen": jnp.zeros((), bool)}


def _prox_for(lam: float):
    def grad_adjust(grads, theta, centre, params_server, hp=None):
        del params_server
        return jax.tree.map(lambda g, t, c: g + lam * (t - c), grads, theta, centre)

    return grad_adjust


def _local_model(params, context, delta):
    del context
    return jax.tree.map(jnp.add, params, delta)  # w_{i,R}: the prox centre of theta_i


def _keep(entries, deltas, starts):
    theta = jax.tree.map(lambda s, d, e: (s + d).astype(e.dtype), starts, deltas,
                         entries["theta"])
    return {"theta": theta, "seen": jnp.ones_like(entries["seen"])}


def _client_models(params, server_state, entries):
    del server_state
    seen = entries["seen"]
    return jax.tree.map(
        lambda t, p: jnp.where(seen.reshape((-1,) + (1,) * p.ndim), t.astype(p.dtype), p[None]),
        entries["theta"], params)


def pfedme(cfg: Mapping[str, Any]) -> Algorithm:
    lam, plr, beta = positive(cfg, "lam"), positive(cfg, "personal_lr"), positive(cfg, "beta")
    steps = cfg.get("inner_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("algorithm.inner_steps", steps,
                          "an integer >= 1 (K: inner steps per local step)")
    return Algorithm(
        "pfedme", "federated", optax.sgd(beta),
        settings={"lam": lam, "inner_steps": steps, "personal_lr": plr, "beta": beta},
        estimator=moreau_estimator(lam, steps, plr), client_state=_entry,
        personal_pass=PersonalPass(start=_local_model, grad_adjust=_prox_for(lam), keep=_keep,
                                   steps=steps, lr=plr, estimator=one_batch_estimator),
        client_models=_client_models,
        dp_sample="its inner solver and personalised models use plain minibatch gradients, "
                  "not DP-SGD's",
    )
