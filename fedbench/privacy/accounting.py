"""Privacy accounting of a differentially private training run, with Google's ``dp-accounting``.

A DP training run (DP-FedAvg, DP-SGD) repeats one mechanism ``steps`` times: sample a cohort,
clip every contribution to L2 norm ``C``, sum, add Gaussian noise of standard deviation
``noise_multiplier * C``. :func:`account` and :func:`epsilon` compute the ``(epsilon, delta)``
it satisfies (the textbook RDP conversion :func:`classic_rdp_epsilon` for reference),
:func:`worst_account` the worst of several such runs (sample-level DP: one per client), and
:func:`calibrate_noise` / :func:`calibrate_noise_worst` the smallest noise multiplier that meets
a target epsilon. The events, the neighbouring relations, the validation of every input and the
default delta live in :mod:`fedbench.privacy.events`, the searches (worst run, calibration) in
:mod:`fedbench.privacy.calibration`; both are re-exported here.

The privacy unit is whatever one contribution is: a client for client-level DP-FedAvg (McMahan
et al. 2018), an example for DP-SGD (Abadi et al. 2016).

Accountants and conversions
  ``pld`` (``conversion="pld"``): the privacy loss distribution accountant, numerically tight up
  to its discretisation (``pld_discretization``, dp-accounting's default ``1e-4``; the estimate is
  pessimistic, i.e. an upper bound). Each step's privacy loss moves by less than one interval,
  so over ``steps`` compositions the epsilon is overstated by less than ``steps *
  pld_discretization`` (:func:`pld_slack`); for very small epsilons (below about ``1e-2``) it
  can exceed the RDP bound, and its run time grows quickly as the noise multiplier falls below
  about 0.5.
  ``rdp`` (``conversion="rdp-dp_accounting-improved"``): Renyi DP of the subsampled Gaussian per
  order, composed additively, converted to ``(epsilon, delta)`` with the improved bound of
  Canonne, Kamath & Steinke 2020 (Prop. 12) / Asoodeh et al. 2021 that dp-accounting uses:
  ``epsilon = min_a RDP_a + log1p(-1/a) - log(delta * a) / (a - 1)``.
  :func:`classic_rdp_epsilon` (``conversion="rdp-classic"``): the same RDP values with Mironov
  2017, Prop. 3, ``epsilon = min_a steps * RDP_a + log(1/delta) / (a - 1)``, which is what the
  moments accountant of Abadi et al. 2016 and TF-Privacy's ``compute_dp_sgd_privacy`` report.
  For the same event, PLD <= improved RDP < classic RDP (up to PLD discretisation).

Worst of several runs
  RDP and PLD do not rank runs alike, so :func:`worst_account` goes through the runs in
  decreasing RDP epsilon (an upper bound of the true one) until no run left can beat the
  largest PLD epsilon found (:mod:`fedbench.privacy.calibration`).

References:
  M. Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (moments accountant;
  Section 3.1: ``q = 0.01, sigma = 4, T = 10000, delta = 1e-5`` gives ``epsilon ~ 1.26``).
  I. Mironov, "Renyi Differential Privacy", CSF 2017, Proposition 3.
  I. Mironov, K. Talwar, L. Zhang, "Renyi Differential Privacy of the Sampled Gaussian
  Mechanism", arXiv:1908.10530, 2019.
  C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy",
  NeurIPS 2020, Proposition 12; S. Asoodeh et al., "Three Variants of Differential Privacy:
  Lossless Conversion and Applications", IEEE JSAIT 2021.
  A. Koskela, J. Jalko, A. Honkela, "Computing Tight Differential Privacy Guarantees Using FFT",
  AISTATS 2020; V. Doroshenko et al., "Connect the Dots: Tighter Discrete Approximations of
  Privacy Loss Distributions", PETS 2022.
  B. Balle, Y.-X. Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
  Calibration and Optimal Denoising", ICML 2018, Theorem 8.
  H. B. McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import dp_accounting
import numpy as np

from fedbench.errors import ConfigError
from fedbench.privacy.calibration import (
    CALIBRATION_RTOL,
    MAX_NOISE_MULTIPLIER,
    MIN_NOISE_MULTIPLIER,
    calibrate_noise,
    calibrate_noise_worst,
    pld_slack,
    poisson_runs,
    worst_run,
)
from fedbench.privacy.events import (
    ACCOUNTANTS,
    DEFAULT_PLD_DISCRETIZATION,
    DEFAULT_RDP_ORDERS,
    SAMPLINGS,
    TF_PRIVACY_ORDERS,
    _accountant_for,
    _check_accountant,
    _check_delta,
    _check_orders,
    _check_pld_discretization,
    _epsilon_and_order,
    _is_non_private,
    _neighboring_relation,
    _resolve_sampling,
    default_delta,
    dp_event,
)

__all__ = [
    "ACCOUNTANTS", "CALIBRATION_RTOL", "DEFAULT_PLD_DISCRETIZATION", "DEFAULT_RDP_ORDERS",
    "MAX_NOISE_MULTIPLIER", "MIN_NOISE_MULTIPLIER", "RDP_CONVERSIONS", "SAMPLINGS",
    "TF_PRIVACY_ORDERS", "AccountingReport", "RdpEpsilon", "account", "calibrate_noise",
    "calibrate_noise_worst", "classic_rdp_epsilon", "default_delta", "dp_event", "epsilon",
    "pld_slack", "rdp_values", "worst_account",
]

RDP_CONVERSIONS = ("improved", "classic")


class RdpEpsilon(NamedTuple):
    """An RDP-based epsilon and the order that attains it."""

    epsilon: float
    order: float


@dataclasses.dataclass(frozen=True)
class AccountingReport:
    """The ``(epsilon, delta)`` of a training run and how it was obtained.

    Attributes:
      epsilon: the privacy loss (``inf`` without noise).
      delta: the failure probability it holds at.
      noise_multiplier: noise std / clipping norm (see :mod:`fedbench.privacy.events`).
      sampling_rate: per-step sampling probability (``cohort / population`` when fixed).
      steps: number of noisy releases (rounds).
      accountant: ``"pld"`` or ``"rdp"``.
      conversion: ``"pld"``, ``"rdp-dp_accounting-improved"`` or ``"rdp-classic"``.
      sampling: ``"poisson"`` or ``"fixed"``.
      neighboring_relation: ``"add_or_remove_one"`` (Poisson) or ``"replace_one"`` (fixed).
      population: number of units, when known.
      cohort: units per step for fixed-size sampling.
      optimal_order: the RDP order attaining ``epsilon`` (``None`` for PLD).
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    sampling_rate: float
    steps: int
    accountant: str
    conversion: str
    sampling: str
    neighboring_relation: str
    population: int | None = None
    cohort: int | None = None
    optimal_order: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)


