"""The pieces DP mechanisms are built from: Poisson cohorts, clipping to a norm, Gaussian noise.

The mechanisms themselves, one file each, are :mod:`fedbench.privacy.dp_client` and
:mod:`fedbench.privacy.dp_sample` (:mod:`fedbench.privacy.mechanism`: the interface).

The server-side pipeline of one DP round (McMahan et al. 2018, Algorithm 1 with the fixed
denominator estimator ``f~_f``):

1. sample the cohort: each client independently with probability ``q`` (Poisson), or a fixed
   number without replacement. A Poisson draw keeps a unit when a uniform 32-bit integer is
   below ``floor(q * 2^32)`` (:func:`sampling_threshold`), so the realised rate never exceeds
   the accounted ``q``; comparing a float32 uniform with ``q`` would sample with probability
   ``ceil(q * 2^23) / 2^23`` instead, 7% above ``q`` at ``q = 1e-6``;
2. clip each sampled client's model delta to L2 norm ``clip`` (the norm over all parameters);
3. sum the clipped deltas and add Gaussian noise of standard deviation ``noise_multiplier * clip``
   to every coordinate of the sum;
4. divide by the *expected* number of reporting clients, ``q * num_clients`` times the share
   whose update arrives (``1 - stragglers.fraction`` when stragglers are dropped; fixed, so one
   client cannot change the denominator), then hand the result to the server optimiser.

The sensitivity of the sum to adding or removing one client is ``clip``, so the round is a
sampled Gaussian mechanism with noise multiplier ``noise_multiplier``; accounting lives in
:mod:`fedbench.privacy.accounting`.

References:
  H. B. McMahan, D. Ramage, K. Talwar, L. Zhang. "Learning Differentially Private Recurrent
  Language Models", ICLR 2018, Algorithm 1 (DP-FedAvg) and Sec. 2 (estimators).
  M. Abadi et al. "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1 (clipping
  and Gaussian noise).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax


Params = Any


def clip_to_norm(tree: Params, clip: float | jax.Array) -> tuple[Params, jax.Array]:
    """Scales ``tree`` by ``min(1, clip / ||tree||_2)``; returns ``(clipped, norm_before)``.

    The norm is the L2 norm over all leaves together. Trees already within ``clip`` are returned
    unchanged (multiplied by exactly 1).
    """
    norm = optax.tree.norm(tree)
    scale = jnp.where(norm > clip, clip / jnp.where(norm > 0, norm, 1.0), 1.0)
    return jax.tree.map(lambda x: x * scale.astype(x.dtype), tree), norm


def add_gaussian_noise(tree: Params, stddev: float | jax.Array, key: jax.Array) -> Params:
    """Adds i.i.d. ``N(0, stddev^2)`` to every coordinate of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + stddev * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def poisson_buffer_size(num_clients: int, rate: float, rounds: int, failure: float = 1e-9) -> int:
    """A fixed cohort buffer that a Poisson(q) cohort overflows with probability < ``failure``.

    Uses the Chernoff bound for a Binomial(num_clients, q) count over ``rounds`` rounds (a union
    bound), capped at ``num_clients`` (where overflow is impossible).
    """
    mean = num_clients * rate
    per_round = failure / max(rounds, 1)
    size = math.ceil(mean)
    while size < num_clients:
        # P[X >= size] <= exp(-mean * h(size/mean - 1)), h(u) = (1 + u) log(1 + u) - u.
        u = size / mean - 1.0
        if u > 0 and math.exp(-mean * ((1 + u) * math.log1p(u) - u)) < per_round:
            return size
        size += 1
    return num_clients


#: Uniform 32-bit integers take this many values.
_BITS_RANGE = 2**32


def sampling_threshold(rate: float) -> int:
    """``floor(rate * 2^32)``, exactly: a uniform 32-bit draw ``u`` is kept when ``u <`` it.

    The probability ``threshold / 2^32`` is at most ``rate`` and less than ``2^-32`` below it.
    Scaling a float64 by a power of two and flooring are both exact, so this is computed on the
    host, in the float64 the accountant is given, never in float32.

    Raises:
      ValueError: ``rate`` outside [0, 1].
    """
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a sampling rate in [0, 1], got {rate!r}")
    return math.floor(rate * _BITS_RANGE)


def bernoulli_below(key: jax.Array, shape: tuple[int, ...], threshold: int) -> jax.Array:
    """Independent draws, ``True`` with probability exactly ``threshold / 2^32``."""
    if threshold >= _BITS_RANGE:
        return jnp.ones(shape, bool)
    return jax.random.bits(key, shape, jnp.uint32) < jnp.uint32(threshold)


def poisson_cohort(
    key: jax.Array, num_clients: int, rate: float, buffer: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Poisson sampling into a fixed-size buffer.

    Returns ``(ids [buffer], valid [buffer], count)``: the sampled client ids in increasing order
    padded with 0, which slots hold a sampled client, and how many were sampled. ``count >
    buffer`` is an overflow that the caller must report (the excess clients are not in ``ids``).
    Each client is in with probability ``sampling_threshold(rate) / 2^32 <= rate``.
    """
    chosen = bernoulli_below(key, (num_clients,), sampling_threshold(rate))
    count = chosen.sum().astype(jnp.int32)
    (ids,) = jnp.nonzero(chosen, size=buffer, fill_value=0)
    valid = jnp.arange(buffer) < count
    return ids.astype(jnp.int32), valid, count
