"""Distributed DP's building blocks: rotation, conditional rounding, discrete noise, modular wrap.

Issue 32, item 2 (the pieces only: no accounting, no ``privacy=ddp`` mechanism yet). Each site
turns its update ``x`` (a flat float vector of ``dim`` coordinates) into integers modulo ``2^b``
that secure aggregation (:mod:`fedbench.secagg`) sums; the server turns the modular sum back into
a float vector. Kairouz, Liu, Steinke 2021, Algorithm 1 (the client) and Algorithm 2 (the
server), with the granularity ``gamma = 1 / scale``:

1. clip ``x`` to L2 norm ``clip`` and multiply by ``scale`` (:func:`encode`);
2. rotate: zero-pad to ``D = 2^ceil(log2 dim)`` coordinates, flip signs with a Rademacher
   vector ``xi`` shared by the round's sites and the server, apply the normalised Walsh-Hadamard
   transform ``H_D`` (:func:`rotate`; ``H_D D_xi`` is orthogonal, so norms are kept, and a spike
   is spread over all coordinates: the "flattening" of Sec. 4);
3. round each coordinate to one of its two neighbouring integers, up with probability equal to
   its fractional part, retrying until the rounded vector's L2 norm is within
   :func:`rounding_bound` (the conditional randomised rounding, Sec. 4.1 / Thm. 1 eq. 2);
4. add the site's share of the noise: discrete Gaussian (:func:`discrete_gaussian`, Canonne,
   Kamath, Steinke 2020) or Skellam (:func:`skellam`, Agarwal, Kairouz, Liu 2021);
5. reduce modulo ``2^b`` (:func:`wrap`, two's complement).

The server: the modular sum (:func:`modular_sum`, what :func:`fedbench.secagg.run_round`
returns), centred to ``[-2^(b-1), 2^(b-1))`` (:func:`centre`), unrotated (:func:`unrotate`) and
divided by ``scale`` (:func:`decode`). It returns the *sum*; dividing by the (expected) number of
sites is the mechanism's choice of estimator.

Everything here is a pure JAX function (jit- and vmap-able; :func:`encode` vmaps over the sites'
keys and vectors). Canonne et al.'s sampler in exact rational arithmetic on the host (slow, a
reference and a test oracle) is :mod:`fedbench.privacy.discrete_exact`.
:func:`discrete_gaussian` is the same rejection sampler vectorised in JAX with its acceptance
probabilities in float32 (as TensorFlow Federated's implementation does in float): its
distribution is the discrete Gaussian up to float32 rounding of ``exp``, not exactly.

Integers are ``int32`` and residues ``uint32`` (fedbench runs JAX without 64-bit types), so
``bits`` is at most 32; :func:`wrap` and :func:`centre` are the JAX counterparts of
:func:`fedbench.secagg.to_ring` / :func:`fedbench.secagg.to_signed` (NumPy ``uint64``, not
traceable) and agree with them (tests/test_discrete_noise.py). :func:`decode` accepts the
``uint64`` total of :func:`fedbench.secagg.run_round` as it is.

Numerics: the rotation and the norm check run in float32. The retry test compares the float32
squared norm of the integer vector with the bound squared, so the bound holds up to float32
summation error (relative ``~1e-6`` for the sizes here); centred sums above ``2^24`` in
magnitude lose integer precision when converted to float32 in :func:`decode`.

References:
  P. Kairouz, Z. Liu, T. Steinke. "The Distributed Discrete Gaussian Mechanism for Federated
  Learning with Secure Aggregation", ICML 2021: Algorithms 1-2, Sec. 4 (randomised Hadamard
  flattening, conditional randomised rounding with the bound of Thm. 1 eq. 2 / Prop. 22,
  modular clipping).
  C. Canonne, G. Kamath, T. Steinke. "The Discrete Gaussian for Differential Privacy", NeurIPS
  2020, Sec. 5: Algorithm 1 (Bernoulli(exp(-gamma))), Algorithm 2 (discrete Laplace), Algorithm
  3 (discrete Gaussian by rejection from the discrete Laplace) (numbering of arXiv:2004.00010).
  N. Agarwal, P. Kairouz, Z. Liu. "The Skellam Mechanism for Differentially Private Federated
  Learning", NeurIPS 2021: Skellam noise ``Sk(mu, mu)``, the difference of two independent
  Poisson(mu), variance ``2 mu``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.privacy.mechanisms import clip_to_norm

#: The default ``beta`` of the conditional rounding (Kairouz et al. 2021's experiments; each
#: try is accepted with probability at least ``1 - beta``).
DEFAULT_BETA = math.exp(-0.5)
NOISES = ("none", "dgauss", "skellam")
MAX_BITS = 32  # residues are uint32 (JAX without x64)


# ---------------------------------------------------------------------------------- rotation


def padded_dim(dim: int) -> int:
    """``D``: the smallest power of two ``>= dim`` (1 for ``dim <= 1``)."""
    return 1 << max(int(dim) - 1, 0).bit_length()


def walsh_hadamard(x: jax.Array) -> jax.Array:
    """The normalised Walsh-Hadamard transform ``H_D x / sqrt(D)`` along the last axis
    (Sylvester ordering, ``scipy.linalg.hadamard``), in ``log2 D`` butterfly stages:
    ``O(D log D)``. ``D`` must be a power of two. ``H_D / sqrt(D)`` is symmetric and
    orthogonal, hence its own inverse."""
    n = x.shape[-1]
    if n & (n - 1) or n == 0:
        raise ValueError(f"Walsh-Hadamard transform needs a power-of-two length, got {n}")
    batch = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*batch, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(*batch, n)
        h *= 2
    return x / jnp.sqrt(jnp.asarray(n, x.dtype))


def rotation_signs(key: jax.Array, size: int, dtype=jnp.float32) -> jax.Array:
    """``xi``: ``size`` independent uniform signs from ``key`` (the diagonal of ``D_xi``)."""
    return jax.random.rademacher(key, (size,), dtype=dtype)


def rotate(x: jax.Array, key: jax.Array) -> jax.Array:
    """``H_D D_xi pad(x)``: zero-pads the last axis to :func:`padded_dim` and applies the
    randomised Hadamard rotation with the signs drawn from ``key`` (Kairouz et al. 2021,
    Algorithm 1 "flatten"). Keeps the L2 norm; ``[..., dim] -> [..., D]``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    dim = x.shape[-1]
    size = padded_dim(dim)
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - dim)])
    return walsh_hadamard(padded * rotation_signs(key, size, x.dtype))


