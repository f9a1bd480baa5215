"""One-run empirical epsilon (Steinke, Nasr, Jagielski 2023) through jax-privacy's auditor."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fedbench.audit.epsilon import audit_scores, gaussian_canary_scores, gaussian_epsilon


def test_reproduces_jax_privacy_published_values():
    """CanaryScoreAuditor's docstring example: scores 0..99 out, 9.5..108.5 in give TPR 0.11 at
    1% FPR and AUROC 0.595."""
    out = audit_scores(np.arange(100) + 9.5, np.arange(100), delta=1e-5)
    assert round(out["tpr_at_1%_fpr"], 2) == 0.11
    assert out["auroc"] == pytest.approx(0.595)


def test_gaussian_epsilon_matches_the_analytic_gaussian_mechanism():
    """Balle & Wang 2018, Thm. 8: delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s)."""
    from scipy.stats import norm

    s, delta = 1.0, 1e-5
    eps = gaussian_epsilon(s, delta)
    exact = norm.cdf(1 / (2 * s) - eps * s) - np.exp(eps) * norm.cdf(-1 / (2 * s) - eps * s)
    assert exact == pytest.approx(delta, rel=0.02)


def test_lower_bound_is_sound_for_the_gaussian_mechanism():
    """At 95% confidence the bound may exceed the true epsilon in at most 5% of runs: over 100
    runs with 300 canaries at noise multiplier 1 (epsilon 4.38 at delta 1e-5) it stays at or
    below it in at least 95."""
    true_eps = gaussian_epsilon(1.0, 1e-5)
    keys = jax.random.split(jax.random.PRNGKey(0), 100)
    bounds = [audit_scores(*gaussian_canary_scores(k, 300, 1.0), delta=1e-5)["epsilon_one_run"]
              for k in keys]
    assert np.mean(np.asarray(bounds) <= true_eps) >= 0.95
    assert np.median(bounds) > 0.3  # and the audit has power: it finds epsilon well above 0


def test_lower_bound_falls_with_more_noise():
    bounds = [audit_scores(*gaussian_canary_scores(jax.random.PRNGKey(1), 1000, s),
                           delta=1e-5)["epsilon_one_run"] for s in (0.5, 2.0)]
    assert bounds[0] > bounds[1] >= 0.0
