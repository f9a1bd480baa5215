"""Privacy accounting of a differentially private training run, with Google's ``dp-accounting``.

A DP training run (DP-FedAvg, DP-SGD) repeats one mechanism ``steps`` times: sample a cohort,
clip every contribution to L2 norm ``C``, sum, add Gaussian noise of standard deviation
``noise_multiplier * C``. This module turns that description into a ``dp_accounting.DpEvent``
(:func:`dp_event`), computes the ``(epsilon, delta)`` it satisfies (:func:`epsilon`,
:func:`account`, and the textbook RDP conversion :func:`classic_rdp_epsilon` for reference), and
finds the smallest noise multiplier that meets a target epsilon (:func:`calibrate_noise`).

The privacy unit is whatever one contribution is: a client for client-level DP-FedAvg (McMahan
et al. 2018), an example for DP-SGD (Abadi et al. 2016).

Noise multiplier
  Everywhere in this module ``noise_multiplier`` is the noise standard deviation divided by the
  clipping norm ``C``, i.e. by the sensitivity of the clipped sum when one contribution is added
  or removed. Under fixed-size sampling the neighbouring relation is *replace one* (see below),
  whose sensitivity is ``2 C`` (``||u - u'|| <= ||u|| + ||u'||``); :func:`dp_event` therefore
  gives dp-accounting's Gaussian ``noise_multiplier / 2`` for ``sampling="fixed"``, so a noise
  multiplier returned by :func:`calibrate_noise` is always used the same way: ``std = z * C``.

Sampling schemes, neighbouring relations and supported accountants (dp-accounting 0.6)
  * ``poisson``: ``PoissonSampledDpEvent``, add-or-remove-one; accountants ``pld`` and ``rdp``.
  * ``fixed``: ``SampledWithoutReplacementDpEvent``, replace-one; accountant ``rdp`` only.

  Poisson sampling (each contribution joins a round independently with probability ``q``) is
  analysed under add/remove-one by both accountants (RDP: Mironov, Talwar & Zhang 2019; PLD:
  Koskela et al. 2020, Doroshenko et al. 2022). Fixed-size sampling without replacement (a
  uniformly random cohort of ``cohort`` out of ``population``, which is what
  :mod:`fedbench.simulator` does) is analysed only by the RDP accountant and only under
  replace-one (Wang, Balle & Kasiviswanathan 2019, Theorem 27): dp-accounting's RDP accountant
  refuses it under add/remove-one and its PLD accountant does not support it at all, so asking
  for ``accountant="pld"`` with ``sampling="fixed"`` raises :class:`~fedbench.errors.ConfigError`
  instead of returning a number for a different mechanism. Replace-one and add/remove-one
  epsilons are not directly comparable (replace-one is roughly "two add/remove steps").

Accountants and conversions
  ``pld`` (``conversion="pld"``): the privacy loss distribution accountant, numerically tight up
  to its discretisation (``pld_discretization``, dp-accounting's default ``1e-4``; the estimate is
  pessimistic, i.e. an upper bound). Its discretisation error accumulates over compositions, so
  for very small epsilons (below about ``1e-2``) it can exceed the RDP bound, and its run time
  grows quickly as the noise multiplier falls below about 0.5.
  ``rdp`` (``conversion="rdp-dp_accounting-improved"``): Renyi DP of the subsampled Gaussian per
  order, composed additively, converted to ``(epsilon, delta)`` with the improved bound of
  Canonne, Kamath & Steinke 2020 (Prop. 12) / Asoodeh et al. 2021 that dp-accounting uses:
  ``epsilon = min_a RDP_a + log1p(-1/a) - log(delta * a) / (a - 1)``.
  :func:`classic_rdp_epsilon` (``conversion="rdp-classic"``): the same RDP values with Mironov
  2017, Prop. 3, ``epsilon = min_a steps * RDP_a + log(1/delta) / (a - 1)``, which is what the
  moments accountant of Abadi et al. 2016 and TF-Privacy's ``compute_dp_sgd_privacy`` report.
  For the same event, PLD <= improved RDP < classic RDP (up to PLD discretisation).

Default delta
  ``delta`` bounds the probability of a catastrophic failure; a mechanism that publishes each
  unit's raw data with probability ``delta`` is ``(0, delta)``-DP and leaks about
  ``population * delta`` units, so ``delta`` must be much smaller than ``1 / population``.
  :func:`default_delta` uses ``delta = min(1e-5, population ** -1.1)``: the rule of thumb
  ``population ** -1.1`` alone is useless for the small populations of cross-silo federations
  (20 hospitals give ``0.037``), and the customary ``1e-5`` alone stops being much smaller than
  ``1 / population`` past about ``35,000`` units (where ``population ** -1.1 = 1e-5``). The
  minimum keeps ``delta <= 1e-5`` always and ``delta * population <= population ** -0.1 < 1``.

References:
  M. Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (moments accountant;
  Section 3.1: ``q = 0.01, sigma = 4, T = 10000, delta = 1e-5`` gives ``epsilon ~ 1.26``).
  I. Mironov, "Renyi Differential Privacy", CSF 2017, Proposition 3.
  I. Mironov, K. Talwar, L. Zhang, "Renyi Differential Privacy of the Sampled Gaussian
  Mechanism", arXiv:1908.10530, 2019.
  Y.-X. Wang, B. Balle, S. Kasiviswanathan, "Subsampled Renyi Differential Privacy and
  Analytical Moments Accountant", AISTATS 2019, Theorem 27.
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
import numbers
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import dp_accounting
import numpy as np
from dp_accounting import pld as dp_pld
from dp_accounting import rdp as dp_rdp

from fedbench.errors import ConfigError

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson", "fixed")
RDP_CONVERSIONS = ("improved", "classic")

#: dp-accounting's default RDP orders (1.1 ... 10.9 in steps of 0.1, 11 ... 63, 128 ... 1024).
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    float(a) for a in dp_rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS
)
#: TF-Privacy's orders (1.1 ... 10.9 in steps of 0.1, then 12 ... 63), behind its published numbers.
TF_PRIVACY_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
)
#: dp-accounting's default PLD discretisation interval.
DEFAULT_PLD_DISCRETIZATION = 1e-4
#: The largest noise multiplier :func:`calibrate_noise` searches by default.
MAX_NOISE_MULTIPLIER = 1e4
#: The smallest noise multiplier :func:`calibrate_noise` searches.
MIN_NOISE_MULTIPLIER = 1e-3
#: Default relative tolerance of :func:`calibrate_noise`.
CALIBRATION_RTOL = 1e-3

_NR = dp_accounting.NeighboringRelation


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
      noise_multiplier: noise std / clipping norm (see the module docstring).
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


# --------------------------------------------------------------------------------------------
# Validation


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_noise_multiplier(noise_multiplier: Any) -> float:
    z = noise_multiplier
    if not _is_real(z) or not math.isfinite(z) or z < 0:
        raise ConfigError(
            "privacy.noise_multiplier", noise_multiplier, "a finite number >= 0 (0: no privacy)"
        )
    return float(noise_multiplier)


def _check_sampling_rate(sampling_rate: Any) -> float:
    if not _is_real(sampling_rate) or not 0 < sampling_rate <= 1:
        raise ConfigError("privacy.sampling_rate", sampling_rate, "a number in (0, 1]")
    return float(sampling_rate)


def _check_steps(steps: Any) -> int:
    if not _is_int(steps) or steps < 1:
        raise ConfigError("privacy.steps", steps, "an integer >= 1")
    return int(steps)


def _check_delta(delta: Any) -> float:
    if not _is_real(delta) or not 0 < delta < 1:
        raise ConfigError(
            "privacy.delta", delta, "a number in (0, 1), much smaller than 1/population"
        )
    return float(delta)


def _check_accountant(accountant: Any) -> str:
    if accountant not in ACCOUNTANTS:
        raise ConfigError("privacy.accountant", accountant, f"one of: {', '.join(ACCOUNTANTS)}")
    return accountant


def _check_sampling(sampling: Any) -> str:
    if sampling not in SAMPLINGS:
        raise ConfigError("privacy.sampling", sampling, f"one of: {', '.join(SAMPLINGS)}")
    return sampling


def _check_orders(orders: Sequence[float] | None) -> np.ndarray:
    if orders is None:
        return np.asarray(DEFAULT_RDP_ORDERS, dtype=np.float64)
    try:
        arr = np.asarray(orders, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if (
        arr is None
        or arr.ndim != 1
        or arr.size == 0
        or not np.all(np.isfinite(arr))
        or np.any(arr <= 1)
    ):
        raise ConfigError("privacy.orders", orders, "a non-empty list of finite RDP orders > 1")
    return arr


def _check_pld_discretization(value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ConfigError("privacy.pld_discretization", value, "a finite number > 0")
    return float(value)


def _resolve_sampling(
    sampling_rate: Any, sampling: Any, population: Any, cohort: Any
) -> tuple[float, str, int | None, int | None]:
    """Validated ``(sampling_rate, sampling, population, cohort)``."""
    sampling = _check_sampling(sampling)
    if population is not None and (not _is_int(population) or population < 1):
        raise ConfigError("privacy.population", population, "an integer >= 1")
    if cohort is not None:
        if not _is_int(cohort) or cohort < 1:
            raise ConfigError("privacy.cohort", cohort, "an integer >= 1")
        if population is not None and cohort > population:
            raise ConfigError("privacy.cohort", cohort, f"<= privacy.population={population}")
    if sampling == "fixed" and (population is None or cohort is None):
        missing = "privacy.population" if population is None else "privacy.cohort"
        raise ConfigError(
            missing, None, "an integer: sampling=fixed draws privacy.cohort of privacy.population"
        )
    if sampling_rate is None:
        if population is None or cohort is None:
            raise ConfigError(
                "privacy.sampling_rate",
                None,
                "a number in (0, 1], or privacy.population and privacy.cohort to derive it",
            )
        return cohort / population, sampling, int(population), int(cohort)
    q = _check_sampling_rate(sampling_rate)
    if sampling == "fixed" and not math.isclose(q, cohort / population, rel_tol=1e-9):
        raise ConfigError(
            "privacy.sampling_rate",
            sampling_rate,
            f"privacy.cohort / privacy.population = {cohort}/{population} for sampling=fixed",
        )
    return (
        q,
        sampling,
        None if population is None else int(population),
        None if cohort is None else int(cohort),
    )


# --------------------------------------------------------------------------------------------
# Events


def default_delta(population: int | None = None) -> float:
    """The default ``delta``: ``min(1e-5, population ** -1.1)`` (``1e-5`` if unknown).

    See the module docstring for the reasoning: ``delta`` must be much smaller than
    ``1 / population``.

    Args:
      population: number of privacy units (clients for client-level DP), or ``None``.

    Raises:
      ConfigError: ``privacy.population`` is not an integer >= 1.
    """
    if population is None:
        return 1e-5
    if not _is_int(population) or population < 1:
        raise ConfigError("privacy.population", population, "an integer >= 1")
    return min(1e-5, float(population) ** -1.1)


def dp_event(
    noise_multiplier: float,
    sampling_rate: float | None,
    steps: int,
    sampling: str = "poisson",
    population: int | None = None,
    cohort: int | None = None,
) -> dp_accounting.DpEvent:
    """The ``DpEvent`` of ``steps`` rounds of a subsampled Gaussian mechanism.

    * ``sampling="poisson"``: ``SelfComposed(PoissonSampled(q, Gaussian(z)), steps)``
      (``Gaussian(z)`` directly when ``q = 1``), analysed under add/remove-one.
    * ``sampling="fixed"``: ``SelfComposed(SampledWithoutReplacement(population, cohort,
      Gaussian(z / 2)), steps)``, analysed under replace-one, whose sensitivity of a clipped sum
      is ``2 C`` (Wang et al. 2019, Theorem 27, takes the noise relative to that sensitivity).

    Args:
      noise_multiplier: noise std / clipping norm ``z``; 0 means no noise (``epsilon = inf``).
      sampling_rate: per-step sampling probability ``q`` in (0, 1]. ``None`` derives it as
        ``cohort / population``; for fixed sampling it must equal that ratio.
      steps: number of rounds (noisy releases), >= 1.
      sampling: ``"poisson"`` or ``"fixed"`` (fixed-size cohorts without replacement).
      population: number of units (required for fixed sampling).
      cohort: units per round (required for fixed sampling).

    Returns:
      The composed ``dp_accounting.DpEvent``.

    Raises:
      ConfigError: a bad value, naming its ``privacy.*`` key.
    """
    z = _check_noise_multiplier(noise_multiplier)
    q, sampling, population, cohort = _resolve_sampling(sampling_rate, sampling, population, cohort)
    steps = _check_steps(steps)
    if sampling == "fixed":
        inner = dp_accounting.SampledWithoutReplacementDpEvent(
            source_dataset_size=population,
            sample_size=cohort,
            event=dp_accounting.GaussianDpEvent(z / 2.0),
        )
    elif q == 1.0:
        inner = dp_accounting.GaussianDpEvent(z)
    else:
        inner = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    return dp_accounting.SelfComposedDpEvent(inner, steps)


def _walk(event: dp_accounting.DpEvent) -> Iterator[dp_accounting.DpEvent]:
    """``event`` and every event nested in it."""
    yield event
    if isinstance(event, dp_accounting.ComposedDpEvent):
        for e in event.events:
            yield from _walk(e)
    elif isinstance(
        event,
        (
            dp_accounting.SelfComposedDpEvent,
            dp_accounting.PoissonSampledDpEvent,
            dp_accounting.SampledWithoutReplacementDpEvent,
            dp_accounting.SampledWithReplacementDpEvent,
        ),
    ):
        yield from _walk(event.event)


def _neighboring_relation(event: dp_accounting.DpEvent) -> dp_accounting.NeighboringRelation:
    """Replace-one for sampling without replacement, add/remove-one otherwise."""
    if any(isinstance(e, dp_accounting.SampledWithoutReplacementDpEvent) for e in _walk(event)):
        return _NR.REPLACE_ONE
    return _NR.ADD_OR_REMOVE_ONE


def _is_non_private(event: dp_accounting.DpEvent) -> bool:
    """Whether some release in ``event`` has no noise (its epsilon is infinite)."""
    for e in _walk(event):
        if isinstance(e, dp_accounting.NonPrivateDpEvent):
            return True
        if isinstance(e, dp_accounting.GaussianDpEvent) and e.noise_multiplier == 0:
            return True
    return False


def _describe(event: dp_accounting.DpEvent) -> str:
    if any(isinstance(e, dp_accounting.SampledWithoutReplacementDpEvent) for e in _walk(event)):
        return "sampling=fixed"
    if any(isinstance(e, dp_accounting.PoissonSampledDpEvent) for e in _walk(event)):
        return "sampling=poisson"
    return type(event).__name__


def _accountant_for(
    event: dp_accounting.DpEvent,
    accountant: str,
    orders: np.ndarray,
    pld_discretization: float,
) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant of kind ``accountant`` that supports ``event``, or ConfigError."""
    relation = _neighboring_relation(event)
    if accountant == "pld":
        acc = dp_pld.PLDAccountant(relation, value_discretization_interval=pld_discretization)
    else:
        acc = dp_rdp.RdpAccountant(orders, relation)
    if not acc.supports(event):
        if _describe(event) == "sampling=fixed" and accountant == "pld":
            raise ConfigError(
                "privacy.accountant",
                accountant,
                "rdp for privacy.sampling=fixed (dp-accounting's PLD accountant has no fixed-size "
                "sampling without replacement; use privacy.accountant=rdp, or "
                "privacy.sampling=poisson with pld)",
            )
        raise ConfigError(
            "privacy.sampling",
            _describe(event),
            f"an event the {accountant} accountant supports: poisson (pld, rdp; add/remove-one) "
            "or fixed (rdp only; replace-one)",
        )
    return acc


