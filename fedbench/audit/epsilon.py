"""Empirical lower bounds on epsilon from one run (canaries), with ``jax-privacy``'s auditor.

T. Steinke, M. Nasr, M. Jagielski. "Privacy Auditing with One (1) Training Run", NeurIPS 2023:
``m`` canaries are each included independently with probability 1/2, the run's output scores
every canary, and the number of correct guesses among the most confident ones, compared with a
binomial tail under ``(epsilon, delta)``-DP (their Theorem 3.1), lower-bounds epsilon with
confidence ``1 - significance``. The statistics are ``jax_privacy.auditing.CanaryScoreAuditor``'s
(``epsilon_one_run``; ``epsilon_one_run_fdp`` is Mahloujifar et al. 2024's f-DP version).

:func:`gaussian_canary_scores` is the white-box "gradient canary" setting of Steinke et al.
(Sec. 6): the mechanism releases the sum of the included canaries, ``m`` orthogonal vectors of
norm ``clip`` (one per canary unit: an example, or a client under client-level DP), plus
Gaussian noise of standard deviation ``noise_multiplier * clip``, which is one round of DP-FedAvg
with the canaries as clients; each canary's score is its inner product with the release.
"""

from __future__ import annotations

import jax
import numpy as np
from jax_privacy.auditing import CanaryScoreAuditor


def gaussian_canary_scores(key: jax.Array, num_canaries: int, noise_multiplier: float,
                           clip: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(in_scores, out_scores)`` of one run of the Gaussian mechanism with ``num_canaries``
    canaries (canary ``i`` is ``clip * e_i``, included with probability 1/2)."""
    include_key, noise_key = jax.random.split(key)
    included = jax.random.bernoulli(include_key, 0.5, (num_canaries,))
    release = clip * included + noise_multiplier * clip * jax.random.normal(
        noise_key, (num_canaries,))
    scores = np.asarray(release * clip)  # <release, clip e_i>
    included = np.asarray(included)
    return scores[included], scores[~included]


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The exact epsilon of one Gaussian mechanism with sensitivity 1 and std
    ``noise_multiplier`` at ``delta`` (Balle & Wang 2018, via dp-accounting's PLD accountant)."""
    from dp_accounting import GaussianDpEvent
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant()
    accountant.compose(GaussianDpEvent(noise_multiplier))
    return float(accountant.get_epsilon(delta))


def audit_scores(in_scores: np.ndarray, out_scores: np.ndarray, delta: float,
                 significance: float = 0.05) -> dict[str, float]:
    """Epsilon lower bounds and attack metrics of one run's canary scores (higher: "in")."""
    auditor = CanaryScoreAuditor(np.asarray(in_scores), np.asarray(out_scores))
    # the most these canaries could certify: every canary guessed right
    perfect = CanaryScoreAuditor(np.ones(len(in_scores)), np.zeros(len(out_scores)))
    return {
        "ceiling_fdp": float(perfect.epsilon_one_run_fdp(significance, delta)),
        "epsilon_one_run": float(auditor.epsilon_one_run(significance, delta)),
        "epsilon_one_run_fdp": float(auditor.epsilon_one_run_fdp(significance, delta)),
        "auroc": float(auditor.attack_auroc()),
        "tpr_at_1%_fpr": float(auditor.tpr_at_given_fpr(0.01)),
        "canaries": int(len(in_scores) + len(out_scores)),
        "significance": significance,
        "delta": delta,
    }
