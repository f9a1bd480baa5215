"""What the sparsifiers (``topk``, ``randk``) share: how many entries of a block (a tensor, or
the whole model) a client sends, their settings, and the bits of their positions.

A sparsified message is ``k`` values plus their positions. The positions cost the smaller of two
encodings (:func:`position_bits`): a list of ``k`` indices of ``ceil(log2 d)`` bits each, or a
``d``-bit bitmap; nothing when every entry is kept (the block is sent dense).

References:
  S. U. Stich, J.-B. Cordonnier, M. Jaggi. "Sparsified SGD with Memory", NeurIPS 2018
  (top-k and rand-k, Definition 2.1 and Sec. 2).
  J. Wangni, J. Wang, J. Liu, T. Zhang. "Gradient Sparsification for Communication-Efficient
  Distributed Optimization", NeurIPS 2018 (unbiased random sparsification, rescaled by d/k).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fedbench.compression.piece import Settings, check_integer
from fedbench.errors import ConfigError


def kept_entries(size: int, fraction: float | None, k: int | None) -> int:
    """How many of ``size`` entries a block keeps: ``k`` if set (at most ``size``), else
    ``fraction * size`` rounded to the nearest integer, at least 1."""
    if k is not None:
        return min(int(k), size)
    return min(size, max(1, int(fraction * size + 0.5)))


def index_width(size: int) -> int:
    """``ceil(log2(size))``: the bits of one index into a block of ``size`` entries."""
    return (size - 1).bit_length()


def position_bits(size: int, kept: int) -> int:
    """Bits that say which ``kept`` of ``size`` entries a message carries: the smaller of
    ``kept`` indices of :func:`index_width` bits and a ``size``-bit bitmap; 0 if all are kept."""
    if kept >= size:
        return 0
    return min(kept * index_width(size), size)


def top_k_indices(block: jax.Array, kept: int) -> jax.Array:
    """Indices of the ``kept`` entries of largest magnitude (ties: the lower index first)."""
    return jax.lax.top_k(jnp.abs(block), kept)[1]


def rand_k_indices(key: jax.Array, size: int, kept: int) -> jax.Array:
    """``kept`` distinct indices into ``size`` entries, uniformly at random."""
    return jax.random.choice(key, size, (kept,), replace=False)


# -- what a sparsifier piece declares from these -------------------------------------------------
def kept(settings: Settings, size: int) -> int:
    """:func:`kept_entries` of the settings' ``fraction`` and ``k``."""
    return kept_entries(size, settings["fraction"], settings["k"])


def bits(settings: Settings, size: int) -> int:
    """:func:`position_bits` of a block of ``size`` entries."""
    return position_bits(size, kept(settings, size))


def check(settings: Settings, prefix: str) -> None:
    """``k``: null or an integer >= 1; ``fraction`` in (0, 1] unless ``k`` is set."""
    check_integer(settings, "k", prefix, 1, optional=True)
    if "fraction" in settings:
        fraction = settings["fraction"]
        if settings.get("k") is None and (isinstance(fraction, bool)
                                          or not isinstance(fraction, (int, float))
                                          or not 0 < fraction <= 1):
            raise ConfigError(f"{prefix}.fraction", fraction, "a number in (0, 1] (or set k)")


def configure(settings: Settings) -> dict[str, Any]:
    """``k`` and ``fraction`` (a float, or None)."""
    fraction = settings["fraction"]
    return {"k": settings["k"], "fraction": None if fraction is None else float(fraction)}
