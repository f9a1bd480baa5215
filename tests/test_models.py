"""Models: the im2col convolution and pooling against JAX/Flax's own ops, parameter counts
against McMahan et al. 2017, forward passes against plain NumPy, and input-shape checks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedbench.errors import ConfigError
from fedbench.model import CNN, build_model, im2col_conv, max_pool_2x2, resolve_conv_impl


def _count(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def _init_shapes(model: nn.Module, feature_shape: tuple[int, ...]):
    """The parameter tree's shapes, by tracing ``init`` only (no compilation)."""
    x = jax.ShapeDtypeStruct((1, *feature_shape), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def _random_params(model: nn.Module, feature_shape: tuple[int, ...], seed: int = 0):
    """Random parameters of the right shapes; compiling Flax's initialisers on a busy 2-core
    CPU costs seconds, and any values serve for comparing forward passes."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(np.float32)),
        _init_shapes(model, feature_shape),
    )


@pytest.mark.parametrize(
    "x_shape,k_shape",
    [
        ((2, 8, 8, 1), (5, 5, 1, 32)),  # digits-sized, the CNN's first layer
        ((3, 7, 9, 3), (5, 5, 3, 4)),  # odd, non-square
        ((2, 3, 5, 2), (5, 5, 2, 5)),  # kernel larger than the image
        ((2, 6, 5, 2), (4, 4, 2, 3)),  # even kernel: SAME pads one more at the end
    ],
)
def test_im2col_conv_equals_lax_same_convolution(x_shape, k_shape):
    # NumPy draws: compiling JAX's PRNG for every shape costs seconds on a busy CPU.
    rng = np.random.default_rng(sum(x_shape) * 31 + sum(k_shape))
    x = jnp.asarray(rng.normal(size=x_shape).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=k_shape).astype(np.float32))
    # jit: one compilation per shape instead of one per eager op.
    got = jax.jit(im2col_conv)(x, kernel)
    want = jax.jit(
        lambda a, b: jax.lax.conv_general_dilated(
            a,
            b,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
    )(x, kernel)
    assert got.shape == want.shape == x_shape[:3] + k_shape[-1:]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_im2col_conv_against_a_plain_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 4, 2)).astype(np.float32)
    k = rng.normal(size=(3, 3, 2, 1)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((1, 5, 4, 1))
    for i in range(5):
        for j in range(4):
            want[0, i, j, 0] = (xp[0, i : i + 3, j : j + 3, :] * k[..., 0]).sum()
    got = jax.jit(im2col_conv)(jnp.asarray(x), jnp.asarray(k))
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (3, 5, 4, 1), (1, 2, 3, 4)])
def test_max_pool_2x2_equals_flax_max_pool(shape):
    x = jnp.asarray(np.random.default_rng(shape[1] * 10 + shape[2]).normal(size=shape) - 0.5)
    got = jax.jit(max_pool_2x2)(x)
    want = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    assert got.shape == want.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("feature_shape", [(9, 7)])  # odd sizes; [H, W] input path
def test_cnn_im2col_and_lax_agree(feature_shape):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, *feature_shape)).astype(np.float32))
    lax_model = CNN(10, "lax")
    col_model = CNN(10, "im2col")
    # Same parameter tree: the implementations are interchangeable.
    lax_shapes = _init_shapes(lax_model, feature_shape)
    col_shapes = _init_shapes(col_model, feature_shape)
    assert jax.tree_util.tree_structure(lax_shapes) == jax.tree_util.tree_structure(col_shapes)
    assert [a.shape for a in jax.tree_util.tree_leaves(lax_shapes)] == [
        b.shape for b in jax.tree_util.tree_leaves(col_shapes)
    ]
    params = _random_params(lax_model, feature_shape, seed=2)
    with jax.default_matmul_precision("highest"):
        out_lax = jax.jit(lax_model.apply)(params, x)
        out_col = jax.jit(col_model.apply)(params, x)
    assert out_lax.shape == (4, 10)
    np.testing.assert_allclose(out_col, out_lax, rtol=1e-4, atol=1e-5)


def test_mlp_2nn_parameter_count_matches_mcmahan():
    # 784*200+200 + 200*200+200 + 200*10+10 = 199,210 (McMahan et al. 2017, Sec. 3).
    model = build_model({"name": "mlp", "hidden": [200, 200]}, (28, 28, 1), 10)
    assert _count(_init_shapes(model, (28, 28, 1))) == 199_210


def test_cnn_parameter_count_matches_mcmahan():
    # conv 5x5x1x32+32 = 832; conv 5x5x32x64+64 = 51,264; dense 7*7*64*512+512 = 1,606,144;
    # dense 512*10+10 = 5,130; total 1,663,370 (McMahan et al. 2017, Sec. 3).
    for impl in ("lax", "im2col"):
        model = build_model({"name": "cnn", "conv_impl": impl}, (28, 28, 1), 10)
        assert _count(_init_shapes(model, (28, 28, 1))) == 1_663_370


def test_logreg_parameter_count():
    model = build_model({"name": "logreg"}, (8, 8, 1), 10)
    assert _count(_init_shapes(model, (8, 8, 1))) == 64 * 10 + 10


@pytest.mark.parametrize("feature_shape", [(30,), (8, 8, 1), (5, 7), (2, 3, 4, 5), (3, 3, 1)])
def test_cnn_rejects_non_image_inputs_but_logreg_and_mlp_accept_them(feature_shape):
    is_image = len(feature_shape) in (2, 3) and min(feature_shape[:2]) >= 4
    if not is_image:
        with pytest.raises(ConfigError) as err:
            build_model({"name": "cnn", "conv_impl": "lax"}, feature_shape, 2)
        assert err.value.key == "model.name"
        assert "model.name='cnn'" in str(err.value)
        assert str(list(feature_shape)) in str(err.value)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *feature_shape)).astype(np.float32)
    flat = x.reshape(3, -1).astype(np.float64)

    logreg = build_model({"name": "logreg"}, feature_shape, 2)
    params = _random_params(logreg, feature_shape, seed=0)["params"]
    dense = params["Dense_0"]
    want = flat @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"])
    with jax.default_matmul_precision("highest"):
        got = jax.jit(logreg.apply)({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    mlp = build_model({"name": "mlp", "hidden": [6, 5]}, feature_shape, 2)
    params = _random_params(mlp, feature_shape, seed=1)["params"]
    h = flat
    for i in range(3):
        layer = params[f"Dense_{i}"]
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < 2:
            h = np.maximum(h, 0.0)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(mlp.apply)({"params": params}, jnp.asarray(x))
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)


def test_cnn_accepts_breast_cancer_shape_nowhere_and_names_alternatives():
    with pytest.raises(ConfigError) as err:
        build_model({"name": "cnn"}, (30,), 2)
    assert "logreg" in str(err.value) and "mlp" in str(err.value)


def test_model_config_errors():
    with pytest.raises(ConfigError) as err:
        build_model({"name": "resnet"}, (8, 8, 1), 10)
    assert err.value.key == "model.name" and "resnet" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_model({"name": "mlp", "hidden": [200, 0]}, (8, 8, 1), 10)
    assert err.value.key == "model.hidden"
    with pytest.raises(ConfigError) as err:
        resolve_conv_impl("fft")
    assert err.value.key == "model.conv_impl" and "fft" in str(err.value)
    assert resolve_conv_impl("lax") == "lax" and resolve_conv_impl("im2col") == "im2col"
    expected_auto = "hybrid" if jax.default_backend() == "cpu" else "lax"
    assert resolve_conv_impl("auto") == expected_auto


@pytest.mark.parametrize("x_shape,k_shape", [((3, 9, 7, 4), (5, 5, 4, 6)),
                                             ((2, 6, 6, 1), (3, 3, 1, 2)),
                                             ((2, 8, 5, 3), (5, 3, 3, 2))])
def test_hybrid_conv_gradients_equal_autodiff_of_the_xla_convolution(x_shape, k_shape):
    from fedbench.model.conv import hybrid_conv

    rng = np.random.default_rng(sum(x_shape) + 7 * sum(k_shape))
    x = jnp.asarray(rng.normal(size=x_shape).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=k_shape).astype(np.float32))
    weights = jnp.asarray(rng.normal(size=x_shape[:3] + k_shape[3:]).astype(np.float32))

    def lax_conv(a, b):
        return jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def grads(conv):
        return jax.jit(jax.grad(lambda a, b: (conv(a, b) * weights).sum(), argnums=(0, 1)))(
            x, kernel)

    for got, want in zip(grads(hybrid_conv), grads(lax_conv)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="odd kernel"):
        hybrid_conv(x, jnp.zeros((4, 4) + k_shape[2:]))


def test_group_norm_mlp_equals_a_numpy_forward_pass():
    """model.norm=group (Wu & He 2018): each example's features in ``groups`` groups, each
    group centred and scaled by its own mean and (biased) variance, eps 1e-5 (flax's default),
    then the learned scale and bias; before the ReLU."""
    model = build_model({"name": "mlp", "hidden": [8], "norm": "group", "groups": 2}, (5,), 3)
    params = _random_params(model, (5,))["params"]
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    h = x @ np.asarray(params["Dense_0"]["kernel"]) + np.asarray(params["Dense_0"]["bias"])
    g = h.reshape(4, 2, 4)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)
    h = g.reshape(4, 8) * np.asarray(params["GroupNorm_0"]["scale"]) + np.asarray(
        params["GroupNorm_0"]["bias"])
    want = np.maximum(h, 0) @ np.asarray(params["Dense_1"]["kernel"]) + np.asarray(
        params["Dense_1"]["bias"])
    got = model.apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_norm_settings_name_the_key():
    for cfg, key in (({"name": "mlp", "norm": "instance"}, "model.norm"),
                     ({"name": "mlp", "hidden": [200, 200], "norm": "group", "groups": 3},
                      "model.groups"),
                     ({"name": "cnn", "norm": "group", "groups": 5}, "model.groups")):
        with pytest.raises(ConfigError) as err:
            build_model(cfg, (8, 8, 1), 10)
        assert err.value.key == key
    cnn = build_model({"name": "cnn", "norm": "layer", "conv_impl": "lax"}, (8, 8, 1), 10)
    assert sum(k.startswith("LayerNorm_") for k in _init_shapes(cnn, (8, 8, 1))["params"]) == 3
