"""Reconstruction quality: MSE, PSNR and SSIM (``dm-pix``), with batch order matched.

Images are compared in ``[0, 1]`` (the reconstruction clipped to it, as it would be shown).
A reconstructed batch comes in any order, so each reconstruction is paired with an original by
the assignment of least total MSE (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``;
Geiping et al. 2020 likewise score batches order-free).

References:
  PSNR: ``10 log10(1 / MSE)`` for images in ``[0, 1]``.
  Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli. "Image Quality Assessment: From Error
  Visibility to Structural Similarity", IEEE TIP 13(4), 2004, eq. 13 (SSIM with a Gaussian
  window of sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``); the window is 11 pixels, or the largest odd
  size that fits a smaller image (7 for 8x8 digits).
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment


def ssim_window(height: int, width: int) -> int:
    """The SSIM window size: 11, or the largest odd size not above the image's smaller side."""
    side = min(11, height, width)
    return side if side % 2 == 1 else side - 1


def pairwise_mse(recon: jax.Array, original: jax.Array) -> jax.Array:
    """``[B, B]``: MSE of reconstruction ``i`` against original ``j``."""
    diff = recon[:, None] - original[None, :]
    return jnp.mean(diff.reshape(diff.shape[0], diff.shape[1], -1) ** 2, axis=-1)


def match_order(recon: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Indices ``perm`` such that ``recon[perm[j]]`` is paired with ``original[j]``."""
    cost = np.asarray(pairwise_mse(jnp.asarray(recon), jnp.asarray(original)))
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(cols), dtype=int)
    perm[cols] = rows
    return perm


def image_metrics(recon: jax.Array, original: jax.Array) -> dict[str, jax.Array]:
    """Per-image ``mse``, ``psnr`` and ``ssim`` of paired ``[B, H, W, C]`` images in ``[0, 1]``
    (``recon`` clipped to ``[0, 1]``); jit- and vmap-friendly (no matching)."""
    recon = jnp.clip(recon, 0.0, 1.0)
    mse = jnp.mean((recon - original).reshape(recon.shape[0], -1) ** 2, axis=-1)
    window = ssim_window(recon.shape[1], recon.shape[2])
    return {
        "mse": mse,
        "psnr": pix.psnr(recon, original),
        "ssim": pix.ssim(recon, original, max_val=1.0, filter_size=window),
    }


def batch_metrics(recon: np.ndarray, original: np.ndarray) -> dict[str, float]:
    """Mean ``mse``, ``psnr``, ``ssim`` over a batch after :func:`match_order`."""
    recon = np.clip(np.asarray(recon), 0.0, 1.0)
    perm = match_order(recon, np.asarray(original))
    per_image = image_metrics(jnp.asarray(recon[perm]), jnp.asarray(original))
    return {k: float(np.mean(np.asarray(v))) for k, v in per_image.items()}


def to_unit_range(x, lo, hi) -> np.ndarray:
    """``(x - lo) / (hi - lo)`` per pixel: model inputs (e.g. standardised pixels) mapped to
    ``[0, 1]`` by each pixel's range over the training inputs (``lo``, ``hi``: scalars or arrays
    of the image's shape), so metrics are on the scale of an image; constant pixels map to 0."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    span = hi - lo
    return np.where(span > 0, (np.asarray(x) - lo) / np.where(span > 0, span, 1.0), 0.0)
