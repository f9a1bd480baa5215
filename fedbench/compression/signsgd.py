"""``signsgd``: EF-SignSGD's scaled sign, ``(||p||_1 / d) sign(p)`` per bucket of ``d`` entries
(sign(0) is sent as +); one bit per entry plus one float32 scale per bucket.

Declared: deterministic (no key); biased, so it is wrapped by error feedback (its config's
default), which it allows: it is contractive, ``E||C(x) - x||^2 = (1 - ||x||_1^2 / (n
||x||_2^2)) ||x||^2 <= (1 - 1/n) ||x||^2`` on a block of ``n`` entries (Karimireddy et al. 2019,
Lemma 8); it never raises the norm (``||x||_1 / sqrt(n) <= ||x||_2``, Cauchy-Schwarz), so
client-level DP accepts it without error feedback; not offered on the downlink (the sign of a
model, not of an update, would destroy it).

References:
  S. P. Karimireddy, Q. Rebjock, S. U. Stich, M. Jaggi. "Error Feedback Fixes SignSGD and other
  Gradient Compression Schemes", ICML 2019, Algorithm 1 (the scaled sign ``||p||_1 / d
  sign(p)``) and Lemma 8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedbench.compression.buckets import SCALE_BITS, bucket_count, buckets, unbucket
from fedbench.compression.piece import Quantizer, Settings, check_integer


def scaled_sign(values: jax.Array, bucket_size: int | None = None) -> jax.Array:
    """The scaled sign of ``values`` (1-D) per bucket: the decoded values."""
    grid, counts = buckets(values, bucket_size)
    entries = jnp.asarray(counts, grid.dtype)[:, None]  # the last bucket may be short
    scale = jnp.sum(jnp.abs(grid), axis=1, keepdims=True) / entries
    decoded = jnp.where(grid >= 0, scale, -scale)
    return unbucket(decoded, values.shape[0], values.dtype)


def encode(settings: Settings, values: jax.Array, key: jax.Array | None) -> jax.Array:
    del key  # deterministic
    return scaled_sign(values, settings["bucket_size"])


def bits(settings: Settings, entries: int) -> int:
    """One bit per entry plus ``32 * num_buckets``."""
    return entries + SCALE_BITS * bucket_count(entries, settings["bucket_size"])


def check(settings: Settings, prefix: str) -> None:
    check_integer(settings, "bucket_size", prefix, 1, optional=True)


PIECE = Quantizer(
    name="signsgd",
    encode=encode,
    bits=bits,
    uses_key=False,
    raises_norm=None,
    downlink=False,
    contraction=lambda settings, size: 1.0 - 1.0 / size,
    check=check,
    configure=lambda settings: {"bucket_size": settings["bucket_size"]},
)
