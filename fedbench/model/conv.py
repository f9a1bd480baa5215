"""A SAME convolution whose forward pass and both gradients are plain NHWC convolutions
(``conv_impl=hybrid``).

Why: on XLA:CPU a plain convolution inside a compiled loop (every local step runs in one) is as
fast as outside, but the kernel gradient that autodiff derives (a convolution with the batch as
a grouped dimension) runs an order of magnitude slower there, and an im2col matmul for it
(``patches^T @ dy``) runs at less than half the matmul peak (``benchmarks/NOTES.md``). So the
gradients are written as plain convolutions:

* input gradient: for a stride-1 SAME convolution with an odd ``kh x kw`` kernel, the SAME
  convolution of ``dy`` with the kernel flipped in both spatial axes and its input and output
  channels swapped (the transposed convolution);
* kernel gradient: ``dK[i, j, c, o] = sum_{b, h, w} xpad[b, h+i, w+j, c] dy[b, h, w, o]``, which
  is a VALID convolution of the padded input with channels as the batch (``[Cin, H, W, B]``) by
  ``dy`` as the kernel (``[H, W, B, Cout]``), giving ``[Cin, kh, kw, Cout]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMS)


def _kernel_grad(x: jax.Array, dy: jax.Array, kh: int, kw: int) -> jax.Array:
    """``[kh, kw, Cin, Cout]``: the SAME convolution's kernel gradient, as one plain
    convolution over ``x`` with channels as the batch (module docstring)."""
    top, left = (kh - 1) // 2, (kw - 1) // 2
    out = jax.lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1),
        ((top, kh - 1 - top), (left, kw - 1 - left)), dimension_numbers=_DIMS)
    return out.transpose(1, 2, 0, 3)


@jax.custom_vjp
def hybrid_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride-1 convolution, ``[B, H, W, Cin] x [kh, kw, Cin, Cout] -> [B, H, W, Cout]``
    (odd ``kh``, ``kw``); the value of ``lax.conv_general_dilated``."""
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"hybrid_conv needs an odd kernel size, got {kernel.shape[:2]}")
    return _conv(x, kernel)


def _forward(x, kernel):
    return hybrid_conv(x, kernel), (x, kernel)


def _backward(residuals, dy):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    dx = _conv(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return dx, _kernel_grad(x, dy, kh, kw)


hybrid_conv.defvjp(_forward, _backward)
