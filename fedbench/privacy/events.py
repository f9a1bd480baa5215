"""The ``dp_accounting.DpEvent`` of a DP training run, its validation, and the accountant for it.

A DP training run (DP-FedAvg, DP-SGD) repeats one mechanism ``steps`` times: sample a cohort,
clip every contribution to L2 norm ``C``, sum, add Gaussian noise of standard deviation
``noise_multiplier * C``. :func:`dp_event` turns that description into a ``DpEvent``; the
private helpers here check every input (raising :class:`~fedbench.errors.ConfigError` naming its
``privacy.*`` key), pick the neighbouring relation the event is analysed under and the
dp-accounting accountant that supports it, and compute its epsilon. The public API on top of
this is :mod:`fedbench.privacy.accounting`.

Noise multiplier
  Everywhere ``noise_multiplier`` is the noise standard deviation divided by the clipping norm
  ``C``, i.e. by the sensitivity of the clipped sum when one contribution is added or removed.
  Under fixed-size sampling the neighbouring relation is *replace one* (see below), whose
  sensitivity is ``2 C`` (``||u - u'|| <= ||u|| + ||u'||``); :func:`dp_event` therefore gives
  dp-accounting's Gaussian ``noise_multiplier / 2`` for ``sampling="fixed"``, so a calibrated
  noise multiplier is always used the same way: ``std = z * C``.

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

Default delta
  ``delta`` bounds the probability of a catastrophic failure; a mechanism that publishes each
  unit's raw data with probability ``delta`` is ``(0, delta)``-DP and leaks about
  ``population * delta`` units, so ``delta`` must be much smaller than ``1 / population``.
  :func:`default_delta` uses ``delta = min(1e-5, population ** -1.1)``: the rule of thumb
  ``population ** -1.1`` alone is useless for the small populations of cross-silo federations
  (20 hospitals give ``0.037``), and the customary ``1e-5`` alone stops being much smaller than
  ``1 / population`` past about ``35,000`` units (where ``population ** -1.1 = 1e-5``). The
  minimum keeps ``delta <= 1e-5`` always and ``delta * population <= population ** -0.1 < 1``.
  The population is the number of privacy units: clients for client-level DP, and for
  sample-level DP every training example of every client (the unit is one example).

References:
  I. Mironov, K. Talwar, L. Zhang, "Renyi Differential Privacy of the Sampled Gaussian
  Mechanism", arXiv:1908.10530, 2019.
  Y.-X. Wang, B. Balle, S. Kasiviswanathan, "Subsampled Renyi Differential Privacy and
  Analytical Moments Accountant", AISTATS 2019, Theorem 27.
  A. Koskela, J. Jalko, A. Honkela, "Computing Tight Differential Privacy Guarantees Using FFT",
  AISTATS 2020; V. Doroshenko et al., "Connect the Dots: Tighter Discrete Approximations of
  Privacy Loss Distributions", PETS 2022.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import pld as dp_pld
from dp_accounting import rdp as dp_rdp

from fedbench.errors import ConfigError

ACCOUNTANTS = ("pld", "rdp")
SAMPLINGS = ("poisson", "fixed")

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

_NR = dp_accounting.NeighboringRelation


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
      population: number of privacy units (clients for client-level DP; every training
        example of every client for sample-level DP), or ``None``.

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


#: Answers of :func:`_epsilon_and_order` in this process, keyed by the event's ``repr`` (exact:
#: dp-accounting's events are attrs classes whose repr spells every field, and a float's repr
#: round-trips) and the accountant's settings. A sweep's replicas that share an event (seeds of
#: one epsilon; the calibration's last probe and the run's own report) are accounted once.
_EPSILON_MEMO: dict[tuple, tuple[float, float | None]] = {}
_EPSILON_MEMO_SIZE = 4096


def _epsilon_and_order(
    event: dp_accounting.DpEvent,
    delta: float,
    accountant: str,
    orders: np.ndarray,
    pld_discretization: float,
) -> tuple[float, float | None]:
    """``(epsilon, optimal RDP order or None)`` of ``event`` from a fresh dp-accounting
    accountant (inputs already validated); a repeated question is answered from
    :data:`_EPSILON_MEMO` (a pure function of its inputs)."""
    orders = np.asarray(orders, dtype=float)
    key = (repr(event), float(delta), accountant, orders.tobytes(), float(pld_discretization))
    if key not in _EPSILON_MEMO:
        if len(_EPSILON_MEMO) >= _EPSILON_MEMO_SIZE:
            _EPSILON_MEMO.pop(next(iter(_EPSILON_MEMO)))  # the oldest entry
        _EPSILON_MEMO[key] = _computed(event, delta, accountant, orders, pld_discretization)
    return _EPSILON_MEMO[key]


def _computed(event, delta, accountant, orders, pld_discretization) -> tuple[float, float | None]:
    """The answer of a fresh dp-accounting accountant."""
    acc = _accountant_for(event, accountant, orders, pld_discretization)
    if _is_non_private(event):
        return math.inf, None
    acc.compose(event)
    if accountant == "pld":
        return float(acc.get_epsilon(delta)), None
    eps, order = acc.get_epsilon_and_optimal_order(delta)
    return float(eps), float(order)
