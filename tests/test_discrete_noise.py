"""Distributed DP's building blocks (fedbench/privacy/discrete.py, issue 32 items 2-3).

Independent expectations: the discrete Gaussian's pmf computed here as
``exp(-y^2 / 2 sigma^2)`` over its normaliser (a sum over a wide range of integers), checked
by a chi-squared goodness of fit; the Skellam's pmf from ``scipy.stats.skellam`` and its
variance ``2 mu``; the Walsh-Hadamard transform against ``scipy.linalg.hadamard``; the
rounding bound from its formula evaluated by hand; modular reduction against Python's
integers and :mod:`fedbench.secagg`'s NumPy helpers; the decoded sum against the plain NumPy
sum of the clipped vectors, directly and through :func:`fedbench.secagg.run_round`.
Fixed seeds throughout: every statistical test is deterministic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg, stats

from fedbench.privacy import discrete as dd
from fedbench.privacy import discrete_exact as dx
from fedbench.secagg import NEVER, Settings, run_round, to_ring, to_signed

P_MIN = 1e-3  # the chi-squared tests' p-value threshold (fixed seeds: deterministic)


def chi_squared_p(samples, pmf, min_expected: float = 5.0) -> float:
    """The p-value of a chi-squared goodness of fit of integer ``samples`` to ``pmf``
    (a function on integers), the tails beyond the bins with ``min_expected`` expected counts
    merged into one bin each side."""
    samples = np.asarray(samples)
    n = samples.size
    support = np.arange(-400, 401)
    probs = pmf(support)
    assert abs(probs.sum() - 1) < 1e-9
    keep = probs * n >= min_expected
    lo, hi = support[keep].min(), support[keep].max()
    inner = np.arange(lo, hi + 1)
    observed = [np.sum(samples < lo)] + [np.sum(samples == y) for y in inner] \
        + [np.sum(samples > hi)]
    expected = [probs[support < lo].sum()] + list(probs[(support >= lo) & (support <= hi)]) \
        + [probs[support > hi].sum()]
    observed, expected = np.asarray(observed, float), np.asarray(expected) * n
    nonzero = expected > 0
    assert observed[~nonzero].sum() == 0
    return stats.chisquare(observed[nonzero], expected[nonzero] * observed.sum()
                           / expected[nonzero].sum()).pvalue


def discrete_gaussian_pmf(sigma):
    def pmf(y):
        wide = np.arange(-2000, 2001)
        normaliser = np.exp(-wide.astype(float) ** 2 / (2 * sigma ** 2)).sum()
        return np.exp(-np.asarray(y, float) ** 2 / (2 * sigma ** 2)) / normaliser
    return pmf


# ---------------------------------------------------------------------------- noise


@pytest.mark.parametrize("sigma", [0.7, 3.0])
def test_discrete_gaussian_jax_fits_its_pmf(sigma):
    samples = np.asarray(dd.discrete_gaussian(jax.random.key(11), sigma, (40_000,)))
    assert samples.dtype == np.int32
    assert chi_squared_p(samples, discrete_gaussian_pmf(sigma)) > P_MIN
    # and not a rounded continuous Gaussian: the chi-squared test tells them apart
    rounded = np.round(np.random.default_rng(0).normal(0, sigma, 40_000))
    if sigma < 1:
        assert chi_squared_p(rounded, discrete_gaussian_pmf(sigma)) < P_MIN


@pytest.mark.parametrize("sigma2", [Fraction(49, 100), Fraction(9)])
def test_discrete_gaussian_exact_fits_its_pmf(sigma2):
    samples = dx.discrete_gaussian_exact(sigma2, 3000, seed=5)
    assert chi_squared_p(samples, discrete_gaussian_pmf(math.sqrt(sigma2))) > P_MIN


def test_discrete_gaussian_zero_sigma_jit_and_vmap():
    assert not np.asarray(dd.discrete_gaussian(jax.random.key(0), 0.0, (5,))).any()
    keys = jax.random.split(jax.random.key(1), 4)
    draw = jax.jit(jax.vmap(lambda k, s: dd.discrete_gaussian(k, s, (2000,))))
    out = np.asarray(draw(keys, jnp.array([0.0, 1.0, 5.0, 20.0])))
    assert not out[0].any()
    np.testing.assert_allclose(out[1:].std(axis=1), [1.0, 5.0, 20.0], rtol=0.08)


def test_bernoulli_exp_exact_rates():
    import random

    rng = random.Random(3)
    for gamma in (Fraction(1, 3), Fraction(5, 2)):
        draws = [dx.bernoulli_exp(gamma, rng) for _ in range(4000)]
        p = math.exp(-gamma)
        assert abs(np.mean(draws) - p) < 4 * math.sqrt(p * (1 - p) / 4000)


@pytest.mark.parametrize("mu", [0.8, 12.0])
def test_skellam_mean_variance_and_pmf(mu):
    samples = np.asarray(dd.skellam(jax.random.key(7), mu, (40_000,)))
    n = samples.size
    assert abs(samples.mean()) < 4 * math.sqrt(2 * mu / n)
    # the sample variance's standard error: sqrt((m4 - s^4) / n), m4 = 2 mu + 3 (2 mu)^2
    var = 2 * mu
    assert abs(samples.var() - var) < 4 * math.sqrt((var + 3 * var ** 2 - var ** 2) / n)
    assert chi_squared_p(samples, lambda y: stats.skellam.pmf(y, mu, mu)) > P_MIN


def test_noise_kinds_have_the_stated_stddev():
    key = jax.random.key(2)
    sk = np.asarray(dd.noise(key, "skellam", 4.0, (40_000,)))
    assert abs(sk.std() - 4.0) < 0.1
    dg = np.asarray(dd.noise(key, "dgauss", 4.0, (40_000,)))
    assert abs(dg.std() - 4.0) < 0.1
    assert not np.asarray(dd.noise(key, "none", 4.0, (3,))).any()
    with pytest.raises(ValueError):
        dd.noise(key, "laplace", 1.0, (3,))


# ---------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("size", [1, 2, 8, 64])
def test_walsh_hadamard_is_scipys_hadamard_normalised(size):
    x = np.random.default_rng(size).normal(size=(3, size)).astype(np.float32)
    expected = x @ linalg.hadamard(size).T / math.sqrt(size)
    np.testing.assert_allclose(dd.walsh_hadamard(jnp.asarray(x)), expected, atol=1e-5)
    with pytest.raises(ValueError):
        dd.walsh_hadamard(jnp.ones(6))


_rotate = jax.jit(dd.rotate)
_unrotate = jax.jit(dd.unrotate, static_argnums=2)


@pytest.mark.parametrize("dim", [1, 5, 37, 64, 300])
def test_rotation_keeps_the_norm_and_inverts(dim):
    x = jnp.asarray(np.random.default_rng(dim).normal(size=(4, dim)), jnp.float32)
    key = jax.random.key(dim)
    y = _rotate(x, key)
    assert y.shape == (4, dd.padded_dim(dim))
    assert dd.padded_dim(dim) == 2 ** math.ceil(math.log2(dim)) if dim > 1 else 1
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1),
                               rtol=1e-5)
    np.testing.assert_allclose(_unrotate(y, key, dim), x, atol=1e-5)
    other = _unrotate(y, jax.random.key(dim + 1), dim)  # the wrong key does not invert
    if dim > 1:
        assert float(jnp.abs(other - x).max()) > 0.1


def test_rotation_flattens_a_spike():
    d, norm = 1024, 5.0
    spike = jnp.zeros(d).at[17].set(norm)
    y = _rotate(spike, jax.random.key(4))
    np.testing.assert_allclose(jnp.abs(y), norm / math.sqrt(d), rtol=1e-5)  # every coordinate
    # a spike on top of small noise: the max coordinate drops from ~norm to O(norm sqrt(log d / d))
    x = spike + 0.01 * jax.random.normal(jax.random.key(5), (d,))
    y = _rotate(x, jax.random.key(6))
    bound = float(jnp.linalg.norm(x)) * math.sqrt(2 * math.log(2 * d * 100) / d)
    assert float(jnp.abs(y).max()) < bound < 0.2 * norm


# ---------------------------------------------------------------------------- rounding


def test_rounding_bound_by_hand():
    # c = 10, d = 16, beta = e^-0.5: sqrt(2 log(1/beta)) = 1, so sqrt(100 + 4 + 12) vs 10 + 4
    assert float(dd.rounding_bound(10.0, 16, math.exp(-0.5))) == pytest.approx(math.sqrt(116))
    assert float(dd.rounding_bound(10.0, 16, 0.0)) == pytest.approx(14.0)
    assert float(dd.rounding_bound(0.0, 16, 1e-300)) == pytest.approx(4.0)  # c + sqrt(d) wins
    with pytest.raises(ValueError):
        dd.rounding_bound(1.0, 4, 1.0)


def test_randomised_rounding_is_unbiased():
    x = jnp.array([0.25, -1.7, 3.5, 0.0, 2.0, -0.01, 7.9, -3.33])
    keys = jax.random.split(jax.random.key(8), 20_000)
    bound = dd.rounding_bound(float(jnp.linalg.norm(x)), x.size)
    z, tries = jax.jit(jax.vmap(lambda k: dd.conditional_round(k, x, bound)))(keys)
    z = np.asarray(z)
    assert set(np.unique(z - np.floor(np.asarray(x))[None])) <= {0, 1}  # floor or ceil
    frac = np.asarray(x - jnp.floor(x))
    se = np.sqrt(frac * (1 - frac) / z.shape[0]) + 1e-9
    # the conditioning biases the mean by at most ~beta-scale amounts; here the bound is
    # loose enough that the plain rounding's mean is within its standard errors
    assert np.all(np.abs(z.mean(axis=0) - np.asarray(x)) <= 4 * se + 2e-3)
    plain = np.asarray(jax.jit(jax.vmap(dd.randomised_round, in_axes=(0, None)))(keys, x))
    assert np.all(np.abs(plain.mean(axis=0) - np.asarray(x)) <= 4 * se + 1e-9)


#: many roundings of one vector: compiled once per vector length
_round_many = jax.jit(jax.vmap(dd.conditional_round, in_axes=(0, None, None)))


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([1, 7, 40]), st.floats(0.0, 6.0), st.floats(1e-6, 0.99),
       st.integers(0, 2 ** 31 - 1))
def test_conditional_rounding_always_meets_its_bound(d, norm, beta, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=d)
    x = jnp.asarray(x / max(np.linalg.norm(x), 1e-12) * norm, jnp.float32)
    bound = dd.rounding_bound(norm, d, beta)
    keys = jax.random.split(jax.random.key(seed), 64)
    z, tries = _round_many(keys, x, jnp.float32(bound))
    norms = np.linalg.norm(np.asarray(z, float), axis=1)
    assert np.all(norms <= float(bound) * (1 + 1e-6))
    assert np.all(np.asarray(tries) >= 1)


def test_conditional_rounding_retries_and_falls_back():
    # a bound the plain rounding misses often: retries happen, and every output meets it
    x = jnp.full((16,), 0.5)  # norm 2; a rounding has norm sqrt(#ups)
    bound = 2.0
    keys = jax.random.split(jax.random.key(9), 2000)
    z, tries = _round_many(keys, x, jnp.float32(bound))
    assert np.all(np.linalg.norm(np.asarray(z, float), axis=1) <= bound + 1e-6)
    tries = np.asarray(tries)
    p_ok = stats.binom.cdf(4, 16, 0.5)  # at most 4 of 16 coordinates round up
    assert abs(tries.mean() - 1 / p_ok) < 0.15 / p_ok
    # with one try allowed the failures fall back to rounding towards zero (norm <= ||x||)
    z1, t1 = jax.vmap(lambda k: dd.conditional_round(k, x, bound, max_tries=1))(keys)
    assert np.all(np.asarray(t1) == 1)
    assert np.all(np.linalg.norm(np.asarray(z1, float), axis=1) <= bound + 1e-6)
    assert (np.asarray(z1).sum(axis=1) == 0).mean() > 0.5  # the fallback: all zeros


# ---------------------------------------------------------------------------- modular


@pytest.mark.parametrize("bits", [1, 2, 8, 16, 31, 32])
def test_wrap_and_centre_round_trip_and_agree_with_secagg(bits):
    rng = np.random.default_rng(bits)
    half = 1 << (bits - 1)
    z = np.concatenate([rng.integers(-half, half, 200), [-half, half - 1, 0, -1]])
    r = np.asarray(dd.wrap(jnp.asarray(z, jnp.int32), bits))
    assert r.dtype == np.uint32
    np.testing.assert_array_equal(r.astype(np.int64), [int(v) % (1 << bits) for v in z])
    np.testing.assert_array_equal(r.astype(np.uint64), to_ring(z, bits))
    back = np.asarray(dd.centre(jnp.asarray(r), bits))
    np.testing.assert_array_equal(back, z)
    np.testing.assert_array_equal(back, to_signed(r.astype(np.uint64), bits))
    with pytest.raises(ValueError):
        dd.wrap(jnp.zeros(2, jnp.int32), 33)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 32), st.integers(1, 9), st.integers(0, 2 ** 31 - 1))
def test_modular_sum_is_the_sum_modulo_2_to_the_b(bits, n, seed):
    rng = np.random.default_rng(seed)
    z = rng.integers(-2 ** 31, 2 ** 31, size=(n, 5))
    r = dd.wrap(jnp.asarray(z, jnp.int32), bits)
    total = np.asarray(dd.modular_sum(r, bits))
    expected = [sum(int(v) for v in z[:, j]) % (1 << bits) for j in range(5)]
    np.testing.assert_array_equal(total.astype(np.int64), expected)


# ---------------------------------------------------------------------------- encode/decode


def _sites(n, dim, seed, big=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.1, big, size=(n, 1))
    return x.astype(np.float32)


def _decode(total, rot, scale, bits, dim):
    """:func:`dd.decode` compiled (eager dispatch op by op is slow on a loaded machine)."""
    if isinstance(total, np.ndarray):
        total = total.astype(np.uint32)
    return np.asarray(jax.jit(dd.decode, static_argnames=("bits", "dim"))(
        total, rot, scale=scale, bits=bits, dim=dim))


def _clipped_sum(x, clip):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x * np.minimum(1.0, clip / norms)).sum(axis=0)


def test_decode_of_the_sum_of_encodes_is_the_clipped_sum():
    n, dim, clip, scale, bits = 5, 37, 1.0, 256.0, 32
    x = _sites(n, dim, 0)
    rot = jax.random.key(100)
    keys = jax.random.split(jax.random.key(101), n)
    enc = jax.jit(jax.vmap(lambda v, k: dd.encode(v, rot, k, clip=clip, scale=scale, bits=bits,
                                                  return_tries=True)))
    messages, tries = enc(jnp.asarray(x), keys)
    assert messages.shape == (n, 64) and messages.dtype == jnp.uint32
    assert np.all(np.asarray(tries) >= 1)
    total = dd.modular_sum(messages, bits)
    decoded = _decode(total, rot, scale, bits, dim)
    expected = _clipped_sum(x, clip)
    size = dd.padded_dim(dim)
    # in the rotated domain every site's rounding moved each coordinate by less than 1 unit
    rotated_err = np.asarray(_rotate(jnp.asarray(decoded - expected) * scale, rot))
    assert np.abs(rotated_err).max() < n + 1e-3
    # so the error's L2 norm is below n sqrt(D) / scale, and typically ~ sqrt(n D / 6) / scale
    err = np.linalg.norm(decoded - expected)
    assert err < n * math.sqrt(size) / scale
    assert np.abs(decoded - expected).max() < 4 * math.sqrt(n) / scale


def test_encode_decode_through_secure_aggregation_with_a_dropout():
    n, dim, clip, scale, bits = 5, 20, 2.0, 1024.0, 24
    x = _sites(n, dim, 1)
    rot, keys = jax.random.key(7), jax.random.split(jax.random.key(8), n)
    messages = np.asarray(jax.jit(jax.vmap(lambda v, k: dd.encode(
        v, rot, k, clip=clip, scale=scale, bits=bits)))(jnp.asarray(x), keys))
    result = run_round(messages.astype(np.uint64), Settings(bits=bits, threshold=3),
                       dropout=[NEVER, 2, NEVER, NEVER, NEVER], seed=4)
    decoded = _decode(result.total, rot, scale, bits, dim)
    # decode takes secagg's uint64 total as it is, too
    np.testing.assert_allclose(
        decoded, np.asarray(dd.decode(result.total, rot, scale=scale, bits=bits, dim=dim)),
        rtol=1e-6, atol=1e-7)
    expected = _clipped_sum(x[result.included], clip)
    assert np.abs(decoded - expected).max() < 4 * math.sqrt(n) / scale


@pytest.mark.parametrize("kind", ["dgauss", "skellam"])
def test_decoded_noise_has_the_sites_summed_variance(kind):
    n, dim, clip, scale, bits, stddev = 4, 1000, 1.0, 64.0, 20, 6.0
    x = _sites(n, dim, 2)
    rot, keys = jax.random.key(3), jax.random.split(jax.random.key(4), n)
    messages = jax.jit(jax.vmap(lambda v, k: dd.encode(
        v, rot, k, clip=clip, scale=scale, bits=bits, noise_kind=kind, stddev=stddev)))(
        jnp.asarray(x), keys)
    decoded = _decode(dd.modular_sum(messages, bits), rot, scale, bits, dim)
    err = (decoded - _clipped_sum(x, clip)) * scale
    # noise variance n stddev^2 plus the rounding's (at most n / 4 per coordinate)
    var = n * stddev ** 2
    assert var * 0.88 < err.var() < (var + n / 4) * 1.12


def test_modular_overflow_wraps_the_decoded_sum():
    # a coordinate whose sum leaves [-2^(b-1), 2^(b-1)) comes back wrapped by 2^b / scale
    bits = 8
    z = jnp.array([[100, -3], [100, -3]], jnp.int32)
    total = dd.modular_sum(dd.wrap(z, bits), bits)
    np.testing.assert_array_equal(dd.centre(total, bits), [200 - 256, -6])


@pytest.mark.parametrize("bits", [2, 8, 16, 17, 24, 25, 31, 32])
def test_wrapped_is_exact_at_the_range_edges(bits):
    """:func:`dd.wrapped` against Python's integers: columns whose true sums sit exactly at and
    one beside both edges of ``[-2^(b-1), 2^(b-1))``, split over four int32 summands (sums
    above 2^24 in magnitude, where float32 cannot tell neighbours apart)."""
    half = 1 << (bits - 1)
    targets = [-half - 1, -half, -half + 1, half - 1, half, half + 1, 0, 2 * half - 1, -2 * half]
    rng = np.random.default_rng(bits)
    cols = []
    for t in targets:
        parts = [t // 4 + int(v) for v in rng.integers(-2 ** 27, 2 ** 27, size=3)]
        cols.append(parts + [t - sum(parts)])
    z = np.array(cols, dtype=np.int64).T
    assert np.all(np.abs(z) < 2 ** 31)
    got = np.asarray(jax.jit(dd.wrapped, static_argnums=1)(jnp.asarray(z, jnp.int32), bits))
    expected = [not (-half <= int(sum(int(v) for v in z[:, j])) < half) for j in range(len(cols))]
    np.testing.assert_array_equal(got, expected)
