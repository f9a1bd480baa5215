"""Canary sites through whole DP-FedAvg runs (Andrew et al. 2024 with Steinke et al. 2023's
one-run bound): sound against the accountant's epsilon, and able to catch a mechanism that adds
less noise than it claims."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose

from fedbench.audit.canaries import canary_scores, check_canaries
from fedbench.audit.epsilon import audit_scores
from fedbench.errors import ConfigError
from fedbench.replicas import run_values
from fedbench.run import build_simulator

# 250 sites, the last 200 canaries; Poisson rate 1/2, 3 rounds, noise multiplier 2: the PLD
# accountant's epsilon is about 2.2 at delta 1e-5, which 200 canaries can certify past (a
# perfect guess certifies 3.2, 5.9 with the f-DP bound).
CFG = ["model=logreg", "partition=iid", "dataset.num_clients=250", "clients_per_round=125",
       "rounds=3", "local_steps=1", "batch_size=4", "privacy=dp_client",
       "privacy.noise_multiplier=2.0", "privacy.target_epsilon=null"]


def _bounds(out):
    eps = [audit_scores(r["in"], r["out"], out["delta"]) for r in out["runs"]]
    return (np.array([e["epsilon_one_run"] for e in eps]),
            np.array([e["epsilon_one_run_fdp"] for e in eps]),
            np.array([e["auroc"] for e in eps]))


def test_the_lower_bound_stays_below_the_accountants_epsilon_in_95_of_100_runs():
    cfg = compose(CFG)
    out = canary_scores(cfg, 200, list(range(100)))
    assert out["claimed_epsilon"] == pytest.approx(2.2, abs=0.1)
    one_run, fdp, auroc = _bounds(out)
    assert np.sum(one_run <= out["claimed_epsilon"]) >= 95
    assert np.sum(fdp <= out["claimed_epsilon"]) >= 95
    assert np.median(auroc) > 0.55  # the canaries are seen through the noise: the audit has power


def test_a_mechanism_with_a_tenth_of_the_claimed_noise_is_caught():
    """The same run, its noise std cut tenfold while the claim stays: the f-DP bound exceeds the
    claimed epsilon in most runs (the mechanism's own epsilon is far larger)."""
    cfg = compose(CFG)
    values = run_values(cfg, build_simulator(cfg).privacy)
    values["noise_std"] = values["noise_std"] / 10
    out = canary_scores(cfg, 200, list(range(10)), values=values)
    _, fdp, auroc = _bounds(out)
    assert np.sum(fdp > out["claimed_epsilon"]) >= 6
    assert np.median(auroc) > 0.75


def test_canaries_need_client_level_dp_with_a_fixed_clip():
    with pytest.raises(ConfigError, match="privacy.name"):
        check_canaries(compose([]), 5)
    with pytest.raises(ConfigError, match="adaptive_clip"):
        check_canaries(compose(["privacy=dp_client", "privacy.adaptive_clip.enabled=true"]), 5)
    with pytest.raises(ConfigError, match=r"audit.epsilon.run.sites.*= 19\]"):
        check_canaries(compose(["privacy=dp_client"]), 20)
