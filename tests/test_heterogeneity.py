"""SCAFFOLD, FedNova and stragglers against sequential references and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.model import MLP
from reference import run_reference
from fedbench.simulator import Settings, Simulator, Stragglers, straggler_plan


def close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=2e-5)


def sim_for(data, algorithm_cfg, axis="vmap", stragglers=None, model=None, **kw):
    settings = Settings(
        clients_per_round=kw.get("clients_per_round", 3),
        local_epochs=kw.get("local_epochs", 3),
        batch_size=kw.get("batch_size", 4),
        lr=kw.get("lr", 0.1),
        client_axis=axis,
    )
    return Simulator(model or MLP(data.num_classes, (8,)), build_algorithm(algorithm_cfg), data,
                     settings, seed=0, stragglers=stragglers)


CASES = [
    ({"name": "scaffold"}, None),
    ({"name": "fednova"}, None),
    ({"name": "fedavg"}, Stragglers(0.5, "drop")),
    ({"name": "fedprox", "mu": 0.3}, Stragglers(0.7, "partial")),
    ({"name": "fednova"}, Stragglers(0.7, "partial")),
    ({"name": "scaffold"}, Stragglers(0.4, "partial")),
]


@pytest.mark.parametrize("axis", ["vmap", "map"])
@pytest.mark.parametrize("algorithm_cfg,stragglers", CASES,
                         ids=lambda c: getattr(c, "policy", None) or (c or {}).get("name", "none"))
def test_vectorised_equals_sequential_loop(uneven_data, algorithm_cfg, stragglers, axis):
    sim = sim_for(uneven_data, algorithm_cfg, axis, stragglers)
    state = sim.init()
    expected, history = run_reference(
        sim.apply_fn, sim.algorithm, uneven_data, state.params, state.key, 4,
        clients_per_round=3, lr=0.1, local_epochs=3, batch_size=4, stragglers=stragglers,
    )
    got = sim.run(state, 4)
    close(got.params, expected)
    if sim.algorithm.name == "scaffold":
        server_c, client_c = history[-1]["controls"]
        close(got.controls[0], server_c)
        for c in range(uneven_data.num_clients):
            ref = client_c.get(c)
            if ref is None:  # never reported: still zero
                assert all(float(jnp.abs(x[c]).max()) == 0 for x in jax.tree.leaves(got.controls[1]))
            else:
                close(jax.tree.map(lambda x: x[c], got.controls[1]), ref, atol=1e-4)


def test_scaffold_with_zero_controls_and_one_local_step_is_fedavg(uneven_data):
    kw = dict(local_epochs=1, batch_size=64, clients_per_round=4)
    # FedAvg weights deltas by examples: compare with SCAFFOLD's `examples` weighting (its
    # default, `uniform`, is the paper's, Karimireddy et al. 2020, Algorithm 1).
    scaffold, fedavg = sim_for(uneven_data, {"name": "scaffold", "weighting": "examples"}, **kw), sim_for(
        uneven_data, {"name": "fedavg"}, **kw)
    a, b = scaffold.run(scaffold.init(), 1), fedavg.run(fedavg.init(), 1)
    close(a.params, b.params, atol=1e-7)
    # One full-batch step from x: c_i becomes client i's full gradient at x (option II).
    grads_norm = sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(a.controls[1]))
    assert grads_norm > 0


def test_fednova_equals_fedavg_when_all_clients_take_the_same_steps():
    data = make_uneven_data(sizes=(16, 16, 16, 16, 16), seed=2)
    nova, avg = sim_for(data, {"name": "fednova"}), sim_for(data, {"name": "fedavg"})
    close(nova.run(nova.init(), 3).params, avg.run(avg.init(), 3).params, atol=1e-6)


def test_fednova_differs_from_fedavg_when_steps_differ(uneven_data):
    nova, avg = sim_for(uneven_data, {"name": "fednova"}), sim_for(uneven_data, {"name": "fedavg"})
    a, b = nova.run(nova.init(), 2).params, avg.run(avg.init(), 2).params
    assert max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) > 1e-4


def test_zero_stragglers_change_nothing(uneven_data):
    for policy in ("drop", "partial"):
        with_, without = (sim_for(uneven_data, {"name": "fedavg"}, stragglers=Stragglers(0.0, policy)),
                          sim_for(uneven_data, {"name": "fedavg"}))
        for x, y in zip(jax.tree.leaves(with_.run(with_.init(), 3).params),
                        jax.tree.leaves(without.run(without.init(), 3).params)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_all_stragglers_dropped_means_no_update(uneven_data):
    sim = sim_for(uneven_data, {"name": "fedavg"}, stragglers=Stragglers(1.0, "drop"))
    state = sim.init()
    for x, y in zip(jax.tree.leaves(sim.run(state, 2).params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_straggler_plan_counts_and_ranges():
    for r in range(20):
        key = jax.random.PRNGKey(r)
        epochs, keep = straggler_plan(key, 10, 20, Stragglers(0.9, "partial"))
        epochs = np.asarray(epochs)
        assert keep.all() and (epochs == 20).sum() == 1
        assert ((epochs >= 1) & (epochs <= 19)).sum() == 9
        e2, keep2 = straggler_plan(key, 10, 20, Stragglers(0.9, "drop"))
        assert int((~np.asarray(keep2)).sum()) == 9 and (np.asarray(e2) == 20).all()
        # The same key marks the same clients under both policies (same stragglers for every
        # algorithm given the seed).
        np.testing.assert_array_equal(epochs < 20, ~np.asarray(keep2))


def test_partial_epochs_are_uniform_over_one_to_e_minus_one():
    draws = np.concatenate([
        np.asarray(straggler_plan(jax.random.PRNGKey(r), 10, 5, Stragglers(1.0, "partial"))[0])
        for r in range(300)
    ])
    counts = np.bincount(draws, minlength=5)[1:5]
    assert counts.sum() == 3000
    # Uniform over {1, 2, 3, 4}: 750 each; binomial sd about 24.
    assert np.all(np.abs(counts - 750) < 5 * 24)