def epsilon(
    event: dp_accounting.DpEvent,
    delta: float,
    accountant: str = "pld",
    *,
    orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """The epsilon of ``event`` at ``delta``, by dp-accounting's PLD or RDP accountant.

    The neighbouring relation follows the event: replace-one if it samples without replacement,
    add/remove-one otherwise. RDP uses dp-accounting's improved RDP-to-DP conversion (Canonne
    et al. 2020, Prop. 12); for the classic one see :func:`classic_rdp_epsilon`.

    Args:
      event: e.g. from :func:`dp_event`.
      delta: target delta in (0, 1).
      accountant: ``"pld"`` or ``"rdp"``.
      orders: RDP orders (> 1); default :data:`DEFAULT_RDP_ORDERS`. RDP only.
      pld_discretization: PLD value discretisation interval. PLD only.

    Returns:
      epsilon as a float; ``inf`` if some release has no noise.

    Raises:
      ConfigError: bad ``delta``/``accountant``/``orders``, or an event the accountant cannot
        account (e.g. ``privacy.accountant=pld`` with fixed-size sampling).
    """
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    orders_arr = _check_orders(orders)
    pld_discretization = _check_pld_discretization(pld_discretization)
    return _epsilon_and_order(event, delta, accountant, orders_arr, pld_discretization)[0]


def rdp_values(
    event: dp_accounting.DpEvent, orders: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The composed RDP ``(orders, RDP_a)`` of ``event``, from dp-accounting's RDP accountant.

    Args:
      event: e.g. from :func:`dp_event`.
      orders: RDP orders (> 1); default :data:`DEFAULT_RDP_ORDERS`.

    Returns:
      ``(orders, rdp)``, two float arrays; ``rdp`` is ``inf`` everywhere without noise.

    Raises:
      ConfigError: bad ``orders`` or an event the RDP accountant cannot account.
    """
    orders_arr = _check_orders(orders)
    acc = _accountant_for(event, "rdp", orders_arr, DEFAULT_PLD_DISCRETIZATION)
    if _is_non_private(event):
        return orders_arr, np.full_like(orders_arr, np.inf)
    acc.compose(event)
    return np.asarray(acc.orders, dtype=np.float64), np.asarray(acc.rdp, dtype=np.float64)


def classic_rdp_epsilon(
    noise_multiplier: float,
    sampling_rate: float | None,
    steps: int,
    delta: float,
    orders: Sequence[float] | None = None,
    *,
    sampling: str = "poisson",
    population: int | None = None,
    cohort: int | None = None,
) -> RdpEpsilon:
    """Epsilon by the classic RDP conversion (Mironov 2017, Prop. 3), as in Abadi et al. 2016.

    ``epsilon = min_a  steps * RDP_a + log(1 / delta) / (a - 1)``, with ``RDP_a`` the one-step
    RDP of the subsampled Gaussian at order ``a`` from dp-accounting (Mironov, Talwar & Zhang
    2019 for Poisson; Wang et al. 2019 for fixed-size sampling). This is looser than
    :func:`epsilon` and is here to reproduce published numbers and to show the gain.

    Args:
      noise_multiplier: noise std / clipping norm (see :func:`dp_event`).
      sampling_rate: per-step sampling probability (see :func:`dp_event`).
      steps: number of rounds.
      delta: target delta in (0, 1).
      orders: RDP orders (> 1); default :data:`DEFAULT_RDP_ORDERS`. Published TF-Privacy
        numbers use :data:`TF_PRIVACY_ORDERS`.
      sampling, population, cohort: as in :func:`dp_event`.

    Returns:
      ``RdpEpsilon(epsilon, order)``: the minimum and the order attaining it (``inf`` and the
      first order without noise).

    Raises:
      ConfigError: a bad value, naming its ``privacy.*`` key.
    """
    event = dp_event(noise_multiplier, sampling_rate, steps, sampling, population, cohort)
    delta = _check_delta(delta)
    orders_arr, rdp = rdp_values(event, orders)
    with np.errstate(invalid="ignore", over="ignore"):
        eps = rdp + math.log(1.0 / delta) / (orders_arr - 1.0)
    eps = np.where(np.isnan(eps), np.inf, eps)
    i = int(np.argmin(eps))
    return RdpEpsilon(float(eps[i]), float(orders_arr[i]))


def account(
    noise_multiplier: float,
    sampling_rate: float | None,
    steps: int,
    delta: float | None = None,
    accountant: str = "pld",
    sampling: str = "poisson",
    population: int | None = None,
    cohort: int | None = None,
    *,
    rdp_conversion: str = "improved",
    orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> AccountingReport:
    """The :class:`AccountingReport` of a training run.

    Args:
      noise_multiplier, sampling_rate, steps, sampling, population, cohort: as in
        :func:`dp_event`.
      delta: target delta; ``None`` uses :func:`default_delta` of ``population``.
      accountant: ``"pld"`` or ``"rdp"``.
      rdp_conversion: ``"improved"`` (dp-accounting's) or ``"classic"`` (Mironov 2017); RDP only.
      orders: RDP orders; RDP only.
      pld_discretization: PLD discretisation interval; PLD only.

    Returns:
      The report; ``report.as_dict()`` for JSON.

    Raises:
      ConfigError: a bad value, naming its ``privacy.*`` key.
    """
    accountant = _check_accountant(accountant)
    if rdp_conversion not in RDP_CONVERSIONS:
        raise ConfigError(
            "privacy.rdp_conversion", rdp_conversion, f"one of: {', '.join(RDP_CONVERSIONS)}"
        )
    if accountant == "pld" and rdp_conversion != "improved":
        raise ConfigError(
            "privacy.rdp_conversion", rdp_conversion, "improved (the default) with accountant=pld"
        )
    event = dp_event(noise_multiplier, sampling_rate, steps, sampling, population, cohort)
    q, sampling, population, cohort = _resolve_sampling(sampling_rate, sampling, population, cohort)
    delta = default_delta(population) if delta is None else _check_delta(delta)
    if accountant == "rdp" and rdp_conversion == "classic":
        eps, order = classic_rdp_epsilon(
            noise_multiplier, q, steps, delta, orders,
            sampling=sampling, population=population, cohort=cohort,
        )
        conversion = "rdp-classic"
    else:
        orders_arr = _check_orders(orders)
        disc = _check_pld_discretization(pld_discretization)
        eps, order = _epsilon_and_order(event, delta, accountant, orders_arr, disc)
        conversion = "pld" if accountant == "pld" else "rdp-dp_accounting-improved"
    relation = _neighboring_relation(event)
    return AccountingReport(
        epsilon=float(eps),
        delta=delta,
        noise_multiplier=float(noise_multiplier),
        sampling_rate=q,
        steps=int(steps),
        accountant=accountant,
        conversion=conversion,
        sampling=sampling,
        neighboring_relation=relation.name.lower(),
        population=population,
        cohort=cohort,
        optimal_order=None if (order is None or math.isinf(eps)) else float(order),
    )


def worst_account(
    noise_multiplier: float,
    sampling_rates: Sequence[float],
    steps: Sequence[int],
    delta: float,
    accountant: str = "pld",
    *,
    orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> AccountingReport | None:
    """The report of the worst of several Poisson-sampled runs ``(q_i, s_i)``.

    Sample-level DP gives every client its own run (its rate and the DP-SGD steps it took);
    the guarantee of the training is the worst client's. The result is the maximum of the
    chosen accountant's epsilons over all runs (:func:`fedbench.privacy.calibration.worst_run`
    finds it without computing most PLD epsilons).

    Args:
      noise_multiplier: noise std / clipping norm, shared by the runs.
      sampling_rates, steps: ``q_i`` in (0, 1] and ``s_i >= 0`` per run (no step: skipped).
      delta: target delta in (0, 1).
      accountant: ``"pld"`` or ``"rdp"``.
      orders, pld_discretization: as in :func:`account`.

    Returns:
      The worst run's :class:`AccountingReport`, or ``None`` if no run has a step.

    Raises:
      ConfigError: a bad value, naming its ``privacy.*`` key.
    """
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    orders_arr = _check_orders(orders)
    disc = _check_pld_discretization(pld_discretization)
    runs = poisson_runs(sampling_rates, steps)
    if not runs:
        return None
    dp_event(noise_multiplier, runs[0][0], runs[0][1])  # validates the noise multiplier
    eps, order, (q, s) = worst_run(noise_multiplier, runs, delta, accountant, orders_arr, disc)
    return AccountingReport(
        epsilon=float(eps),
        delta=delta,
        noise_multiplier=float(noise_multiplier),
        sampling_rate=q,
        steps=s,
        accountant=accountant,
        conversion="pld" if accountant == "pld" else "rdp-dp_accounting-improved",
        sampling="poisson",
        neighboring_relation="add_or_remove_one",
        optimal_order=None if (order is None or math.isinf(eps)) else float(order),
    )
