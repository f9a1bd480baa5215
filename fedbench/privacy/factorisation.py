"""The strategy matrices ``C`` of ``privacy=dp_ftrl`` (:mod:`fedbench.privacy.dp_ftrl`), their
sensitivities under a participation schema, and the prefix-sum error they leave.

``privacy.matrix`` picks ``C`` for the run's ``T = rounds``:

* ``tree``: the binary-tree (Fenwick) factorisation of Kairouz et al. 2021 as a square
  lower-triangular matrix: row ``t`` (1-based) sums the rounds ``(t - lowbit(t), t]``, the tree
  node that completes at round ``t``; ``B`` selects the nodes of ``t``'s binary decomposition.
  jax_privacy has no tree, so this one matrix is built here (:func:`tree_strategy`); the same
  ``C`` for every schema.
* ``banded``: ``jax_privacy.matrix_factorization.banded.optimize(T, bands=privacy.bands)``
  (column-normalised ``bands``-banded ``C``, Choquette-Choo et al. 2023b), optimised by the
  library for single participation. Under ``cyclic`` the bands must be at most ``b``: columns
  ``b`` or more rounds apart are then orthogonal, ``sens(C) = sqrt(k)`` (``k`` participations
  times the unit column norm, Choquette-Choo et al. 2023b), and the single-
  participation optimum is the multi-participation one (the library's docstring).
* ``blt``: ``jax_privacy.matrix_factorization.buffered_toeplitz.optimize(n=T, min_sep=b,
  max_participations=k, error="mean")`` materialised: the buffered-linear-Toeplitz ``C``
  (McMahan, Xu, Zhang et al. 2024; lower-triangular Toeplitz, ``C_ij = sum_l w_l theta_l^(i-j-1)``
  below the diagonal, a few buffers ``l``) optimised by the library for the mean squared error of
  the prefix sums under ``b``-min-separated participation (``b = 1``, ``k = T`` under
  ``every_round``, where the optimum the library finds is the identity: independent noise).
  Its noise is streamed (:func:`blt_strategy`): the state is the inverse BLT's buffers, one
  model-sized array per buffer (none for the identity), not every round's draw.
* ``dense``: ``jax_privacy.matrix_factorization.dense.optimize(k b, epochs=k)`` truncated to its
  leading ``T x T`` block: the dense ``C`` optimised for ``(k, b)`` fixed-epoch participation
  (Choquette-Choo et al. 2023a; ``k = T``, ``b = 1`` under ``every_round``), for short
  runs (``O(T^3)``). ``C`` is lower triangular, so its leading block factorises the ``T``-round
  prefix sums; when ``b`` divides ``T`` there is no truncation. Under every-round participation
  this optimum is (near) diagonal: independent noise, DP-FedAvg with ``q = 1`` (the known limit
  of multi-epoch matrix factorisation, Choquette-Choo et al. 2023a).

Mean squared error of the prefix sums the model carries, per ``(z clip)^2`` and before the
division by the cohort, ``sens(C)^2 ||B||_F^2 / T`` (:func:`prefix_error`), at ``T = 20``
(computed by this module; ``banded`` with ``bands = b``, ``bands = 4`` under
``every_round``; "independent" is ``C = I``, DP-FedAvg with ``q = 1`` on the same cohorts)::

    participation        independent   tree   banded    blt   dense
    every_round              210.0     835.8   262.5   210.0   190.1
    cyclic b=4 (k=5)          52.5      69.3    21.0    24.1    19.4
    cyclic b=5 (k=4)          42.0      54.6    15.4    17.6    14.3

so correlated noise pays off once a site takes part in only some rounds: cyclic banded, BLT or
dense noise has 2.2-2.9 times less error than independent noise at the same epsilon, while under
every-round participation only dense barely beats it (the BLT optimum is then the identity).
BLT trails banded here because the library optimises it against the ``b``-min-separation bound,
which admits more patterns than the cyclic schedule produces, while the accounting uses the
cyclic patterns only.

The factorisations are optimised in float64 (``jax.enable_x64``, as jax_privacy requires).

References: the full entries are in :mod:`fedbench.privacy.dp_ftrl` (Kairouz et al. 2021;
Choquette-Choo et al. 2023a, 2023b; McMahan, Xu, Zhang et al. 2024).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MATRICES = ("tree", "banded", "blt", "dense")


def participations(rounds: int, cycle: int) -> int:
    """``k = ceil(T / b)``: the most rounds one site takes part in (group 0's count)."""
    return -(-rounds // cycle)


def tree_strategy(rounds: int) -> np.ndarray:
    """The binary-tree strategy ``C`` (``rounds x rounds``, 0/1, lower triangular): row ``t``
    (1-based) covers rounds ``t - lowbit(t) + 1 .. t`` (Kairouz et al. 2021's tree node that
    completes at round ``t``)."""
    C = np.zeros((rounds, rounds))
    for t in range(1, rounds + 1):
        C[t - 1, t - (t & -t):t] = 1.0
    return C


@functools.lru_cache(maxsize=16)
def blt_strategy(rounds: int, cycle: int = 1):
    """The BLT (``jax_privacy``'s ``BufferedToeplitz``, float64 parameters) optimised for
    ``b = cycle``-min-separated participation, ``k = ceil(T / b)`` times, mean error."""
    from jax_privacy.matrix_factorization import buffered_toeplitz

    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        return buffered_toeplitz.optimize(n=rounds, min_sep=cycle,
                                          max_participations=participations(rounds, cycle),
                                          error="mean")


@functools.lru_cache(maxsize=16)
def blt_noise_stream(rounds: int, cycle: int = 1):
    """``C^{-1}`` of :func:`blt_strategy` as a jax_privacy ``StreamingMatrix`` in float32:
    ``init_multiply(shapes)`` gives the buffers, ``multiply_next(Z_t, buffers)`` returns
    ``((C^{-1} Z)_t, buffers)``."""
    blt = blt_strategy(rounds, cycle)
    with jax.ensure_compile_time_eval():  # concrete parameters even inside the round's trace
        f32 = blt.replace(buf_decay=jnp.asarray(np.asarray(blt.buf_decay), jnp.float32),
                          output_scale=jnp.asarray(np.asarray(blt.output_scale), jnp.float32))
        return f32.inverse_as_streaming_matrix()


@functools.lru_cache(maxsize=16)
def strategy(matrix: str, rounds: int, bands: int, cycle: int = 1) -> np.ndarray:
    """The strategy matrix ``C`` (float64 ``[T, T]``) of ``privacy.matrix`` for a site in every
    ``cycle``-th round (``cycle = 1``: every round; module docstring). ``tree`` and ``banded``
    do not depend on ``cycle`` (``banded`` needs ``bands <= cycle`` for ``sqrt(k)``
    sensitivity when ``cycle > 1``, checked by :func:`check_schema`); ``dense`` is
    ``dense.optimize(k cycle, epochs=k)``'s leading ``T x T`` block."""
    if matrix == "tree":
        return tree_strategy(rounds)
    from jax_privacy.matrix_factorization import banded, dense

    k = participations(rounds, cycle)
    # float64 as the library requires; concrete even when first asked inside a trace
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        if matrix == "banded":
            C = banded.optimize(rounds, bands=min(bands, rounds)).materialize()
        elif matrix == "blt":
            C = blt_strategy(rounds, cycle).materialize(rounds)
        else:
            C = dense.optimize(k * cycle, epochs=k)[:rounds, :rounds]
        return np.asarray(C, np.float64)


def cyclic_sensitivity(C: np.ndarray, cycle: int) -> float:
    """``sens(C)`` when a site takes part in the rounds ``g, g + b, ...`` of one group ``g`` of
    ``b = cycle``: ``sqrt(max_g sum_{i, j in P_g} |(C^T C)_ij|)`` (Choquette-Choo et al. 2023b,
    Eq. 5; exact when each ``(C^T C)_{P_g, P_g}`` is non-negative or diagonal), computed by
    jax_privacy's ``fixed_epoch_sensitivity_for_X`` on ``C^T C`` padded with zero rows and
    columns to ``k b`` rounds (the rounds past ``T`` that group ``g`` would have had add 0)."""
    from jax_privacy.matrix_factorization import sensitivity

    rounds = C.shape[0]
    k = participations(rounds, cycle)
    X = np.zeros((k * cycle, k * cycle))
    X[:rounds, :rounds] = C.T @ C
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        return float(sensitivity.fixed_epoch_sensitivity_for_X(jnp.asarray(X), k))


def min_sep_sensitivity(C: np.ndarray, cycle: int) -> float:
    """jax_privacy's ``get_min_sep_sensitivity_upper_bound(C, min_sep=cycle,
    max_participations=ceil(T / cycle))`` (Choquette-Choo et al. 2023b, Algorithm 4): a bound
    over every pattern with that separation, the cyclic ones among them."""
    from jax_privacy.matrix_factorization import sensitivity

    rounds = C.shape[0]
    with jax.enable_x64(True), jax.ensure_compile_time_eval():
        return float(sensitivity.get_min_sep_sensitivity_upper_bound(
            jnp.asarray(C), min_sep=cycle, max_participations=participations(rounds, cycle)))


@functools.lru_cache(maxsize=16)
def schema_sensitivity(matrix: str, rounds: int, bands: int, cycle: int = 1) -> float:
    """The accounted ``sens(C)``: every round (``cycle = 1``) the library's min-separation
    bound with separation 1 and ``T`` participations (exact: one pattern), cyclic
    :func:`cyclic_sensitivity`."""
    C = strategy(matrix, rounds, bands, cycle)
    return min_sep_sensitivity(C, 1) if cycle == 1 else cyclic_sensitivity(C, cycle)


def every_round_sensitivity(matrix: str, rounds: int, bands: int) -> float:
    """``sens(C)`` when one site takes part in all ``rounds`` rounds (jax_privacy)."""
    return schema_sensitivity(matrix, rounds, bands, 1)


def prefix_error(C: np.ndarray, sens: float) -> float:
    """Mean squared error of the ``T`` prefix sums per coordinate, per ``(z clip)^2``:
    ``sens^2 ||A C^{-1}||_F^2 / T`` (the noise ``sigma B Z`` with ``sigma = z clip sens``;
    Choquette-Choo et al. 2023a's total squared error divided by ``T``)."""
    rounds = C.shape[0]
    B = np.tril(np.ones((rounds, rounds))) @ np.linalg.inv(C)
    return float(sens**2 * np.sum(B**2) / rounds)


def error_table(rounds: int, cycles=(1, 4, 5), every_round_bands: int = 4) -> dict:
    """``{(cycle, name): prefix_error}`` for ``independent`` (``C = I``), ``tree``, ``banded``
    (``bands = cycle``, ``every_round_bands`` for ``cycle = 1``) and ``dense``: the table of
    the module docstring (``python -m fedbench.privacy.factorisation``)."""
    table = {}
    for cycle in cycles:
        bands = every_round_bands if cycle == 1 else cycle
        eye = np.eye(rounds)
        table[cycle, "independent"] = prefix_error(
            eye, min_sep_sensitivity(eye, 1) if cycle == 1 else cyclic_sensitivity(eye, cycle))
        for matrix in MATRICES:
            table[cycle, matrix] = prefix_error(strategy(matrix, rounds, bands, cycle),
                                                schema_sensitivity(matrix, rounds, bands, cycle))
    return table


if __name__ == "__main__":  # the error table of the module docstring
    _table = error_table(20)
    print("cycle  " + "  ".join(f"{n:>11}" for n in ("independent", *MATRICES)))
    for _cycle in (1, 4, 5):
        print(f"{_cycle:>5}  " + "  ".join(f"{_table[_cycle, n]:11.1f}"
                                         for n in ("independent", *MATRICES)))
