"""Per-FedAvg: personalised FL as model-agnostic meta-learning.

A. Fallah, A. Mokhtari, A. Ozdaglar, "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS 2020, Algorithm 1. The global
model ``w`` minimises ``F(w) = mean_i f_i(w - alpha grad f_i(w))`` (Eq. 3): the loss of each
site *after* one gradient step of its own from ``w``. Client ``i``'s local step ``t`` draws
three independent minibatches ``D``, ``D'``, ``D''`` and

    w~      = w_t - alpha grad f_i(w_t; D)                                 (the inner step)
    g       = grad f_i(w~; D')
    w_{t+1} = w_t - beta (I - alpha H) g,   H = hess f_i(w_t; D'')        (the meta step)

with ``beta`` the client learning rate (``lr``) and ``alpha`` ``algorithm.alpha``. The
``algorithm.variant`` says what ``H g`` is:

* ``fo`` (Per-FedAvg (FO), Sec. 5): left out, ``w_{t+1} = w_t - beta g``;
* ``hf`` (Per-FedAvg (HF), Sec. 5): the finite difference ``(grad f_i(w_t + delta g; D'') -
  grad f_i(w_t - delta g; D'')) / (2 delta)``, ``delta`` = ``algorithm.delta``;
* ``exact``: the Hessian-vector product itself (forward-over-reverse differentiation).

The batches: ``D`` is the step's minibatch of the usual local schedule (the client's epochs of
shuffled order, as FedAvg's), ``D'`` and ``D''`` the same step's minibatch of two further
schedules with their own orders (``fold_in(fold_in(key, 0x9EFA), 1 | 2)``). So a local epoch is
``ceil(n / B)`` meta steps, each seeing three batches. The server takes the example-weighted mean
of the local models (FedAvg's step; the paper's uniform ``1 / rn`` mean when sites are equal).

Each client is evaluated with its personalised model ``w - alpha grad f_i(w)``: one SGD step at
``alpha`` from the global model on a minibatch of its training data (``finetune_steps = 1``
with ``finetune_lr = alpha``), as the paper defines it. The authors' code (pFedMe repository,
``UserPerAvg.train_one_step``) evaluates after a full FO meta step instead; not done here.

Privacy: only the local model's delta is released, so ``privacy=dp_client`` is allowed (its
clip and noise cover any local computation). ``dp_sample`` is refused: the meta step's gradient
is taken at a model moved by a non-private step, and the Hessian term is not DP-SGD's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, positive
from fedbench.errors import ConfigError
from fedbench.local import GradientEstimator, minibatch_estimator

VARIANTS = ("fo", "hf", "exact")
_STREAMS = 0x9EFA  # fold_in tag of the D' and D'' schedules (never an epoch index)


def maml_estimator(alpha: float, variant: str, delta: float):
    """A builder of Per-FedAvg's meta gradient ``(I - alpha H) grad f(w - alpha grad f(w; D);
    D')`` (``H`` per ``variant``); its loss is the minibatch loss at ``w`` on ``D``."""

    def build(apply_fn, *, local_epochs, batch_size, loss_fn):
        base = minibatch_estimator(apply_fn, local_epochs=local_epochs, batch_size=batch_size,
                                   loss_fn=loss_fn)

        def prepare(x, count, key):
            streams = jax.random.fold_in(key, _STREAMS)
            return tuple(base.prepare(x, count, k) for k in
                         (key, jax.random.fold_in(streams, 1), jax.random.fold_in(streams, 2)))

        def grad(w, x, y, count, key, aux, s, lr=None, hp=None):
            del lr, hp

            def at(params, order):
                return base.grad(params, x, y, count, key, order, s)[1]

            loss, g_inner, _ = base.grad(w, x, y, count, key, aux[0], s)
            w_tilde = jax.tree.map(lambda p, g: p - alpha * g, w, g_inner)
            g = at(w_tilde, aux[1])
            if variant == "fo":
                return loss, g, jnp.zeros((), jnp.int32)
            if variant == "hf":
                plus = at(jax.tree.map(lambda p, v: p + delta * v, w, g), aux[2])
                minus = at(jax.tree.map(lambda p, v: p - delta * v, w, g), aux[2])
                hg = jax.tree.map(lambda a, b: (a - b) / (2.0 * delta), plus, minus)
            else:
                hg = jax.jvp(lambda p: at(p, aux[2]), (w,), (g,))[1]
            return loss, jax.tree.map(lambda a, b: a - alpha * b, g, hg), jnp.zeros((), jnp.int32)

        return GradientEstimator(prepare, grad, base.steps)

    return build


def perfedavg(cfg: Mapping[str, Any]) -> Algorithm:
    alpha, delta = positive(cfg, "alpha"), positive(cfg, "delta")
    variant = cfg.get("variant")
    if variant not in VARIANTS:
        raise ConfigError("algorithm.variant", variant,
                          "one of: fo (first order), hf (Hessian-free), exact (Hessian-vector "
                          "product)")
    return Algorithm(
        "perfedavg", "federated", optax.sgd(1.0),
        settings={"alpha": alpha, "variant": variant, "delta": delta},
        estimator=maml_estimator(alpha, variant, delta), finetune_steps=1, finetune_lr=alpha,
        dp_sample="its meta gradient is taken at a model moved by a non-private SGD step (and "
                  "its Hessian term is not DP-SGD's clipped per-example gradient)",
    )
