"""Privacy correctness (issue 18): the worst client's epsilon and its calibration, the default
delta of sample-level DP, sampling that never exceeds the accounted rate, settings rejected
before training, and infinite epsilons and adaptive clips in the result files.

Expectations come from dp-accounting called directly (a brute-force maximum over every
client), closed forms and exact rational arithmetic, never from fedbench's own numbers.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.errors import ConfigError
from fedbench.privacy.plan import build_privacy


def pld_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting's PLD epsilon of ``steps`` Poisson-sampled Gaussian steps (add/remove)."""
    acc = dp_accounting.pld.PLDAccountant()
    inner = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        inner = dp_accounting.PoissonSampledDpEvent(q, inner)
    acc.compose(dp_accounting.SelfComposedDpEvent(inner, steps))
    return acc.get_epsilon(delta)


def rdp_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


def worst_client(z, sizes, participation, batch_size, local_epochs, delta, epsilon_fn):
    """Brute force: every client that took part, accounted directly; the maximum."""
    worst = 0.0
    for n, p in zip(sizes, participation):
        if p > 0:
            q = min(1.0, batch_size / n)
            steps = int(p) * local_epochs * math.ceil(n / batch_size)
            worst = max(worst, epsilon_fn(z, q, steps, delta))
    return worst


def dp_sample_plan(sizes, rounds, *, batch_size=10, local_epochs=1, **privacy):
    cfg = {"name": "dp_sample", "clip": 1.0, **privacy}
    return build_privacy(
        cfg, algorithm_kind="federated", num_clients=len(sizes), clients_per_round=len(sizes),
        rounds=rounds, local_epochs=local_epochs, batch_size=batch_size,
        client_sizes=np.asarray(sizes),
    )


# --------------------------------------------------------------------------------------------
# 1. The worst client under PLD


