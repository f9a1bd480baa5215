"""Flax models, used functionally (``init`` / ``apply``) so client parameters can be stacked.

References:
  H. B. McMahan et al. "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017, Sec. 3: the "2NN" MLP (two hidden layers of 200 ReLU units) and the MNIST
  CNN (5x5 conv 32, 2x2 max-pool, 5x5 conv 64, 2x2 max-pool, dense 512 ReLU, dense softmax).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedbench.errors import ConfigError

MODELS = ("logreg", "mlp", "cnn", "cox", "semi")
#: ``model.norm``: a normalisation layer after every hidden layer (before its ReLU), or none.
NORMS = ("none", "group", "layer", "batch")
CONV_IMPLS = ("auto", "lax", "im2col", "hybrid")
#: Models added at run time by :func:`register`: ``model.name`` ->
#: ``builder(cfg, feature_shape, num_classes, task) -> flax.linen.Module``.
REGISTERED: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, builder: Callable[..., nn.Module]) -> None:
    """Adds ``builder`` as ``model.name=<name>`` for this process (a model defined outside
    ``fedbench/model``; ``docs/extending/model.md``). :func:`build_model` calls it as
    ``builder(cfg, feature_shape, num_classes, task)`` (``cfg``: the ``model`` config group;
    ``task``: ``classification`` or ``survival``; for survival ``num_classes`` is 1, one
    log-risk per example) and expects a Flax module without mutable collections:
    ``[B, *feature_shape]`` inputs to ``[B, num_classes]`` outputs. It checks its own
    settings, raising :class:`~fedbench.errors.ConfigError` for a bad one.

    Raises:
      ValueError: ``name`` is taken (a built-in model or one registered before).
    """
    if name in MODELS or name in REGISTERED:
        raise ValueError(f"a model named {name!r} exists already")
    REGISTERED[name] = builder


class LogReg(nn.Module):
    """Multinomial logistic regression on the flattened input."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, F...] -> [B, classes]
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class Cox(nn.Module):
    """Linear Cox proportional-hazards model: log-risk ``x @ beta`` (Cox 1972), ``[B, 1]``.

    No intercept: the partial likelihood does not depend on one (FLamby's Fed-TCGA-BRCA
    baseline is the same linear model; its bias receives zero gradient).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros)(
            x.reshape(x.shape[0], -1)
        )


def normalise(x: jax.Array, norm: str, groups: int, mask: jax.Array | None = None
              ) -> jax.Array:
    """``x`` through a fresh normalisation layer (``model.norm``): ``layer`` (LayerNorm over
    the features; Ba, Kiros, Hinton 2016), ``group`` (GroupNorm, ``groups`` groups of the last
    axis, statistics over them and the spatial axes; Wu & He, ECCV 2018), ``batch``
    (:class:`BatchNorm`: the batch's statistics in training, ``mask`` its real examples; the
    running statistics in evaluation, ``mask`` None), ``none``. LayerNorm and GroupNorm are per
    example, so a record's output never depends on the others in its batch (DP-SGD's
    per-example gradients stay per example); all three have a learned scale and bias."""
    if norm == "layer":
        return nn.LayerNorm()(x)
    if norm == "group":
        return nn.GroupNorm(num_groups=groups)(x)
    if norm == "batch":
        return BatchNorm()(x, mask)
    return x


class BatchNorm(nn.Module):
    """Batch normalisation (Ioffe & Szegedy, ICML 2015) with PyTorch's ``BatchNorm`` semantics,
    the layers of the FedBN paper's models.

    Training (``mask``: ``[B]`` bool, the batch's real examples): normalise with the batch's
    mean and biased variance over the real examples (and the spatial axes), and return, through
    the ``batch_stats`` collection (``mutable=["batch_stats"]``), the running statistics moved
    by ``momentum``: ``(1 - m) running + m batch``, the variance unbiased (``n / (n - 1)``).
    Evaluation (``mask`` None): normalise with the running statistics. The running ``mean`` and
    ``var`` are entries of the ``params`` collection, so they travel with the model (averaged by
    FedAvg, kept at each site by FedBN); they receive no gradient, and the local loop replaces
    them with the training pass's values after each step (:func:`fedbench.local.make_local_update`).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.param("mean", nn.initializers.zeros, (features,))
        running_var = self.param("var", nn.initializers.ones, (features,))
        if mask is None:
            mean, var = running_mean, jnp.maximum(running_var, 0.0)
        else:
            axes = tuple(range(x.ndim - 1))
            w = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (x.ndim - 1)),
                                 x.shape[:-1] + (1,)).astype(x.dtype)
            n = jnp.sum(w)
            mean = jnp.sum(w * x, axis=axes) / jnp.maximum(n, 1.0)
            var = jnp.sum(w * (x - mean) ** 2, axis=axes) / jnp.maximum(n, 1.0)
            unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
            m = self.momentum
            self.put_variable("batch_stats", "mean", (1 - m) * running_mean + m * mean)
            self.put_variable("batch_stats", "var", (1 - m) * running_var + m * unbiased)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