# --------------------------------------------------------------------------------------------
# Epsilon


def _epsilon_and_order(
    event: dp_accounting.DpEvent,
    delta: float,
    accountant: str,
    orders: np.ndarray,
    pld_discretization: float,
) -> tuple[float, float | None]:
    acc = _accountant_for(event, accountant, orders, pld_discretization)
    if _is_non_private(event):
        return math.inf, None
    acc.compose(event)
    if accountant == "pld":
        return float(acc.get_epsilon(delta)), None
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)


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


# --------------------------------------------------------------------------------------------
# Calibration


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sampling_rate: float | None,
    steps: int,
    accountant: str = "pld",
    sampling: str = "poisson",
    population: int | None = None,
    cohort: int | None = None,
    *,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
    rtol: float = CALIBRATION_RTOL,
    orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """The smallest noise multiplier whose run satisfies ``(target_epsilon, delta)``-DP.

    A bracketing search on ``log(noise_multiplier)`` (Illinois regula falsi on ``log epsilon``,
    see :func:`_refine`) keeps ``lo`` with ``epsilon(lo) > target`` and ``hi`` with
    ``epsilon(hi) <= target`` and stops when ``hi / lo <= 1 + rtol``; ``hi`` is returned. So the
    result always meets the target (it is evaluated, never extrapolated) and is within a factor
    ``1 + rtol`` of the smallest noise multiplier that does (epsilon decreases with the noise
    multiplier; PLD's discretisation makes that only approximately true). The search covers
    ``[MIN_NOISE_MULTIPLIER, max_noise_multiplier]``; if even :data:`MIN_NOISE_MULTIPLIER` meets
    the target it is returned. For PLD the bracket starts at the (cheap) RDP calibration,
    because PLD is slow at small noise multipliers.

    Args:
      target_epsilon: > 0; ``inf`` returns 0.0 (no noise).
      delta: target delta in (0, 1).
      sampling_rate, steps, sampling, population, cohort: as in :func:`dp_event`.
      accountant: ``"pld"`` or ``"rdp"``.
      max_noise_multiplier: the largest noise multiplier tried.
      rtol: relative tolerance on the noise multiplier, in (0, 1).
      orders: RDP orders; RDP only (and the PLD starting guess).
      pld_discretization: PLD discretisation interval; PLD only.

    Returns:
      The noise multiplier (noise std / clipping norm).

    Raises:
      ConfigError: a bad value naming its ``privacy.*`` key, including a target that needs a
        noise multiplier above ``max_noise_multiplier`` (``privacy.target_epsilon``).
    """
    if not _is_real(target_epsilon) or math.isnan(target_epsilon) or target_epsilon <= 0:
        raise ConfigError("privacy.target_epsilon", target_epsilon, "a number > 0 (inf: no noise)")
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    q, sampling, population, cohort = _resolve_sampling(sampling_rate, sampling, population, cohort)
    steps = _check_steps(steps)
    orders_arr = _check_orders(orders)
    disc = _check_pld_discretization(pld_discretization)
    if (
        not _is_real(max_noise_multiplier)
        or not math.isfinite(max_noise_multiplier)
        or max_noise_multiplier <= MIN_NOISE_MULTIPLIER
    ):
        raise ConfigError(
            "privacy.max_noise_multiplier",
            max_noise_multiplier,
            f"a finite number > {MIN_NOISE_MULTIPLIER}",
        )
    if not _is_real(rtol) or not 0 < rtol < 1:
        raise ConfigError("privacy.calibration_rtol", rtol, "a number in (0, 1)")
    if math.isinf(target_epsilon):
        return 0.0

    cache: dict[float, float] = {}

    def eps(z: float) -> float:
        if z not in cache:
            event = dp_event(z, q, steps, sampling, population, cohort)
            cache[z] = _epsilon_and_order(event, delta, accountant, orders_arr, disc)[0]
        return cache[z]

    hi = float(max_noise_multiplier)
    eps_max = eps(hi)
    if eps_max > target_epsilon:
        raise ConfigError(
            "privacy.target_epsilon",
            target_epsilon,
            f"an epsilon reachable with noise_multiplier <= {max_noise_multiplier:g}: the "
            f"{accountant} accountant gives epsilon={eps_max:.4g} there (delta={delta:g}, "
            f"sampling_rate={q:g}, steps={steps}); raise the target, delta or "
            "max_noise_multiplier, or sample less/train fewer steps",
        )

    guess = 1.0
    if accountant == "pld":
        # PLD is slow at small noise multipliers: start from the cheap RDP calibration, which
        # is usually a little above the PLD answer.
        try:
            guess = calibrate_noise(
                target_epsilon, delta, q, steps, "rdp", sampling, population, cohort,
                max_noise_multiplier=max_noise_multiplier, rtol=1e-2, orders=orders_arr,
            )
        except ConfigError:  # RDP cannot reach a target that PLD can
            guess = hi

    # Bracket [lo, hi] with eps(lo) > target >= eps(hi), starting from `guess` and moving
    # geometrically towards the answer (ratios 1.25, 1.25**2, 1.25**4, ...; 1.05, 1.05**2, ...
    # after the RDP guess).
    g = min(max(guess, MIN_NOISE_MULTIPLIER), hi)
    start = 1.05 if accountant == "pld" else 1.25
    if g == hi or eps(g) <= target_epsilon:
        hi, factor = g, start
        while True:
            lo = max(hi / factor, MIN_NOISE_MULTIPLIER)
            if eps(lo) > target_epsilon:
                break
            if lo == MIN_NOISE_MULTIPLIER:
                return lo
            hi, factor = lo, factor**2
    else:
        lo, factor = g, start
        while True:
            up = min(lo * factor, hi)
            if up == hi or eps(up) <= target_epsilon:
                hi = up
                break
            lo, factor = up, factor**2

    return _refine(eps, target_epsilon, lo, hi, rtol)


