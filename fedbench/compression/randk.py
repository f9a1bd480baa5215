"""``randk``: each client sends ``k`` entries of each block chosen uniformly at random (its own
key each round), with their positions (as :mod:`~fedbench.compression.topk`), rescaled by
``d / k`` so the server's estimate is unbiased, ``E[C(x)] = x``.

Declared: random; the ``d / k`` rescaling can raise a clipped update's norm, so client-level DP
refuses it. Under error feedback it sends its ``k`` values unscaled (Stich et al.'s rand-k):
rescaled it is expansive and the residual grows, unscaled it is contractive in expectation,
``E||C(x) - x||^2 = (1 - k / d) ||x||^2``. Not offered on the downlink.

References:
  S. U. Stich, J.-B. Cordonnier, M. Jaggi. "Sparsified SGD with Memory", NeurIPS 2018
  (rand-k, Definition 2.1 and Sec. 2).
  J. Wangni, J. Wang, J. Liu, T. Zhang. "Gradient Sparsification for Communication-Efficient
  Distributed Optimization", NeurIPS 2018 (unbiased random sparsification, rescaled by d/k).
"""

from __future__ import annotations

import jax

from fedbench.compression import sparsify
from fedbench.compression.piece import Settings, Sparsifier


def select(settings: Settings, block: jax.Array, kept: int, key: jax.Array | None) -> jax.Array:
    del settings
    return sparsify.rand_k_indices(key, block.shape[0], kept)


def rescale(settings: Settings, size: int, kept: int) -> float | None:
    """``d / k`` (unbiased), or None under error feedback (contractive)."""
    return None if settings["error_feedback"] else size / kept


PIECE = Sparsifier(
    name="randk",
    kept=sparsify.kept,
    select=select,
    bits=sparsify.bits,
    rescale=rescale,
    uses_key=True,
    raises_norm="rand-k rescales the kept entries by d / k",
    downlink=False,
    check=sparsify.check,
    configure=sparsify.configure,
)
