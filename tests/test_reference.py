"""The sequential reference loop is independent of the code it checks (issue "Results you can
trust", item 6), and SCAFFOLD averages as its paper does (item 7).

Independent expectations: the reference's imports (read from its source), the reference run
with every function and optimiser of the algorithm object removed (only its name and settings
left), and per-client SGD deltas averaged by hand.
"""

from __future__ import annotations

import ast
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.dataset.federated import from_client_arrays
from fedbench.errors import ConfigError
from fedbench.model import MLP
from reference import client_sgd, run_reference, straggler_draw
from fedbench.simulator import Settings, Simulator, Stragglers, straggler_plan


def close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=2e-5)


def sim_for(data, cfg, stragglers=None, clients_per_round=3, local_epochs=2, axis="map"):
    settings = Settings(clients_per_round=clients_per_round, local_epochs=local_epochs,
                        batch_size=4, lr=0.1, client_axis=axis)
    return Simulator(MLP(data.num_classes, (8,)), build_algorithm(cfg), data, settings, seed=0,
                     stragglers=stragglers)


def test_reference_imports_nothing_it_checks():
    tree = ast.parse((REPO / "tests" / "reference.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedbench"):
            imported |= {(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("fedbench") for a in node.names)
    # Only the types of its arguments: the algorithm's name and settings, the client data.
    assert imported == {("fedbench.algorithm", "Algorithm"),
                        ("fedbench.dataset.federated", "FederatedData")}
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attributes & {"server_optimizer", "aggregate", "server_update", "client_finish",
                             "grad_adjust", "client_context"}


def bare(algorithm):
    """The algorithm with nothing but its name, kind and settings."""
    return dataclasses.replace(
        algorithm, server_optimizer=None, grad_adjust=None, client_state=None,
        server_state=None, client_context=None, client_finish=None, aggregate=None,
        server_update=None,
    )


CASES = [
    ({"name": "fedadam", "server_lr": 0.1, "beta1": 0.5, "beta2": 0.9, "tau": 0.01}, None),
    ({"name": "fedyogi", "server_lr": 0.1, "beta1": 0.5, "beta2": 0.9, "tau": 0.01}, None),
    ({"name": "fedadagrad", "server_lr": 0.2, "tau": 0.05}, None),
    ({"name": "fedavg"}, Stragglers(0.5, "drop")),
    ({"name": "fedprox", "mu": 0.3}, Stragglers(0.7, "partial")),
    ({"name": "fednova", "server_lr": 0.5}, Stragglers(0.7, "partial")),
    ({"name": "scaffold", "server_lr": 0.5, "weighting": "examples"}, None),
    ({"name": "scaffold", "server_lr": 0.5}, Stragglers(0.4, "drop")),
    ({"name": "fedavgm", "server_lr": 0.5, "momentum": 0.5}, None),
    ({"name": "fedexp", "epsilon": 0.001}, None),
    ({"name": "fedexp", "epsilon": 0.001}, Stragglers(0.5, "drop")),
    ({"name": "qffl", "q": 2.0}, None),
    ({"name": "qffl", "q": 0.0}, Stragglers(0.5, "drop")),
]


@pytest.mark.parametrize("cfg,stragglers", CASES,
                         ids=lambda c: getattr(c, "policy", None) or (c or {}).get("name", "none"))
def test_reference_from_name_and_settings_alone_equals_the_simulator(uneven_data, cfg, stragglers):
    sim = sim_for(uneven_data, cfg, stragglers)
    state = sim.init()
    expected, history = run_reference(
        sim.apply_fn, bare(sim.algorithm), uneven_data, state.params, state.key, 3,
        clients_per_round=3, lr=0.1, local_epochs=2, batch_size=4, stragglers=stragglers,
    )
    got = sim.run(state, 3)
    close(got.params, expected)
    if cfg["name"] == "scaffold":
        close(got.controls[0], history[-1]["controls"][0])


def test_reference_straggler_draw_matches_the_simulators():
    for r in range(10):
        key = jax.random.PRNGKey(r)
        for policy in ("drop", "partial"):
            stragglers = Stragglers(0.6, policy)
            epochs, keep = straggler_plan(key, 5, 4, stragglers)
            ref_epochs, ref_keep = straggler_draw(key, 5, 4, stragglers)
            assert list(np.asarray(epochs)) == ref_epochs
            assert list(np.asarray(keep)) == ref_keep


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
def test_scaffold_model_update_averages_as_configured(weighting):
    """Round 1 (all controls zero, so local SGD is FedAvg's): SCAFFOLD's model moves by
    ``server_lr`` times the uniform mean of the deltas (Karimireddy et al. 2020, Algorithm 1,
    line 16: ``1/|S| sum (y_i - x)``), or with ``weighting: examples`` their example-weighted
    mean; the server control moves by ``sum dc_i / N`` either way (line 17)."""
    data = make_uneven_data(sizes=(5, 40, 12), seed=3)
    cfg = {"name": "scaffold", "server_lr": 0.5}
    if weighting == "examples":
        cfg["weighting"] = "examples"
    sim = sim_for(data, cfg, clients_per_round=3, local_epochs=1)
    assert sim.algorithm.settings["weighting"] == weighting
    state = sim.init()
    _, clients_key = jax.random.split(jax.random.fold_in(state.key, 0))
    sample_key, _ = jax.random.split(jax.random.fold_in(state.key, 0))
    ids = [int(i) for i in jax.random.choice(sample_key, 3, (3,), replace=False)]
    keys = jax.random.split(clients_key, 3)
    deltas, sizes, dcs = [], [], []
    for key, c in zip(keys, ids):
        x, y = data.client_train(c)
        local, steps = client_sgd(sim.apply_fn, state.params, x, y, key, lr=0.1,
                                  local_epochs=1, batch_size=4)
        delta = jax.tree.map(jnp.subtract, local, state.params)
        deltas.append(delta)
        sizes.append(len(y))
        dcs.append(jax.tree.map(lambda d, k=steps: -d / (k * 0.1), delta))  # c = 0
    coef = [1 / 3] * 3 if weighting == "uniform" else [n / sum(sizes) for n in sizes]
    other = [n / sum(sizes) for n in sizes] if weighting == "uniform" else [1 / 3] * 3
    mean = jax.tree.map(lambda *d: sum(a * x for a, x in zip(coef, d)), *deltas)
    wrong = jax.tree.map(lambda *d: sum(a * x for a, x in zip(other, d)), *deltas)
    got = sim.run(state, 1)
    moved = jax.tree.map(jnp.subtract, got.params, state.params)
    close(moved, jax.tree.map(lambda m: 0.5 * m, mean), atol=1e-6)
    gap = max(float(jnp.abs(a - 0.5 * b).max())
              for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(wrong)))
    assert gap > 1e-3  # the two weightings really differ here
    close(got.controls[0], jax.tree.map(lambda *d: sum(d) / 3, *dcs), atol=1e-5)


def test_scaffold_weighting_is_checked():
    assert build_algorithm({"name": "scaffold"}).settings["weighting"] == "uniform"
    with pytest.raises(ConfigError) as err:
        build_algorithm({"name": "scaffold", "weighting": "size"})
    assert err.value.key == "algorithm.weighting"


def test_fedexp_extrapolates_where_the_clients_disagree_as_its_reference():
    """FedExP's eta_g exceeds 1 only when the clients' deltas disagree (sum p_i ||d_i||^2 > 2
    ||Delta||^2): clients that each hold one class pull the output layer apart, and the
    simulator must equal the reference there, with eta_g > 1 in every round."""
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(12, 4)).astype(np.float32) for _ in range(3)]
    ys = [np.full(12, c, np.int32) for c in range(3)]  # client c holds class c only
    data = from_client_arrays(xs, ys, [x[:3] for x in xs], [y[:3] for y in ys], 3)
    cfg = {"name": "fedexp", "epsilon": 0.001}
    sim = sim_for(data, cfg)
    state = sim.init()
    expected, history = run_reference(
        sim.apply_fn, bare(sim.algorithm), data, state.params, state.key, 3,
        clients_per_round=3, lr=0.1, local_epochs=2, batch_size=4)
    assert min(h["eta_g"] for h in history) > 1.2, [h["eta_g"] for h in history]
    close(sim.run(state, 3).params, expected)
    # eta_g = 1 (FedAvg) would land elsewhere: the check can fail.
    fedavg, _ = run_reference(
        sim.apply_fn, bare(build_algorithm({"name": "fedavg"})), data, state.params, state.key,
        3, clients_per_round=3, lr=0.1, local_epochs=2, batch_size=4)
    with pytest.raises(AssertionError):
        close(expected, fedavg)
