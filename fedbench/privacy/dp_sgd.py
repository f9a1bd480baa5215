"""Record-level DP-SGD inside each client (sample-level DP).

Each local step of a client with ``n`` examples (Abadi et al. 2016, Algorithm 1):

1. Poisson-sample its examples, each with probability ``q = batch_size / n`` (capped at 1):
   a uniform 32-bit draw below ``floor(q * 2^32)``, computed on the host in float64 from the
   same ``q`` the accountant is given, so the realised rate is never above it
   (:func:`sample_examples`);
2. compute per-example gradients (``jax.vmap`` of ``jax.grad``, nested inside the client map);
3. clip each to L2 norm ``clip``; sum; add ``N(0, (noise_multiplier * clip)^2)`` per coordinate;
4. divide by the expected batch size ``q * n`` and take an SGD step.

The sampled examples go into a fixed buffer of ``buffer`` slots (overflow counted and reported
as an error, never silently dropped). A client that takes part in ``r`` rounds runs
``r * local_epochs * ceil(n / batch_size)`` such steps with sampling rate ``q``; its guarantee
is accounted from exactly those numbers (:mod:`fedbench.privacy.accounting`).

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

from fedbench.privacy.mechanisms import add_gaussian_noise, clip_to_norm, sampling_threshold

Params = Any


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
    apply_fn: Callable, params: Params, x: jax.Array, y: jax.Array, valid: jax.Array, clip: float
) -> tuple[Params, jax.Array]:
    """Sum over valid rows of per-example gradients each clipped to ``clip``; and the losses."""
    import optax

    def loss_one(p, xi, yi):
        logits = apply_fn(p, xi[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None])[0]

    losses, grads = jax.vmap(jax.value_and_grad(loss_one), in_axes=(None, 0, 0))(params, x, y)
    clipped, _ = jax.vmap(clip_to_norm, in_axes=(0, None))(grads, clip)
    w = valid.astype(jnp.float32)
    return jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), clipped), losses


def make_dp_sgd_local_update(
    apply_fn: Callable,
    *,
    lr: float,
    local_epochs: int,
    batch_size: int,
    clip: float,
    noise_multiplier: float,
    buffer: int,
    prox_mu: float = 0.0,
):
    """Builds a DP-SGD ``local_update(server_params, x, y, count, key[, epochs])``.

    Same signature and step count as :func:`fedbench.simulator.make_local_update` (including
    SCAFFOLD's optional gradient ``correction`` and FedProx's ``prox_mu``); returns
    ``(delta, stats)`` with ``stats.overflow`` the number of steps whose Poisson batch exceeded
    ``buffer``.
    """
    from fedbench.simulator import ClientStats  # local import: simulator imports this module

    stddev = noise_multiplier * clip if noise_multiplier > 0 else 0.0

    def local_update(server_params, x, y, count, key, epochs=None, correction=None):
        length = x.shape[0]
        steps = (count + batch_size - 1) // batch_size * (local_epochs if epochs is None else epochs)
        rate = jnp.minimum(1.0, batch_size / jnp.maximum(count, 1))
        expected = rate * count

        def body(carry):
            params, s, loss_sum, overflow = carry
            sample_key, noise_key = jax.random.split(jax.random.fold_in(key, s))
            chosen = sample_examples(sample_key, count, length, batch_size)
            n_chosen = chosen.sum()
            (idx,) = jnp.nonzero(chosen, size=buffer, fill_value=0)
            valid = jnp.arange(buffer) < n_chosen
            total, losses = per_example_clipped_sum(apply_fn, params, x[idx], y[idx], valid, clip)
            noisy = add_gaussian_noise(total, stddev, noise_key)
            grads = jax.tree.map(lambda g: g / expected, noisy)
            if prox_mu:  # FedProx's term does not touch the data: no privacy cost
                grads = jax.tree.map(
                    lambda g, p, p0: g + prox_mu * (p - p0), grads, params, server_params
                )
            if correction is not None:  # SCAFFOLD's c - c_i (post-processing of DP outputs)
                grads = jax.tree.map(jnp.add, grads, correction)
            params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
            loss = jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(valid.sum(), 1)
            return params, s + 1, loss_sum + loss, overflow + (n_chosen > buffer)

        zero = jnp.zeros((), jnp.int32)
        carry = (server_params, zero, jnp.zeros((), jnp.float32), zero)
        params, taken, loss_sum, overflow = jax.lax.while_loop(
            lambda c: c[1] < steps, body, carry
        )
        delta = jax.tree.map(jnp.subtract, params, server_params)
        return delta, ClientStats(taken, loss_sum / jnp.maximum(taken, 1), overflow)

    return local_update
