"""DP-FTRL (fedbench/privacy/dp_ftrl.py) against independent references.

* the tree factorisation against a binary tree built here from Kairouz et al. 2021 (every node
  of the dyadic tree over T rounds, the prefix ``[1, t]`` as the sum of the nodes of ``t``'s
  binary decomposition): ``A = B C`` and ``B`` is that 0/1 node selection; its
  single-participation sensitivity is ``sqrt(log2 T + 1)`` (T a power of two) and its
  every-round sensitivity ``sqrt(sum of the used nodes' squared sizes)``;
* the noise the model carries after ``r`` rounds is ``sigma (B Z)_r / n`` with ``Z`` the run's
  own draws and ``B = A C^{-1}`` computed here in NumPy, and its covariance over the model's
  coordinates is ``(sigma / n)^2 B B^T``;
* epsilon is the ``1/z``-GDP closed form (Dong, Roth, Su 2019) and calibration inverts it;
* a cohort smaller than the federation and unknown matrices are refused;
* cyclic participation (``privacy.participation=cyclic``, ``privacy.cycle=b``): every site
  takes part ``floor(T/b)`` or ``ceil(T/b)`` times exactly ``b`` rounds apart; the sensitivity
  of a banded ``C`` with ``bands <= b`` is ``sqrt(k)`` (unit columns), checked against the
  largest ``||C U||_F`` over every ``b``-separated pattern enumerated here (and the tree's and
  dense's over the ``b`` cyclic patterns); the prefix-sum error ``sens^2 ||A C^{-1}||_F^2 / T``
  of the optimised banded and dense ``C`` is below independent noise's ``k (T + 1) / 2`` at the
  same epsilon (the 1/z-GDP closed form, as every round); a run draws one group per round and
  carries ``sigma (B Z) / (n / b)``.

With noise 0 and an unbounded clip the mechanism equals FedAvg: tests/test_combinations.py
(every algorithm, from ``DPFTRL.identity``); checkpoint/resume bit-exact:
tests/test_checkpoint.py (case ``dp_ftrl``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import compose

from fedbench.errors import ConfigError
from fedbench.privacy import dp_ftrl, factorisation
from fedbench.run import build_simulator


def _kairouz_tree(T: int):
    """Every node (level l, index j) covering rounds j 2^l + 1 .. (j + 1) 2^l, as rows of
    ``C_full`` [nodes, T]; ``B_full`` [T, nodes] selects for prefix t the nodes of its binary
    decomposition (greedy: largest aligned blocks from round 1)."""
    nodes = [(l, j) for l in range(int(np.log2(T)) + 1) for j in range(T >> l)]
    C = np.array([[1.0 if j * 2**l <= s < (j + 1) * 2**l else 0.0 for s in range(T)]
                  for l, j in nodes])
    B = np.zeros((T, len(nodes)))
    for t in range(1, T + 1):
        start = 0
        for l in reversed(range(int(np.log2(T)) + 1)):
            if t - start >= 2**l:
                B[t - 1, nodes.index((l, start >> l))] = 1.0
                start += 2**l
        assert start == t
    return nodes, C, B


@pytest.mark.parametrize("T", [8, 16])
def test_tree_against_kairouz_binary_tree_and_its_sensitivity(T):
    from jax_privacy.matrix_factorization import sensitivity

    nodes, C_full, B_full = _kairouz_tree(T)
    A = np.tril(np.ones((T, T)))
    np.testing.assert_array_equal(B_full @ C_full, A)
    used = list(np.flatnonzero(B_full.any(0)))  # the nodes some prefix uses
    C = factorisation.tree_strategy(T)
    # The square tree is the used nodes, each placed at the round it completes.
    ends = [(j + 1) * 2**l - 1 for l, j in (nodes[i] for i in used)]
    np.testing.assert_array_equal(C[ends], C_full[used])
    # B = A C^{-1}: prefix t selects the nodes of its decomposition (columns by round).
    np.testing.assert_allclose(A @ np.linalg.inv(C), B_full[:, used][:, np.argsort(ends)],
                               atol=1e-12)
    # Kairouz et al. 2021: one participation touches log2(T) + 1 nodes.
    np.testing.assert_allclose(sensitivity.single_participation_sensitivity(C),
                               np.sqrt(np.log2(T) + 1), rtol=1e-6)
    # Every round: all used nodes, each contributing (its size)^2 (C^T C >= 0: exact).
    sizes = [2**nodes[i][0] for i in used]
    np.testing.assert_allclose(factorisation.every_round_sensitivity("tree", T, 4),
                               np.sqrt(np.sum(np.square(sizes))), rtol=1e-6)


def _run(matrix: str, z: float, clip: float, n: int, rounds: int, extra=(), cycle=None):
    cohort = n if cycle is None else n // cycle
    base = compose(["dataset=breast_cancer", "partition=iid", f"num_clients={n}",
                    f"clients_per_round={cohort}", f"rounds={rounds}", "model=mlp",
                    "model.hidden=[64]", "checkpoint_every=0", "lr=1e-9", *extra])
    privacy = {"name": "dp_ftrl", "matrix": matrix, "bands": 2, "clip": clip,
               "noise_multiplier": z, "target_epsilon": None, "delta": 1e-5, "accountant": "pld"}
    if cycle is not None:
        privacy.update(participation="cyclic", cycle=cycle)
    return base, privacy, build_simulator({**base, "privacy": privacy})


def _flat(params):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(params)])


@pytest.mark.parametrize("matrix", ["tree", "banded"])
def test_model_carries_the_prefix_sum_noise_B_Z_with_covariance_B_Bt(matrix):
    z, clip, n, rounds = 0.7, 0.5, 4, 4
    _, _, built = _run(matrix, z, clip, n, rounds)
    sim = built.sim
    state = sim.init()
    start, moved = _flat(state.params), []
    for _ in range(rounds):
        state = sim.run(state, 1)
        moved.append(_flat(state.params) - start)
    moved = np.stack(moved)  # [rounds, d]: cumulative noise after each round
    mech = built.privacy.mechanism
    C = (factorisation.tree_strategy(rounds) if matrix == "tree"
         else factorisation.strategy(matrix, rounds, 2))
    sens = factorisation.every_round_sensitivity(matrix, rounds, 2)
    sigma = z * clip * sens
    assert mech.stddev == pytest.approx(sigma)
    B = np.tril(np.ones((rounds, rounds))) @ np.linalg.inv(C)
    Z = np.stack([_flat(jax.tree.map(lambda b, i=i: b[i], state.dp_noise))
                  for i in range(rounds)])  # the run's own draws, [rounds, d]
    assert abs(Z.std() - 1) < 0.05 and abs(Z.mean()) < 0.05
    np.testing.assert_allclose(moved, sigma / n * (B @ Z), rtol=1e-4, atol=1e-5)
    # Covariance across ~2100 independent coordinates: entries within 5 standard errors.
    d = moved.shape[1]
    want = (sigma / n) ** 2 * B @ B.T
    got = moved @ moved.T / d
    se = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / d)
    assert np.all(np.abs(got - want) < 5 * se), (got, want)
    jax.clear_caches()


def _gdp_epsilon(mu: float, delta: float) -> float:
    """mu-GDP's epsilon at delta (Dong, Roth, Su 2019, Cor. 2.13), solved by bisection."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    return brentq(lambda e: norm.cdf(-e / mu + mu / 2)
                  - np.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0.0, 100.0)


