"""Membership inference (loss threshold, offline LiRA) and its ROC summary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from fedbench.audit import membership
from fedbench.audit.shadow import shadow_masks, train_shadows
from fedbench.model import MLP


def test_auc_and_tpr_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.5, 1, 700), rng.normal(0, 1, 2000)
    members[:5] = nonmembers[:5]  # ties across the groups
    labels = np.r_[np.ones(700), np.zeros(2000)]
    scores = np.r_[members, nonmembers]
    assert membership.auc(members, nonmembers) == pytest.approx(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for target in (1e-3, 1e-2, 0.1):
        assert membership.tpr_at_fpr(members, nonmembers, target) == pytest.approx(
            tpr[fpr <= target].max())


def test_logit_confidence_is_log_odds_of_the_true_class():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 30.0]])
    labels = jnp.array([0, 2])
    p = np.asarray(jax.nn.softmax(logits.astype(jnp.float64) if jax.config.x64_enabled
                                  else logits))[np.arange(2), np.asarray(labels)]
    phi = membership.logit_confidence(logits, labels)
    assert phi[0] == pytest.approx(np.log(p[0] / (1 - p[0])), rel=1e-5)
    assert phi[1] == pytest.approx(30.0 - np.log(2.0), rel=1e-4)  # p near 1: still finite


def test_lira_offline_is_the_gaussian_tail_of_the_out_models():
    shadow_phi = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 9.0], [100.0, 7.0]])
    shadow_in = np.array([[0, 0], [0, 1], [0, 0], [1, 0]], bool)
    scores = membership.lira_offline_scores(np.array([4.0, 7.0]), shadow_phi, shadow_in)
    # example 0: OUT = 0, 2, 4 -> mu 2, sd 2, z = 1; example 1: OUT = 5, 9, 7 -> mu 7, z = 0
    assert scores == pytest.approx([-np.log(0.15865525), np.log(2.0)], rel=1e-6)
    with pytest.raises(ValueError, match="OUT shadow"):
        membership.lira_offline_scores(np.zeros(2), shadow_phi[:2], shadow_in[:2] | True)


def test_attacks_detect_an_overfit_model_and_not_a_fresh_one():
    """A 2NN trained to memorise ~100 randomly labelled points: both attacks find its members (AUC >
    0.8); for models that saw none of the data (fresh shadows as target) LiRA's AUC is near 0.5."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(200, 10)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 200))  # random labels: only memorisation helps
    model = MLP(10, (64,))

    def init(key):
        return model.init(key, x[:1])

    masks = shadow_masks(jax.random.PRNGKey(1), 17, 200)
    params = train_shadows(init, model.apply, x, y, masks, jax.random.PRNGKey(2), 0.5, 20, 1500)
    logits = jax.vmap(model.apply, in_axes=(0, None))(params, x)
    phi = np.stack([membership.logit_confidence(l, y) for l in logits])
    target, shadows, inside = 0, slice(1, None), np.asarray(masks)
    lira = membership.lira_offline_scores(phi[target], phi[shadows], inside[shadows])
    loss = membership.loss_scores(logits[target], y)
    m = inside[target]
    assert membership.auc(lira[m], lira[~m]) > 0.8
    assert membership.auc(loss[m], loss[~m]) > 0.8
    # a target that trained on nothing of this population: membership is a coin flip
    fresh = jax.vmap(model.apply, in_axes=(0, None))(
        jax.vmap(init)(jax.random.split(jax.random.PRNGKey(3), 1)), x)[0]
    lira_fresh = membership.lira_offline_scores(
        membership.logit_confidence(fresh, y), phi[shadows], inside[shadows])
    assert abs(membership.auc(lira_fresh[m], lira_fresh[~m]) - 0.5) < 0.12


def test_lira_online_reaches_the_likelihood_ratio_tests_auc_on_gaussian_confidences():
    """Per example, IN confidences ~ N(a_e + d, 1) and OUT ~ N(a_e, 1) with a random difficulty
    a_e: the likelihood-ratio test on the target's confidence has AUC Phi(d / sqrt 2) (two unit
    Gaussians d apart); online LiRA with 64 shadows gets within 0.02 of it, and knowing the
    difficulty from the shadows beats the uncalibrated confidence by a wide margin."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    n, shadows, d = 4000, 64, 1.0
    difficulty = rng.normal(0, 3, n)
    shadow_in = shadow_masks(jax.random.PRNGKey(0), shadows, n)
    shadow_in = np.asarray(shadow_in)
    shadow_phi = difficulty + d * shadow_in + rng.normal(size=(shadows, n))
    member = rng.random(n) < 0.5
    target = difficulty + d * member + rng.normal(size=n)
    online = membership.lira_online_scores(target, shadow_phi, shadow_in)
    assert membership.auc(online[member], online[~member]) == pytest.approx(
        norm.cdf(d / np.sqrt(2)), abs=0.02)
    assert membership.auc(target[member], target[~member]) < norm.cdf(d / np.sqrt(2)) - 0.1
    with pytest.raises(ValueError, match="IN shadow"):
        membership.lira_online_scores(target[:2], shadow_phi[:3, :2], np.zeros((3, 2), bool))


def test_shadow_federations_train_on_their_halves():
    """Shadow federations (simulator replicas, each site holding a random half of its own
    training and test examples): every shadow's models are more confident on the examples its
    sites held than on the others (the memorisation LiRA reads), and every site of every
    shadow held at least one example."""
    from conftest import compose

    from fedbench.audit.shadow_federations import shadow_federation_params, site_owners
    from fedbench.run import build_simulator

    cfg = compose(["rounds=15", "local_epochs=3", "dataset.num_clients=10",
                   "clients_per_round=10", "checkpoint_every=0"])
    data = build_simulator(cfg).data
    train_x, train_y = data.pooled_train()
    pop_x = np.concatenate([train_x, np.asarray(data.pooled_test_x)])
    pop_y = np.concatenate([train_y, np.asarray(data.pooled_test_y)]).astype(np.int32)
    owners = np.r_[site_owners(data.train_counts), site_owners(data.test_counts)]
    masks = np.asarray(shadow_masks(jax.random.PRNGKey(0), 4, len(pop_y)))
    params, used = shadow_federation_params(cfg, pop_x, pop_y, owners, masks, [1, 2, 3, 4])
    assert len(params) == 4 and (used | ~masks).all()  # only ever adds IN examples
    for s in range(4):
        assert all((used[s] & (owners == k)).any() for k in range(10))
    model = MLP(10, (200, 200))
    phi = np.stack([membership.logit_confidence(model.apply(p, jnp.asarray(pop_x)), pop_y)
                    for p in params])
    gap = [phi[s][used[s]].mean() - phi[s][~used[s]].mean() for s in range(4)]
    # measured 0.28-0.73; shadows blind to their halves would give about 0 +- 0.14 each
    assert min(gap) > 0 and np.mean(gap) > 0.25, gap
