"""``topk``: each client sends the ``k`` entries of largest magnitude of each block (``fraction``
of its entries, rounded, at least 1; or ``k``), with their positions (``ceil(log2 d)``-bit
indices or a ``d``-bit bitmap, whichever is smaller: :func:`~fedbench.compression.sparsify.
position_bits`).

Declared: deterministic (no key); it never raises the norm (it drops entries), so client-level
DP accepts it without error feedback; contractive, ``||C(x) - x||^2 <= (1 - k / d) ||x||^2``
(Stich et al. 2018, Definition 2.1), so error feedback may wrap it; not offered on the downlink
(dropping entries of a model, not of an update, would destroy it).

References:
  S. U. Stich, J.-B. Cordonnier, M. Jaggi. "Sparsified SGD with Memory", NeurIPS 2018
  (top-k, Definition 2.1 and Sec. 2).
"""

from __future__ import annotations

import jax

from fedbench.compression import sparsify
from fedbench.compression.piece import Settings, Sparsifier


def select(settings: Settings, block: jax.Array, kept: int, key: jax.Array | None) -> jax.Array:
    del settings, key  # deterministic
    return sparsify.top_k_indices(block, kept)


PIECE = Sparsifier(
    name="topk",
    kept=sparsify.kept,
    select=select,
    bits=sparsify.bits,
    uses_key=False,
    raises_norm=None,
    downlink=False,
    check=sparsify.check,
    configure=sparsify.configure,
)
