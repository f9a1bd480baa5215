"""Searches over privacy accounts: the worst of several runs, and the noise that meets a target.

:func:`worst_run` finds the run with the largest epsilon among Poisson-sampled runs sharing one
noise multiplier (sample-level DP: one run per client, its rate and the DP-SGD steps it took);
:func:`calibrate_noise` and :func:`calibrate_noise_worst` find the smallest noise multiplier
that meets a target epsilon for one run or for every run. The public entry points are
re-exported by :mod:`fedbench.privacy.accounting`, whose docstring has the conventions.

The worst run
  RDP and PLD do not rank runs alike: a client with ``q = 1`` and few steps can be last under
  RDP and first under PLD. So the runs are visited in decreasing RDP epsilon, an upper bound of
  each run's true epsilon (Mironov, Talwar & Zhang 2019, with a valid RDP-to-DP conversion), and
  the visit stops at the first run whose bound plus :func:`pld_slack` is at most the largest PLD
  epsilon found: its PLD epsilon, at most its true epsilon plus the slack, cannot exceed that,
  nor can any later run's. The result is the maximum of the PLD epsilons of all runs, usually
  after computing only a few of them. The slack is what makes it *the* maximum; without it the
  result still bounds every run's true epsilon (each left-out run's RDP bound is below it).

References:
  I. Mironov, K. Talwar, L. Zhang, "Renyi Differential Privacy of the Sampled Gaussian
  Mechanism", arXiv:1908.10530, 2019.
  V. Doroshenko et al., "Connect the Dots: Tighter Discrete Approximations of Privacy Loss
  Distributions", PETS 2022.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedbench.errors import ConfigError
from fedbench.privacy.events import (
    DEFAULT_PLD_DISCRETIZATION,
    _check_accountant,
    _check_delta,
    _check_orders,
    _check_pld_discretization,
    _check_steps,
    _epsilon_and_order,
    _is_real,
    _resolve_sampling,
    dp_event,
)

#: The largest noise multiplier :func:`calibrate_noise` searches by default.
MAX_NOISE_MULTIPLIER = 1e4
#: The smallest noise multiplier :func:`calibrate_noise` searches.
MIN_NOISE_MULTIPLIER = 1e-3
#: Default relative tolerance of :func:`calibrate_noise`.
CALIBRATION_RTOL = 1e-3
#: The PLD discretisation of the coarse search that a finer PLD calibration starts from.
COARSE_PLD_DISCRETIZATION = 1e-3


# --------------------------------------------------------------------------------------------
# The worst run


def pld_slack(steps: int, pld_discretization: float = DEFAULT_PLD_DISCRETIZATION) -> float:
    """A bound on how far dp-accounting's PLD epsilon of ``steps`` steps exceeds the true one.

    The pessimistic discretisation moves each step's privacy loss by less than one interval
    (rounding up, or splitting its mass between the two neighbouring grid points: Doroshenko et
    al. 2022), so the composed loss moves by less than ``steps * pld_discretization`` and so
    does the epsilon at a fixed delta (the hockey-stick divergence is monotone in the loss).
    """
    return steps * pld_discretization


def poisson_runs(sampling_rates: Sequence[float], steps: Sequence[int]) -> list[tuple[float, int]]:
    """The distinct ``(q, steps)`` pairs with ``steps > 0``, sorted, each validated.

    Raises:
      ConfigError: lengths differ, or a bad rate or step count (naming its ``privacy.*`` key).
    """
    if len(sampling_rates) != len(steps):
        raise ConfigError("privacy.steps", list(steps), "one step count per sampling rate")
    runs = sorted({(float(q), int(s)) for q, s in zip(sampling_rates, steps) if s > 0})
    for q, s in runs:
        dp_event(1.0, q, s)  # validates q and s
    return runs


@functools.lru_cache(maxsize=4096)
def _run_epsilon(
    z: float, q: float, steps: int, delta: float, kind: str, orders: tuple[float, ...],
    pld_discretization: float,
) -> tuple[float, float | None]:
    """``(epsilon, order)`` of one Poisson-sampled run, remembered: a client that sat out the
    last rounds has the same run at the next evaluation."""
    event = dp_event(z, q, steps)
    return _epsilon_and_order(event, delta, kind, np.asarray(orders), pld_discretization)


def worst_run(
    noise_multiplier: float,
    runs: Sequence[tuple[float, int]],
    delta: float,
    accountant: str,
    orders: np.ndarray,
    pld_discretization: float,
    *,
    exact: bool = True,
) -> tuple[float, float | None, tuple[float, int]]:
    """``(epsilon, optimal RDP order or None, (q, steps))`` of the worst of ``runs``.

    ``runs`` from :func:`poisson_runs` (non-empty), other inputs validated. Under RDP every run
    is accounted; under PLD see the module docstring. ``exact=False`` leaves out the PLD slack:
    the visit stops at the first run whose RDP bound is at most the largest PLD epsilon found.
    The result still bounds every run's true epsilon, but a run left out could have a PLD
    estimate above it by up to its discretisation error.
    """
    orders_key = tuple(float(a) for a in orders)

    def account_one(run: tuple[float, int], kind: str) -> tuple[float, float | None]:
        return _run_epsilon(
            float(noise_multiplier), run[0], run[1], delta, kind, orders_key, pld_discretization
        )

    by_rdp = {run: account_one(run, "rdp") for run in runs}
    ranked = sorted(runs, key=lambda run: -by_rdp[run][0])  # stable: ties keep `runs` order
    if accountant == "rdp":
        return (*by_rdp[ranked[0]], ranked[0])
    worst = None
    for run in ranked:
        slack = pld_slack(run[1], pld_discretization) if exact else 0.0
        if worst is not None and by_rdp[run][0] + slack <= worst[0]:
            break
        eps, _ = account_one(run, "pld")
        if worst is None or eps > worst[0]:
            worst = (eps, None, run)
    return worst


# --------------------------------------------------------------------------------------------
# Calibration


def _check_search(target_epsilon: Any, max_noise_multiplier: Any, rtol: Any) -> None:
    if not _is_real(target_epsilon) or math.isnan(target_epsilon) or target_epsilon <= 0:
        raise ConfigError("privacy.target_epsilon", target_epsilon, "a number > 0 (inf: no noise)")
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
    the target it is returned. A PLD search starts from a cheaper one (below
    :data:`COARSE_PLD_DISCRETIZATION`, the same search at that interval; else RDP's): the start
    only shortens the search, the bracket and the answer are always this accountant's.

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
    _check_search(target_epsilon, max_noise_multiplier, rtol)
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    q, sampling, population, cohort = _resolve_sampling(sampling_rate, sampling, population, cohort)
    steps = _check_steps(steps)
    orders_arr = _check_orders(orders)
    disc = _check_pld_discretization(pld_discretization)
    if math.isinf(target_epsilon):
        return 0.0

    def eps(z: float) -> float:
        event = dp_event(z, q, steps, sampling, population, cohort)
        return _epsilon_and_order(event, delta, accountant, orders_arr, disc)[0]

    def guess(kind: str, interval: float, tol: float) -> float:
        return calibrate_noise(
            target_epsilon, delta, q, steps, kind, sampling, population, cohort,
            max_noise_multiplier=max_noise_multiplier, rtol=tol, orders=orders_arr,
            pld_discretization=interval,
        )

    what = f"delta={delta:g}, sampling_rate={q:g}, steps={steps}"
    return _calibrate(eps, target_epsilon, accountant, guess, max_noise_multiplier, rtol, what,
                      disc)


def calibrate_noise_worst(
    target_epsilon: float,
    delta: float,
    sampling_rates: Sequence[float],
    steps: Sequence[int],
    accountant: str = "pld",
    *,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
    rtol: float = CALIBRATION_RTOL,
    orders: Sequence[float] | None = None,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """The smallest noise multiplier for which every run ``(q_i, s_i)`` meets the target.

    :func:`calibrate_noise`'s search on the worst run's epsilon (:func:`worst_run`), so the
    result is evaluated on every run (under PLD: every run that could exceed the target), not
    only on the runs that RDP ranks first. Under PLD the search uses the cheaper ``exact=False``
    screening (with the full slack, the many steps of DP-SGD would make every run a candidate
    at every trial), and the result is then checked with the exact one, moving up by factors of
    ``1 + rtol`` in the rare case a left-out run's PLD estimate exceeds the target.

    Args:
      target_epsilon, delta, accountant, max_noise_multiplier, rtol, orders,
        pld_discretization: as in :func:`calibrate_noise`.
      sampling_rates, steps: ``q_i`` in (0, 1] and ``s_i >= 0`` per run (runs with no step
        are skipped).

    Returns:
      The noise multiplier (noise std / clipping norm).

    Raises:
      ConfigError: as :func:`calibrate_noise`.
    """
    _check_search(target_epsilon, max_noise_multiplier, rtol)
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    runs = poisson_runs(sampling_rates, steps)
    if not runs:
        raise ConfigError("privacy.steps", list(steps), "at least one run with steps >= 1")
    orders_arr = _check_orders(orders)
    disc = _check_pld_discretization(pld_discretization)
    if math.isinf(target_epsilon):
        return 0.0

    def eps(z: float, exact: bool = False) -> float:
        return worst_run(z, runs, delta, accountant, orders_arr, disc, exact=exact)[0]

    def guess(kind: str, interval: float, tol: float) -> float:
        return calibrate_noise_worst(
            target_epsilon, delta, sampling_rates, steps, kind,
            max_noise_multiplier=max_noise_multiplier, rtol=tol, orders=orders_arr,
            pld_discretization=interval,
        )

    what = f"delta={delta:g}, the worst of {len(runs)} runs (sampling rate, steps)"
    z = _calibrate(eps, target_epsilon, accountant, guess, max_noise_multiplier, rtol, what,
                   disc)
    while eps(z, exact=True) > target_epsilon:
        if z >= max_noise_multiplier:
            raise ConfigError(
                "privacy.target_epsilon", target_epsilon,
                f"an epsilon reachable with noise_multiplier <= {max_noise_multiplier:g} ({what})",
            )
        z = min(z * (1 + rtol), float(max_noise_multiplier))
    return z


def _calibrate(
    eps: Callable[[float], float],
    target: float,
    accountant: str,
    guess: Callable[[str, float, float], float],
    max_noise_multiplier: float,
    rtol: float,
    what: str,
    pld_discretization: float,
) -> float:
    """The search of :func:`calibrate_noise` on ``eps(z)`` (validated inputs, finite target);
    ``guess(accountant, pld_discretization, rtol)`` is the same search with another
    accountant or interval, the starting point under PLD."""
    cache: dict[float, float] = {}

    def cached(z: float) -> float:
        if z not in cache:
            cache[z] = eps(z)
        return cache[z]

    hi = float(max_noise_multiplier)
    eps_max = cached(hi)
    if eps_max > target:
        raise ConfigError(
            "privacy.target_epsilon",
            target,
            f"an epsilon reachable with noise_multiplier <= {max_noise_multiplier:g}: the "
            f"{accountant} accountant gives epsilon={eps_max:.4g} there ({what}); raise the "
            "target, delta or max_noise_multiplier, or sample less/train fewer steps",
        )

    z0, start = 1.0, 1.25
    if accountant == "pld":
        # Start from the coarse search (a hair above: steps of 1 + rtol) or RDP's (steps 1.05).
        coarse = pld_discretization < COARSE_PLD_DISCRETIZATION
        start = 1 + rtol if coarse else 1.05
        try:
            z0 = (guess("pld", COARSE_PLD_DISCRETIZATION, rtol) if coarse
                  else guess("rdp", pld_discretization, 1e-2))
        except ConfigError:  # the cheaper account cannot reach a target that this one can
            z0 = hi

    # Bracket [lo, hi] with eps(lo) > target >= eps(hi), starting from `z0` and moving
    # geometrically towards the answer (ratios start, start**2, start**4, ...).
    g = min(max(z0, MIN_NOISE_MULTIPLIER), hi)
    if g == hi or cached(g) <= target:
        hi, factor = g, start
        while True:
            lo = max(hi / factor, MIN_NOISE_MULTIPLIER)
            if cached(lo) > target:
                break
            if lo == MIN_NOISE_MULTIPLIER:
                return lo
            hi, factor = lo, factor**2
    else:
        lo, factor = g, start
        while True:
            up = min(lo * factor, hi)
            if up == hi or cached(up) <= target:
                hi = up
                break
            lo, factor = up, factor**2

    return _refine(cached, target, lo, hi, rtol)


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

    tol = math.log1p(rtol) * (1 + 1e-9)  # a bracket of ratio exactly 1 + rtol is closed
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
