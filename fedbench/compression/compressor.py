"""A configured compressor: an optional sparsifier, then an optional value quantiser, with
optional error feedback, as an :class:`~fedbench.transforms.UpdateTransform`.

The pieces are looked up by name in the registry (:mod:`fedbench.compression.registry`); what
each does and declares lives in its own file (``fedbench/compression/<name>.py``), and nothing
here tests a name. The model delta is cut into blocks (each tensor, or the whole model
flattened: ``per_tensor``). In each block a sparsifier picks ``kept`` entries (its ``select``),
a quantiser encodes the values that are sent (all of the block's without a sparsifier), and the
server decodes them into a dense delta (multiplied by the sparsifier's ``rescale``, if any).
``info["bits"]`` is the exact size of the client's message: per block the sparsifier's position
bits plus the values (32 bits each unquantised, else the quantiser's ``bits``). It depends on
shapes and settings only.

With ``error_feedback`` each client keeps its residual ``e`` in the per-client store (zeros at
first) and sends ``C(delta + e)``, keeping ``e <- (delta + e) - C(delta + e)``; a client that is
not sampled (or whose update is dropped) keeps its residual unchanged. Error feedback needs a
contractive compressor, ``E||C(x) - x||^2 <= (1 - d) ||x||^2`` with ``d > 0`` (Stich et al.
2018, Definition 2.1; Karimireddy et al. 2019, Assumption A): a sparsifier under it sends its
values unscaled (``rescale`` declares None there: Stich et al.'s rand-k), and a quantiser is
accepted only where its bound (its ``contraction``, or ``omega`` of ``E||Q(x) - x||^2 <= omega
||x||^2`` below 1) holds for every bucket of the model (:meth:`Compressor.contraction`), else
refused (:meth:`Compressor.check_error_feedback`).

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

from fedbench.compression.piece import Quantizer, Sparsifier
from fedbench.compression.registry import lookup
from fedbench.errors import ConfigError
from fedbench.transforms import UpdateTransform

#: A message's bits are counted in int32 (:mod:`fedbench.compression.traffic`).
MAX_MESSAGE_BITS = 2**31 - 1

Params = Any


@dataclasses.dataclass(frozen=True)
class Compressor:
    """One client's compression of its model delta (settings: ``conf/compression/*.yaml``).

    Attributes:
      sparsifier: a registered sparsifier's name (``topk``, ``randk``) or None (every entry).
      quantizer: a registered quantiser's name (``quantize``, ``qsgd``, ``signsgd``) or None
        (values sent as they are).
      fraction: share of each block's entries a sparsifier keeps (rounded, at least 1).
      k: entries kept per block, if set (instead of ``fraction``; at most the block's size).
      per_tensor: blocks are the model's tensors (True) or the whole model flattened (False).
      bits: ``quantize``'s bits per value.
      levels: ``qsgd``'s ``s``.
      bucket_size: entries per quantiser bucket (one scale or norm each); None: one per block.
      error_feedback: keep and add back the residual (Stich et al. 2018).
      options: ``(key, value)`` pairs of settings of a piece's own, beyond the ones above.
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
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def pieces(self) -> tuple[Sparsifier | None, Quantizer | None]:
        """The registered sparsifier and quantiser (each or None)."""
        return lookup(self.sparsifier, "sparsifier"), lookup(self.quantizer, "quantizer")

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting as one mapping: what each piece's functions are given."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("sparsifier", "quantizer", "options")}
        return {**fields, **dict(self.options)}

    @property
    def needs_key(self) -> bool:
        """Whether the compression is random (needs ``round_info["key"]``)."""
        return any(piece is not None and piece.uses_key for piece in self.pieces)

    @property
    def name(self) -> str:
        return "+".join(n for n in (self.sparsifier, self.quantizer) if n) or "none"

    # -- one block --------------------------------------------------------------------------
    def _block(self, block: jax.Array, key: jax.Array | None) -> tuple[jax.Array, int]:
        sparsifier, quantizer = self.pieces
        settings = self.settings
        size = block.shape[0]
        select_key, value_key = jax.random.split(key) if key is not None else (None, None)
        indices, kept, bits = None, size, 0
        if sparsifier is not None:
            kept = sparsifier.kept(settings, size)
            bits = sparsifier.bits(settings, size)
            if kept < size:
                indices = sparsifier.select(settings, block, kept, select_key)
        values = block if indices is None else block[indices]
        if quantizer is not None:
            values = quantizer.encode(settings, values, value_key)
            bits += quantizer.bits(settings, kept)
        else:
            bits += kept * jnp.dtype(block.dtype).itemsize * 8
        if indices is None:
            return values, bits
        scale = sparsifier.rescale(settings, size, kept)
        if scale is not None:
            values = values * jnp.asarray(scale, values.dtype)  # e.g. rand-k's d / k: unbiased
        return jnp.zeros_like(block).at[indices].set(values), bits

    # -- declarations -------------------------------------------------------------------------
    @property
    def raises_norm(self) -> str | None:
        """Why this compressor's output can have a larger L2 norm than its input (client-level
        DP's noise is calibrated to the clip, so such a compressor is refused there), or None.

        An error-feedback residual adds what earlier rounds left out; otherwise each piece
        declares its own (``raises_norm`` in its file): top-k keeps a subset of the entries, the
        scaled sign sends ``mean|x| sign(x)`` of norm ``||x||_1 / sqrt(n) <= ||x||_2``, neither
        raises it; rescaled rand-k and the unbiased quantisers (``E||Q(x)||^2 = ||x||^2 +
        E||Q(x) - x||^2``) can."""
        if self.error_feedback:
            return "its error-feedback residual is added back to the clipped update"
        for piece in self.pieces:
            if piece is not None and piece.raises_norm is not None:
                return piece.raises_norm
        return None

    def variance_bound(self, entries: int) -> float:
        """``omega`` of the quantiser on ``entries`` values: ``E||Q(x) - x||^2 <= omega
        ||x||^2``, as its file declares (0 without a quantiser or for a biased one, e.g. the
        scaled sign, handled by :meth:`contraction`)."""
        quantizer = self.pieces[1]
        if quantizer is None or quantizer.variance_bound is None or entries == 0:
            return 0.0
        return quantizer.variance_bound(self.settings, entries)

    def contraction(self, shapes) -> float:
        """The worst block's ``1 - d`` bound of ``E||C(x) - x||^2 / ||x||^2`` for a model of
        ``shapes`` (below 1: contractive, error feedback may wrap it). A sparsifier (unscaled
        under error feedback) keeps ``k`` of ``n`` entries (``1 - k / n``, in expectation for
        rand-k; at most that for top-k); an unbiased quantiser of the kept values adds ``omega k
        / n``; a biased quantiser declares its own bound (the scaled sign: ``1 - 1 / n``,
        Karimireddy et al. 2019, Lemma 8)."""
        sparsifier, quantizer = self.pieces
        settings = self.settings
        leaves = [int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(shapes)]
        blocks = leaves if self.per_tensor else [sum(leaves)]
        worst = 0.0
        for n in blocks:
            kept = n if sparsifier is None else sparsifier.kept(settings, n)
            if quantizer is not None and quantizer.contraction is not None:
                bound = quantizer.contraction(settings, n)
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