def test_epsilon_is_the_gaussian_closed_form_and_calibration_inverts_it():
    z, n, rounds = 1.3, 4, 8
    base, privacy, built = _run("tree", z, 1.0, n, rounds)
    spent = built.privacy.report(rounds, np.full(n, rounds))["epsilon"]
    np.testing.assert_allclose(spent, _gdp_epsilon(1 / z, 1e-5), rtol=1e-3)
    assert dp_ftrl.calibrate(spent, 1e-5, "pld") == pytest.approx(z, rel=1e-3)
    calibrated = build_simulator({**base, "privacy": {**privacy, "noise_multiplier": None,
                                                      "target_epsilon": spent}})
    assert calibrated.privacy.noise_multiplier == pytest.approx(z, rel=1e-3)


def test_partial_participation_and_unknown_settings_are_refused():
    base, privacy, _ = _run("tree", 1.0, 1.0, 4, 4)
    with pytest.raises(ConfigError) as error:
        build_simulator({**base, "clients_per_round": 3, "privacy": privacy})
    assert error.value.key == "clients_per_round"
    for key, value in (("matrix", "toeplitz"), ("bands", 0), ("noise", "secure")):
        with pytest.raises(ConfigError) as error:
            build_simulator({**base, "privacy": {**privacy, key: value}})
        assert error.value.key == f"privacy.{key}"