def test_dp_sample_reports_the_pld_worst_client_when_rdp_ranks_it_last():
    """Issue 18's example: client 0 (q = 1, 5 steps) is last under RDP but worst under PLD."""
    sizes, participation = [10, 41, 35, 27], [5, 11, 10, 8]
    plan = dp_sample_plan(sizes, rounds=11, noise_multiplier=1.5)
    expected = worst_client(1.5, sizes, participation, 10, 1, plan.delta, pld_epsilon)
    assert expected == pytest.approx(pld_epsilon(1.5, 1.0, 5, plan.delta))  # client 0
    report = plan.report(11, np.asarray(participation))
    assert report["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert report["worst_client_sampling_rate"] == 1.0 and report["worst_client_steps"] == 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_sample_report_is_the_brute_force_maximum_over_clients(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 60, size=5)
    participation = rng.integers(0, 6, size=5)
    participation[0] = max(participation[0], 1)
    z = float(rng.uniform(0.8, 2.0))
    plan = dp_sample_plan(sizes, rounds=6, noise_multiplier=z)
    report = plan.report(6, participation)
    expected = worst_client(z, sizes, participation, 10, 1, plan.delta, pld_epsilon)
    assert report["epsilon"] == pytest.approx(expected, rel=1e-9)
    rdp_plan = dp_sample_plan(sizes, rounds=6, noise_multiplier=z, accountant="rdp")
    expected_rdp = worst_client(z, sizes, participation, 10, 1, plan.delta, rdp_epsilon)
    assert rdp_plan.report(6, participation)["epsilon"] == pytest.approx(expected_rdp, rel=1e-9)


def test_dp_sample_calibration_meets_the_target_for_every_client():
    """RDP-calibrated noise ranks client 0 (q = 1) fifth of five; PLD needs the most for it."""
    sizes, rounds, target = [10, 57, 58, 61, 62], 1, 5.6
    plan = dp_sample_plan(sizes, rounds=rounds, target_epsilon=target)
    z = plan.noise_multiplier
    everyone = [rounds] * len(sizes)
    worst = worst_client(z, sizes, everyone, 10, 1, plan.delta, pld_epsilon)
    assert worst <= target
    assert worst >= 0.98 * target  # and not needlessly noisy
    assert plan.report(rounds, np.asarray(everyone))["epsilon"] == pytest.approx(worst, rel=1e-9)


# --------------------------------------------------------------------------------------------
# 2. dp_sample's default delta: the population is every training example


def test_dp_sample_default_delta_counts_every_example():
    sizes = [20_000, 20_000, 50]  # the smallest client alone would give 1e-5
    plan = dp_sample_plan(sizes, rounds=1, noise_multiplier=1.0)
    assert plan.delta == pytest.approx(sum(sizes) ** -1.1, rel=1e-12)
    assert plan.delta < 1e-5


# --------------------------------------------------------------------------------------------
# 3. Poisson sampling never exceeds the accounted rate


def exact_threshold(rate: float) -> int:
    """floor(rate * 2^32) in exact rational arithmetic."""
    return math.floor(Fraction(rate) * 2**32)


@pytest.mark.parametrize("rate", [1e-6, 1e-3, 1 / 3, 0.1, 5 / 7, 10 / 41, 1 - 2**-40, 1.0])
def test_sampling_threshold_gives_at_most_the_accounted_rate(rate):
    from fedbench.privacy.mechanisms import sampling_threshold

    threshold = sampling_threshold(rate)
    assert threshold == exact_threshold(rate)
    assert Fraction(threshold, 2**32) <= Fraction(rate)  # the realised probability
    assert Fraction(rate) - Fraction(threshold, 2**32) < Fraction(1, 2**32)
    # What float32 uniforms compared with q gave: ceil(q 2^23) / 2^23, 7% above q at q = 1e-6.
    if rate == 1e-6:
        assert Fraction(math.ceil(rate * 2**23), 2**23) > Fraction(107, 100) * Fraction(rate)


def test_poisson_cohort_keeps_exactly_the_draws_below_the_integer_threshold():
    from fedbench.privacy.mechanisms import poisson_cohort

    for num_clients, rate, seed in [(100_000, 1e-3, 0), (1000, 0.3, 1), (50, 1.0, 2)]:
        key = jax.random.PRNGKey(seed)
        ids, valid, count = poisson_cohort(key, num_clients, rate, num_clients)
        bits = np.asarray(jax.random.bits(key, (num_clients,), jnp.uint32), np.uint64)
        expected = np.flatnonzero(bits < exact_threshold(rate))
        assert int(count) == expected.size
        np.testing.assert_array_equal(np.asarray(ids)[np.asarray(valid)], expected)


def test_dp_sgd_example_sampling_keeps_exactly_the_draws_below_the_integer_threshold():
    from fedbench.privacy.dp_sgd import sample_examples

    length, batch_size = 64, 10
    for count, seed in [(64, 0), (41, 1), (27, 2), (10, 3), (3, 4)]:
        key = jax.random.PRNGKey(seed)
        chosen = np.asarray(sample_examples(key, jnp.int32(count), length, batch_size))
        bits = np.asarray(jax.random.bits(key, (length,), jnp.uint32), np.uint64)
        rate = min(1.0, batch_size / count)  # the rate the accountant is given (float64)
        keep = (bits < exact_threshold(rate)) & (np.arange(length) < count)
        np.testing.assert_array_equal(chosen, keep)


# --------------------------------------------------------------------------------------------
# 4. Settings rejected before training; result files


def client_plan(**privacy):
    cfg = {"name": "dp_client", "clip": 1.0, **privacy}
    return build_privacy(
        cfg, algorithm_kind="federated", num_clients=20, clients_per_round=5, rounds=6,
        local_epochs=1, batch_size=10, client_sizes=np.full(20, 10),
    )


def test_fixed_sampling_with_pld_and_a_given_noise_multiplier_is_rejected_before_training():
    with pytest.raises(ConfigError) as err:
        client_plan(noise_multiplier=1.0, sampling="fixed", accountant="pld")
    assert err.value.key == "privacy.accountant" and err.value.value == "pld"
    assert "rdp" in err.value.allowed
    assert client_plan(noise_multiplier=1.0, sampling="fixed", accountant="rdp") is not None


@pytest.mark.parametrize(
    "privacy, key",
    [
        ({"sampling": "fixed"}, "privacy.sampling"),
        ({"adaptive_clip": {"enabled": True}}, "privacy.adaptive_clip.enabled"),
    ],
)
def test_dp_sample_rejects_settings_it_would_ignore(privacy, key):
    with pytest.raises(ConfigError) as err:
        dp_sample_plan([10, 20], rounds=2, noise_multiplier=1.0, **privacy)
    assert err.value.key == key
    # The defaults are accepted.
    dp_sample_plan([10, 20], rounds=2, noise_multiplier=1.0, sampling="poisson",
                   adaptive_clip={"enabled": False})


def test_infinite_epsilon_survives_json_and_the_collected_table(tmp_path):
    from fedbench.collect import collect
    from fedbench.run import run_experiment

    cfg = compose(["model=logreg", "num_clients=20", "clients_per_round=5", "rounds=4",
                   "eval_every=2", "privacy=dp_client", "privacy.target_epsilon=inf"])
    run_experiment(cfg, tmp_path, progress=None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert math.isinf(float(summary["privacy"]["epsilon"]))
    table = collect(tmp_path).sort_values("round")
    eps = table["epsilon"].tolist()
    assert eps[0] == 0.0 and all(math.isinf(e) and e > 0 for e in eps[1:])
