"""``quantize``: unbiased stochastic uniform ``bits``-bit quantisation of a block's values.

Per bucket of ``bucket_size`` consecutive values (``None``: one bucket per block), ``2^bits``
evenly spaced levels on ``[-m, m]``, ``m = max |v|`` of the bucket, each value rounded to one of
its two neighbouring levels with probabilities that make the expectation exact (randomised
rounding). Sent: ``bits`` per value plus one float32 ``m`` per bucket.

Declared: random (its own key), unbiased, so it can raise a clipped update's norm
(``E||Q(x)||^2 = ||x||^2 + E||Q(x) - x||^2``: refused under client-level DP); allowed on the
downlink; its variance bound ``omega = n / (2 (2^b - 1)^2)`` per bucket of ``n`` entries makes
it contractive, so error feedback may wrap it, where ``omega < 1``.

References:
  A. T. Suresh, F. X. Yu, S. Kumar, H. B. McMahan. "Distributed Mean Estimation with Limited
  Communication", ICML 2017, Sec. 3 (stochastic k-level quantisation, unbiased by randomised
  rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedbench.compression.buckets import SCALE_BITS, bucket_count, buckets, unbucket
from fedbench.compression.piece import Quantizer, Settings, check_integer


def stochastic_uniform(values: jax.Array, key: jax.Array, bits: int,
                       bucket_size: int | None = None) -> jax.Array:
    """Unbiased ``bits``-bit quantisation of ``values`` (1-D): the decoded values."""
    grid, _ = buckets(values, bucket_size)
    levels = 2**bits - 1
    m = jnp.max(jnp.abs(grid), axis=1, keepdims=True)
    step = 2.0 * m / levels
    safe = jnp.where(step > 0, step, 1.0)
    position = (grid + m) / safe  # in [0, levels]
    u = jax.random.uniform(key, grid.shape, grid.dtype)
    q = jnp.clip(jnp.floor(position + u), 0, levels)
    decoded = jnp.where(step > 0, -m + q * step, 0.0)
    return unbucket(decoded, values.shape[0], values.dtype)


def encode(settings: Settings, values: jax.Array, key: jax.Array | None) -> jax.Array:
    return stochastic_uniform(values, key, settings["bits"], settings["bucket_size"])


def bits(settings: Settings, entries: int) -> int:
    """``bits * n + 32 * num_buckets``."""
    return settings["bits"] * entries + SCALE_BITS * bucket_count(entries, settings["bucket_size"])


def variance_bound(settings: Settings, entries: int) -> float:
    """``omega = (n - 1) / (2^b - 1)^2`` for buckets of ``n`` entries: tight.

    The levels split ``[-m, m]`` (``m`` the bucket's largest magnitude) into ``L = 2^b - 1``
    intervals of width ``Delta = 2m / L``; stochastic rounding gives an entry the variance
    ``Delta^2 p (1 - p) <= Delta^2 / 4 = m^2 / L^2``, and the entry of magnitude ``m`` lies on a
    level (variance 0). With ``||x||^2 >= m^2``, ``E||Q(x) - x||^2 <= (n - 1) m^2 / L^2 <=
    (n - 1) / L^2 ||x||^2``. ``x = (m, 0, ..., 0)`` attains it: ``L`` is odd, so 0 is the midpoint
    of two levels. (The declaration before 2026-12-07 was ``n / (2 L^2)``, about half of this:
    it accepted error feedback around buckets up to twice too large to be contractive.)"""
    bucket = settings["bucket_size"]
    n = entries if bucket is None else min(bucket, entries)
    return (n - 1) / float(2 ** settings["bits"] - 1) ** 2


def check(settings: Settings, prefix: str) -> None:
    check_integer(settings, "bits", prefix, 1, 16)
    check_integer(settings, "bucket_size", prefix, 1, optional=True)


PIECE = Quantizer(
    name="quantize",
    encode=encode,
    bits=bits,
    uses_key=True,
    raises_norm="quantize is unbiased: its rounding adds variance to the norm",
    downlink=True,
    variance_bound=variance_bound,
    check=check,
    configure=lambda settings: {"bucket_size": settings["bucket_size"], "bits": settings["bits"]},
)
