"""The vectorised simulator against independent references (sequential loops, closed forms)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import compose, make_uneven_data

from fedbench.algorithm import build_algorithm, scale_by_fedopt
from fedbench.dataset.federated import from_client_arrays
from fedbench.model import MLP, LogReg
from reference import client_sgd, run_reference
from fedbench.results import CompileCounter
from fedbench.run import run_experiment
from fedbench.simulator import Settings, Simulator, make_local_update


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def make_sim(data, algorithm_cfg, model=None, axis="vmap", **kw):
    settings = Settings(
        clients_per_round=kw.get("clients_per_round", 3),
        local_epochs=kw.get("local_epochs", 2),
        batch_size=kw.get("batch_size", 4),
        lr=kw.get("lr", 0.1),
        client_axis=axis,
        unroll=kw.get("unroll", 1),
        client_chunk=kw.get("client_chunk"),
    )
    model = model or MLP(data.num_classes, (8,))
    return Simulator(model, build_algorithm(algorithm_cfg), data, settings, seed=kw.get("seed", 0))


ALGORITHMS = [
    {"name": "fedavg"},
    {"name": "fedprox", "mu": 0.5},
    {"name": "fedsgd"},
    {"name": "fedadam", "server_lr": 0.05},
    {"name": "fedyogi", "server_lr": 0.05},
    {"name": "fedadagrad", "server_lr": 0.05},
]


@pytest.mark.parametrize("axis", ["vmap", "map"])
@pytest.mark.parametrize("algorithm_cfg", ALGORITHMS, ids=lambda c: c["name"])
def test_vectorised_equals_sequential_loop(uneven_data, algorithm_cfg, axis):
    sim = make_sim(uneven_data, algorithm_cfg, axis=axis)
    state = sim.init()
    expected, history = run_reference(
        sim.apply_fn, sim.algorithm, uneven_data, state.params, state.key, 3,
        clients_per_round=3, lr=0.1, local_epochs=2, batch_size=4,
    )
    got = sim.run(state, 3)
    assert int(got.round) == 3
    assert_trees_close(got.params, expected)
    # The model moved: the comparison is not between two untouched initialisations.
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(got.params), jax.tree.leaves(state.params)))
    assert moved > 1e-3
    for rnd in history:
        assert len(set(rnd["ids"])) == 3  # without replacement


@pytest.mark.parametrize("axis", ["vmap", "map"])
def test_unrolled_step_loop_equals_sequential_loop(uneven_data, axis):
    sim = make_sim(uneven_data, {"name": "fedprox", "mu": 0.1}, axis=axis, unroll=3)
    state = sim.init()
    expected, _ = run_reference(
        sim.apply_fn, sim.algorithm, uneven_data, state.params, state.key, 2,
        clients_per_round=3, lr=0.1, local_epochs=2, batch_size=4,
    )
    assert_trees_close(sim.run(state, 2).params, expected)


@pytest.mark.parametrize("axis", ["vmap", "map"])
def test_local_baseline_equals_sequential_loop(uneven_data, axis):
    sim = make_sim(uneven_data, {"name": "local"}, axis=axis)
    state = sim.init()
    per_client = [jax.tree.map(lambda p: p[c], state.params) for c in range(uneven_data.num_clients)]
    expected, _ = run_reference(
        sim.apply_fn, sim.algorithm, uneven_data, per_client, state.key, 2,
        clients_per_round=3, lr=0.1, local_epochs=2, batch_size=4,
    )
    got = sim.run(state, 2)
    for c in range(uneven_data.num_clients):
        assert_trees_close(jax.tree.map(lambda p: p[c], got.params), expected[c])


def test_fedavg_one_client_full_batch_is_gradient_descent():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    data = from_client_arrays([x], [y], [x[:5]], [y[:5]], 3)
    sim = make_sim(data, {"name": "fedavg"}, model=LogReg(3), clients_per_round=1,
                   local_epochs=3, batch_size=64, lr=0.5)
    state = sim.init()
    params = state.params

    def loss(p):
        logits = jnp.asarray(x) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    for _ in range(4 * 3):  # 4 rounds x 3 full-batch local steps
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, jax.grad(loss)(params))
    assert_trees_close(sim.run(state, 4).params, params)


def test_centralized_with_all_data_and_full_batch_is_gradient_descent(uneven_data):
    sim = make_sim(uneven_data, {"name": "centralized"}, model=LogReg(3),
                   clients_per_round=uneven_data.num_clients, local_epochs=1, batch_size=1000)
    assert sim.centralized_size == int(uneven_data.train_counts.sum())
    x, y = uneven_data.pooled_train()
    state = sim.init()
    params = state.params

    def loss(p):
        logits = sim.apply_fn(p, jnp.asarray(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    for _ in range(3):
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))
    assert_trees_close(sim.run(state, 3).params, params)


def test_aggregation_weights_are_example_counts():
    data = make_uneven_data(sizes=(5, 40), seed=3)
    sim = make_sim(data, {"name": "fedavg"}, clients_per_round=2, local_epochs=1, batch_size=4)
    state = sim.init()
    _, clients_key = jax.random.split(jax.random.fold_in(state.key, 0))
    sample_key, _ = jax.random.split(jax.random.fold_in(state.key, 0))
    ids = [int(i) for i in jax.random.choice(sample_key, 2, (2,), replace=False)]
    keys = jax.random.split(clients_key, 2)
    deltas = {}
    for key, c in zip(keys, ids):
        x, y = data.client_train(c)
        local, _ = client_sgd(sim.apply_fn, state.params, x, y, key, lr=0.1,
                              local_epochs=1, batch_size=4)
        deltas[c] = jax.tree.map(jnp.subtract, local, state.params)
    weighted = jax.tree.map(lambda a, b: (5 * a + 40 * b) / 45, deltas[0], deltas[1])
    unweighted = jax.tree.map(lambda a, b: (a + b) / 2, deltas[0], deltas[1])
    got = jax.tree.map(jnp.subtract, sim.run(state, 1).params, state.params)
    assert_trees_close(got, weighted, atol=1e-6)
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(got), jax.tree.leaves(unweighted)))
    assert gap > 1e-3


def test_three_example_client_takes_exactly_its_steps():
    data = make_uneven_data(sizes=(3, 40), seed=4)
    batch, epochs = 2, 3
    model = LogReg(3)
    params = model.init(jax.random.PRNGKey(0), data.train_x[0, :1])["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    update = jax.jit(make_local_update(apply_fn, lr=0.3, local_epochs=epochs, batch_size=batch))
    key = jax.random.PRNGKey(7)
    delta, stats = update(params, data.train_x[0], data.train_y[0], data.train_counts[0], key)
    assert data.train_x.shape[1] == 40  # padded to the big client's length
    assert int(stats.num_steps) == epochs * math.ceil(3 / batch) == 6
    x, y = data.client_train(0)
    expected, steps = client_sgd(apply_fn, params, x, y, key, lr=0.3, local_epochs=epochs,
                                 batch_size=batch)
    assert steps == 6
    assert_trees_close(jax.tree.map(jnp.add, params, delta), expected, atol=1e-6)
    # One step more would be visibly different: the masked steps really are no-ops.
    more, _ = client_sgd(apply_fn, params, x, y, key, lr=0.3, local_epochs=epochs + 1,
                         batch_size=batch)
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(more), jax.tree.leaves(expected)))
    assert gap > 1e-3
    # The big client: 3 epochs x ceil(40 / 2) steps.
    _, big = update(params, data.train_x[1], data.train_y[1], data.train_counts[1], key)
    assert int(big.num_steps) == 60


def test_fedprox_with_mu_zero_is_fedavg_exactly(uneven_data):
    a = make_sim(uneven_data, {"name": "fedavg"})
    b = make_sim(uneven_data, {"name": "fedprox", "mu": 0.0})
    pa, pb = a.run(a.init(), 3).params, b.run(b.init(), 3).params
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = make_sim(uneven_data, {"name": "fedprox", "mu": 1.0})
    pc = c.run(c.init(), 3).params
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pc)))


@pytest.mark.parametrize("layout", ["vmap", "map", "chunked", "flat"])
def test_blocks_do_not_recompile_and_do_not_change_results(layout):
    # Each program layout: vmap, lax.map, groups of clients (client_chunk) and flat client
    # storage (the cohort gathered each round); the sharded layout: tests/test_devices.py.
    data = make_uneven_data(storage="flat" if layout == "flat" else "padded")
    axis = "vmap" if layout == "vmap" else "map"
    sim = make_sim(data, {"name": "fedadam", "server_lr": 0.05}, axis=axis,
                   client_chunk=2 if layout == "chunked" else None)
    state = sim.init()
    first = sim.run(state, 3)
    jax.block_until_ready(first)
    _, compiles_before = CompileCounter.snapshot()
    second = jax.block_until_ready(sim.run(first, 5))
    third = jax.block_until_ready(sim.run(second, 2))
    _, compiles_after = CompileCounter.snapshot()
    assert compiles_after == compiles_before, "a later block of rounds recompiled"
    assert sim.trace_count == 1
    # 3 + 5 + 2 rounds in blocks equal 10 rounds in one block, bit for bit.
    whole = sim.run(state, 10)
    assert int(third.round) == int(whole.round) == 10
    for x, y in zip(jax.tree.leaves(third.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_evaluation_matches_plain_numpy(uneven_data):
    sim = make_sim(uneven_data, {"name": "fedavg"})
    state = sim.run(sim.init(), 2)
    metrics = sim.evaluate(state)
    predict = lambda x: np.asarray(jnp.argmax(sim.apply_fn(state.params, jnp.asarray(x)), -1))  # noqa: E731
    pooled_acc = np.mean(predict(uneven_data.pooled_test_x) == np.asarray(uneven_data.pooled_test_y))
    assert metrics["test_accuracy"] == pytest.approx(pooled_acc, abs=1e-6)
    accs = []
    for c in range(uneven_data.num_clients):
        m = int(uneven_data.test_counts[c])
        if m:
            x, y = uneven_data.test_x[c, :m], uneven_data.test_y[c, :m]
            accs.append(np.mean(predict(x) == np.asarray(y)))
    assert metrics["client_accuracy_mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert metrics["client_accuracy_p10"] == pytest.approx(np.percentile(accs, 10), abs=1e-6)
    x, y = uneven_data.pooled_train()
    logits = sim.apply_fn(state.params, jnp.asarray(x))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()
    assert metrics["train_loss"] == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.parametrize("variant", ["adam", "yogi", "adagrad"])
def test_fedopt_matches_reddi_algorithm_2(variant):
    """Server optimisers against a NumPy transcription of Reddi et al. 2021, Algorithm 2."""
    rng = np.random.default_rng(0)
    eta, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    x = rng.normal(size=7)
    opt = optax.chain(scale_by_fedopt(variant, b1, b2, tau), optax.scale(-eta))
    params = jnp.asarray(x, jnp.float32)
    state = opt.init(params)
    m, v = np.zeros(7), np.full(7, tau**2)
    for _ in range(5):
        delta = rng.normal(size=7)  # the averaged client update Delta_t
        m = b1 * m + (1 - b1) * delta
        if variant == "adagrad":
            v = v + delta**2
        elif variant == "adam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        x = x + eta * m / (np.sqrt(v) + tau)
        updates, state = opt.update(-jnp.asarray(delta, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params), x, rtol=1e-5, atol=1e-5)


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    base = ["model=logreg", "rounds=4", "eval_every=2", "num_clients=8", "clients_per_round=4"]
    runs = [
        run_experiment(compose(base + [f"seed={s}"]), tmp_path / f"r{i}", progress=None)
        for i, s in enumerate([0, 0, 1])
    ]
    read = lambda i: (tmp_path / f"r{i}" / "metrics.jsonl").read_text()  # noqa: E731
    assert read(0) == read(1)
    assert runs[0]["final"] == runs[1]["final"]
    assert runs[0]["final"]["test_accuracy"] != runs[2]["final"]["test_accuracy"] or (
        runs[0]["final"]["train_loss"] != runs[2]["final"]["train_loss"]
    )


def test_divergence_stops_the_run_and_is_recorded(tmp_path):
    import json

    cfg = compose(["model=logreg", "rounds=20", "eval_every=5", "num_clients=8",
                   "clients_per_round=4", "lr=1e37"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    assert summary["status"] == "diverged"
    assert summary["final"]["round"] == 5  # stopped at the first evaluation that saw it
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["final"]["train_loss"] is None


def test_default_experiment_reaches_ninety_percent(tmp_path):
    """The README's promise for `fedbench` with no arguments (accuracy only; speed is a
    benchmark, not a test)."""
    summary = run_experiment(compose([]), tmp_path, progress=None)
    assert summary["status"] == "completed"
    assert summary["final"]["round"] == 100
    assert summary["final"]["test_accuracy"] >= 0.90
    assert summary["timing"]["round_program_traces"] == 1
