"""Site contributions (fedbench/contribution.py, #17 item 1).

Independent expectations: Shapley values from the average over all n! join orders (a
formula other than the subset-weighted sum the module uses), efficiency
(``sum phi = v(N) - v(empty)``), symmetry of a site holding a copy of another's data, a site with
random labels worth about nothing, exact against Monte-Carlo within its standard error, and a
one-site sub-federation against that site trained alone in a plain loop.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import compose

from fedbench.algorithm import build_algorithm
from fedbench.contribution import (
    Coalition,
    all_coalitions,
    coalition_values,
    leave_one_out,
    shapley_exact,
    tmc_shapley,
)
from fedbench.contribution_cli import main
from fedbench.dataset.federated import from_client_arrays
from fedbench.errors import ConfigError
from fedbench.model import MLP
from fedbench.simulator import Settings, Simulator


def by_orders(values, n):
    """Shapley values as the mean marginal contribution over every join order."""
    phi = np.zeros(n)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        before = Coalition()
        for i in order:
            phi[i] += values[before | {i}] - values[before]
            before = before | {i}
    return phi / len(orders)


def test_exact_shapley_is_the_mean_marginal_over_all_orders():
    rng = np.random.default_rng(0)
    values = {c: float(rng.normal()) for c in all_coalitions(5)}
    np.testing.assert_allclose(shapley_exact(values, 5), by_orders(values, 5), atol=1e-12)
    everyone = Coalition(range(5))
    np.testing.assert_allclose(leave_one_out(values, 5),
                               [values[everyone] - values[everyone - {i}] for i in range(5)])


def sites(copy_of=None, random_labels=None, n=6, size=40, seed=0):
    """``n`` sites with one linear labelling; site ``copy_of[1]`` holds site ``copy_of[0]``'s
    data; site ``random_labels`` has its training labels drawn at random."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 3))
    xs, ys, txs, tys = [], [], [], []
    for i in range(n):
        x = rng.normal(size=(size, 4)).astype(np.float32)
        y = np.argmax(x @ w, axis=1).astype(np.int32)
        if i == random_labels:
            y = rng.integers(0, 3, size).astype(np.int32)
        xs.append(x)
        ys.append(y)
        tx = rng.normal(size=(size, 4)).astype(np.float32)
        txs.append(tx)
        tys.append(np.argmax(tx @ w, axis=1).astype(np.int32))
    if copy_of is not None:
        xs[copy_of[1]], ys[copy_of[1]] = xs[copy_of[0]].copy(), ys[copy_of[0]].copy()
    return from_client_arrays(xs, ys, txs, tys, 3)


def simulator(data, cpr):
    # One full-batch step per round: each site's update is deterministic, so sampling every
    # member each round leaves no training noise between symmetric sites.
    settings = Settings(clients_per_round=cpr, local_epochs=1, batch_size=64, lr=0.5,
                        client_axis="map")
    return Simulator(MLP(3, (8,)), build_algorithm({"name": "fedavg"}, cpr), data, settings,
                     seed=0)


def exact(data, n, rounds=8):
    sim = simulator(data, n)
    coalitions = all_coalitions(n)
    values = dict(zip(coalitions, coalition_values(sim, coalitions, rounds, [0])))
    return values, shapley_exact(values, n)


def test_values_add_up_and_a_copied_site_is_worth_the_same():
    values, phi = exact(sites(copy_of=(0, 3), n=4), 4)
    everyone = Coalition(range(4))
    assert phi.sum() == pytest.approx(values[everyone] - values[Coalition()], abs=1e-9)
    assert values[everyone] > values[Coalition()] + 0.3  # the federation learns
    assert phi[0] == pytest.approx(phi[3], abs=1e-3)  # symmetry


def test_a_site_with_random_labels_adds_about_nothing():
    _, phi = exact(sites(random_labels=2, n=4), 4)
    honest = np.delete(phi, 2)
    assert phi[2] < 0.25 * honest.min()


def test_a_one_site_coalition_is_that_site_trained_alone():
    data = sites(n=4)
    sim = simulator(data, 4)
    (v,) = coalition_values(sim, [Coalition({1})], 3, [0])
    # Site 1 alone: three full-batch SGD steps from the same initial model, by hand.
    import jax
    import jax.numpy as jnp
    import optax

    params = sim.init().params
    x, y = data.client_train(1)
    for _ in range(3):
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            sim.apply_fn(p, jnp.asarray(x)), jnp.asarray(y)).mean())(params)
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    logits = sim.apply_fn(params, data.pooled_test_x)
    expected = float(jnp.mean(jnp.argmax(logits, -1) == data.pooled_test_y))
    assert v == pytest.approx(expected, abs=1e-6)


def test_monte_carlo_agrees_with_exact_on_six_sites():
    values, phi = exact(sites(n=6, seed=1), 6, rounds=5)
    calls = []

    def evaluate(coalitions):  # the exact table: tests the estimator, not training noise
        calls.append(len(coalitions))
        return [values[c] for c in coalitions]

    est, stderr, seen = tmc_shapley(evaluate, 6, permutations=200, tolerance=0.0, seed=3)
    assert np.all(np.abs(est - phi) <= 4 * stderr + 1e-9)
    assert set(seen) <= set(values) and max(calls) > 1  # prefixes batched across orders
    # Truncation skips prefixes once v(prefix) is within tolerance of v(N).
    _, _, few = tmc_shapley(evaluate, 6, permutations=200, tolerance=0.05, seed=3)
    assert len(few) < len(seen)


def test_the_command_writes_shapley_and_leave_one_out(tmp_path, capsys):
    code = main(["dataset=tcga_brca", "rounds=1", "local_steps=5", "--method", "exact",
                 "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "contribution.json").read_text())
    assert result["sites"] == 6 and result["coalitions_trained"] == 2**6
    assert sum(result["shapley"]) == pytest.approx(result["v_all"] - result["v_empty"])
    out = capsys.readouterr().out
    assert "v(all)" in out
    # its stages, before the work they announce (nothing silent for minutes)
    assert "fedbench-contribution: building the federation" in out
    assert "fedbench-contribution: training 64 coalitions x 1 seed(s), 1 rounds each" in out


@pytest.mark.parametrize("overrides, key", [
    (["privacy=dp_client"], "privacy.name"),
    (["algorithm=fedbuff"], "members"),
])
def test_contributions_refuse_what_they_cannot_measure(overrides, key):
    from fedbench.contribution import contribution

    with pytest.raises(ConfigError) as err:
        contribution(compose(["rounds=1"] + overrides), method="loo")
    assert err.value.key == key
