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
* a cohort smaller than the federation and unknown matrices are refused.

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
from fedbench.privacy import dp_ftrl
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
    C = dp_ftrl.tree_strategy(T)
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
    np.testing.assert_allclose(dp_ftrl.every_round_sensitivity("tree", T, 4),
                               np.sqrt(np.sum(np.square(sizes))), rtol=1e-6)


def _run(matrix: str, z: float, clip: float, n: int, rounds: int, extra=()):
    base = compose(["dataset=breast_cancer", "partition=iid", f"num_clients={n}",
                    f"clients_per_round={n}", f"rounds={rounds}", "model=mlp",
                    "model.hidden=[64]", "checkpoint_every=0", "lr=1e-9", *extra])
    privacy = {"name": "dp_ftrl", "matrix": matrix, "bands": 2, "clip": clip,
               "noise_multiplier": z, "target_epsilon": None, "delta": 1e-5, "accountant": "pld"}
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
    C = dp_ftrl.tree_strategy(rounds) if matrix == "tree" else dp_ftrl.strategy(matrix, rounds, 2)
    sens = dp_ftrl.every_round_sensitivity(matrix, rounds, 2)
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
    for key, value in (("matrix", "blt"), ("bands", 0), ("noise", "secure")):
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