def test_a_refused_algorithm_is_told_which_mechanism_refuses_it():
    from fedbench.algorithm import build_algorithm
    from fedbench.errors import ConfigError
    from fedbench.privacy.dp_ftrl import MECHANISM

    with pytest.raises(ConfigError) as err:
        MECHANISM.check_algorithm(build_algorithm({"name": "scaffold"}, 4))
    assert err.value.key == "algorithm.name" and "privacy=dp_ftrl" in str(err.value)
    assert "privacy=dp_client" not in str(err.value)


# --- Cyclic participation (Choquette-Choo et al. 2023a/b) ------------------------------------


@pytest.mark.parametrize("n,b,T", [(6, 3, 8), (8, 4, 10), (5, 5, 5), (4, 1, 3)])
def test_cyclic_groups_each_site_floor_or_ceil_T_over_b_times_b_rounds_apart(n, b, T):
    rounds_of = {i: [] for i in range(n)}
    for t in range(T):
        group = np.asarray(dp_ftrl.cyclic_group(t, n, b))
        assert len(group) == n // b and len(set(group.tolist())) == n // b
        for i in group.tolist():
            rounds_of[i].append(t)
    for rounds in rounds_of.values():
        assert len(rounds) in (T // b, -(-T // b))
        assert all(later - earlier == b for earlier, later in zip(rounds, rounds[1:]))
    assert max(len(r) for r in rounds_of.values()) == -(-T // b)  # k = ceil(T / b)


def _patterns(T: int, sep: int):
    """Every non-empty set of rounds in 0..T-1 whose members are at least ``sep`` apart."""
    def extend(start):
        for first in range(start, T):
            yield (first,)
            for rest in extend(first + sep):
                yield (first, *rest)
    return list(extend(0))


def _worst_pattern_norm(C: np.ndarray, patterns) -> tuple[float, tuple]:
    """max over patterns P of sup ||C[:, P] U||_F over U with unit rows, where the columns of
    ``C[:, P]`` are orthogonal (asserted), so that the sup is sqrt(sum of their squared norms)
    whatever U (one participation of norm 1 per round of P)."""
    best, worst = -1.0, None
    for P in patterns:
        G = C[:, P].T @ C[:, P]
        np.testing.assert_allclose(G - np.diag(np.diag(G)), 0, atol=1e-5)
        value = np.sqrt(np.trace(G))
        if value > best:
            best, worst = value, P
    return best, worst


@pytest.mark.parametrize("T,b", [(8, 2), (8, 3), (9, 3)])
def test_banded_sensitivity_with_bands_at_most_b_is_sqrt_k_by_brute_force(T, b):
    k = -(-T // b)
    C = factorisation.strategy("banded", T, b, b)
    assert np.all(np.triu(C, 1) == 0) and np.all(np.tril(C, -b) == 0)  # b bands
    np.testing.assert_allclose(np.linalg.norm(C, axis=0), 1.0, rtol=1e-5)  # unit columns
    brute, worst = _worst_pattern_norm(C, _patterns(T, b))  # every b-separated pattern
    assert len(worst) == k
    np.testing.assert_allclose(brute, np.sqrt(k), rtol=1e-5)
    # The sup is attained by any unit contributions: e.g. random ones.
    U = np.random.default_rng(0).normal(size=(len(worst), 5))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(C[:, list(worst)] @ U), np.sqrt(k), rtol=1e-5)
    # The module's accounted sensitivity and jax_privacy's b-min-separation bound agree.
    np.testing.assert_allclose(factorisation.schema_sensitivity("banded", T, b, b), np.sqrt(k),
                               rtol=1e-5)
    np.testing.assert_allclose(factorisation.min_sep_sensitivity(C, b), np.sqrt(k), rtol=1e-5)


@pytest.mark.parametrize("matrix", ["tree", "dense"])
def test_cyclic_sensitivity_is_the_worst_of_the_b_cyclic_patterns(matrix):
    T, b = 8, 2  # b divides T: dense is optimised for exactly these patterns
    C = factorisation.strategy(matrix, T, 2, b)
    X = C.T @ C
    cyclic = [tuple(range(g, T, b)) for g in range(b)]
    if matrix == "tree":  # 0/1 C: X >= 0, the worst U is all equal (sqrt of the block's sum)
        want = max(np.sqrt(X[np.ix_(P, P)].sum()) for P in cyclic)
    else:  # fixed-epoch optimum: a group's columns are orthogonal (Choquette-Choo 2023a)
        want, _ = _worst_pattern_norm(C, cyclic)
    np.testing.assert_allclose(factorisation.schema_sensitivity(matrix, T, 2, b), want, rtol=1e-5)
    # The library's b-min-separation bound allows more patterns: never below.
    assert factorisation.min_sep_sensitivity(C, b) >= want * (1 - 1e-6)


def _mse(C: np.ndarray, sens: float) -> float:
    T = C.shape[0]
    B = np.tril(np.ones((T, T))) @ np.linalg.inv(C)
    return sens**2 * np.sum(B**2) / T


@pytest.mark.parametrize("b", [4, 5])
def test_cyclic_correlated_noise_has_lower_prefix_error_than_independent(b):
    T = 20
    k = -(-T // b)
    independent = k * (T + 1) / 2  # C = I: sens sqrt(k), ||A||_F^2 = T (T + 1) / 2
    got = {m: _mse(factorisation.strategy(m, T, b, b), factorisation.schema_sensitivity(m, T, b, b))
           for m in ("banded", "blt", "dense")}
    assert all(got[m] < independent / 2 for m in got), got
    # dense: optimal for these patterns
    assert got["dense"] <= got["banded"] * 1.001 and got["dense"] <= got["blt"] * 1.001, got
    # The module's error and the numbers its docstring and docs/privacy.md record.
    table = {4: (52.5, 21.0, 24.1, 19.4), 5: (42.0, 15.4, 17.6, 14.3)}[b]
    np.testing.assert_allclose((independent, got["banded"], got["blt"], got["dense"]), table,
                               atol=0.06)
    eye = np.eye(T)
    assert factorisation.prefix_error(eye, factorisation.cyclic_sensitivity(eye, b)) == (
        pytest.approx(independent))


def test_cyclic_epsilon_is_the_gaussian_closed_form_and_sigma_uses_the_cyclic_sensitivity():
    z, n, b, rounds = 1.3, 4, 2, 6
    _, _, built = _run("banded", z, 1.0, n, rounds, cycle=b)
    mech = built.privacy.mechanism
    assert mech.cohort == n // b
    assert mech.stddev == pytest.approx(z * np.sqrt(rounds // b), rel=1e-5)
    spent = built.privacy.report(rounds, np.full(n, rounds // b))["epsilon"]
    np.testing.assert_allclose(spent, _gdp_epsilon(1 / z, 1e-5), rtol=1e-3)


def test_cyclic_settings_are_refused_with_the_keys_named():
    base, privacy, _ = _run("tree", 1.0, 1.0, 4, 4, cycle=2)
    cases = [
        ({"clients_per_round": 4}, {}, "clients_per_round"),  # not one group
        ({"clients_per_round": 1}, {"cycle": 3}, "privacy.cycle"),  # 4 sites, 3 groups
        ({"clients_per_round": 1}, {"cycle": 4, "matrix": "banded", "bands": 5},
         "privacy.bands"),  # bands > b
        ({}, {"cycle": None}, "privacy.cycle"),
        ({}, {"participation": "poisson"}, "privacy.participation"),
        ({"clients_per_round": 4}, {"participation": "every_round"}, "privacy.cycle"),
        ({"num_clients": 8, "clients_per_round": 1}, {"cycle": 8}, "privacy.cycle"),  # > T
    ]
    for top, own, key in cases:
        with pytest.raises(ConfigError) as error:
            build_simulator({**base, **top, "privacy": {**privacy, **own}})
        assert error.value.key == key, (top, own, error.value)


@pytest.mark.parametrize("matrix", ["banded", "blt"])
def test_cyclic_run_takes_one_group_per_round_and_carries_the_prefix_sum_noise(matrix):
    z, clip, n, b, rounds = 0.7, 0.5, 4, 2, 4
    _, _, built = _run(matrix, z, clip, n, rounds, cycle=b)
    sim = built.sim
    state = sim.init()
    start, moved = _flat(state.params), []
    for t in range(rounds):
        before = np.asarray(state.participation)
        state = sim.run(state, 1)
        took_part = np.asarray(state.participation) - before
        np.testing.assert_array_equal(took_part, (np.arange(n) % b == t % b).astype(int))
        moved.append(_flat(state.params) - start)
    np.testing.assert_array_equal(np.asarray(state.participation), rounds // b)
    C = factorisation.strategy(matrix, rounds, 2, b)
    if matrix == "banded":
        sigma = z * clip * np.sqrt(rounds // b)  # banded, bands <= b: sqrt(k)
    else:  # C >= 0, so C^T C >= 0: the worst cyclic group's sum of its block (Eq. 5)
        X = C.T @ C
        sigma = z * clip * max(np.sqrt(X[np.ix_(P, P)].sum())
                               for P in (range(g, rounds, b) for g in range(b)))
    assert built.privacy.mechanism.stddev == pytest.approx(sigma, rel=1e-5)
    B = np.tril(np.ones((rounds, rounds))) @ np.linalg.inv(C)
    moved = np.stack(moved)
    if matrix == "blt":  # streamed: the draws are not kept, so their covariance is checked
        d = moved.shape[1]
        want = (sigma / (n // b)) ** 2 * B @ B.T
        got = moved @ moved.T / d
        se = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / d)
        assert np.all(np.abs(got - want) < 5 * se), (got, want)
    else:
        Z = np.stack([_flat(jax.tree.map(lambda x, i=i: x[i], state.dp_noise))
                      for i in range(rounds)])
        np.testing.assert_allclose(moved, sigma / (n // b) * (B @ Z), rtol=1e-4, atol=1e-5)
    jax.clear_caches()


@pytest.mark.parametrize("T, b", [(12, 3), (20, 4), (16, 1)])
def test_streamed_blt_noise_is_the_materialised_inverse_times_the_draws(T, b):
    """The BLT's streaming state (a few buffers, float32) reproduces ``C^{-1} Z`` computed here
    from the materialised float64 ``C`` with NumPy, row by row, and holds no per-round draw."""
    rng = np.random.default_rng(T + b)
    Z = rng.normal(size=(T, 7, 3))
    stream = factorisation.blt_noise_stream(T, b)
    state = stream.init_multiply(jax.ShapeDtypeStruct((7, 3), np.float32))
    assert state.shape[0] < T  # buffers, not rounds
    rows = []
    for t in range(T):
        row, state = stream.multiply_next(np.asarray(Z[t], np.float32), state)
        rows.append(np.asarray(row, np.float64))
    C = factorisation.strategy("blt", T, 4, b)
    want = np.linalg.solve(C, Z.reshape(T, -1)).reshape(Z.shape)
    np.testing.assert_allclose(np.stack(rows), want, rtol=1e-4, atol=1e-5)


def test_blt_is_the_buffered_toeplitz_closed_form_and_its_cyclic_sensitivity_the_worst_group():
    """McMahan, Xu, Zhang et al. 2024: a BLT's C is lower-triangular Toeplitz with ones on the
    diagonal and C_ij = sum_l w_l theta_l^(i - j - 1) below it, for the buffers' decays theta
    and output scales w; with C >= 0 the cyclic sensitivity is the worst group's
    sqrt(sum of its block of C^T C) (Choquette-Choo et al. 2023b, Eq. 5)."""
    from jax_privacy.matrix_factorization import buffered_toeplitz

    T, b = 12, 3
    k = -(-T // b)
    C = factorisation.strategy("blt", T, 4, b)
    with jax.enable_x64(True):  # float64, as the library requires
        blt = buffered_toeplitz.optimize(n=T, min_sep=b, max_participations=k, error="mean")
    theta, w = np.asarray(blt.buf_decay), np.asarray(blt.output_scale)
    assert len(theta) >= 1 and np.all((theta > 0) & (theta < 1)) and np.all(w > 0)
    want = np.eye(T)
    for i in range(T):
        for j in range(i):
            want[i, j] = np.sum(w * theta ** (i - j - 1))
    np.testing.assert_allclose(C, want, rtol=1e-6, atol=1e-9)
    X = C.T @ C
    groups = [list(range(g, T, b)) for g in range(b)]
    worst = max(np.sqrt(X[np.ix_(P, P)].sum()) for P in groups)
    assert factorisation.schema_sensitivity("blt", T, 4, b) == pytest.approx(worst, rel=1e-6)
    assert worst > np.sqrt(k)  # correlated columns: above independent noise's sqrt(k)
    assert factorisation.min_sep_sensitivity(C, b) >= worst * (1 - 1e-6)
    # Every site every round: the optimum the library finds is independent noise.
    np.testing.assert_allclose(factorisation.strategy("blt", 8, 4, 1), np.eye(8), atol=1e-6)
