"""The small sigmoid LeNet of Zhu et al.'s gradient-inversion experiments.

L. Zhu, Z. Liu, S. Han. "Deep Leakage from Gradients", NeurIPS 2019, Sec. 4.1: "we replace
activation ReLU to Sigmoid and remove strides" is their wording for the image experiments' LeNet
variant, which has three 5x5 convolutions of 12 channels (padding 2; strides 2, 2, 1), sigmoid
after each, and one dense classifier; weights and biases are drawn uniformly from
``[-0.5, 0.5]``. The model is twice differentiable everywhere (sigmoid, no max-pool), which the
second-order L-BFGS attack needs.

On 8x8 digits the feature map is ``2x2x12 = 48`` units before the classifier (on 32x32 CIFAR
images, as in the paper, it is ``8x8x12 = 768``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedbench.model import im2col_conv


def uniform_init(scale: float = 0.5):
    """Initialiser drawing from ``U[-scale, scale]`` (Zhu et al.'s ``weights_init``)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def strided_conv(x: jax.Array, kernel: jax.Array, stride: int, im2col: bool) -> jax.Array:
    """5x5 convolution with padding 2 and ``stride``: XLA's convolution, or (``im2col``) the
    stride-1 SAME convolution as one matmul (:func:`fedbench.model.im2col_conv`, several times
    faster on CPU under ``vmap``) sampled at every ``stride``-th position, which is the same
    thing for an odd kernel with ``(k - 1) / 2`` padding."""
    if im2col:
        return im2col_conv(x, kernel)[:, ::stride, ::stride]
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((2, 2), (2, 2)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class SigmoidLeNet(nn.Module):
    """Zhu et al.'s LeNet: conv(12, 5x5, s2) - sigmoid - conv(12, s2) - sigmoid - conv(12, s1)
    - sigmoid - dense(num_classes); inputs ``[B, H, W]`` or ``[B, H, W, C]``."""

    num_classes: int = 10
    channels: int = 12
    im2col: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 3:
            x = x[..., None]
        init = uniform_init()
        for i, stride in enumerate((2, 2, 1)):
            kernel = self.param(f"conv{i}_kernel", init, (5, 5, x.shape[-1], self.channels))
            bias = self.param(f"conv{i}_bias", init, (self.channels,))
            x = nn.sigmoid(strided_conv(x, kernel, stride, self.im2col) + bias)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, kernel_init=init, bias_init=init)(x)
