"""Gradient inversion (fedbench/audit/): iDLG labels, DLG, the cosine attack and defences.

Setting: scikit-learn's 8x8 digits scaled to [0, 1], batch of one, untrained models. Zhu et al.
(NeurIPS 2019) attack 32x32 CIFAR images with a sigmoid LeNet; 8x8 keeps these tests at CPU
speed (about 1 minute together on 2 cores). Measured deviation from the paper: on 8x8 digits the
sigmoid LeNet's 7,500 gradient entries pin down 64 pixels so tightly that pruning 30% of them does
not stop DLG (median MSE about 5e-4 over 8 seeds); pruning needs about 70% here
(``test_pruning_30_percent_as_in_zhu_is_not_enough_on_8x8`` records the paper's claim as a
strict expected failure). On 32x32 MNIST (mnist5k, padded) 30% pruning gave a median MSE of about
9e-3 over 4 seeds: borderline, so the paper's threshold is tied to its image size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from fedbench.audit import defences, labels, targets
from fedbench.audit.attack import InversionSetting, run_trials
from fedbench.audit.lenet import SigmoidLeNet
from fedbench.audit.metrics import image_metrics
from fedbench.model import MLP


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return jnp.asarray(d.images[..., None] / 16.0, jnp.float32), jnp.asarray(d.target)


def _labels_over_trials(model, digits, kind, trials=100, steps=1):
    """iDLG's label for ``trials`` fresh models and random examples, and the true labels."""
    x, y = digits

    def one(seed):
        k_model, k_data = jax.random.split(jax.random.PRNGKey(seed))
        params = model.init(k_model, x[:1])
        i = jax.random.randint(k_data, (1,), 0, x.shape[0])
        update = targets.update_map(model.apply, params, kind, 0.1, steps)(
            x[i], jax.nn.one_hot(y[i], 10))
        return labels.idlg_label(update, 10, -1.0 if kind == "delta" else 1.0), y[i][0]

    return jax.jit(lambda seeds: jax.lax.map(one, seeds))(jnp.arange(trials))


@pytest.mark.parametrize("model,kind,steps", [
    (SigmoidLeNet(10), "gradient", 1), (MLP(10), "gradient", 1), (MLP(10), "delta", 5)])
def test_idlg_recovers_the_label_in_all_100_batch1_trials(digits, model, kind, steps):
    """Zhao et al. 2020: the last layer's gradient row of the true class is the only negative
    one, so the label is exact (sigmoid LeNet, the suite's ReLU 2NN, and a 5-step FedAvg delta
    whose sign is reversed)."""
    found, true = _labels_over_trials(model, digits, kind, steps=steps)
    assert np.array_equal(np.asarray(found), np.asarray(true))


#: The DLG runs of the tests below, one compiled program: 20 seeds without a defence, 5 with
#: each defence (the same first 5 seeds). Each run: at most 300 L-BFGS iterations, stopping at
#: a gradient distance of 1e-10.
GRID = (("none", 0.0), ("noise", 1e-2), ("prune", 0.3), ("prune", 0.7))


@pytest.fixture(scope="module")
def dlg_runs(digits):
    x, y = digits
    model = SigmoidLeNet(10)
    seeds = [jnp.arange(20)] + [jnp.arange(5)] * (len(GRID) - 1)
    outs = run_trials(model.apply, lambda k: model.init(k, x[:1]), x, y, seeds, 1,
                      InversionSetting(attack="dlg", iterations=300, tol=1e-10), 10,
                      defence_grid=GRID)
    return {entry: (np.asarray(jax.vmap(image_metrics)(out["x"], out["original"])["mse"])[:, 0],
                    out) for entry, out in zip(GRID, outs)}


def test_dlg_reconstructs_digits_from_an_untrained_sigmoid_lenet(dlg_runs):
    """Zhu et al. 2019: DLG (labels learned, L-BFGS) reaches MSE < 1e-3 in >= 80% of 20 seeds
    within 300 L-BFGS iterations (each with its line search), and learns the label."""
    mse, out = dlg_runs[("none", 0.0)]
    assert np.mean(mse < 1e-3) >= 0.8, mse
    assert np.mean(np.asarray(out["labels"]) == np.asarray(out["true_labels"])) >= 0.8


def test_gaussian_noise_of_variance_1e2_defends(dlg_runs):
    """Zhu et al., Fig. 7a: noise of variance 1e-2 on the gradient stops DLG (median MSE > 1e-2
    over 5 seeds, on which the attack without noise succeeds)."""
    mse = dlg_runs[("noise", 1e-2)][0][:5]
    assert np.all(dlg_runs[("none", 0.0)][0][:5] < 1e-3)
    assert np.median(mse) > 1e-2, mse


