"""Buckets shared by the quantisers: a 1-D vector of values cut into buckets of ``bucket_size``
consecutive entries (``None``: one bucket), each with one float32 scale or norm.

References:
  D. Alistarh, D. Grubic, J. Li, R. Tomioka, M. Vojnovic. "QSGD: Communication-Efficient SGD via
  Gradient Quantization and Encoding", NeurIPS 2017, Sec. 3.1 (bucketing: one norm per bucket).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: Bits of one scale or norm (float32).
SCALE_BITS = 32


def bucket_count(entries: int, bucket_size: int | None) -> int:
    """How many buckets ``entries`` values are cut into (the last may be short)."""
    size = entries if bucket_size is None else min(bucket_size, entries)
    return -(-entries // size)


def buckets(values: jax.Array, bucket_size: int | None) -> tuple[jax.Array, np.ndarray]:
    """``values`` as ``[num_buckets, size]`` (the last bucket zero-padded) and the number of
    real entries in each bucket."""
    n = values.shape[0]
    size = n if bucket_size is None else min(bucket_size, n)
    num = -(-n // size)
    counts = np.full((num,), size)
    counts[-1] = n - (num - 1) * size
    return jnp.pad(values, (0, num * size - n)).reshape(num, size), counts


def unbucket(buckets: jax.Array, n: int, dtype) -> jax.Array:
    """The first ``n`` entries of ``buckets``, flattened, as ``dtype``."""
    return buckets.reshape(-1)[:n].astype(dtype)