class MLP(nn.Module):
    """McMahan et al.'s 2NN: ``hidden`` ReLU layers (default two of 200) then a linear head;
    ``norm``: a normalisation layer before each ReLU (:func:`normalise`)."""

    num_classes: int
    hidden: Sequence[int] = (200, 200)
    norm: str = "none"
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(normalise(nn.Dense(width)(x), self.norm, self.groups, mask))
        return nn.Dense(self.num_classes)(x)


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride-1 convolution as one matmul over explicitly gathered patches.

    ``x``: ``[B, H, W, Cin]``; ``kernel``: ``[kh, kw, Cin, Cout]`` -> ``[B, H, W, Cout]``.
    XLA:CPU runs its convolution op several times slower inside ``lax.scan`` than outside, and
    turns vmapped convolutions into grouped ones; a pad, ``kh*kw`` static slices, a concat and a
    matmul avoid both (benchmarks/NOTES.md).
    """
    kh, kw, cin, cout = kernel.shape
    _, h, w, _ = x.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    xp = jnp.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    patches = jnp.concatenate(
        [xp[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=-1
    )
    return patches @ kernel.reshape(kh * kw * cin, cout)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, VALID (odd trailing rows/columns dropped), by reshape + max."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv5x5(nn.Module):
    """A 5x5 SAME convolution whose parameters are the same for both implementations."""

    features: int
    impl: str = "lax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (5, 5, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.impl == "im2col":
            y = im2col_conv(x, kernel)
        elif self.impl == "hybrid":
            from fedbench.model.conv import hybrid_conv

            y = hybrid_conv(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        return y + bias


class CNN(nn.Module):
    """McMahan et al.'s MNIST CNN for any ``[H, W, C]`` input with ``H, W >= 4``; ``norm``: a
    normalisation layer after each convolution and the hidden dense layer, before the ReLU (the
    places of the FedBN paper's BatchNorm layers; :func:`normalise`)."""

    num_classes: int
    conv_impl: str = "lax"
    norm: str = "none"
    groups: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if x.ndim == 3:
            x = x[..., None]
        for width in (32, 64):
            x = Conv5x5(width, self.conv_impl)(x)
            x = max_pool_2x2(nn.relu(normalise(x, self.norm, self.groups, mask)))
        x = nn.Dense(512)(x.reshape(x.shape[0], -1))
        x = nn.relu(normalise(x, self.norm, self.groups, mask))
        return nn.Dense(self.num_classes)(x)


def train_apply(model: nn.Module, params, x: jax.Array, valid: jax.Array):
    """``(outputs, running statistics)`` of ``model`` in training mode on a batch whose real
    examples are ``valid`` (:class:`BatchNorm`'s ``batch_stats``, by top-level module)."""
    out, variables = model.apply({"params": params}, x, valid, mutable=["batch_stats"])
    return out, variables["batch_stats"]


def check_norm(cfg: Mapping[str, Any], widths: Sequence[int]) -> tuple[str, int]:
    """``(norm, groups)`` of a model config whose normalised layers have ``widths`` features.

    Raises:
      ConfigError: an unknown ``model.norm``, or
        ``model.groups`` that does not divide every width under ``group``.
    """
    norm, groups = cfg.get("norm", "none"), cfg.get("groups", 8)
    if norm not in NORMS:
        raise ConfigError("model.norm", norm, "one of: " + ", ".join(NORMS))
    if norm == "group" and (isinstance(groups, bool) or not isinstance(groups, int)
                            or groups < 1 or any(w % groups for w in widths)):
        raise ConfigError("model.groups", groups,
                          f"an integer >= 1 dividing every normalised width {list(widths)}")
    return norm, int(groups)


def resolve_conv_impl(impl: str) -> str:
    """``auto`` picks ``hybrid`` on CPU (with ``cpu_fusions=auto``'s YNNPACK dots the fastest
    there, benchmarks/NOTES.md "W4: YNNPACK dots") and XLA's convolution elsewhere."""
    if impl not in CONV_IMPLS:
        raise ConfigError("model.conv_impl", impl, "one of: " + ", ".join(CONV_IMPLS))
    if impl == "auto":
        return "hybrid" if jax.default_backend() == "cpu" else "lax"
    return impl


def build_model(
    cfg: Mapping[str, Any],
    feature_shape: tuple[int, ...],
    num_classes: int,
    task: str = "classification",
) -> nn.Module:
    """Builds the model named by ``cfg["name"]`` after checking it fits the data and task.

    For ``survival`` data the model outputs one log-risk per example: ``cox`` (linear) or
    ``mlp`` (a nonlinear risk score, as in DeepSurv, Katzman et al. 2018).

    Raises:
      ConfigError: unknown name, or a model that cannot take the dataset's input shape or task.
    """
    name = cfg.get("name")
    if name in REGISTERED:
        outputs = 1 if task == "survival" else num_classes  # one log-risk per patient
        return REGISTERED[name](cfg, tuple(feature_shape), outputs, task)
    if name not in MODELS:
        raise ConfigError("model.name", name, "one of: " + ", ".join((*MODELS, *REGISTERED)))
    if task == "survival":
        if name not in ("cox", "mlp"):
            raise ConfigError("model.name", name, "cox or mlp for a survival dataset (one log-risk score per patient)")
        num_classes = 1
    elif name == "cox":
        raise ConfigError("model.name", name, "a classification model (logreg, mlp, cnn, semi): cox needs a survival dataset such as tcga_brca")
    if name == "cox":
        return Cox()
    if name == "logreg":
        return LogReg(num_classes)
    if name == "semi":  # per-site encoder, federated embedding, head (fedbench/model/semi.py)
        from fedbench.model.semi import build_semi

        return build_semi(cfg, num_classes)
    if name == "mlp":
        hidden = tuple(int(h) for h in cfg.get("hidden", (200, 200)))
        if any(h < 1 for h in hidden):
            raise ConfigError("model.hidden", list(hidden), "positive layer widths")
        return MLP(num_classes, hidden, *check_norm(cfg, hidden))
    if len(feature_shape) not in (2, 3) or min(feature_shape[:2]) < 4:
        raise ConfigError(
            "model.name",
            name,
            f"a model for this data: cnn needs images [H, W] or [H, W, C] with H, W >= 4, "
            f"but the dataset's inputs have shape {list(feature_shape)}; use logreg or mlp",
        )
    return CNN(num_classes, resolve_conv_impl(cfg.get("conv_impl", "auto")),
               *check_norm(cfg, (32, 64, 512)))