def test_pruning_70_percent_defends_on_8x8(dlg_runs):
    """Pruning 70% of each tensor's smallest gradient entries (top-k keeping 30%) passes the
    issue's criterion on 8x8 digits: median MSE > 1e-2 over 5 seeds (measured about 2.4e-2 over
    8). The digits are still recognisable there (median SSIM 0.94 over 8 seeds,
    results/audit/README.md): MSE > 1e-2 is a weak notion of "stopped"."""
    mse = dlg_runs[("prune", 0.7)][0][:5]
    assert np.median(mse) > 1e-2, mse


@pytest.mark.xfail(strict=True, reason="Zhu et al.'s 30% pruning threshold is for 32x32 images; "
                   "on 8x8 digits DLG still reconstructs (median MSE ~5e-4), see module docstring")
def test_pruning_30_percent_as_in_zhu_is_not_enough_on_8x8(dlg_runs):
    mse = dlg_runs[("prune", 0.3)][0][:5]
    assert np.median(mse) > 1e-2, mse


def test_cosine_attack_reconstructs_from_the_suites_relu_mlp(digits):
    """Geiping et al. 2020 (cosine + TV, signed Adam, labels from iDLG) on the suite's 2NN:
    median SSIM > 0.9 over 4 seeds in 300 iterations (measured 0.99)."""
    x, y = digits
    model = MLP(10)
    out = run_trials(model.apply, lambda k: model.init(k, x[:1]), x, y, jnp.arange(4), 1,
                     InversionSetting(attack="cosine", iterations=300), 10)
    ssim = np.asarray(jax.vmap(image_metrics)(out["x"], out["original"])["ssim"])
    assert np.median(ssim) > 0.9, ssim
    assert np.array_equal(np.asarray(out["labels"]), np.asarray(out["true_labels"]))


def test_local_delta_equals_optax_sgd(digits):
    """The attacker's unrolled FedAvg delta is ``steps`` plain SGD steps (checked with optax)."""
    x, y = digits
    model = MLP(10, (16,))
    params = model.init(jax.random.PRNGKey(0), x[:1])
    probs = jax.nn.one_hot(y[:6], 10)
    ours = targets.local_delta(model.apply, params, x[:6], probs, 0.05, steps=5, batch_size=2)
    opt, w = optax.sgd(0.05), params
    state = opt.init(w)
    for s in range(5):  # batches 0-1, 2-3, 4-5, 0-1, 2-3
        lo = (s % 3) * 2
        g = jax.grad(lambda p: optax.softmax_cross_entropy(
            model.apply(p, x[lo:lo + 2]), probs[lo:lo + 2]).mean())(w)
        upd, state = opt.update(g, state)
        w = optax.apply_updates(w, upd)
    ref = jax.tree.map(jnp.subtract, w, params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_defences_do_what_they_say():
    tree = {"a": jnp.arange(1.0, 11.0), "b": -jnp.arange(1.0, 101.0).reshape(10, 10)}
    pruned = defences.prune(tree, 0.3)
    assert int((pruned["a"] != 0).sum()) == 7 and int((pruned["b"] != 0).sum()) == 70
    assert float(jnp.abs(pruned["b"]).min(initial=1e9, where=pruned["b"] != 0)) == 31.0
    big = {"z": jnp.zeros(200_000)}
    noisy = defences.gaussian_noise(big, jax.random.PRNGKey(0), 1e-2)["z"]
    assert abs(float(noisy.var()) - 1e-2) < 2e-4  # ~ 5 standard errors
    clipped = defences.local_dp({"z": jnp.full(4, 3.0)}, jax.random.PRNGKey(1), 1.0, 0.0)["z"]
    np.testing.assert_allclose(jnp.linalg.norm(clipped), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown defence"):
        defences.build_defence("blur", 1.0)


def test_batch_labels_and_label_accuracy():
    """Scores built as ``(p - y) * h``-sums: the most negative classes are the batch's."""
    kernel = jnp.zeros((3, 10)).at[:, 2].set(-1.0).at[:, 7].set(-0.5).at[:, 4].set(0.2)
    update = {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(10)}}
    assert sorted(np.asarray(labels.batch_labels(update, 10, 2)).tolist()) == [2, 7]
    assert int(labels.idlg_label(update, 10, sign=-1.0)) == 4
    assert float(labels.label_accuracy(jnp.array([2, 2, 7]), jnp.array([2, 7, 7]), 10)) == pytest.approx(2 / 3)
