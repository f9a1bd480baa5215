"""An exact counter of the bits clients upload, kept in the server state.

JAX runs without 64-bit integers by default and a float32 sum is exact only up to ``2^24``, so
the counter is two int32 limbs ``[high, low]`` worth ``high * 2^16 + low`` (``0 <= low < 2^16``):
exact up to ``2^47`` bits (16 TiB). Each message is at most ``2^31 - 1`` bits
(:data:`fedbench.compression.compressor.MAX_MESSAGE_BITS`) and a round adds at most 32,767
messages, so no partial sum overflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_LOW_BITS = 16
_LOW_MASK = (1 << _LOW_BITS) - 1


def zero_bits() -> jax.Array:
    """An empty counter."""
    return jnp.zeros((2,), jnp.int32)


def add_bits(counter: jax.Array, bits: jax.Array, valid: jax.Array) -> jax.Array:
    """``counter`` plus the ``bits`` of the messages where ``valid`` (both ``[cohort]``)."""
    bits = jnp.where(valid, bits.astype(jnp.int32), 0)
    low = counter[1] + jnp.sum(bits & _LOW_MASK)
    high = counter[0] + jnp.sum(bits >> _LOW_BITS) + (low >> _LOW_BITS)
    return jnp.stack([high, low & _LOW_MASK])


def total_bits(counter) -> int:
    """The counter's value as a Python ``int``."""
    high, low = (int(v) for v in np.asarray(counter))
    return (high << _LOW_BITS) + low
