"""Value quantisers: how the values of a block (or of a sparsifier's kept entries) are encoded.

Each takes a 1-D vector of values, cuts it into buckets of ``bucket_size`` consecutive entries
(``None``: one bucket), and returns the values the server decodes together with the exact size
of the encoding in bits (a Python ``int``: it depends on shapes and settings only). Every scale
or norm is sent as one float32 per bucket.

References:
  D. Alistarh, D. Grubic, J. Li, R. Tomioka, M. Vojnovic. "QSGD: Communication-Efficient SGD via
  Gradient Quantization and Encoding", NeurIPS 2017, Sec. 3.1 (Q_s, Lemma 3.1) and bucketing.
  S. P. Karimireddy, Q. Rebjock, S. U. Stich, M. Jaggi. "Error Feedback Fixes SignSGD and other
  Gradient Compression Schemes", ICML 2019, Algorithm 1 (the scaled sign ``||p||_1 / d sign(p)``).
  A. T. Suresh, F. X. Yu, S. Kumar, H. B. McMahan. "Distributed Mean Estimation with Limited
  Communication", ICML 2017, Sec. 3 (stochastic k-level quantisation, unbiased by randomised
  rounding).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: Bits of one scale or norm (float32).
SCALE_BITS = 32


def _buckets(values: jax.Array, bucket_size: int | None) -> tuple[jax.Array, np.ndarray]:
    """``values`` as ``[num_buckets, size]`` (the last bucket zero-padded) and the number of
    real entries in each bucket."""
    n = values.shape[0]
    size = n if bucket_size is None else min(bucket_size, n)
    num = -(-n // size)
    counts = np.full((num,), size)
    counts[-1] = n - (num - 1) * size
    return jnp.pad(values, (0, num * size - n)).reshape(num, size), counts


def _unbucket(buckets: jax.Array, n: int, dtype) -> jax.Array:
    return buckets.reshape(-1)[:n].astype(dtype)


def stochastic_uniform(values: jax.Array, key: jax.Array, bits: int,
                       bucket_size: int | None = None) -> tuple[jax.Array, int]:
    """Unbiased ``bits``-bit quantisation: ``2^bits`` evenly spaced levels on ``[-m, m]``,
    ``m = max |v|`` of the bucket, each value rounded to one of its two neighbouring levels with
    probabilities that make the expectation exact (randomised rounding).

    Returns:
      ``(decoded, size_bits)``: ``size_bits = bits * n + 32 * num_buckets``.
    """
    buckets, counts = _buckets(values, bucket_size)
    levels = 2**bits - 1
    m = jnp.max(jnp.abs(buckets), axis=1, keepdims=True)
    step = 2.0 * m / levels
    safe = jnp.where(step > 0, step, 1.0)
    position = (buckets + m) / safe  # in [0, levels]
    u = jax.random.uniform(key, buckets.shape, buckets.dtype)
    q = jnp.clip(jnp.floor(position + u), 0, levels)
    decoded = jnp.where(step > 0, -m + q * step, 0.0)
    size_bits = bits * values.shape[0] + SCALE_BITS * len(counts)
    return _unbucket(decoded, values.shape[0], values.dtype), size_bits


def qsgd(values: jax.Array, key: jax.Array, levels: int,
         bucket_size: int | None = None) -> tuple[jax.Array, int]:
    """QSGD's ``Q_s`` per bucket (Alistarh et al. 2017, Eq. in Sec. 3.1):
    ``Q_s(v_i) = ||v||_2 sign(v_i) xi_i(v, s)``, ``xi_i = l / s`` or ``(l + 1) / s`` with
    ``l = floor(|v_i| s / ||v||_2)``, rounded up with probability ``|v_i| s / ||v||_2 - l``.

    Unbiased, with ``E||Q_s(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2`` per bucket of
    ``d`` entries (Lemma 3.1). Encoded with fixed widths (the paper's Elias coding would be
    shorter for sparse outputs): one float32 norm per bucket, and per entry a sign bit and
    ``ceil(log2(s + 1))`` bits for its level ``0..s``.

    Returns:
      ``(decoded, size_bits)``.
    """
    buckets, counts = _buckets(values, bucket_size)
    norm = jnp.sqrt(jnp.sum(jnp.square(buckets), axis=1, keepdims=True))
    safe = jnp.where(norm > 0, norm, 1.0)
    ratio = jnp.abs(buckets) / safe * levels  # in [0, s]
    u = jax.random.uniform(key, buckets.shape, buckets.dtype)
    level = jnp.clip(jnp.floor(ratio + u), 0, levels)
    decoded = jnp.sign(buckets) * norm * level / levels
    per_entry = 1 + int(levels).bit_length()
    size_bits = per_entry * values.shape[0] + SCALE_BITS * len(counts)
    return _unbucket(decoded, values.shape[0], values.dtype), size_bits


def scaled_sign(values: jax.Array, bucket_size: int | None = None) -> tuple[jax.Array, int]:
    """EF-SignSGD's compressor (Karimireddy et al. 2019, Algorithm 1): ``(||p||_1 / d) sign(p)``
    per bucket of ``d`` entries (sign(0) is sent as +). One bit per entry plus one float32 per
    bucket. Biased: use it with error feedback.

    Returns:
      ``(decoded, size_bits)``.
    """
    buckets, counts = _buckets(values, bucket_size)
    entries = jnp.asarray(counts, buckets.dtype)[:, None]  # the last bucket may be short
    scale = jnp.sum(jnp.abs(buckets), axis=1, keepdims=True) / entries
    decoded = jnp.where(buckets >= 0, scale, -scale)
    size_bits = values.shape[0] + SCALE_BITS * len(counts)
    return _unbucket(decoded, values.shape[0], values.dtype), size_bits
