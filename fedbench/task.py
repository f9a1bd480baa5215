"""Learning tasks: what a model's outputs are scored against, in training and in evaluation.

A dataset declares its task. ``classification`` targets are ``[N]`` int32 labels scored by
softmax cross-entropy and accuracy. ``survival`` targets are ``[N, 2]`` float32 rows
``(event, time)`` (event 1: observed, 0: right-censored), the model outputs one log-risk score
per example, training minimises the negative Cox partial log-likelihood with Breslow's handling
of tied times, and models are ranked by Harrell's concordance index.

References:
  D. R. Cox, "Regression Models and Life-Tables", JRSS B 34(2), 1972 (partial likelihood).
  N. Breslow, "Covariance Analysis of Censored Survival Data", Biometrics 30(1), 1974 (ties).
  F. E. Harrell et al., "Evaluating the Yield of Medical Tests", JAMA 247(18), 1982 (C-index).
  J. Ogier du Terrail et al., "FLamby", NeurIPS 2022 Datasets and Benchmarks: Fed-TCGA-BRCA's
  loss is this partial likelihood averaged over the minibatch, its metric the C-index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

TASKS = ("classification", "survival")


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the ``valid`` rows; ``[B, K], [B], [B] -> []``."""
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(jnp.where(valid, per_example, 0.0)) / jnp.maximum(valid.sum(), 1)


def cox_terms(scores: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """Per-example terms of the negative Breslow partial log-likelihood, ``[B]``.

    ``scores``: ``[B]`` or ``[B, 1]`` log-risks; ``target``: ``[B, 2]`` ``(event, time)``.
    Term ``i`` is ``event_i * (log sum_{j valid, T_j >= T_i} exp(s_j) - s_i)`` for valid rows and
    0 otherwise (Cox 1972; tied times share one risk set, Breslow 1974).
    """
    s = scores.reshape(-1)
    event, time = target[:, 0], target[:, 1]
    at_risk = (time[None, :] >= time[:, None]) & valid[None, :]  # [i, j]: j in i's risk set
    masked = jnp.where(at_risk, s[None, :], -jnp.inf)
    # Row i always contains j = i when i is valid; invalid rows are zeroed below.
    log_risk = jax.nn.logsumexp(jnp.where(valid[:, None], masked, 0.0), axis=1)
    return jnp.where(valid & (event > 0), log_risk - s, 0.0)


def cox_loss(scores: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over the valid rows of :func:`cox_terms` (FLamby's minibatch Cox loss), ``[]``."""
    return jnp.sum(cox_terms(scores, target, valid)) / jnp.maximum(valid.sum(), 1)


def batch_loss_fn(task: str):
    """The minibatch training loss ``(outputs, targets, valid) -> []`` of a task."""
    return {"classification": masked_cross_entropy, "survival": cox_loss}[task]


def concordance_index(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C-index of risk scores (higher risk = earlier event), NumPy, O(n^2).

    A pair ``(i, j)`` is comparable when ``i``'s event was observed and ``j`` was still at risk
    after it: ``T_i < T_j``, or ``T_i == T_j`` with ``j`` censored (a censored time tied with an
    event time counts as the longer one). It is concordant when ``risk_i > risk_j``; a tie in
    risk counts 1/2. Two events at the same time are not comparable. Returns NaN when no pair is
    comparable. Agrees with ``lifelines.utils.concordance_index(T, -risk, E)`` (tested).
    """
    time = np.asarray(time, np.float64)
    risk = np.asarray(risk, np.float64)
    event = np.asarray(event) > 0
    later = time[:, None] < time[None, :]
    tied_censored = (time[:, None] == time[None, :]) & ~event[None, :]
    comparable = (later | tied_censored) & event[:, None]
    total = comparable.sum()
    if total == 0:
        return float("nan")
    diff = risk[:, None] - risk[None, :]
    score = np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))
    return float((score * comparable).sum() / total)
