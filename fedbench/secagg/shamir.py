"""Shamir's t-out-of-n secret sharing over the prime field ``F_p``, ``p = 2^127 - 1``.

Real Shamir (Shamir, "How to share a secret", CACM 1979), on Python integers: a secret ``s`` is
the constant term of a random polynomial ``f`` of degree ``t - 1``; share ``i`` is ``(x_i,
f(x_i))`` at a non-zero point ``x_i``. Any ``t`` shares determine ``f`` and so ``s = f(0)``
(Lagrange interpolation at 0); fewer than ``t`` reveal nothing about ``s`` (every value of ``s``
is consistent with them), so :func:`reconstruct` refuses them rather than interpolating a wrong
polynomial. Bonawitz et al. (CCS 2017, Sec. 3.1 and Fig. 4, rounds ShareKeys and Unmasking)
share each client's self-mask seed ``b_u`` and its mask key ``s_u^SK`` this way.

The field is the Mersenne prime ``2^127 - 1``: a share's value is one field element of 16 bytes
(``FIELD_BYTES``), the size the cost model (:mod:`fedbench.secagg.costs`) assumes by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

PRIME = (1 << 127) - 1
FIELD_BYTES = 16


class NotEnoughShares(ValueError):
    """Fewer than ``t`` distinct shares: the secret cannot be reconstructed."""


def random_element(rng: np.random.Generator) -> int:
    """A uniform element of ``F_p`` from ``rng`` (rejection sampling on 127 random bits)."""
    while True:
        words = rng.integers(0, 1 << 63, size=2, dtype=np.int64, endpoint=False)
        value = (int(words[0]) << 64 | int(words[1]) << 1 | int(rng.integers(0, 2))) & PRIME
        if value < PRIME:
            return value


def share(secret: int, threshold: int, points: Iterable[int],
          rng: np.random.Generator) -> dict[int, int]:
    """``secret`` split ``threshold``-out-of-``len(points)``: point ``x`` -> ``f(x)``.

    ``f(X) = secret + a_1 X + ... + a_{t-1} X^{t-1}`` with ``a_i`` uniform in ``F_p``
    (Shamir 1979). ``points``: distinct non-zero field elements (the holders' indices + 1).

    Raises:
      ValueError: a secret outside ``F_p``, a threshold outside ``[1, len(points)]``, or a point
        that is zero or repeated.
    """
    points = [int(x) for x in points]
    if not 0 <= secret < PRIME:
        raise ValueError(f"a secret in [0, 2^127 - 1), not {secret}")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} outside [1, {len(points)}] shares")
    if len(set(points)) != len(points) or any(x % PRIME == 0 for x in points):
        raise ValueError(f"distinct non-zero points, not {points}")
    coefficients = [secret] + [random_element(rng) for _ in range(threshold - 1)]
    out = {}
    for x in points:
        y = 0
        for a in reversed(coefficients):  # Horner
            y = (y * x + a) % PRIME
        out[x] = y
    return out


def reconstruct(shares: Mapping[int, int], threshold: int) -> int:
    """The secret ``f(0)`` from at least ``threshold`` shares ``{x: f(x)}`` (Lagrange
    interpolation at 0 over the first ``threshold`` points: any ``t`` points determine ``f``).

    Raises:
      NotEnoughShares: fewer than ``threshold`` shares.
    """
    if len(shares) < threshold:
        raise NotEnoughShares(f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares)[:threshold]
    secret = 0
    for i in points:
        numerator, denominator = 1, 1
        for j in points:
            if j != i:
                numerator = numerator * (-j) % PRIME
                denominator = denominator * (i - j) % PRIME
        secret = (secret + shares[i] * numerator * pow(denominator, -1, PRIME)) % PRIME
    return secret
