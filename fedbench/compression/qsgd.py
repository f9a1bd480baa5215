"""``qsgd``: QSGD's stochastic quantisation ``Q_s`` with ``levels`` = ``s``, per bucket.

``Q_s(v_i) = ||v||_2 sign(v_i) xi_i(v, s)``, ``xi_i = l / s`` or ``(l + 1) / s`` with
``l = floor(|v_i| s / ||v||_2)``, rounded up with probability ``|v_i| s / ||v||_2 - l``
(Alistarh et al. 2017, Sec. 3.1), per bucket of ``bucket_size`` entries (None: one per block).
Encoded with fixed widths (the paper's Elias coding would be shorter for sparse outputs): one
float32 norm per bucket, and per entry a sign bit and ``ceil(log2(s + 1))`` bits for its level
``0..s``.

Declared: random, unbiased with ``E||Q_s(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2`` per
bucket of ``d`` entries (Lemma 3.1), so it can raise a clipped update's norm (refused under
client-level DP) and error feedback may wrap it only where that bound is below 1; allowed on
the downlink.

References:
  D. Alistarh, D. Grubic, J. Li, R. Tomioka, M. Vojnovic. "QSGD: Communication-Efficient SGD via
  Gradient Quantization and Encoding", NeurIPS 2017, Sec. 3.1 (Q_s, Lemma 3.1) and bucketing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.compression.buckets import SCALE_BITS, bucket_count, buckets, unbucket
from fedbench.compression.piece import Quantizer, Settings, check_integer


def qsgd(values: jax.Array, key: jax.Array, levels: int,
         bucket_size: int | None = None) -> jax.Array:
    """QSGD's ``Q_s`` of ``values`` (1-D) per bucket: the decoded values."""
    grid, _ = buckets(values, bucket_size)
    norm = jnp.sqrt(jnp.sum(jnp.square(grid), axis=1, keepdims=True))
    safe = jnp.where(norm > 0, norm, 1.0)
    ratio = jnp.abs(grid) / safe * levels  # in [0, s]
    u = jax.random.uniform(key, grid.shape, grid.dtype)
    level = jnp.clip(jnp.floor(ratio + u), 0, levels)
    decoded = jnp.sign(grid) * norm * level / levels
    return unbucket(decoded, values.shape[0], values.dtype)


def encode(settings: Settings, values: jax.Array, key: jax.Array | None) -> jax.Array:
    return qsgd(values, key, settings["levels"], settings["bucket_size"])


def bits(settings: Settings, entries: int) -> int:
    """``(1 + ceil(log2(s + 1))) * n + 32 * num_buckets``."""
    per_entry = 1 + int(settings["levels"]).bit_length()
    return per_entry * entries + SCALE_BITS * bucket_count(entries, settings["bucket_size"])


def variance_bound(settings: Settings, entries: int) -> float:
    """``min(n / s^2, sqrt(n) / s)`` per bucket of ``n`` entries (Lemma 3.1)."""
    bucket, levels = settings["bucket_size"], settings["levels"]
    n = entries if bucket is None else min(bucket, entries)
    return min(n / levels**2, np.sqrt(n) / levels)


def check(settings: Settings, prefix: str) -> None:
    check_integer(settings, "levels", prefix, 1, 2**16)
    check_integer(settings, "bucket_size", prefix, 1, optional=True)


PIECE = Quantizer(
    name="qsgd",
    encode=encode,
    bits=bits,
    uses_key=True,
    raises_norm="qsgd is unbiased: its rounding adds variance to the norm",
    downlink=True,
    variance_bound=variance_bound,
    check=check,
    configure=lambda settings: {"bucket_size": settings["bucket_size"],
                                "levels": settings["levels"]},
)
