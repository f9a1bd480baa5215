"""DP runs end to end: the epsilon reported is the one spent, checked with dp-accounting
directly; bad privacy settings are rejected before training."""

from __future__ import annotations

import math

import dp_accounting
import jax
import numpy as np
import pytest
from conftest import compose

from fedbench.errors import ConfigError
from fedbench.run import run_experiment

SMALL = ["model=logreg", "num_clients=20", "clients_per_round=5", "rounds=6", "eval_every=3"]


def pld_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.pld.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def test_dp_client_epsilon_is_the_one_spent(tmp_path):
    cfg = compose(SMALL + ["privacy=dp_client", "privacy.target_epsilon=4"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    priv = summary["privacy"]
    z = priv["noise_multiplier"]
    assert priv["delta"] == pytest.approx(1e-5 if 20**-1.1 > 1e-5 else 20**-1.1)
    expected = pld_epsilon(z, 5 / 20, 6, priv["delta"])
    assert priv["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert 0.95 * 4 <= priv["epsilon"] <= 4  # calibrated to the target, never above it
    assert priv["accountant"] == "pld" and priv["conversion"] == "pld" and priv["steps"] == 6
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    import json

    eps = [json.loads(line)["epsilon"] for line in lines]
    assert eps[0] == 0.0
    assert eps[1] == pytest.approx(pld_epsilon(z, 0.25, 3, priv["delta"]), rel=1e-6)
    assert eps[1] < eps[2] == pytest.approx(priv["epsilon"])


def test_dp_client_rdp_accountant_and_fixed_sampling(tmp_path):
    cfg = compose(SMALL + ["privacy=dp_client", "privacy.noise_multiplier=1.5",
                           "privacy.target_epsilon=null", "privacy.sampling=fixed",
                           "privacy.accountant=rdp"])
    priv = run_experiment(cfg, tmp_path, progress=None)["privacy"]
    acc = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    # Replace-one moves the clipped sum by up to 2 * clip: Gaussian noise multiplier z / 2.
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        20, 5, dp_accounting.GaussianDpEvent(1.5 / 2))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, 6))
    assert priv["epsilon"] == pytest.approx(acc.get_epsilon(priv["delta"]), rel=1e-6)
    assert priv["conversion"] == "rdp-dp_accounting-improved"
    assert priv["neighboring_relation"] == "replace_one"


def test_dp_sample_reports_the_worst_clients_epsilon(tmp_path):
    cfg = compose(SMALL + ["privacy=dp_sample", "privacy.noise_multiplier=1.2",
                           "privacy.target_epsilon=null", "privacy.accountant=rdp",
                           "batch_size=10"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    priv = summary["privacy"]
    sizes = np.asarray(summary["partition_stats"]["client_sizes"])
    # Participation recomputed from the run's key schedule.
    run_key = jax.random.split(jax.random.PRNGKey(cfg["seed"]))[1]
    part = np.zeros(20, int)
    for r in range(6):
        sample_key, _ = jax.random.split(jax.random.fold_in(run_key, r))
        part[np.asarray(jax.random.choice(sample_key, 20, (5,), replace=False))] += 1
    worst = 0.0
    for n, p in zip(sizes, part):
        if p == 0:
            continue
        q, steps = min(1.0, 10 / n), int(p * math.ceil(n / 10))
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.2)), steps))
        worst = max(worst, acc.get_epsilon(priv["delta"]))
    assert priv["epsilon"] == pytest.approx(worst, rel=1e-6)
    # The unit is one example: the population is every training example of every client.
    assert priv["delta"] == pytest.approx(min(1e-5, sizes.sum() ** -1.1))
    assert priv["unit"] == "example"


def test_infinite_target_means_no_noise(tmp_path):
    cfg = compose(SMALL + ["privacy=dp_client", "privacy.target_epsilon=inf"])
    priv = run_experiment(cfg, tmp_path, progress=None)["privacy"]
    assert priv["noise_multiplier"] == 0.0 and math.isinf(priv["epsilon"])


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["privacy.target_epsilon=0"], "privacy.target_epsilon"),
        (["privacy.target_epsilon=-1"], "privacy.target_epsilon"),
        (["privacy.delta=0"], "privacy.delta"),
        (["privacy.delta=1.5"], "privacy.delta"),
        (["privacy.clip=0"], "privacy.clip"),
        (["privacy.clip=-2"], "privacy.clip"),
        (["privacy.target_epsilon=0.00001"], "privacy.target_epsilon"),  # unreachable
        (["privacy.sampling=fixed"], "privacy.accountant"),  # PLD cannot account it
        (["privacy.sampling=fixed", "privacy.noise_multiplier=1.0",
          "privacy.target_epsilon=null"], "privacy.accountant"),  # nor with a given noise
        (["privacy.noise_multiplier=1.0"], "privacy.target_epsilon"),  # both set
        (["privacy.sampling=shuffle"], "privacy.sampling"),
        (["algorithm=centralized"], "privacy.name"),
    ],
)
def test_bad_privacy_settings_are_rejected_before_training(tmp_path, overrides, key):
    cfg = compose(SMALL + ["privacy=dp_client"] + overrides)
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path, progress=None)
    assert err.value.key == key
    assert not (tmp_path / "metrics.jsonl").exists()
