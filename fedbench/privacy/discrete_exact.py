"""Canonne, Kamath and Steinke's discrete Gaussian sampler in exact rational arithmetic.

The host-side reference for :mod:`fedbench.privacy.discrete`: Python ``fractions`` and
``random.Random`` (a simulation's generator, not a cryptographic one), one sample at a time.
Slow (tens of microseconds per sample), exact: the oracle that the float32 JAX sampler
:func:`fedbench.privacy.discrete.discrete_gaussian` is tested against.

Reference:
  C. Canonne, G. Kamath, T. Steinke. "The Discrete Gaussian for Differential Privacy", NeurIPS
  2020, Sec. 5: Algorithm 1 (Bernoulli(exp(-gamma))), Algorithm 2 (discrete Laplace), Algorithm
  3 (discrete Gaussian by rejection from the discrete Laplace) (numbering of arXiv:2004.00010).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np


def _bernoulli(p: Fraction, rng: random.Random) -> bool:
    """Bernoulli(``p``) for a rational ``p`` in ``[0, 1]``, exactly (a uniform integer)."""
    return rng.randrange(p.denominator) < p.numerator


def bernoulli_exp(gamma: Fraction, rng: random.Random) -> bool:
    """Bernoulli(``exp(-gamma)``) for a rational ``gamma >= 0``, exactly (Canonne, Kamath,
    Steinke 2020, Algorithm 1): for ``gamma <= 1``, draw Bernoulli(``gamma / k``) for
    ``k = 1, 2, ...`` until one fails and return whether that ``k`` is odd; for ``gamma > 1``,
    ``floor(gamma)`` draws of Bernoulli(``exp(-1)``) and one of the fractional part must all
    succeed."""
    gamma = Fraction(gamma)
    if gamma < 0:
        raise ValueError(f"gamma={gamma} below 0")
    if gamma <= 1:
        k = 1
        while _bernoulli(gamma / k, rng):
            k += 1
        return k % 2 == 1
    for _ in range(math.floor(gamma)):
        if not bernoulli_exp(Fraction(1), rng):
            return False
    return bernoulli_exp(gamma - math.floor(gamma), rng)


def discrete_laplace_exact(t: int, rng: random.Random, s: int = 1) -> int:
    """The discrete Laplace with scale ``t / s`` (positive integers), ``P(y) proportional to
    exp(-|y| s / t)``, exactly (Canonne, Kamath, Steinke 2020, Algorithm 2)."""
    while True:
        u = rng.randrange(t)
        if not bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while bernoulli_exp(Fraction(1), rng):
            v += 1
        y = (u + t * v) // s
        negative = rng.randrange(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def discrete_gaussian_exact(sigma2, size: int, seed: int = 0) -> np.ndarray:
    """``size`` exact samples (``int64``) of ``N_Z(0, sigma2)`` for a rational variance
    parameter ``sigma2`` (a ``Fraction``, int, or float taken at its exact binary value):
    Canonne, Kamath, Steinke 2020, Algorithm 3 in exact rational arithmetic, one sample at a
    time on the host (``random.Random(seed)``: a simulation's generator, not a cryptographic
    one). Tens of microseconds per sample: a reference and test oracle, not for models."""
    sigma2 = Fraction(sigma2)
    if sigma2 <= 0:
        return np.zeros(size, np.int64)
    rng = random.Random(seed)
    t = math.isqrt(math.floor(sigma2)) + 1  # floor(sigma) + 1, exactly
    out = np.empty(size, np.int64)
    for i in range(size):
        while True:
            y = discrete_laplace_exact(t, rng)
            if bernoulli_exp((abs(y) - sigma2 / t) ** 2 / (2 * sigma2), rng):
                out[i] = y
                break
    return out
