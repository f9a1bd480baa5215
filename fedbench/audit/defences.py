"""Defences applied to an observed update before the attacker sees it.

Each is a function ``(update, key) -> update`` so the attacks can be rerun on the defended
update unchanged (Zhu et al. 2019, Sec. 5: "Defense Strategies": noisy gradients, gradient
compression and sparsification, larger batches; larger batches and more local steps are
settings of :mod:`fedbench.audit.targets`, not transforms).

* :func:`gaussian_noise`: add ``N(0, variance)`` to every entry (Zhu et al., Fig. 7a, variances
  ``1e-4 .. 1e-1``); with ``clip`` it is the Gaussian mechanism applied at the client
  (local DP: clip to L2 norm ``clip``, then noise of standard deviation ``sigma * clip``,
  :func:`fedbench.privacy.mechanisms.clip_to_norm`).
* :func:`prune`: zero the ``ratio`` share of each tensor's entries of smallest magnitude
  (Zhu et al., Fig. 7b; the suite's top-k compressor keeping ``1 - ratio``,
  :class:`fedbench.compression.compressor.Compressor`).
* :func:`quantize`: the suite's stochastic uniform quantiser with ``bits`` bits per value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedbench.compression.compressor import Compressor
from fedbench.privacy.mechanisms import clip_to_norm

Params = Any
Defence = Callable[[Params, jax.Array], Params]


def gaussian_noise(update: Params, key: jax.Array, variance: float) -> Params:
    """``update + N(0, variance I)``, independent per entry."""
    leaves, treedef = jax.tree.flatten(update)
    keys = jax.random.split(key, len(leaves))
    noisy = [p + jnp.sqrt(variance) * jax.random.normal(k, p.shape, p.dtype)
             for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def local_dp(update: Params, key: jax.Array, clip: float, noise_multiplier: float) -> Params:
    """Clip to L2 norm ``clip`` then add ``N(0, (noise_multiplier * clip)^2)`` per entry."""
    clipped, _ = clip_to_norm(update, clip)
    return gaussian_noise(clipped, key, (noise_multiplier * clip) ** 2)


def prune(update: Params, ratio: float) -> Params:
    """Each tensor with its ``ratio`` share of smallest-magnitude entries set to zero."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio {ratio} must be in [0, 1)")
    if ratio == 0.0:
        return update
    sent, _ = Compressor(sparsifier="topk", fraction=1.0 - ratio).compress(update)
    return sent


def quantize(update: Params, key: jax.Array, bits: int) -> Params:
    """Stochastic uniform quantisation with ``2^bits`` levels per tensor (unbiased)."""
    sent, _ = Compressor(quantizer="quantize", bits=bits).compress(update, key)
    return sent


def build_defence(name: str, strength: float) -> Defence:
    """``none``, ``noise`` (variance), ``prune`` (ratio) or ``quantize`` (bits) as a defence."""
    if name == "none":
        return lambda update, key: update
    if name == "noise":
        return lambda update, key: gaussian_noise(update, key, strength)
    if name == "prune":
        return lambda update, key: prune(update, strength)
    if name == "quantize":
        return lambda update, key: quantize(update, key, int(strength))
    raise ValueError(f"unknown defence {name!r}: none, noise, prune or quantize")