def unrotate(y: jax.Array, key: jax.Array, dim: int) -> jax.Array:
    """The inverse of :func:`rotate` with the same ``key``: ``D_xi H_D y``, cut to the first
    ``dim`` coordinates (Kairouz et al. 2021, Algorithm 2)."""
    y = jnp.asarray(y)
    return (walsh_hadamard(y) * rotation_signs(key, y.shape[-1], y.dtype))[..., :dim]


# ---------------------------------------------------------------------------------- rounding


def rounding_bound(norm_bound, dim: int, beta: float = DEFAULT_BETA):
    """The L2 bound the conditionally rounded vector must meet (Kairouz et al. 2021, Thm. 1
    eq. 2, from Prop. 22), for an input of L2 norm at most ``norm_bound`` (in integer units:
    the clip times ``scale``) with ``dim`` coordinates (the padded ``D``)::

        min( norm_bound + sqrt(dim),
             sqrt(norm_bound^2 + dim / 4 + sqrt(2 log(1 / beta)) (norm_bound + sqrt(dim) / 2)) )

    The first term holds for every rounding (each coordinate moves by less than 1); the second
    for one try with probability at least ``1 - beta``. ``beta = 0``: the first term only.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta={beta} outside [0, 1)")
    root_d = math.sqrt(dim)
    always = norm_bound + root_d
    if beta == 0.0:
        return always
    slack = math.sqrt(2.0 * math.log(1.0 / beta))
    likely = jnp.sqrt(norm_bound ** 2 + dim / 4.0 + slack * (norm_bound + root_d / 2.0))
    return jnp.minimum(always, likely)


def randomised_round(key: jax.Array, x: jax.Array) -> jax.Array:
    """Each coordinate to ``floor(x) + 1`` with probability ``x - floor(x)``, else to
    ``floor(x)``: unbiased, ``int32``."""
    low = jnp.floor(x)
    up = jax.random.uniform(key, x.shape, x.dtype) < (x - low)
    return (low + up.astype(x.dtype)).astype(jnp.int32)


def conditional_round(key: jax.Array, x: jax.Array, bound, max_tries: int = 1000
                      ) -> tuple[jax.Array, jax.Array]:
    """Conditional randomised rounding (Kairouz et al. 2021, Algorithm 1 step 3, Sec. 4.1):
    :func:`randomised_round` of the vector ``x`` (last axis; vmap for a batch), retried with
    fresh randomness until its L2 norm is at most ``bound`` (:func:`rounding_bound`).

    Returns ``(rounded int32, tries int32)``. After ``max_tries`` failed tries (probability at
    most ``beta^max_tries`` when ``||x|| <= norm_bound``) it returns ``x`` rounded towards zero,
    whose norm is at most ``||x||``: the bound then still holds whenever ``||x|| <= bound``,
    so it holds always for inputs within the clip (the bias of that branch is negligible).
    """
    x = jnp.asarray(x, jnp.float32)
    bound_sq = jnp.square(jnp.asarray(bound, jnp.float32))

    def within(z):
        return jnp.sum(jnp.square(z.astype(jnp.float32))) <= bound_sq

    def body(carry):
        tries, k, _, _ = carry
        k, sub = jax.random.split(k)
        z = randomised_round(sub, x)
        return tries + 1, k, z, within(z)

    def cond(carry):
        tries, _, _, ok = carry
        return jnp.logical_and(~ok, tries < max_tries)

    init = (jnp.int32(0), key, jnp.zeros(x.shape, jnp.int32), jnp.bool_(False))
    tries, _, z, ok = jax.lax.while_loop(cond, body, init)
    return jnp.where(ok, z, jnp.trunc(x).astype(jnp.int32)), tries


# ---------------------------------------------------------------------------------- noise


def discrete_gaussian(key: jax.Array, sigma, shape) -> jax.Array:
    """``int32`` samples of the discrete Gaussian ``N_Z(0, sigma^2)``,
    ``P(y) proportional to exp(-y^2 / (2 sigma^2))`` (Canonne, Kamath, Steinke 2020,
    Algorithm 3, vectorised): with ``t = floor(sigma) + 1``, draw a discrete Laplace
    ``Y`` with ``P(y) proportional to exp(-|y| / t)`` and accept it with probability
    ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``; every coordinate not yet accepted draws
    again (a ``while_loop`` over whole-array draws) until all are.

    The discrete Laplace is the difference of two geometrics ``floor(t E)``, ``E ~ Exp(1)``
    (``P(floor(t E) >= k) = exp(-k / t)``), in place of Algorithm 2's exact construction, and
    the acceptance test compares a float32 uniform with a float32 ``exp``: the distribution is
    exact up to float32 rounding (:mod:`fedbench.privacy.discrete_exact` is exact). ``sigma <= 0``
    gives zeros. ``sigma`` may be traced."""
    shape = tuple(shape)
    sigma = jnp.asarray(sigma, jnp.float32)
    positive = sigma > 0
    s = jnp.where(positive, sigma, 1.0)
    t = jnp.floor(s) + 1.0
    var = s * s

    def draw(k):
        k1, k2, k3 = jax.random.split(k, 3)
        g1 = jnp.floor(t * jax.random.exponential(k1, shape))
        g2 = jnp.floor(t * jax.random.exponential(k2, shape))
        y = g1 - g2
        accept = jax.random.uniform(k3, shape) < jnp.exp(
            -jnp.square(jnp.abs(y) - var / t) / (2.0 * var))
        return y, accept

    def body(carry):
        k, out, done = carry
        k, sub = jax.random.split(k)
        y, accept = draw(sub)
        take = accept & ~done
        return k, jnp.where(take, y, out), done | accept

    init = (key, jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool))
    _, out, _ = jax.lax.while_loop(lambda c: ~jnp.all(c[2]), body, init)
    return jnp.where(positive, out, 0.0).astype(jnp.int32)


def skellam(key: jax.Array, mu, shape) -> jax.Array:
    """``int32`` samples of the symmetric Skellam ``Sk(mu, mu)``: ``P1 - P2`` with ``P1, P2``
    independent Poisson(``mu``); mean 0, variance ``2 mu`` (Agarwal, Kairouz, Liu 2021,
    Sec. 3). ``mu = 0`` gives zeros."""
    k1, k2 = jax.random.split(key)
    mu = jnp.asarray(mu, jnp.float32)
    return (jax.random.poisson(k1, mu, tuple(shape), dtype=jnp.int32)
            - jax.random.poisson(k2, mu, tuple(shape), dtype=jnp.int32))


def noise(key: jax.Array, kind: str, stddev, shape) -> jax.Array:
    """``int32`` noise of standard deviation about ``stddev`` (integer units): ``"dgauss"``
    (:func:`discrete_gaussian` with ``sigma = stddev``; its variance is slightly below
    ``sigma^2``, Canonne et al. 2020), ``"skellam"`` (:func:`skellam` with
    ``mu = stddev^2 / 2``, variance exactly ``stddev^2``) or ``"none"``."""
    if kind == "dgauss":
        return discrete_gaussian(key, stddev, shape)
    if kind == "skellam":
        return skellam(key, jnp.square(jnp.asarray(stddev, jnp.float32)) / 2.0, shape)
    if kind == "none":
        return jnp.zeros(tuple(shape), jnp.int32)
    raise ValueError(f"noise={kind!r}, expected one of {NOISES}")


# ---------------------------------------------------------------------------------- modular


def _check_bits(bits: int) -> int:
    if not 1 <= int(bits) <= MAX_BITS:
        raise ValueError(f"bits={bits} outside [1, {MAX_BITS}] (uint32 residues)")
    return int(bits)


def _mask(bits: int) -> jax.Array:
    return jnp.uint32((1 << bits) - 1)


def wrap(z: jax.Array, bits: int) -> jax.Array:
    """Signed integers (``int32``) as ``uint32`` residues modulo ``2^b`` (two's complement;
    Kairouz et al. 2021's modular clipping to ``[0, 2^b)``). The JAX counterpart of
    :func:`fedbench.secagg.to_ring`."""
    bits = _check_bits(bits)
    z = jnp.asarray(z, jnp.int32)
    return jax.lax.bitcast_convert_type(z, jnp.uint32) & _mask(bits)


def centre(r: jax.Array, bits: int) -> jax.Array:
    """Residues modulo ``2^b`` as ``int32`` in ``[-2^(b-1), 2^(b-1))``; the inverse of
    :func:`wrap` on that range. The JAX counterpart of :func:`fedbench.secagg.to_signed`."""
    bits = _check_bits(bits)
    shift = jnp.uint32(32 - bits)
    # move bit b-1 to the sign bit, then shift back arithmetically: sign extension
    high = jax.lax.bitcast_convert_type(jnp.asarray(r, jnp.uint32) << shift, jnp.int32)
    return high >> shift.astype(jnp.int32)


def modular_sum(r: jax.Array, bits: int, axis: int = 0) -> jax.Array:
    """The sum modulo ``2^b`` of residues along ``axis``: what secure aggregation reveals
    (uint32 addition wraps modulo ``2^32``, a multiple of ``2^b``)."""
    bits = _check_bits(bits)
    return jnp.sum(jnp.asarray(r, jnp.uint32), axis=axis, dtype=jnp.uint32) & _mask(bits)


MAX_SUMMANDS = 1 << 15  # wrapped(): the 16-bit halves' int32 sums stay exact below this


def wrapped(ints: jax.Array, bits: int, axis: int = 0) -> jax.Array:
    """Per coordinate, whether the true (integer) sum of ``int32`` ``ints`` along ``axis`` lies
    outside ``[-2^(b-1), 2^(b-1))``, i.e. whether :func:`modular_sum` then :func:`centre` wrapped
    it (modular clipping). Exact for every ``bits`` and fewer than ``MAX_SUMMANDS = 2^15``
    summands (more are refused): each integer is split into its high 16 bits (arithmetic shift)
    and low 16 bits, summed separately in ``int32`` and carried, without the float32 rounding
    of sums above ``2^24``."""
    bits = _check_bits(bits)
    z = jnp.asarray(ints, jnp.int32)
    if z.shape[axis] >= MAX_SUMMANDS:  # 2^15 low halves (< 2^16 each) would reach 2^31
        raise ValueError(f"wrapped: {z.shape[axis]} summands; exact below {MAX_SUMMANDS}")
    low = jnp.sum(z & 0xFFFF, axis=axis)
    high = jnp.sum(z >> 16, axis=axis) + (low >> 16)
    low = low & 0xFFFF  # true sum = high * 2^16 + low, 0 <= low < 2^16
    if bits >= 17:
        edge = 1 << (bits - 17)
        return (high >= edge) | (high < -edge)
    half = 1 << (bits - 1)
    below = (high == 0) & (low < half) | (high == -1) & (low >= 0x10000 - half)
    return ~below


# ---------------------------------------------------------------------------------- pipeline


def site_integers(x: jax.Array, rotation_key: jax.Array, round_key: jax.Array,
                  noise_key: jax.Array, *, clip, scale, noise_kind: str = "none", stddev=0.0,
                  beta: float = DEFAULT_BETA, max_tries: int = 1000):
    """Steps 1-4 of :func:`encode` before the modular reduction: ``(int32 [D], tries)``, the
    site's clipped, scaled, rotated, conditionally rounded and noised integers. The rounding
    draws from ``round_key`` and the noise from ``noise_key`` (both the site's own)."""
    x = jnp.asarray(x, jnp.float32)
    clipped, _ = clip_to_norm(x, clip)
    rotated = rotate(clipped * scale, rotation_key)
    bound = rounding_bound(jnp.asarray(clip, jnp.float32) * scale, rotated.shape[-1], beta)
    rounded, tries = conditional_round(round_key, rotated, bound, max_tries)
    return rounded + noise(noise_key, noise_kind, stddev, rounded.shape), tries


def encode(x: jax.Array, rotation_key: jax.Array, key: jax.Array, *, clip, scale, bits: int,
           noise_kind: str = "none", stddev=0.0, beta: float = DEFAULT_BETA,
           max_tries: int = 1000, return_tries: bool = False):
    """One site's message (Kairouz et al. 2021, Algorithm 1; Agarwal et al. 2021 with
    ``noise_kind="skellam"``): the flat float vector ``x`` ``[dim]`` clipped to L2 norm
    ``clip``, multiplied by ``scale`` (``1 / gamma``), rotated with the round's shared
    ``rotation_key`` (:func:`rotate`), conditionally rounded (:func:`conditional_round` with
    :func:`rounding_bound` of ``clip * scale`` in ``D`` dimensions), plus the site's noise of
    standard deviation ``stddev`` in integer units (:func:`noise`; the share of the total noise
    is the caller's choice) (:func:`site_integers`), reduced modulo ``2^bits`` (:func:`wrap`).

    ``key`` is the site's private randomness (rounding and noise); ``rotation_key`` is public
    and the same for every site of the round and the server. Returns ``uint32`` residues
    ``[D]`` (``D = padded_dim(dim)``), and the rounding tries if ``return_tries``.
    Jit-able with ``bits``, ``noise_kind``, ``max_tries``, ``return_tries`` static; vmap over
    ``(x, key)`` for a cohort.
    """
    bits = _check_bits(bits)
    k_round, k_noise = jax.random.split(key)
    ints, tries = site_integers(x, rotation_key, k_round, k_noise, clip=clip, scale=scale,
                                noise_kind=noise_kind, stddev=stddev, beta=beta,
                                max_tries=max_tries)
    residues = wrap(ints, bits)
    return (residues, tries) if return_tries else residues


def decode(total, rotation_key: jax.Array, *, scale, bits: int, dim: int) -> jax.Array:
    """The server's float vector ``[dim]`` from the modular sum ``total`` ``[D]`` of the sites'
    :func:`encode` messages (Kairouz et al. 2021, Algorithm 2): centred to
    ``[-2^(b-1), 2^(b-1))``, unrotated with the round's ``rotation_key``, divided by ``scale``.
    The *sum* of the sites' (clipped, rounded, noised) vectors; exact but for the rounding and
    the noise unless the true sum left the centred range (modular overflow: it then wraps).
    ``total`` may be :func:`fedbench.secagg.run_round`'s ``uint64`` residues."""
    bits = _check_bits(bits)
    if isinstance(total, np.ndarray):
        total = (total.astype(np.uint64) & np.uint64((1 << bits) - 1)).astype(np.uint32)
    signed = centre(total, bits).astype(jnp.float32)
    return unrotate(signed, rotation_key, dim) / scale
