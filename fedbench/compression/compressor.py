"""A configured compressor: an optional sparsifier, then an optional value quantiser, with
optional error feedback, as an :class:`~fedbench.transforms.UpdateTransform`.

The model delta is cut into blocks (each tensor, or the whole model flattened: ``per_tensor``).
In each block a sparsifier (``topk``, ``randk``) picks ``k`` entries, a quantiser (``quantize``,
``qsgd``, ``signsgd``) encodes the values that are sent (all of the block's without a
sparsifier), and the server decodes them into a dense delta (``randk``'s values rescaled by
``d / k``). ``info["bits"]`` is the exact size of the client's message: per block the positions
(:func:`~fedbench.compression.sparsify.position_bits`) plus the values (32 bits each unquantised,
else the quantiser's count). It depends on shapes and settings only.

With ``error_feedback`` each client keeps its residual ``e`` in the per-client store (zeros at
first) and sends ``C(delta + e)``, keeping ``e <- (delta + e) - C(delta + e)``; a client that is
not sampled (or whose update is dropped) keeps its residual unchanged. Error feedback needs a
contractive compressor, ``E||C(x) - x||^2 <= (1 - d) ||x||^2`` with ``d > 0`` (Stich et al.
2018, Definition 2.1; Karimireddy et al. 2019, Assumption A): under it ``randk`` sends its ``k``
values unscaled (Stich et al.'s rand-k; the ``d / k`` rescaling makes it expansive and the
residual grows), and a quantiser is accepted only where its variance bound ``omega`` (``E||Q(x)
- x||^2 <= omega ||x||^2``) is below 1 for every bucket of the model (:meth:`Compressor.
contraction`), else refused (:meth:`Compressor.check_error_feedback`).

References:
  S. U. Stich, J.-B. Cordonnier, M. Jaggi. "Sparsified SGD with Memory", NeurIPS 2018,
  Algorithm 1 (error feedback / memory).
  S. P. Karimireddy, Q. Rebjock, S. U. Stich, M. Jaggi. "Error Feedback Fixes SignSGD and other
  Gradient Compression Schemes", ICML 2019, Algorithm 2 (EF-SGD with any compressor).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fedbench.compression import quantize as quantizers
from fedbench.compression.sparsify import (
    kept_entries,
    position_bits,
    rand_k_indices,
    top_k_indices,
)
from fedbench.errors import ConfigError
from fedbench.transforms import UpdateTransform

SPARSIFIERS = ("topk", "randk")
QUANTIZERS = ("quantize", "qsgd", "signsgd")
#: A message's bits are counted in int32 (:mod:`fedbench.compression.traffic`).
MAX_MESSAGE_BITS = 2**31 - 1

Params = Any


@dataclasses.dataclass(frozen=True)
class Compressor:
    """One client's compression of its model delta (settings: ``conf/compression/*.yaml``).

    Attributes:
      sparsifier: ``topk``, ``randk`` or None (every entry sent).
      quantizer: ``quantize``, ``qsgd``, ``signsgd`` or None (values sent as they are).
      fraction: share of each block's entries a sparsifier keeps (rounded, at least 1).
      k: entries kept per block, if set (instead of ``fraction``; at most the block's size).
      per_tensor: blocks are the model's tensors (True) or the whole model flattened (False).
      bits: ``quantize``'s bits per value.
      levels: ``qsgd``'s ``s``.
      bucket_size: entries per quantiser bucket (one scale or norm each); None: one per block.
      error_feedback: keep and add back the residual (Stich et al. 2018).
    """

    sparsifier: str | None = None
    quantizer: str | None = None
    fraction: float | None = None
    k: int | None = None
    per_tensor: bool = True
    bits: int = 8
    levels: int = 16
    bucket_size: int | None = None
    error_feedback: bool = False

    @property
    def needs_key(self) -> bool:
        """Whether the compression is random (needs ``round_info["key"]``)."""
        return self.sparsifier == "randk" or self.quantizer in ("quantize", "qsgd")

    @property
    def name(self) -> str:
        return "+".join(n for n in (self.sparsifier, self.quantizer) if n) or "none"

    # -- one block --------------------------------------------------------------------------
    def _block(self, block: jax.Array, key: jax.Array | None) -> tuple[jax.Array, int]:
        size = block.shape[0]
        select_key, value_key = jax.random.split(key) if key is not None else (None, None)
        indices, kept = None, size
        if self.sparsifier is not None:
            kept = kept_entries(size, self.fraction, self.k)
            if kept < size:
                indices = (top_k_indices(block, kept) if self.sparsifier == "topk"
                           else rand_k_indices(select_key, size, kept))
        values = block if indices is None else block[indices]
        if self.quantizer == "quantize":
            values, value_bits = quantizers.stochastic_uniform(values, value_key, self.bits,
                                                               self.bucket_size)
        elif self.quantizer == "qsgd":
            values, value_bits = quantizers.qsgd(values, value_key, self.levels, self.bucket_size)
        elif self.quantizer == "signsgd":
            values, value_bits = quantizers.scaled_sign(values, self.bucket_size)
        else:
            value_bits = kept * jnp.dtype(block.dtype).itemsize * 8
        bits = position_bits(size, kept) + value_bits
        if indices is None:
            return values, bits
        if self.sparsifier == "randk" and not self.error_feedback:
            values = values * jnp.asarray(size / kept, values.dtype)  # unbiased: E = block
        return jnp.zeros_like(block).at[indices].set(values), bits

    # -- declarations -------------------------------------------------------------------------
    @property
    def raises_norm(self) -> str | None:
        """Why this compressor's output can have a larger L2 norm than its input (client-level
        DP's noise is calibrated to the clip, so such a compressor is refused there), or None.

        Top-k keeps a subset of the entries and unscaled rand-k (under error feedback) too; the
        scaled sign sends ``mean|x| sign(x)`` per bucket, of norm ``||x||_1 / sqrt(n) <= ||x||_2``
        (Cauchy-Schwarz), so neither raises the norm. Rescaled rand-k multiplies the kept
        entries by ``d / k``; the unbiased quantisers add variance (``E||Q(x)||^2 = ||x||^2 +
        E||Q(x) - x||^2``); an error-feedback residual adds what earlier rounds left out."""
        if self.error_feedback:
            return "its error-feedback residual is added back to the clipped update"
        if self.sparsifier == "randk":
            return "rand-k rescales the kept entries by d / k"
        if self.quantizer in ("quantize", "qsgd"):
            return f"{self.quantizer} is unbiased: its rounding adds variance to the norm"
        return None

    def variance_bound(self, entries: int) -> float:
        """``omega`` of the quantiser on ``entries`` values: ``E||Q(x) - x||^2 <= omega
        ||x||^2`` (0 without a quantiser or for the scaled sign, which is biased and handled by
        :meth:`contraction`). QSGD: ``min(n / s^2, sqrt(n) / s)`` per bucket of ``n`` entries
        (Alistarh et al. 2017, Lemma 3.1); stochastic uniform ``b``-bit rounding between a
        bucket's min and max: each entry's variance is at most ``Delta^2 / 4`` with ``Delta =
        (max - min) / (2^b - 1)`` and ``(max - min)^2 <= 2 ||x||^2``, so ``n / (2 (2^b - 1)^2)``."""
        if self.quantizer not in ("quantize", "qsgd") or entries == 0:
            return 0.0
        n = entries if self.bucket_size is None else min(self.bucket_size, entries)
        if self.quantizer == "qsgd":
            return min(n / self.levels**2, np.sqrt(n) / self.levels)
        return n / (2.0 * (2**self.bits - 1) ** 2)

    def contraction(self, shapes) -> float:
        """The worst block's ``1 - d`` bound of ``E||C(x) - x||^2 / ||x||^2`` for a model of
        ``shapes`` (below 1: contractive, error feedback may wrap it). Top-k and unscaled rand-k
        keep ``k`` of ``n`` entries (``1 - k / n``, in expectation for rand-k; at most that for
        top-k); a quantiser of the kept values adds ``omega k / n``; the scaled sign alone is
        contractive (Karimireddy et al. 2019, Lemma 8: ``1 - ||x||_1^2 / (n ||x||_2^2) < 1``)."""
        leaves = [int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(shapes)]
        blocks = leaves if self.per_tensor else [sum(leaves)]
        worst = 0.0
        for n in blocks:
            kept = n if self.sparsifier is None else kept_entries(n, self.fraction, self.k)
            if self.quantizer == "signsgd":
                bound = 1.0 - 1.0 / n
            else:
                bound = 1.0 - kept / n + self.variance_bound(kept) * kept / n
            worst = max(worst, bound)
        return worst

    def check_error_feedback(self, shapes, key: str = "compression.error_feedback") -> None:
        """Refuses error feedback around a compressor that is not contractive for these shapes.

        Raises:
          ConfigError: naming ``key``, the compressor and its bound.
        """
        if not self.error_feedback:
            return
        bound = self.contraction(shapes)
        if bound >= 1.0:
            raise ConfigError(
                key, True,
                f"false for {self.name} on this model: error feedback needs a contractive "
                f"compressor, and its bound E||C(x) - x||^2 / ||x||^2 <= {bound:.3g} is not below "
                "1 (more bits or levels, or a smaller compression.bucket_size)")

    # -- one client's delta -----------------------------------------------------------------
    def compress(self, tree: Params, key: jax.Array | None = None) -> tuple[Params, int]:
        """``(decoded, bits)``: what the server reconstructs from the message and the message's
        exact size in bits (a Python ``int``)."""
        if self.needs_key and key is None:
            raise ValueError(f"compression {self.name} is random: round_info needs a per-client "
                             "'key' (Simulator.client_update adds one)")
        if self.per_tensor:
            leaves, treedef = jax.tree.flatten(tree)
            blocks = [leaf.reshape(-1) for leaf in leaves]
        else:
            flat, unravel = ravel_pytree(tree)
            blocks = [flat]
        decoded, bits = [], 0
        for i, block in enumerate(blocks):
            block_key = None if key is None else jax.random.fold_in(key, i)
            out, block_bits = self._block(block, block_key)
            decoded.append(out)
            bits += int(block_bits)
        if bits > MAX_MESSAGE_BITS:
            raise ValueError(f"a compressed message of {bits} bits is too large to count "
                             f"(at most {MAX_MESSAGE_BITS})")
        if self.per_tensor:
            shaped = [out.reshape(leaf.shape) for out, leaf in zip(decoded, leaves)]
            return jax.tree.unflatten(treedef, shaped), bits
        return unravel(decoded[0]), bits

    def message_bits(self, params: Params) -> int:
        """The size in bits of one client's message for a model shaped like ``params``."""
        shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(np.shape(p), jnp.result_type(p)),
                              params)
        sizes = []

        def trace(tree):  # shapes only: nothing is computed
            sent, bits = self.compress(tree, jax.random.PRNGKey(0))
            sizes.append(bits)
            return sent

        jax.eval_shape(trace, shapes)
        return sizes[0]

    # -- as an update transform -------------------------------------------------------------
    def transform(self) -> UpdateTransform:
        """The compressor as an :class:`UpdateTransform` (state: the error-feedback residual, or
        ``()``; ``info["bits"]``: the message's size, int32)."""

        def init(params):
            return jax.tree.map(jnp.zeros_like, params) if self.error_feedback else ()

        def update(delta, residual, round_info):
            target = jax.tree.map(jnp.add, delta, residual) if self.error_feedback else delta
            sent, bits = self.compress(target, round_info.get("key"))
            if self.error_feedback:
                residual = jax.tree.map(jnp.subtract, target, sent)
            return sent, residual, {"bits": jnp.asarray(bits, jnp.int32)}

        return UpdateTransform(init, update)
