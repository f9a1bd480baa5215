"""Clustered FL (fedbench.algorithm.clustered): IFCA and CFL.

* IFCA with K = 1 is FedAvg; with K = 2 two rounds equal a plain-JAX loop of Ghosh et al.'s
  Algorithm 2 (each client picks the model of lowest training loss, trains it, per-cluster
  example-weighted means); on the symmetric mixture of two linear models ``theta*``,
  ``-theta*`` (Ghosh et al.'s synthetic setting, with binary logistic labels in place of
  regression: fedbench has no regression task) it recovers the true clusters (adjusted Rand
  index 1) in at least 90% of 10 seeds, all seeds in one vmapped program.
* CFL's bi-partition equals SciPy's complete-linkage clustering into two; CFL that never splits
  is FedAvg; three rounds equal a plain loop of Sattler et al.'s Algorithm 3 (split criterion
  from the update norms, cosine-similarity bi-partition, parent models), and its first split
  separates two groups of clients with conflicting labellings.
* Both refuse privacy=dp_client; IFCA also dp_sample. ``vmap`` over the cohort equals
  ``lax.map``; IFCA's round and evaluation programs take the data as an argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from fedbench.algorithm import build_algorithm, check_client_dp
from fedbench.algorithm.base import check_sample_dp
from fedbench.algorithm.clustered import bipartition
from fedbench.dataset.federated import from_client_arrays
from fedbench.errors import ConfigError
from fedbench.model import MLP, LogReg
from fedbench.simulator import Settings, Simulator

LR = 0.1


def _sim(data, cfg, clients_per_round=3, local_epochs=2, batch_size=32, axis="map", model=None):
    settings = Settings(clients_per_round=clients_per_round, local_epochs=local_epochs,
                        batch_size=batch_size, lr=LR, client_axis=axis)
    model = model or MLP(hidden=(8,), num_classes=data.num_classes)
    return Simulator(model, build_algorithm(cfg), data, settings, seed=0)


def _loss(params, x, y):
    """Mean softmax cross-entropy of the one-hidden-layer ReLU MLP, written out."""
    h = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    logits = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def _gd(p, x, y, steps):
    for _ in range(steps):  # batch_size >= every client's size: one full-batch step per epoch
        p = jax.tree.map(lambda a, g: a - LR * g, p, jax.grad(_loss)(p, x, y))
    return p


def _client(data, c):
    n = int(data.train_counts[c])
    return data.train_x[c, :n], data.train_y[c, :n]


def _model(params, k):
    return jax.tree.map(lambda p: p[k], params)


def _close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


def _groups_data(groups, n=40, features=5, classes=3, seed=0):
    """Clients whose labels follow their group's own linear rule ``argmax(x W_g)``; two groups
    have opposite rules ``W_1 = -W_0`` (the symmetric mixture of two linear models)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, classes))
    rules = [w, -w] + [rng.normal(size=(features, classes)) for _ in range(max(groups) - 1)]
    xs, ys, txs, tys = [], [], [], []
    for g in groups:
        x = rng.normal(size=(n, features)).astype(np.float32)
        tx = rng.normal(size=(n // 2, features)).astype(np.float32)
        xs.append(x), txs.append(tx)
        ys.append(np.argmax(x @ rules[g], 1).astype(np.int32))
        tys.append(np.argmax(tx @ rules[g], 1).astype(np.int32))
    return from_client_arrays(xs, ys, txs, tys, classes)


def _ari(a, b):
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b)


# -- IFCA ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", ["map", "vmap"])
def test_ifca_with_one_cluster_is_fedavg(uneven_data, axis):
    ifca = _sim(uneven_data, {"name": "ifca", "clusters": 1}, 3, 2, 4, axis)
    fedavg = _sim(uneven_data, {"name": "fedavg"}, 3, 2, 4, axis)
    got, want = ifca.run(ifca.init(), 3), fedavg.run(fedavg.init(), 3)
    _close(_model(got.params, 0), want.params, atol=1e-6)
    metrics = ifca.evaluate(got)
    assert metrics["clusters"] == [0] * uneven_data.num_clients
    np.testing.assert_allclose(metrics["test_accuracy"], fedavg.evaluate(want)["test_accuracy"])


def test_ifca_rounds_equal_a_plain_loop(uneven_data):
    epochs, k = 2, 2
    sim = _sim(uneven_data, {"name": "ifca", "clusters": k}, 3, epochs)
    state = sim.init()
    models = [_model(state.params, j) for j in range(k)]
    assert float(jnp.abs(models[0]["Dense_0"]["kernel"] - models[1]["Dense_0"]["kernel"]).max()) > 0
    counts = np.asarray(uneven_data.train_counts, np.float32)
    chosen = {}
    for _ in range(2):
        before = np.asarray(state.participation)
        state = sim.run(state, 1)
        sampled = np.flatnonzero(np.asarray(state.participation) - before)
        trained = {}
        for c in sampled:
            x, y = _client(uneven_data, int(c))
            j = int(np.argmin([float(_loss(m, x, y)) for m in models]))  # lowest training loss
            chosen[int(c)] = j
            trained[int(c)] = _gd(models[j], x, y, epochs)
        for j in range(k):
            members = [int(c) for c in sampled if chosen[int(c)] == j]
            if members:
                w = counts[members] / counts[members].sum()
                models[j] = jax.tree.map(lambda *m: sum(a * b for a, b in zip(w, m)),
                                         *[trained[c] for c in members])
        for j in range(k):
            _close(_model(state.params, j), models[j])
        stored = np.asarray(state.store["algorithm"]["cluster"])
        assert all(stored[c] == j for c, j in chosen.items())


def test_ifca_recovers_the_clusters_of_a_mixture_of_linear_models_in_most_seeds():
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    data = _groups_data(groups, n=40, classes=2)  # labels sign(x u) and sign(-x u)
    sim = _sim(data, {"name": "ifca", "clusters": 2}, clients_per_round=8, local_epochs=1,
               batch_size=10, axis="vmap", model=LogReg(num_classes=2))
    sim.client_groups = np.array(groups)
    seeds = list(range(10))
    states = sim.run_replicas(sim.init_replicas(seeds), 15)  # every seed in one program
    aris = []
    for i in seeds:
        metrics = sim.evaluate(sim.replica(states, i))
        assert len(metrics["clusters"]) == len(groups)
        np.testing.assert_allclose(metrics["cluster_ari"], _ari(groups, metrics["clusters"]))
        aris.append(metrics["cluster_ari"])
    assert np.mean(np.array(aris) == 1.0) >= 0.9, aris


def test_ifca_refuses_client_and_sample_dp():
    algorithm = build_algorithm({"name": "ifca"})
    with pytest.raises(ConfigError, match="cluster"):
        check_client_dp(algorithm)
    with pytest.raises(ConfigError, match="training loss"):
        check_sample_dp(algorithm)


# -- CFL -----------------------------------------------------------------------------------------
def _scipy_halves(similarity, members):
    """SciPy's complete-linkage clustering of the members into two, as index sets."""
    idx = np.flatnonzero(members)
    dist = 1.0 - similarity[np.ix_(idx, idx)]  # any increasing map of -similarity
    np.fill_diagonal(dist, 0.0)
    labels = fcluster(linkage(squareform(dist, checks=False), method="complete"), 2, "maxclust")
    return {frozenset(idx[labels == lab].tolist()) for lab in set(labels)}


def test_bipartition_equals_scipy_complete_linkage():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = 9
        u = rng.normal(size=(n, 4))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        similarity = u @ u.T
        members = rng.random(n) < 0.8
        members[:2] = True
        anchor = int(rng.choice(np.flatnonzero(members)))
        side = np.asarray(bipartition(jnp.asarray(similarity, jnp.float32), jnp.asarray(members),
                                      anchor))
        got = {frozenset(np.flatnonzero(side).tolist()),
               frozenset(np.flatnonzero(members & ~side).tolist())}
        assert got == _scipy_halves(similarity, members), trial
        assert not side[anchor] and not (side & ~members).any()


def test_cfl_that_never_splits_is_fedavg(uneven_data):
    cfl = _sim(uneven_data, {"name": "cfl", "eps2": 1e9, "warmup": 0, "max_clusters": 2}, 3, 2, 4)
    fedavg = _sim(uneven_data, {"name": "fedavg"}, 3, 2, 4)
    got, want = cfl.run(cfl.init(), 3), fedavg.run(fedavg.init(), 3)
    _close(_model(got.params, 0), want.params, atol=1e-6)
    assert int(got.server["clusters"]) == 1 and cfl.evaluate(got)["clusters"] == [0] * 6


def test_cfl_rounds_equal_a_plain_loop_of_algorithm_3():
    groups = [0, 0, 0, 1, 1, 1]
    data = _groups_data(groups, n=20, features=4, seed=1)
    eps1, eps2, k_max, epochs = 100.0, 1e-6, 4, 2
    cfg = {"name": "cfl", "eps1": eps1, "eps2": eps2, "max_clusters": k_max, "warmup": 1,
           "min_size": 2}
    sim = _sim(data, cfg, clients_per_round=6, local_epochs=epochs)
    sim.client_groups = np.array(groups)
    state = sim.init()
    models = {0: _model(state.params, 0)}
    assign = np.zeros(6, int)
    counts = np.asarray(data.train_counts, np.float32)
    for r in range(3):
        state = sim.run(state, 1)
        deltas, trained = [], {}
        for c in range(6):
            x, y = _client(data, c)
            trained[c] = _gd(models[assign[c]], x, y, epochs)
            deltas.append(np.concatenate([np.ravel(a - b) for a, b in zip(
                jax.tree.leaves(trained[c]), jax.tree.leaves(models[assign[c]]))]))
        deltas = np.stack(deltas)
        norms = np.linalg.norm(deltas, axis=1)
        similarity = deltas @ deltas.T / np.outer(norms, norms)
        new, parent = assign.copy(), {j: j for j in models}
        for c in sorted(set(assign)):
            members = assign == c
            mean_norm = np.linalg.norm(deltas[members].mean(0))
            if (members.sum() >= 2 and mean_norm < eps1 and norms[members].max() > eps2
                    and r >= 1 and len(parent) < k_max):
                halves = _scipy_halves(similarity, members)
                largest = int(np.argmax(np.where(members, norms, -1.0)))  # keeps the id
                other = next(h for h in halves if largest not in h)
                new[list(other)] = len(parent)
                parent[len(parent)] = c
        assign = new
        for j in parent:  # every member started at its parent's model: theta_j = its mean
            members = np.flatnonzero(assign == j)
            w = counts[members] / counts[members].sum()
            models[j] = jax.tree.map(lambda *m: sum(a * b for a, b in zip(w, m)),
                                     *[trained[int(c)] for c in members])
        np.testing.assert_array_equal(np.asarray(state.store["algorithm"]["cluster"]), assign)
        for j in models:
            _close(_model(state.params, j), models[j])
        if r == 1:  # the first split separates the two labellings
            assert _ari(groups, assign) == 1.0 and sim.evaluate(state)["cluster_ari"] == 1.0
    assert int(state.server["clusters"]) == 4


def test_cfl_refuses_client_dp_and_allows_sample_dp():
    algorithm = build_algorithm({"name": "cfl"})
    with pytest.raises(ConfigError, match="cosine"):
        check_client_dp(algorithm)
    check_sample_dp(algorithm)


@pytest.mark.parametrize("cfg, key", [
    ({"name": "ifca", "clusters": 0}, "algorithm.clusters"),
    ({"name": "cfl", "eps1": -1.0}, "algorithm.eps1"),
    ({"name": "cfl", "min_size": 1}, "algorithm.min_size"),
    ({"name": "cfl", "max_clusters": 2.5}, "algorithm.max_clusters"),
])
def test_bad_settings_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        build_algorithm(cfg)
    assert err.value.key == key


@pytest.mark.parametrize("cfg", [
    {"name": "ifca", "clusters": 3},
    {"name": "cfl", "eps1": 100.0, "eps2": 1e-6, "warmup": 1, "min_size": 2, "max_clusters": 3},
], ids=lambda c: c["name"])
def test_vmap_equals_map(uneven_data, cfg):
    got = {}
    for axis in ("map", "vmap"):
        sim = _sim(uneven_data, cfg, 4, 2, 4, axis)
        state = sim.run(sim.init(), 3)
        got[axis] = (state, sim.evaluate(state))
    _close(got["map"][0].params, got["vmap"][0].params, atol=1e-5)
    assert got["map"][1]["clusters"] == got["vmap"][1]["clusters"]


def test_ifca_programs_take_the_data_as_an_argument_not_a_constant():
    from conftest import make_uneven_data

    data = make_uneven_data(sizes=(400,) * 8, features=512, seed=3)  # train_x: 8 x 400 x 512
    sim = _sim(data, {"name": "ifca", "clusters": 2}, 3, 1, 4)
    state = sim.init()
    limit = np.asarray(data.train_x).nbytes / 10
    assert len(sim._run.lower(state, sim._payload(), jnp.int32(0)).as_text()) < limit
    store = state.store["algorithm"]  # the evaluator's compiled programs of evaluation
    assert len(sim.evaluator._client_models.lower(state.params, state.server, store, state.key,
                                                  state.round, data).as_text()) < limit
    clusters = sim.evaluator._clusters.lower(state.params, state.server, store, data)
    assert len(clusters.as_text()) < limit
