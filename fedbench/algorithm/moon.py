"""MOON: model-contrastive federated learning.

Q. Li, B. He, D. Song, "Model-Contrastive Federated Learning", CVPR 2021, Algorithm 1 and
Eq. 3-4. Client ``i`` in round ``t`` starts from the global model ``w^t`` and minimises, per
minibatch,

    l = l_sup(w; x, y) + mu * l_con,
    l_con = -log( exp(sim(z, z_glob) / tau) / (exp(sim(z, z_glob) / tau) + exp(sim(z, z_prev) / tau)) )

averaged over the batch's examples, with ``z``, ``z_glob`` and ``z_prev`` the representations of
``x`` by the model being trained, the global model ``w^t`` and the client's own local model of
the last round it took part in (``w_i^{t-1}``), ``sim`` the cosine similarity, ``tau``
``algorithm.temperature`` and ``mu`` ``algorithm.mu`` (both sweepable). ``z_glob`` and ``z_prev``
are constants of the gradient (the paper's frozen models). The server takes the
example-weighted mean of the local models (FedAvg's step).

The representation: the input of the model's last ``Dense`` layer (the 2NN's last hidden
activations, the CNN's 512 ReLU features), captured with flax's ``intercept_methods``. The
paper adds a two-layer projection head before the output layer and takes its output; fedbench's
models have none, so the penultimate layer stands in (as PFLlib's MOON does with its models'
``base``). A model without a hidden layer (``logreg``) is refused: its "representation" would be
the input itself, the same for every model, and ``l_con`` a constant.

The previous local model: each client's store entry holds ``w_i^{t-1} - w^0``, zeros until it
first takes part, so a client never sampled before contrasts against the initial model ``w^0``
(the authors' code starts its pool of previous models as copies of the initial model). The
server state carries ``w^0`` and the current global model, from which the trained local model
``w^t + delta`` is rebuilt after local training (with a lossy downlink compressor the client
trained from its decoded copy instead; the store then holds the server's side of it).
``mu = 0`` is FedAvg (tested).

Privacy: only the delta is released, so ``privacy=dp_client`` is allowed. ``dp_sample`` is
refused: the contrastive term is not DP-SGD's clipped per-example gradient of the task loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fedbench import hparams
from fedbench.algorithm.base import Algorithm, optimizer_update, positive
from fedbench.algorithm.personalised import head_key
from fedbench.errors import ConfigError
from fedbench.local import GradientEstimator, minibatch_at, minibatch_estimator


def representation(apply_fn, params, x):
    """``(outputs, z)``: the model's outputs on ``x`` and the input of its last ``Dense`` layer
    (``[B, d]``), from one forward pass."""
    head, seen = head_key(params), []
    if len(params) < 2:
        raise ConfigError("model.name", "a model of one layer",
                          "a model with a hidden layer for algorithm=moon (its representation "
                          "is the input of the last Dense layer: mlp, cnn)")

    def capture(next_fun, args, kwargs, context):
        if (context.method_name == "__call__" and isinstance(context.module, nn.Dense)
                and context.module.name == head):
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
        out = apply_fn(params, x)
    if not seen:
        raise ConfigError("algorithm.name", "moon", "a model whose last layer is nn.Dense")
    return out, seen[-1].reshape(seen[-1].shape[0], -1)


def contrastive_loss(z, z_glob, z_prev, valid, tau):
    """Eq. 3 averaged over the ``valid`` examples: ``logsumexp(s_glob, s_prev) - s_glob`` with
    ``s = cos(z, .) / tau``."""

    def cos(a, b):  # the clamp inside the root: a zero representation (dead ReLUs) has grad 0
        squared = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
        return jnp.sum(a * b, axis=-1) / jnp.sqrt(jnp.maximum(squared, 1e-16))

    s_glob, s_prev = cos(z, z_glob) / tau, cos(z, z_prev) / tau
    per_example = jnp.logaddexp(s_glob, s_prev) - s_glob
    w = valid.astype(jnp.float32)
    return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)


def moon_estimator(mu: float, tau: float):
    """A builder of the gradient of ``l_sup + mu l_con`` on the usual minibatch schedule."""

    def build(apply_fn, *, local_epochs, batch_size, loss_fn):
        base = minibatch_estimator(apply_fn, local_epochs=local_epochs, batch_size=batch_size,
                                   loss_fn=loss_fn)

        def objective(w, xb, yb, valid, z_glob, z_prev, m, t):
            out, z = representation(apply_fn, w, xb)
            task = loss_fn(out, yb, valid)
            return task + m * contrastive_loss(z, z_glob, z_prev, valid, t), task

        grad_fn = jax.grad(objective, has_aux=True)

        def grad(w, x, y, count, key, orders, s, lr=None, hp=None, *, anchor, context):
            del key, lr
            idx, valid = minibatch_at(orders, s, count, batch_size)
            xb, yb = x[idx], y[idx]
            z_glob = jax.lax.stop_gradient(representation(apply_fn, anchor, xb)[1])
            z_prev = jax.lax.stop_gradient(representation(apply_fn, context, xb)[1])
            g, task = grad_fn(w, xb, yb, valid, z_glob, z_prev,
                              hparams.get(hp, "mu", mu), hparams.get(hp, "temperature", tau))
            return task, g, jnp.zeros((), jnp.int32)

        return GradientEstimator(base.prepare, grad, base.steps, contextual=True)

    return build


def _entry(params):
    return jax.tree.map(jnp.zeros_like, params)


def _server_state(params):
    return {"init": params, "global": params}


def _context(server, entries):
    """Each cohort client's previous local model ``w^0 + entry``."""
    return jax.tree.map(lambda w0, e: w0[None] + e, server["init"], entries)


def _finish(deltas, stats, entries, server, valid, hp):
    """Keep ``w^t + delta - w^0`` for the clients that reported."""
    del stats, hp

    def keep(old, w0, w, d):
        mask = valid.reshape((-1,) + (1,) * (d.ndim - 1))
        return jnp.where(mask, w[None] + d - w0[None], old)

    return {"delta": deltas}, jax.tree.map(keep, entries, server["init"], server["global"], deltas)


def _server_update(params, opt_state, server, aggregates, optimizer, hp=None):
    params, opt_state, _ = optimizer_update(params, opt_state, None, aggregates, optimizer, hp)
    return params, opt_state, {"init": server["init"], "global": params}


def moon(cfg: Mapping[str, Any]) -> Algorithm:
    mu, tau = cfg.get("mu"), positive(cfg, "temperature")
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0:
        raise ConfigError("algorithm.mu", mu, "a number >= 0 (0: FedAvg)")
    mu = float(mu)
    return Algorithm(
        "moon", "federated", optax.sgd(1.0), settings={"mu": mu, "temperature": tau},
        hyperparameters=("mu", "temperature"), estimator=moon_estimator(mu, tau),
        client_state=_entry, server_state=_server_state, client_context=_context,
        client_finish=_finish, server_update=_server_update,
        dp_sample="its contrastive term is not DP-SGD's clipped per-example gradient of the "
                  "task loss",
    )
