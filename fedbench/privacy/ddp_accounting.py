"""Accounting of distributed DP: the sum of the sites' discrete Gaussian or Skellam shares.

Everything is in the integer units the sites send (the clipped update times ``scale``, rotated
and conditionally rounded: :mod:`fedbench.privacy.discrete`). One round releases
``sum_i (x_i + z_i)`` over ``n`` sites, each ``x_i`` within L2 norm ``l2`` after rounding
(:func:`fedbench.privacy.discrete.rounding_bound`) and hence within L1 norm ``l1 = l2 min(sqrt(d),
l2)`` (integer coordinates: ``|x_j| <= x_j^2``), ``d`` the padded dimension. The neighbouring
relation is zero-out: one site's update replaced by zeros, the site still adding its noise
share (every site takes part in every round, as :mod:`fedbench.privacy.ddp` requires).

* Distributed discrete Gaussian (Kairouz, Liu, Steinke, ICML 2021): each site adds
  ``N_Z(0, s^2)``; the sum of ``n`` such is close to ``N_Z(0, n s^2)``, the gap measured by
  ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1))`` (Theorem 1), and one round is
  ``(alpha, eps(alpha))``-RDP with, for ``sigma^2 = n s^2`` (Proposition 14)::

      eps(alpha) = min( alpha l2^2 / (2 sigma^2) + tau d,
                        alpha / 2 (l2^2 / sigma^2 + 2 l1 tau / sigma + tau^2 d),
                        alpha / 2 (l2 / sigma + tau sqrt(d))^2 ).

* Distributed Skellam (Agarwal, Kairouz, Liu, NeurIPS 2021): each site adds ``Sk(mu_i,
  mu_i)``; the sum is ``Sk(mu, mu)`` exactly, variance ``v = 2 mu = n s^2``, and one round is
  RDP with (their Theorem on the multi-dimensional Skellam mechanism)::

      eps(alpha) = alpha l2^2 / (2 v) + min( ((2 alpha - 1) l2^2 + 6 l1) / (4 v^2),
                                             3 l1 / (2 v) ).

``rounds`` rounds compose by adding RDP; epsilon at ``delta`` is dp-accounting's conversion
(``dp_accounting.rdp.compute_epsilon``, the same as for every RDP account in fedbench). No
sampling amplification: every site every round.

References:
  P. Kairouz, Z. Liu, T. Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
  Learning with Secure Aggregation", ICML 2021, Theorem 1, Proposition 14, Sec. 4.4.
  N. Agarwal, P. Kairouz, Z. Liu, "The Skellam Mechanism for Differentially Private Federated
  Learning", NeurIPS 2021, Sec. 3-4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedbench.errors import ConfigError
from fedbench.privacy.discrete import DEFAULT_BETA, rounding_bound

#: Integer RDP orders (Proposition 14 and the Skellam bound hold for every order > 1).
ORDERS = tuple(range(2, 129)) + (256, 512, 1024)


def tau(local_std: float, sites: int) -> float:
    """Kairouz et al. 2021, Theorem 1: how far the sum of ``sites`` discrete Gaussians of std
    ``local_std`` (integer units) is from one discrete Gaussian (0 for one site)."""
    s2 = float(local_std) ** 2
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, sites))


def sensitivities(clip_units: float, dim: int, beta: float = DEFAULT_BETA) -> tuple[float, float]:
    """``(l2, l1)`` of one site's rounded update whose L2 norm is at most ``clip_units`` (the clip
    times the scale) in ``dim`` padded coordinates."""
    l2 = float(rounding_bound(clip_units, dim, beta))
    return l2, l2 * min(math.sqrt(dim), l2)


def round_rdp(kind: str, orders: Sequence[float], l2: float, l1: float, local_std: float,
              sites: int, dim: int) -> np.ndarray:
    """One round's RDP at each order (``kind``: ``dgauss`` or ``skellam``); ``inf`` without
    noise."""
    a = np.asarray(orders, np.float64)
    var = sites * float(local_std) ** 2
    if var <= 0:
        return np.full(a.shape, np.inf)
    if kind == "skellam":
        return a * l2**2 / (2 * var) + np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (4 * var**2),
                                                 3 * l1 / (2 * var))
    if kind != "dgauss":
        raise ValueError(f"kind={kind!r}")
    t, sigma = tau(local_std, sites), math.sqrt(var)
    return np.minimum.reduce([
        a * l2**2 / (2 * var) + t * dim,
        a / 2 * (l2**2 / var + 2 * l1 * t / sigma + t**2 * dim),
        a / 2 * (l2 / sigma + t * math.sqrt(dim)) ** 2,
    ])


def epsilon(kind: str, rounds: int, delta: float, *, clip_units: float, local_std: float,
            sites: int, dim: int, beta: float = DEFAULT_BETA,
            orders: Sequence[float] = ORDERS) -> tuple[float, float | None]:
    """``(epsilon, optimal order)`` of ``rounds`` rounds (``inf, None`` without noise)."""
    from dp_accounting.rdp import compute_epsilon

    if local_std <= 0:
        return math.inf, None
    l2, l1 = sensitivities(clip_units, dim, beta)
    rdp = rounds * round_rdp(kind, orders, l2, l1, local_std, sites, dim)
    eps, order = compute_epsilon(list(orders), list(rdp), delta)
    return float(eps), float(order)


def calibrate(kind: str, target: float, rounds: int, delta: float, *, clip_units: float,
              sites: int, dim: int, beta: float = DEFAULT_BETA, rtol: float = 1e-3) -> float:
    """The smallest local std (integer units, to ``rtol``) whose ``rounds`` rounds spend at most
    ``target``; 0 for an infinite target.

    Raises:
      ConfigError: naming ``privacy.target_epsilon`` when no std up to ``1e4 clip_units``
        reaches it (the ``tau d`` terms of a discrete Gaussian too small a share).
    """
    if math.isinf(target):
        return 0.0

    def spent(s):
        return epsilon(kind, rounds, delta, clip_units=clip_units, local_std=s, sites=sites,
                       dim=dim, beta=beta)[0]

    low, high = 0.0, max(clip_units, 1.0) / math.sqrt(sites)
    while spent(high) > target:
        low, high = high, 2 * high
        if high > 1e4 * max(clip_units, 1.0):
            raise ConfigError("privacy.target_epsilon", target,
                              f"an epsilon privacy=ddp with privacy.distribution={kind} can reach "
                              f"in {rounds} rounds")
    while high - low > rtol * high:
        mid = (low + high) / 2
        low, high = (mid, high) if spent(mid) > target else (low, mid)
    return high


def scale_for_bits(bits: int, sites: int, clip: float, dim: int, local_std: float,
                   k: float) -> float:
    """The scale (``1 / gamma``) that keeps ``k`` standard deviations of every coordinate of the
    sum inside ``[-2^(b-1), 2^(b-1))`` (Kairouz et al. 2021, Sec. 4.4): after the rotation a
    coordinate of the sum has spread about ``sqrt((n clip)^2 / d + n / 4 + n sigma^2)`` in units
    of ``1 / scale`` (signal spread over ``d`` coordinates, rounding variance at most 1/4 per
    site, noise; ``sigma = local_std`` here in model units), so
    ``scale^2 k^2 ((n clip)^2 / d + n sigma^2) + k^2 n / 4 = 4^(b-1)``.

    Raises:
      ConfigError: naming ``privacy.bits`` when the rounding alone does not fit.
    """
    room = 4.0 ** (bits - 1) - k**2 * sites / 4.0
    if room <= 0:
        raise ConfigError("privacy.bits", bits,
                          f"more bits for {sites} sites (k={k} standard deviations of the "
                          "rounding alone do not fit)")
    return math.sqrt(room / (k**2 * ((sites * clip) ** 2 / dim + sites * local_std**2)))