def _refine(eps, target: float, lo: float, hi: float, rtol: float) -> float:
    """Shrink ``eps(lo) > target >= eps(hi)`` until ``hi / lo <= 1 + rtol``; return ``hi``.

    Illinois-modified regula falsi on ``(log z, log(eps(z) / target))``, which is close to
    linear: each new point is kept at least half a tolerance inside the bracket, so once it is
    near the root the next point lands on the other side and closes the bracket. Non-finite
    values fall back to bisection. Typically 3-5 evaluations from a bracket of ratio 1.1.
    """

    def f(z: float) -> float:
        e = eps(z)
        return math.log(e / target) if e > 0 else -math.inf

    tol = math.log1p(rtol)
    a, b = math.log(lo), math.log(hi)
    fa, fb = f(lo), f(hi)  # cached: already evaluated
    side = 0
    while b - a > tol:
        if math.isfinite(fa) and math.isfinite(fb) and fa != fb:
            x = a + (b - a) * fa / (fa - fb)
            x = min(max(x, a + 0.5 * tol), b - 0.5 * tol)
        else:
            x = 0.5 * (a + b)
        z = math.exp(x)
        fx = f(z)
        if fx <= 0:
            b, fb, hi = x, fx, z
            if side == 1:
                fa *= 0.5
            side = 1
        else:
            a, fa = x, fx
            if side == -1:
                fb *= 0.5
            side = -1
    return hi
