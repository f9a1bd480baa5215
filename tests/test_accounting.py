"""Privacy accounting against independent references (published numbers, closed forms)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from scipy import optimize, stats

from fedbench.errors import ConfigError
from fedbench.privacy import accounting as acc

TF = acc.TF_PRIVACY_ORDERS

# Abadi et al. 2016, Sec. 3.1: q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5 -> epsilon 1.26.
ABADI = dict(noise_multiplier=4.0, sampling_rate=0.01, steps=10_000)
# TF-Privacy's compute_dp_sgd_privacy example: MNIST (60,000 examples), batch 256, sigma 1.12,
# 60 epochs, delta = 1e-5 -> (2.92, 1e-5)-DP.
MNIST = dict(noise_multiplier=1.12, sampling_rate=256 / 60_000, steps=int(60 * 60_000 / 256))


def test_classic_rdp_reproduces_abadi_moments_accountant():
    eps, order = acc.classic_rdp_epsilon(**ABADI, delta=1e-5, orders=TF)
    assert eps == pytest.approx(1.26, abs=0.02)
    assert order == 20
    # The moments accountant used integer orders; any set containing 20 gives the same.
    assert acc.classic_rdp_epsilon(**ABADI, delta=1e-5, orders=range(2, 64)) == (eps, order)


def test_classic_rdp_reproduces_tf_privacy_mnist_example():
    assert MNIST["steps"] == 14_062
    eps, order = acc.classic_rdp_epsilon(**MNIST, delta=1e-5, orders=TF)
    assert eps == pytest.approx(2.92, abs=0.005)
    assert order == pytest.approx(9.1)
    # TF-Privacy rounds the step count up; the published number does not move.
    ceil_steps = {**MNIST, "steps": math.ceil(60 * 60_000 / 256)}
    assert acc.classic_rdp_epsilon(**ceil_steps, delta=1e-5, orders=TF).epsilon == pytest.approx(
        2.92, abs=0.005
    )


def test_classic_conversion_is_the_textbook_formula_on_dp_accounting_rdp():
    event = acc.dp_event(**ABADI)
    orders, rdp = acc.rdp_values(event, TF)
    expected = np.min(rdp + math.log(1e5) / (orders - 1))
    assert acc.classic_rdp_epsilon(**ABADI, delta=1e-5, orders=TF).epsilon == pytest.approx(
        expected, rel=1e-12
    )


@pytest.mark.parametrize("run", [ABADI, MNIST], ids=["abadi", "mnist"])
def test_pld_below_improved_rdp_below_classic_rdp(run):
    event = acc.dp_event(**run)
    classic = acc.classic_rdp_epsilon(**run, delta=1e-5, orders=TF).epsilon
    improved = acc.epsilon(event, 1e-5, "rdp", orders=TF)
    pld = acc.epsilon(event, 1e-5, "pld")
    assert pld < improved < classic
    assert improved == pytest.approx(
        dp_accounting.rdp.RdpAccountant(TF).compose(event).get_epsilon(1e-5)
    )


def test_gaussian_mechanism_matches_analytic_gaussian():
    """One unsampled step: PLD against Balle & Wang 2018, Theorem 8, solved here with brentq."""

    def delta_of(eps, s):  # sensitivity 1, noise std s
        phi = stats.norm.cdf
        return phi(0.5 / s - eps * s) - math.exp(eps) * phi(-0.5 / s - eps * s)

    for sigma in (0.5, 1.0, 2.0, 5.0):
        exact = optimize.brentq(lambda e: delta_of(e, sigma) - 1e-5, 1e-9, 100.0, xtol=1e-12)
        pld = acc.epsilon(acc.dp_event(sigma, 1.0, 1), 1e-5, "pld")
        assert pld == pytest.approx(exact, rel=1e-3)
        assert pld >= exact * (1 - 1e-9)  # PLD's estimate is pessimistic


def test_dp_event_structure():
    poisson = acc.dp_event(1.5, 0.1, 7)
    assert poisson == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.5)), 7
    )
    assert acc.dp_event(1.5, 1.0, 7) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(1.5), 7
    )
    # Replace-one sensitivity of a clipped sum is 2 C: dp-accounting gets noise_multiplier / 2.
    fixed = acc.dp_event(1.5, None, 7, "fixed", population=100, cohort=10)
    assert fixed == dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(
            100, 10, dp_accounting.GaussianDpEvent(0.75)
        ),
        7,
    )
    assert acc.dp_event(1.5, 0.1, 7, "fixed", population=100, cohort=10) == fixed
    assert acc.dp_event(1.5, None, 7, population=100, cohort=10) == poisson


def test_fixed_size_sampling_is_rdp_only():
    run = dict(noise_multiplier=1.0, sampling_rate=None, steps=100, sampling="fixed",
               population=1000, cohort=10)
    event = acc.dp_event(**run)
    improved = acc.epsilon(event, 1e-5, "rdp", orders=TF)
    classic = acc.classic_rdp_epsilon(**{**run, "delta": 1e-5, "orders": TF}).epsilon
    assert 0 < improved < classic < math.inf
    with pytest.raises(ConfigError) as err:
        acc.epsilon(event, 1e-5, "pld")
    assert err.value.key == "privacy.accountant"
    assert "rdp" in str(err.value) and "sampling" in str(err.value)
    report = acc.account(**run, delta=1e-5, accountant="rdp", orders=TF)
    assert report.neighboring_relation == "replace_one"
    assert report.sampling_rate == pytest.approx(0.01)
    assert report.epsilon == pytest.approx(improved)


def test_no_noise_means_infinite_epsilon():
    fixed = dict(sampling="fixed", population=100, cohort=10)
    assert acc.epsilon(acc.dp_event(0.0, 0.1, 10), 1e-5, "pld") == math.inf
    assert acc.epsilon(acc.dp_event(0.0, 0.1, 10), 1e-5, "rdp") == math.inf
    assert acc.epsilon(acc.dp_event(0.0, None, 10, **fixed), 1e-5, "rdp") == math.inf
    assert acc.classic_rdp_epsilon(0.0, 0.1, 10, 1e-5).epsilon == math.inf
    assert acc.account(0.0, 0.1, 10, 1e-5).epsilon == math.inf
    with pytest.raises(ConfigError):  # unsupported stays unsupported without noise
        acc.epsilon(acc.dp_event(0.0, None, 10, **fixed), 1e-5, "pld")


def test_account_report():
    report = acc.account(**ABADI, delta=1e-5, accountant="rdp", rdp_conversion="classic",
                         orders=TF)
    d = report.as_dict()
    for key in ("epsilon", "delta", "noise_multiplier", "sampling_rate", "steps", "accountant",
                "conversion", "sampling"):
        assert key in d
    assert d["conversion"] == "rdp-classic" and d["accountant"] == "rdp"
    assert d["epsilon"] == pytest.approx(1.26, abs=0.02) and d["optimal_order"] == 20
    assert acc.account(**ABADI, accountant="rdp").conversion == "rdp-dp_accounting-improved"
    pld = acc.account(**ABADI, population=10**6)
    assert pld.conversion == "pld" and pld.optimal_order is None
    assert pld.delta == acc.default_delta(10**6)
    assert pld.neighboring_relation == "add_or_remove_one"


def test_default_delta():
    assert acc.default_delta() == 1e-5
    assert acc.default_delta(20) == 1e-5  # 20 ** -1.1 = 0.037 would be meaningless
    assert acc.default_delta(10**6) == pytest.approx(10**-6.6)
    for n in (1, 20, 1000, 35_000, 36_000, 10**6, 10**9):
        assert acc.default_delta(n) <= 1e-5
        assert acc.default_delta(n) * n < 1


@pytest.mark.parametrize(
    "accountant, q, steps, target, sampling, opts",
    [
        ("rdp", MNIST["sampling_rate"], MNIST["steps"], 3.0, {}, {}),
        # A coarser PLD grid than the default 1e-4 keeps this test fast (1 s instead of 7 s).
        ("pld", 0.01, 200, 1.0, {}, dict(pld_discretization=1e-3)),
        ("rdp", None, 200, 2.0, dict(sampling="fixed", population=1000, cohort=10),
         dict(orders=TF)),
    ],
    ids=["rdp-poisson", "pld-poisson", "rdp-fixed"],
)
def test_calibration_round_trip(accountant, q, steps, target, sampling, opts):
    z = acc.calibrate_noise(target, 1e-5, q, steps, accountant, **sampling, **opts)

    def eps(z):
        return acc.epsilon(acc.dp_event(z, q, steps, **sampling), 1e-5, accountant, **opts)

    assert eps(z) <= target
    assert eps(z) >= 0.97 * target
    # Within the documented tolerance of the smallest noise multiplier that meets the target.
    assert eps(z * (1 - 2 * acc.CALIBRATION_RTOL)) > target


def test_calibration_edge_cases():
    assert acc.calibrate_noise(math.inf, 1e-5, 0.01, 100) == 0.0
    with pytest.raises(ConfigError) as err:
        acc.calibrate_noise(1e-4, 1e-5, 0.01, 10_000, "rdp")
    assert err.value.key == "privacy.target_epsilon"
    assert "10000" in str(err.value) and "noise_multiplier" in str(err.value)
    with pytest.raises(ConfigError) as err:
        acc.calibrate_noise(2.0, 1e-5, 0.01, 10_000, "rdp", max_noise_multiplier=0.5)
    assert err.value.key == "privacy.target_epsilon" and "0.5" in str(err.value)
    with pytest.raises(ConfigError) as err:
        acc.calibrate_noise(2.0, 1e-5, None, 10, "pld", "fixed", population=100, cohort=10)
    assert err.value.key == "privacy.accountant"


EVENT = acc.dp_event(1.0, 0.01, 10)


@pytest.mark.parametrize(
    "call, key",
    [
        (lambda: acc.dp_event(-1.0, 0.01, 10), "privacy.noise_multiplier"),
        (lambda: acc.dp_event(math.nan, 0.01, 10), "privacy.noise_multiplier"),
        (lambda: acc.dp_event(math.inf, 0.01, 10), "privacy.noise_multiplier"),
        (lambda: acc.dp_event(1.0, 0.0, 10), "privacy.sampling_rate"),
        (lambda: acc.dp_event(1.0, 1.5, 10), "privacy.sampling_rate"),
        (lambda: acc.dp_event(1.0, None, 10), "privacy.sampling_rate"),
        (lambda: acc.dp_event(1.0, 0.01, 0), "privacy.steps"),
        (lambda: acc.dp_event(1.0, 0.01, 2.5), "privacy.steps"),
        (lambda: acc.dp_event(1.0, 0.01, 10, "shuffle"), "privacy.sampling"),
        (lambda: acc.dp_event(1.0, 0.01, 10, "fixed", cohort=1), "privacy.population"),
        (lambda: acc.dp_event(1.0, 0.01, 10, "fixed", population=100), "privacy.cohort"),
        (lambda: acc.dp_event(1.0, None, 10, "fixed", 100, 200), "privacy.cohort"),
        (lambda: acc.dp_event(1.0, 0.5, 10, "fixed", 100, 10), "privacy.sampling_rate"),
        (lambda: acc.epsilon(EVENT, 0.0), "privacy.delta"),
        (lambda: acc.epsilon(EVENT, 1.0), "privacy.delta"),
        (lambda: acc.epsilon(EVENT, 1e-5, "gdp"), "privacy.accountant"),
        (lambda: acc.epsilon(EVENT, 1e-5, "rdp", orders=[0.5, 2]), "privacy.orders"),
        (lambda: acc.epsilon(EVENT, 1e-5, "rdp", orders=[]), "privacy.orders"),
        (lambda: acc.classic_rdp_epsilon(1.0, 0.01, 10, 2.0), "privacy.delta"),
        (lambda: acc.account(1.0, 0.01, 10, accountant="pld", rdp_conversion="classic"),
         "privacy.rdp_conversion"),
        (lambda: acc.calibrate_noise(0.0, 1e-5, 0.01, 10), "privacy.target_epsilon"),
        (lambda: acc.calibrate_noise(-1.0, 1e-5, 0.01, 10), "privacy.target_epsilon"),
        (lambda: acc.calibrate_noise(math.nan, 1e-5, 0.01, 10), "privacy.target_epsilon"),
        (lambda: acc.calibrate_noise(1.0, 0.0, 0.01, 10), "privacy.delta"),
        (lambda: acc.calibrate_noise(1.0, 1e-5, 0.0, 10), "privacy.sampling_rate"),
        (lambda: acc.calibrate_noise(1.0, 1e-5, 0.01, 0), "privacy.steps"),
        (lambda: acc.calibrate_noise(1.0, 1e-5, 0.01, 10, "moments"), "privacy.accountant"),
        (lambda: acc.default_delta(0), "privacy.population"),
    ],
)
def test_bad_input_raises_config_error_naming_the_key(call, key):
    with pytest.raises(ConfigError) as err:
        call()
    assert err.value.key == key


def test_repeated_questions_are_answered_from_the_memo_and_equal_a_fresh_accountant():
    """A sweep's replicas that share an event are accounted once (fedbench/privacy/events.py):
    the memo's answer equals dp-accounting's own for the same event, a nearby but different
    event is not served the stale answer, and a composed event (unhashable) is keyed too."""
    from fedbench.privacy import events

    def event(z):
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(z)), 50)

    orders = np.asarray(acc.DEFAULT_RDP_ORDERS, float)
    events._EPSILON_MEMO.clear()
    first = events._epsilon_and_order(event(1.3), 1e-5, "pld", orders, 1e-4)
    assert len(events._EPSILON_MEMO) == 1
    again = events._epsilon_and_order(event(1.3), 1e-5, "pld", orders, 1e-4)
    assert again == first and len(events._EPSILON_MEMO) == 1
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(event(1.3))
    assert first[0] == pld.get_epsilon(1e-5)
    nearby = events._epsilon_and_order(event(1.3 + 1e-9), 1e-5, "pld", orders, 1e-4)
    assert len(events._EPSILON_MEMO) == 2 and nearby[0] <= first[0]
    other_delta = events._epsilon_and_order(event(1.3), 1e-6, "pld", orders, 1e-4)
    assert other_delta[0] > first[0]
    composed = dp_accounting.ComposedDpEvent([event(1.3), event(2.0)])
    rdp = dp_accounting.rdp.RdpAccountant(list(orders))
    rdp.compose(composed)
    assert events._epsilon_and_order(composed, 1e-5, "rdp", orders, 1e-4) == \
        pytest.approx(rdp.get_epsilon_and_optimal_order(1e-5))
