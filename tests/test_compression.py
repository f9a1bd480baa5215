"""Uplink compression (fedbench.compression) against independent expectations: numpy top-k,
unbiasedness within a statistical bound, QSGD's variance bound (Alistarh et al. 2017, Lemma 3.1),
error feedback's telescoping sum, hand-counted message sizes, and an end-to-end run on digits."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose, make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.compression import (
    Compressor,
    add_bits,
    build_compression,
    total_bits,
    zero_bits,
)
from fedbench.errors import ConfigError
from fedbench.model import MLP, build_model
from fedbench.run import run_experiment
from fedbench.simulator import Settings, Simulator
from fedbench.transforms import chain, clip_by_norm


def _tree(seed=0, shapes=(("a", (6, 7)), ("b", (13,)))):
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in shapes}


def _samples(compressor: Compressor, tree, n: int):
    """``n`` independent compressions of ``tree`` (one key each), stacked."""
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    return jax.jit(jax.vmap(lambda k: compressor.compress(tree, k)[0]))(keys)


# ----------------------------------------------------------------------------- top-k


def _numpy_top_k(flat: np.ndarray, k: int) -> np.ndarray:
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out


def test_topk_per_tensor_keeps_exactly_the_k_largest():
    tree = _tree()
    out, _ = Compressor(sparsifier="topk", fraction=0.2).compress(tree)
    for name, k in (("a", 8), ("b", 3)):  # round(0.2 * 42) = 8, round(0.2 * 13) = 3
        x = np.asarray(tree[name]).ravel()
        got = np.asarray(out[name]).ravel()
        np.testing.assert_array_equal(got, _numpy_top_k(x, k))
        assert np.count_nonzero(got) == k


def test_topk_over_the_whole_model_keeps_exactly_the_k_largest():
    tree = _tree(1)
    out, _ = Compressor(sparsifier="topk", k=10, per_tensor=False).compress(tree)
    flat = np.concatenate([np.asarray(tree[n]).ravel() for n in ("a", "b")])
    got = np.concatenate([np.asarray(out[n]).ravel() for n in ("a", "b")])
    np.testing.assert_array_equal(got, _numpy_top_k(flat, 10))


# ----------------------------------------------------------------------------- unbiasedness

N = 20_000


def _quantize_variance(x: np.ndarray, bits: int) -> np.ndarray:
    """Per-entry variance bound of randomised rounding to levels of step 2m / (2^b - 1)."""
    step = 2 * np.max(np.abs(x)) / (2**bits - 1)
    return np.full(x.shape, step**2 / 4)


def _qsgd_variance(x: np.ndarray, levels: int, bucket: int) -> np.ndarray:
    """Per-entry variance bound: (||bucket|| / s)^2 / 4."""
    out = np.empty_like(x)
    for start in range(0, x.size, bucket):
        norm = np.linalg.norm(x[start:start + bucket])
        out[start:start + bucket] = (norm / levels) ** 2 / 4
    return out


@pytest.mark.parametrize("name", ["randk", "quantize", "qsgd", "topk+quantize"])
def test_random_compressors_are_unbiased(name):
    tree = {"w": jnp.asarray(np.random.default_rng(2).normal(size=(5, 8)), jnp.float32)}
    x = np.asarray(tree["w"]).ravel().astype(np.float64)
    d = x.size
    if name == "randk":
        compressor = Compressor(sparsifier="randk", fraction=0.25)
        expected, variance = x, x**2 * (d / 10 - 1)  # kept w.p. k/d = 1/4, sent as x d/k
    elif name == "quantize":
        compressor = Compressor(quantizer="quantize", bits=2)
        expected, variance = x, _quantize_variance(x, 2)
    elif name == "qsgd":
        compressor = Compressor(quantizer="qsgd", levels=2, bucket_size=16)
        expected, variance = x, _qsgd_variance(x, 2, 16)
    else:  # quantised kept values: unbiased for the top-k vector
        compressor = Compressor(sparsifier="topk", quantizer="quantize", fraction=0.25, bits=2)
        expected = _numpy_top_k(x, 10)
        variance = np.where(expected != 0, _quantize_variance(expected[expected != 0], 2)[0], 0)
    samples = np.asarray(_samples(compressor, tree, N)["w"]).reshape(N, d).astype(np.float64)
    mean = samples.mean(axis=0)
    # Central limit theorem, 6 standard deviations per entry (40 entries: false alarm < 1e-7).
    bound = 6 * np.sqrt(variance / N) + 1e-6
    assert np.all(np.abs(mean - expected) <= bound), np.max(np.abs(mean - expected) / bound)
    # The bound is not vacuous: a compressor off by 10% of the largest entry would fail it.
    assert np.max(bound) < 0.1 * np.max(np.abs(x))


@pytest.mark.parametrize("levels", [1, 2, 8])
@pytest.mark.parametrize("kind", ["gaussian", "flat"])
def test_qsgd_variance_is_within_the_papers_bound(levels, kind):
    """Alistarh et al. 2017, Lemma 3.1: E||Q_s(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2."""
    d = 50  # sqrt(d) not a multiple of s: the flat vector is not on a level
    rng = np.random.default_rng(levels)
    v = rng.normal(size=d) if kind == "gaussian" else rng.choice([-1.0, 1.0], size=d)
    tree = {"v": jnp.asarray(v, jnp.float32)}
    samples = np.asarray(_samples(Compressor(quantizer="qsgd", levels=levels), tree, 4000)["v"])
    error = np.mean(np.sum((samples.astype(np.float64) - v) ** 2, axis=1))
    bound = min(d / levels**2, math.sqrt(d) / levels) * np.sum(v**2)
    assert error <= bound, (error, bound)
    assert error > 0


def test_scaled_sign_is_the_mean_magnitude_times_the_sign():
    tree = _tree(3)
    out, _ = Compressor(quantizer="signsgd").compress(tree)
    for name in ("a", "b"):
        x = np.asarray(tree[name])
        expected = np.mean(np.abs(x)) * np.where(x >= 0, 1.0, -1.0)
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=1e-6)


# ----------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("compressor", [
    Compressor(sparsifier="topk", fraction=0.1, error_feedback=True),
    Compressor(sparsifier="topk", k=3, per_tensor=False, error_feedback=True),
    Compressor(quantizer="signsgd", error_feedback=True),
    Compressor(quantizer="quantize", bits=2, error_feedback=True),
    Compressor(sparsifier="randk", quantizer="qsgd", fraction=0.3, levels=2,
               error_feedback=True),
], ids=lambda c: c.name + ("" if c.per_tensor else "-model"))
def test_error_feedback_telescopes(compressor):
    """sum_t C(delta_t + e_t) + e_T == sum_t delta_t (Stich et al. 2018, the memory)."""
    transform = compressor.transform()
    rng = np.random.default_rng(4)
    shapes = {"a": (6, 7), "b": (13,)}
    residual = transform.init({n: jnp.zeros(s) for n, s in shapes.items()})
    sent_sum = {n: np.zeros(s) for n, s in shapes.items()}
    delta_sum = {n: np.zeros(s) for n, s in shapes.items()}
    for t in range(6):
        # Dyadic values (multiples of 1/8): float32 sums of them are exact.
        delta = {n: jnp.asarray(rng.integers(-64, 64, size=s) / 8, jnp.float32)
                 for n, s in shapes.items()}
        info = {"key": jax.random.PRNGKey(t)}
        sent, residual, out = transform.update(delta, residual, info)
        for n in shapes:
            sent_sum[n] += np.asarray(sent[n], np.float64)
            delta_sum[n] += np.asarray(delta[n], np.float64)
        assert int(out["bits"]) == compressor.message_bits(delta)
    for n in shapes:
        total = sent_sum[n] + np.asarray(residual[n], np.float64)
        if compressor.sparsifier == "topk" and compressor.quantizer is None:
            np.testing.assert_array_equal(total, delta_sum[n])  # entries sent or kept, exactly
        else:
            np.testing.assert_allclose(total, delta_sum[n], atol=1e-4)


def _sim(compressor, clients_per_round=2, **kw):
    data = make_uneven_data()
    settings = Settings(clients_per_round=clients_per_round, local_epochs=1, batch_size=4, lr=0.1,
                        client_axis=kw.pop("axis", "vmap"))
    return Simulator(MLP(data.num_classes, (8,)), build_algorithm({"name": "fedavg"}), data,
                     settings, seed=0, transforms=(compressor.transform(),), **kw)


@pytest.mark.parametrize("axis", ["vmap", "map"])
def test_residuals_of_clients_not_sampled_are_unchanged(axis):
    compressor = Compressor(sparsifier="topk", fraction=0.3, error_feedback=True)
    sim = _sim(compressor, axis=axis)
    state = sim.init()
    bits = compressor.message_bits(state.params)
    changed = np.zeros(sim.data.num_clients, bool)
    for _ in range(5):
        before = jax.tree.map(np.asarray, state.store["transforms"])
        counted = np.asarray(state.participation)
        state = sim.run(state, 1)
        sampled = np.asarray(state.participation) > counted
        assert sampled.sum() == 2
        after = jax.tree.map(np.asarray, state.store["transforms"])
        for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
            np.testing.assert_array_equal(a[~sampled], b[~sampled])
            changed |= np.any((a != b).reshape(len(a), -1), axis=1)
        # Every message counted, exactly.
        assert total_bits(state.bits_up) == int(np.asarray(state.participation).sum()) * bits
    participated = np.asarray(state.participation) > 0
    assert np.array_equal(changed, participated)  # every sampled client keeps a residual


def test_no_bits_counted_without_compression():
    data = make_uneven_data()
    settings = Settings(clients_per_round=2, local_epochs=1, batch_size=4, lr=0.1)
    sim = Simulator(MLP(data.num_classes, (8,)), build_algorithm({"name": "fedavg"}), data,
                    settings, seed=0)
    assert sim.init().bits_up is None


# ----------------------------------------------------------------------------- message sizes


# A small model: a 10 x 30 kernel (300 entries, index width ceil(log2 300) = 9 bits) and a bias
# of 30 (width 5). Counted by hand: positions are min(k * width, d) bits (indices or a bitmap),
# values 32 bits unquantised, b bits + one float32 per bucket quantised.
SIZES = [
    # kernel k=30: min(270, 300) + 30*32 = 1230; bias k=3: min(15, 30) + 3*32 = 111
    (Compressor(sparsifier="topk", fraction=0.1), 1230 + 111),
    (Compressor(sparsifier="randk", fraction=0.1), 1230 + 111),
    # kernel k=150: min(1350, 300) bitmap + 4800 = 5100; bias k=15: min(75, 30) + 480 = 510
    (Compressor(sparsifier="topk", fraction=0.5), 5100 + 510),
    # whole model, d=330 (width 9), k=5: 45 + 160
    (Compressor(sparsifier="topk", k=5, per_tensor=False), 45 + 160),
    # every entry kept: no positions, dense values
    (Compressor(sparsifier="topk", fraction=1.0), 330 * 32),
    # 4 bits per value + one scale per tensor
    (Compressor(quantizer="quantize", bits=4), (300 * 4 + 32) + (30 * 4 + 32)),
    # buckets of 64: kernel 5 scales, bias 1
    (Compressor(quantizer="quantize", bits=4, bucket_size=64), (1200 + 5 * 32) + (120 + 32)),
    # QSGD s=4: 1 sign bit + 3 level bits (0..4) per entry, a norm per 128-bucket (3 + 1)
    (Compressor(quantizer="qsgd", levels=4, bucket_size=128), (300 * 4 + 3 * 32) + (30 * 4 + 32)),
    (Compressor(quantizer="qsgd", levels=1), (300 * 2 + 32) + (30 * 2 + 32)),
    # sign: 1 bit per entry + one float32 per tensor, or one for the whole model
    (Compressor(quantizer="signsgd"), (300 + 32) + (30 + 32)),
    (Compressor(quantizer="signsgd", per_tensor=False), 330 + 32),
    # top-k then 2-bit quantisation of the kept values: positions + 2 bits each + one scale
    (Compressor(sparsifier="topk", quantizer="quantize", fraction=0.1, bits=2),
     (270 + 30 * 2 + 32) + (15 + 3 * 2 + 32)),
]


@pytest.mark.parametrize("compressor,bits", SIZES, ids=[f"{c.name}-{b}" for c, b in SIZES])
def test_message_sizes_are_the_hand_counted_ones(compressor, bits):
    params = {"kernel": jnp.zeros((10, 30)), "bias": jnp.zeros((30,))}
    assert compressor.message_bits(params) == bits
    _, _, info = compressor.transform().update(params, compressor.transform().init(params),
                                               {"key": jax.random.PRNGKey(0)})
    assert int(info["bits"]) == bits


def test_bit_counter_is_exact_beyond_int32_and_float32():
    rng = np.random.default_rng(5)
    counter, expected = zero_bits(), 0
    add = jax.jit(add_bits)
    for _ in range(50):
        bits = rng.integers(0, 2**31 - 1, size=64)
        valid = rng.random(64) < 0.8
        counter = add(counter, jnp.asarray(bits, jnp.int32), jnp.asarray(valid))
        expected += int(bits[valid].sum())
    assert expected > 2**40
    assert total_bits(counter) == expected


# ----------------------------------------------------------------------------- configs


def test_chains_compose_from_the_command_line():
    cfg = compose(["compression=topk", "compression.then=quantize", "compression.fraction=0.05"])
    assert build_compression(cfg["compression"]) == Compressor(
        sparsifier="topk", quantizer="quantize", fraction=0.05, bits=8, bucket_size=None)
    cfg = compose(["compression=randk", "compression.then={name:qsgd,levels:4}",
                   "compression.error_feedback=true"])
    assert build_compression(cfg["compression"]) == Compressor(
        sparsifier="randk", quantizer="qsgd", fraction=0.1, levels=4, bucket_size=512,
        error_feedback=True)
    assert build_compression(compose([])["compression"]) is None  # the default: none


@pytest.mark.parametrize("cfg,privacy,kind,key", [
    ({"name": "quantize", "then": "topk"}, None, "federated", "compression.then"),
    ({"name": "topk", "then": "randk"}, None, "federated", "compression.then"),
    ({"name": "topk", "then": {"name": "quantize", "error_feedback": True}}, None, "federated",
     "compression.then.error_feedback"),
    ({"name": "topk", "fraction": 0}, None, "federated", "compression.fraction"),
    ({"name": "topk", "fractoin": 0.1}, None, "federated", "compression.fractoin"),
    ({"name": "quantize", "bits": 0}, None, "federated", "compression.bits"),
    ({"name": "qsgd", "bucket_size": 0}, None, "federated", "compression.bucket_size"),
    ({"name": "zip"}, None, "federated", "compression.name"),
    ({"name": "topk"}, None, "async", "compression.name"),
    ({"name": "randk"}, "dp_client", "federated", "compression.name"),
    ({"name": "quantize"}, "dp_client", "federated", "compression.name"),
    ({"name": "qsgd"}, "dp_client", "federated", "compression.name"),
    ({"name": "signsgd", "error_feedback": True}, "dp_client", "federated",
     "compression.error_feedback"),
    ({"name": "topk", "then": "qsgd"}, "dp_client", "federated", "compression.then"),
    ({"name": "topk", "error_feedback": True}, "dp_client", "federated",
     "compression.error_feedback"),
])
def test_bad_compression_settings_are_refused(cfg, privacy, kind, key):
    with pytest.raises(ConfigError) as err:
        build_compression(cfg, privacy, kind)
    assert err.value.key == key


def test_what_dp_client_and_the_baselines_allow():
    assert build_compression({"name": "topk"}, "dp_client").sparsifier == "topk"
    assert build_compression({"name": "qsgd"}, "dp_sample").quantizer == "qsgd"  # post-processing
    assert build_compression({"name": "topk"}, None, "local") is None  # nothing is uploaded


def test_topk_after_dp_clipping_keeps_the_clip_bound():
    """Under dp_client the chain is clip, then top-k: dropping entries cannot raise the norm."""
    transform = chain(clip_by_norm(), build_compression({"name": "topk"}, "dp_client").transform())
    tree = _tree(6)
    sent, _, info = transform.update(tree, transform.init(tree), {"clip": 0.5})
    norm = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(sent))))
    assert norm <= 0.5 * (1 + 1e-6) and float(info["norm"]) > 0.5 and "bits" in info


def test_dp_client_with_a_norm_increasing_compressor_fails_before_training(tmp_path):
    cfg = compose(["privacy=dp_client", "compression=quantize", "rounds=1"])
    with pytest.raises(ConfigError, match="the noise is calibrated to the clip"):
        run_experiment(cfg, tmp_path, progress=None)
    assert not (tmp_path / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- end to end


def _expected_topk_bits(params, fraction: float) -> int:
    """Per tensor: k = round(fraction * d) values of 32 bits, positions the smaller of k indices
    of ceil(log2 d) bits and a d-bit bitmap."""
    total = 0
    for leaf in jax.tree.leaves(params):
        d = int(np.prod(leaf.shape))
        k = max(1, int(math.floor(fraction * d + 0.5)))
        width = math.ceil(math.log2(d))
        total += 32 * k + (min(k * width, d) if k < d else 0)
    return total


def test_topk_with_error_feedback_on_digits_cuts_bytes_up(tmp_path):
    rounds = 100
    cfg = compose(["compression=topk", "compression.fraction=0.1",
                   "compression.error_feedback=true", f"rounds={rounds}", f"eval_every={rounds}"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    final = summary["final"]
    assert summary["status"] == "completed"
    assert final["test_accuracy"] >= 0.9, final["test_accuracy"]

    # The digits 2NN: 64 -> 200 -> 200 -> 10 (55,210 parameters).
    params = build_model(cfg["model"], (8, 8, 1), 10, "classification").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
    d = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert d == 55_210
    messages = rounds * cfg["clients_per_round"]  # fixed cohorts, no stragglers
    bits = _expected_topk_bits(params, 0.1)
    assert final["bytes_up"] == math.ceil(messages * bits / 8)
    dense = messages * d * 4
    assert final["bytes_down"] == dense  # downloads are not compressed
    assert 7 < dense / final["bytes_up"] < 10  # 10% of the values, plus their positions


def test_seeds_in_one_program_count_and_compress_like_single_runs(tmp_path):
    tiny = ["partition=iid", "num_clients=6", "clients_per_round=3", "rounds=3", "eval_every=3",
            "model.hidden=[16]", "batch_size=16", "compression=randk", "compression.fraction=0.2",
            "compression.then=quantize", "compression.error_feedback=true"]
    run_experiment(compose([*tiny, "seeds=2"]), tmp_path / "both", progress=None)
    # Replicas share the partition of the base seed.
    single = run_experiment(compose([*tiny, "seed=1", "partition.seed=0"]), tmp_path / "one",
                            progress=None)
    replica = json.loads((tmp_path / "both" / "seed=1" / "summary.json").read_text())["final"]
    assert replica["bytes_up"] == single["final"]["bytes_up"] > 0
    assert replica["train_loss"] == single["final"]["train_loss"]


def test_quantize_variance_bound_is_attained_by_one_spike():
    """Stochastic uniform quantisation of ``x = (1, 0, ..., 0)``: 0 is the midpoint of two
    levels (``2^b - 1`` intervals over [-1, 1], an odd count), so each of the ``n - 1`` zeros is
    rounded to ``+-Delta/2`` with probability 1/2 each (variance ``1 / L^2``) and the spike is
    exact: ``E||Q(x) - x||^2 / ||x||^2 = (n - 1) / L^2``, the declared bound, attained."""
    from fedbench.compression import build_compression

    n, bits = 64, 2
    levels = 2**bits - 1
    compressor = build_compression({"name": "quantize", "bits": bits, "bucket_size": None})
    x = jnp.zeros(n).at[0].set(1.0)
    keys = jax.random.split(jax.random.PRNGKey(0), 500)
    sent = jax.vmap(lambda k: compressor.compress({"x": x}, k)[0]["x"])(keys)
    errors = np.asarray(jnp.sum((sent - x) ** 2, axis=1))
    # Each zero moves by exactly Delta / 2 = 1 / L: the error is deterministic here.
    np.testing.assert_allclose(errors, (n - 1) / levels**2, rtol=1e-5)
    assert compressor.variance_bound(n) == pytest.approx((n - 1) / levels**2)
