"""Membership inference against a trained model: loss threshold and LiRA, offline and online.

References:
  S. Yeom, I. Giacomelli, M. Fredrikson, S. Jha. "Privacy Risk in Machine Learning: Analyzing
  the Connection to Overfitting", CSF 2018, Sec. 3.2: predict "member" when the example's loss
  is low; the score is the negative loss.
  N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramer. "Membership Inference Attacks
  From First Principles" (LiRA), IEEE S&P 2022: the logit-scaled confidence
  ``phi(p) = log(p / (1 - p))`` of the true class (Sec. VI-A, eq. 4) is close to Gaussian over
  models trained without the example; the offline attack (Sec. VI-C, Algorithm 1 with only the
  OUT models) scores ``1 - Phi((phi_target - mu_out) / sigma_out)``, one-sided: larger
  confidence than the OUT models give means "member"; the online attack (Algorithm 1) fits a
  Gaussian to the IN models' confidences too and scores the likelihood ratio. Carlini et al. report TPR at 0.1% and 1%
  FPR (Sec. III-B), which is what :func:`roc_summary` returns beside the AUC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm


def true_class_logprob(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``log softmax(logits)[y]`` per example, ``[N, K], [N] -> [N]``."""
    return jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]


def loss_scores(logits: jax.Array, labels: jax.Array) -> np.ndarray:
    """Yeom et al.'s score: minus the cross-entropy loss (higher: more likely a member)."""
    return np.asarray(true_class_logprob(logits, labels))


def logit_confidence(logits: jax.Array, labels: jax.Array) -> np.ndarray:
    """``phi = log p_y - log(1 - p_y)``, computed stably from the logits (Carlini et al., eq. 4):
    ``log(1 - p_y) = logsumexp over the other classes - logsumexp over all``."""
    logits = jnp.asarray(logits)
    lse_all = jax.nn.logsumexp(logits, axis=1)
    own = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return np.asarray((own - lse_all) - (jax.nn.logsumexp(others, axis=1) - lse_all))


def lira_offline_scores(target_phi: np.ndarray, shadow_phi: np.ndarray,
                        shadow_in: np.ndarray, min_std: float = 1e-3) -> np.ndarray:
    """Offline LiRA: ``-log(1 - Phi(z))`` with ``z = (phi - mu_out) / sigma_out`` from the shadow
    models that did not train on each example (a monotone transform of ``Phi(z)``, kept finite
    far in the tail).

    Args:
      target_phi: ``[N]`` the target model's :func:`logit_confidence` of each example.
      shadow_phi: ``[S, N]`` the same for ``S`` shadow models.
      shadow_in: ``[S, N]`` bool, whether shadow ``s`` trained on example ``n``.
      min_std: floor on ``sigma_out``.

    Raises:
      ValueError: an example with fewer than 2 OUT shadow models.
    """
    out = ~np.asarray(shadow_in, bool)
    counts = out.sum(axis=0)
    if counts.min() < 2:
        raise ValueError(f"every example needs >= 2 OUT shadow models; the fewest is {counts.min()}")
    phi = np.where(out, shadow_phi, 0.0)
    mu = phi.sum(axis=0) / counts
    var = np.where(out, (shadow_phi - mu) ** 2, 0.0).sum(axis=0) / (counts - 1)
    z = (np.asarray(target_phi) - mu) / np.maximum(np.sqrt(var), min_std)
    return -norm.logsf(z)


def _gaussian(phi: np.ndarray, sel: np.ndarray, fixed_variance: bool, min_std: float, name: str):
    """Per example mean and std of ``phi`` over the models ``sel`` marks (``[S, N]`` each);
    with ``fixed_variance`` one variance pooled over every example (Carlini et al., Sec. VI-B:
    better with few shadow models)."""
    counts = sel.sum(axis=0)
    if counts.min() < 2:
        raise ValueError(f"every example needs >= 2 {name} shadow models; the fewest is "
                         f"{counts.min()}")
    mu = np.where(sel, phi, 0.0).sum(axis=0) / counts
    var = np.where(sel, (phi - mu) ** 2, 0.0).sum(axis=0) / (counts - 1)
    if fixed_variance:
        var = np.full_like(var, var.mean())
    return mu, np.maximum(np.sqrt(var), min_std)


def lira_online_scores(target_phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray,
                       min_std: float = 1e-3, fixed_variance: bool = True) -> np.ndarray:
    """Online LiRA (Carlini et al., Algorithm 1): ``log N(phi; mu_in, s_in) -
    log N(phi; mu_out, s_out)`` per example, the Gaussians fitted to the shadow models that did
    (IN) and did not (OUT) train on it. Arguments as :func:`lira_offline_scores`.

    Raises:
      ValueError: an example with fewer than 2 IN or 2 OUT shadow models.
    """
    shadow_in = np.asarray(shadow_in, bool)
    phi = np.asarray(shadow_phi)
    mu_in, s_in = _gaussian(phi, shadow_in, fixed_variance, min_std, "IN")
    mu_out, s_out = _gaussian(phi, ~shadow_in, fixed_variance, min_std, "OUT")
    x = np.asarray(target_phi)
    return norm.logpdf(x, mu_in, s_in) - norm.logpdf(x, mu_out, s_out)


def roc_curve(member_scores: np.ndarray, nonmember_scores: np.ndarray):
    """``(fpr, tpr)`` over every threshold ``t`` of the rule "member if score >= t", from the
    strictest (nothing flagged) to the loosest; ties move together."""
    scores = np.concatenate([member_scores, nonmember_scores])
    thresholds = np.unique(scores)[::-1]
    tp = np.array([np.sum(member_scores >= t) for t in thresholds])
    fp = np.array([np.sum(nonmember_scores >= t) for t in thresholds])
    fpr = np.concatenate([[0.0], fp / len(nonmember_scores)])
    tpr = np.concatenate([[0.0], tp / len(member_scores)])
    return fpr, tpr


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC curve: ``P(member > non-member) + P(tie) / 2`` (Mann-Whitney U)."""
    m = np.asarray(member_scores)[:, None]
    n = np.asarray(nonmember_scores)[None, :]
    return float(np.mean(m > n) + 0.5 * np.mean(m == n))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """The largest TPR of a threshold whose FPR is at most ``fpr`` (0 if none flags anything;
    with ``n`` non-members an FPR below ``1 / n`` means no false positive at all)."""
    fprs, tprs = roc_curve(np.asarray(member_scores), np.asarray(nonmember_scores))
    return float(tprs[fprs <= fpr + 1e-12].max())


def roc_summary(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 0.1% and 1% FPR, with the counts they rest on."""
    return {
        "auc": auc(member_scores, nonmember_scores),
        "tpr_at_0.1%_fpr": tpr_at_fpr(member_scores, nonmember_scores, 1e-3),
        "tpr_at_1%_fpr": tpr_at_fpr(member_scores, nonmember_scores, 1e-2),
        "members": int(len(member_scores)),
        "nonmembers": int(len(nonmember_scores)),
    }
