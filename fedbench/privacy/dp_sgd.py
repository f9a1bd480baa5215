"""Record-level DP-SGD inside each client (sample-level DP).

Each local step of a client with ``n`` examples (Abadi et al. 2016, Algorithm 1):

1. Poisson-sample its examples, each with probability ``q = batch_size / n`` (capped at 1);
2. compute per-example gradients (``jax.vmap`` of ``jax.grad``, nested inside the client map);
3. clip each to L2 norm ``clip``; sum; add ``N(0, (noise_multiplier * clip)^2)`` per coordinate;
4. divide by the expected batch size ``q * n`` and take an SGD step.

The sampled examples go into a fixed buffer of ``buffer`` slots (overflow counted and reported
as an error, never silently dropped). A slot whose integer label is :data:`ABSENT_LABEL` counts
towards the client's size ``n`` (so ``q`` and the step count are those of ``n``) but holds no
example: its gradient is zero, so DP-SGD releases exactly what that example's absence would at
the same public ``n`` (an audit's excluded canary record, :mod:`fedbench.audit.records`).
A client that takes part in ``r`` rounds runs ``r * local_epochs * ceil(n / batch_size)`` such
steps with sampling rate ``q``; its guarantee is accounted from exactly those numbers
(:mod:`fedbench.privacy.accounting`).

References:
  M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, L. Zhang. "Deep
  Learning with Differential Privacy", CCS 2016, Algorithm 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench import hparams
from fedbench.local import GradientEstimator, make_local_update
from fedbench.privacy.mechanisms import add_gaussian_noise, clip_to_norm, sampling_threshold
from fedbench.task import masked_cross_entropy

Params = Any

#: The label of a slot that counts towards a client's size but holds no example (see above).
ABSENT_LABEL = -1


@functools.lru_cache(maxsize=16)
def _example_thresholds(batch_size: int, length: int) -> np.ndarray:
    """``[length + 1]`` uint32: :func:`sampling_threshold` of ``min(1, batch_size / n)`` for a
    client of ``n`` examples, capped at ``2^32 - 1`` (``n <= batch_size`` keeps every example)."""
    thresholds = [sampling_threshold(min(1.0, batch_size / max(n, 1))) for n in range(length + 1)]
    return np.minimum(np.asarray(thresholds, np.uint64), 2**32 - 1).astype(np.uint32)


def sample_examples(key: jax.Array, count: jax.Array, length: int, batch_size: int) -> jax.Array:
    """``[length]`` bool: a Poisson sample of a client's first ``count`` examples.

    Each is kept with probability ``floor(q * 2^32) / 2^32 <= q = min(1, batch_size / count)``
    (``q`` in float64, as :mod:`fedbench.privacy.plan` accounts it), from one uniform 32-bit
    draw per slot.
    """
    table = jnp.asarray(_example_thresholds(batch_size, length))
    bits = jax.random.bits(key, (length,), jnp.uint32)
    keep = (bits < table[count]) | (count <= batch_size)
    return keep & (jnp.arange(length) < count)


def per_example_clipped_sum(
    apply_fn: Callable, params: Params, x: jax.Array, y: jax.Array, valid: jax.Array, clip: float,
    loss_fn: Callable = masked_cross_entropy,
) -> tuple[Params, jax.Array]:
    """Sum over valid rows of per-example gradients each clipped to ``clip``; and the losses.

    ``loss_fn(outputs, targets, valid)`` is the task's minibatch loss, applied to one example at
    a time (it must be a mean of per-example terms for per-example clipping to bound anything).
    """

    def loss_one(p, xi, yi):
        return loss_fn(apply_fn(p, xi[None]), yi[None], jnp.ones((1,), bool))

    losses, grads = jax.vmap(jax.value_and_grad(loss_one), in_axes=(None, 0, 0))(params, x, y)
    clipped, _ = jax.vmap(clip_to_norm, in_axes=(0, None))(grads, clip)
    w = valid.astype(jnp.float32)
    return jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), clipped), losses


def dp_sgd_estimator(
    apply_fn: Callable,
    *,
    batch_size: int,
    clip: float,
    noise_multiplier: float,
    buffer: int,
    loss_fn: Callable = masked_cross_entropy,
    noise_salt: int | None = None,
) -> GradientEstimator:
    """DP-SGD's gradient of one local step (Abadi et al. 2016, Algorithm 1), as a gradient
    estimator of the one local loop (:func:`fedbench.local.make_local_update`): Poisson-sample
    the client's examples at rate ``q = min(1, batch_size / n)`` into ``buffer`` slots (step
    ``s`` keyed by ``fold_in(key, s)``), clip each example's gradient, sum, add
    ``N(0, (noise_multiplier * clip)^2)`` per coordinate, divide by the expected batch ``q n``.
    The third output counts a batch that overflowed its buffer.

    Step ``s`` splits ``fold_in(key, s)`` into a sampling key and a noise key; ``noise_salt``
    (a 32-bit integer, :func:`fedbench.privacy.plan.noise_salt`) is folded into the noise key
    only, so runs with different salts draw independent noise from the same example samples.
    ``None``: the noise key as split (noise from the client key alone)."""
    stddev = noise_multiplier * clip if noise_multiplier > 0 else 0.0

    def steps(count, epochs):
        return (count + batch_size - 1) // batch_size * epochs

    def prepare(x, count, key):
        return None

    def grad(params, x, y, count, key, aux, s, lr=None, hp=None):
        del lr
        length = x.shape[0]
        # A replica's own clip and z * clip (host-computed) in an in-program sweep.
        bound, std = hparams.get(hp, "clip", clip), hparams.get(hp, "noise_std", stddev)
        rate = jnp.minimum(1.0, batch_size / jnp.maximum(count, 1))
        expected = rate * count
        sample_key, noise_key = jax.random.split(jax.random.fold_in(key, s))
        salt = hparams.get(hp, "noise_salt", noise_salt)
        if salt is not None:
            noise_key = jax.random.fold_in(noise_key, salt)
        chosen = sample_examples(sample_key, count, length, batch_size)
        n_chosen = chosen.sum()
        (idx,) = jnp.nonzero(chosen, size=buffer, fill_value=0)
        valid = jnp.arange(buffer) < n_chosen
        yb = y[idx]
        if yb.ndim == 1 and jnp.issubdtype(yb.dtype, jnp.integer):  # class labels
            present = yb != ABSENT_LABEL  # an absent slot: sampled as counted, zero gradient
            valid, yb = valid & present, jnp.where(present, yb, 0)
        total, losses = per_example_clipped_sum(apply_fn, params, x[idx], yb, valid, bound,
                                                loss_fn)
        noisy = add_gaussian_noise(total, std, noise_key)
        grads = jax.tree.map(lambda g: g / expected, noisy)
        loss = jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(valid.sum(), 1)
        return loss, grads, (n_chosen > buffer).astype(jnp.int32)

    return GradientEstimator(prepare, grad, steps)


def make_dp_sgd_local_update(
    apply_fn: Callable,
    *,
    lr: float,
    local_epochs: int,
    batch_size: int,
    clip: float,
    noise_multiplier: float,
    buffer: int,
    grad_adjust=None,
    prox_mu: float = 0.0,
    loss_fn: Callable = masked_cross_entropy,
    noise_salt: int | None = None,
):
    """The one local loop (:func:`fedbench.local.make_local_update`) with DP-SGD's estimator.

    Same signature and step count as the plain local update (an algorithm's ``grad_adjust``
    such as FedProx's term or SCAFFOLD's correction is applied to the privatised gradient:
    post-processing, no privacy cost); ``stats.overflow`` counts steps whose Poisson batch
    exceeded ``buffer``. ``prox_mu`` is shorthand for FedProx's ``grad_adjust``; ``noise_salt``
    as in :func:`dp_sgd_estimator`.
    """
    if prox_mu:
        from fedbench.algorithm.fedavg import proximal_term

        grad_adjust = proximal_term(prox_mu)
    estimator = dp_sgd_estimator(apply_fn, batch_size=batch_size, clip=clip,
                                 noise_multiplier=noise_multiplier, buffer=buffer, loss_fn=loss_fn,
                                 noise_salt=noise_salt)
    return make_local_update(apply_fn, lr=lr, local_epochs=local_epochs, batch_size=batch_size,
                             grad_adjust=grad_adjust, estimator=estimator)
