"""Semi-federated models (fedbench/model/semi.py, ``algorithm=semifed``) and the lab-panel
scenario (fedbench/partition/panels.py).

* With no local parts, semifed is FedAvg bit for bit (issue 12, item 6).
* Two rounds equal a plain-JAX loop written here: each sampled site trains the three-layer
  network from (global body and head, its own encoder) with full-batch gradient steps; the
  server takes the example-weighted mean of the body and head deltas only; each site keeps its
  trained encoder.
* A site's encoder never changes in a round it is not sampled, the aggregated update is zero on
  every encoder leaf, and the global encoder stays the initial one.
* On the panel scenario, a site's encoder rows of the columns it does not measure never move.
* Bytes on the wire count only the federated parameters (hand counts below), also for FedPer
  and FedRep, whose heads stay at the sites.
* Panels: the documented draw, zero-filling, re-standardisation per measuring sites,
  ``keep=shared``; ConfigErrors name key and value.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.algorithm import build_algorithm
from fedbench.dataset import load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.errors import ConfigError
from fedbench.model import MLP, build_model
from fedbench.model.semi import SemiFederated, check_local
from fedbench.partition.panels import panel_masks
from fedbench.simulator import Settings, Simulator

LR = 0.1


def _sim(data, cfg, model=None, clients_per_round=3, local_epochs=2, batch_size=32):
    settings = Settings(clients_per_round=clients_per_round, local_epochs=local_epochs,
                        batch_size=batch_size, lr=LR, client_axis="map")
    algorithm = cfg if not isinstance(cfg, dict) else build_algorithm(cfg)
    model = model or SemiFederated(data.num_classes, (6,), (5,))
    return Simulator(model, algorithm, data, settings, seed=0)


def _forward(p, x):
    """The semi model written out: relu(x We + be) -> relu(. Wb + bb) -> . Wh + bh."""
    h = jax.nn.relu(x @ p["encoder"]["Dense_0"]["kernel"] + p["encoder"]["Dense_0"]["bias"])
    h = jax.nn.relu(h @ p["body"]["Dense_0"]["kernel"] + p["body"]["Dense_0"]["bias"])
    return h @ p["head"]["kernel"] + p["head"]["bias"]


def _loss(p, x, y):
    logp = jax.nn.log_softmax(_forward(p, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))


_grad = jax.jit(jax.grad(_loss))  # data passed as arguments, never closed over


def _gd(p, x, y, steps):
    for _ in range(steps):
        g = _grad(p, x, y)
        p = jax.tree.map(lambda a, b: a - LR * b, p, g)
    return p


def _client(data, c):
    n = int(data.train_counts[c])
    return data.train_x[c, :n], data.train_y[c, :n]


def _row(tree, c):
    return jax.tree.map(lambda leaf: leaf[c], tree)


def _close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


def test_no_local_parts_is_fedavg_bit_for_bit(uneven_data):
    semi = _sim(uneven_data, {"name": "semifed", "local": []}, batch_size=4)
    fedavg = _sim(uneven_data, {"name": "fedavg"}, batch_size=4)
    got, want = semi.run(semi.init(), 3), fedavg.run(fedavg.init(), 3)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not semi.per_client_models  # everyone is scored with the global model
    assert semi.dense_bits == fedavg.dense_bits


def test_two_rounds_equal_a_plain_jax_loop(uneven_data):
    epochs = 2  # batch 32 >= every client: one full-batch step per epoch
    sim = _sim(uneven_data, {"name": "semifed", "local": ["encoder"]}, local_epochs=epochs)
    state0 = sim.init()
    state1 = sim.run(state0, 1)
    state2 = sim.run(state1, 1)
    counts = np.asarray(uneven_data.train_counts, np.float32)
    rounds = [np.flatnonzero(np.asarray(state1.participation)),
              np.flatnonzero(np.asarray(state2.participation) - np.asarray(state1.participation))]
    w = state0.params
    encoders = {c: w["encoder"] for c in range(uneven_data.num_clients)}
    for sampled, state in zip(rounds, (state1, state2), strict=True):
        assert len(sampled) == 3
        trained = {int(c): _gd({**w, "encoder": encoders[int(c)]}, *_client(uneven_data, c),
                               epochs) for c in sampled}
        weights = counts[sampled] / counts[sampled].sum()
        mean = lambda part: jax.tree.map(  # noqa: E731
            lambda *ts: sum(wt * t for wt, t in zip(weights, ts)),
            *[trained[int(c)][part] for c in sampled])
        w = {"encoder": w["encoder"], "body": mean("body"), "head": mean("head")}
        encoders.update({c: p["encoder"] for c, p in trained.items()})
        _close(state.params, w)
        models = sim.evaluated_params(state)
        for c in range(uneven_data.num_clients):
            _close(_row(models, c), {**w, "encoder": encoders[c]})
    np.testing.assert_array_equal(np.asarray(state2.params["encoder"]["Dense_0"]["kernel"]),
                                  np.asarray(state0.params["encoder"]["Dense_0"]["kernel"]))


def test_encoders_never_leave_and_stay_put_when_not_sampled(uneven_data):
    seen = []
    base = build_algorithm({"name": "semifed", "local": ["encoder"]})

    def spy(uploads, weights, stats, valid, num_clients):
        jax.debug.callback(lambda *leaves: seen.append([np.asarray(x) for x in leaves]),
                           *jax.tree.leaves(uploads["delta"]["encoder"]))
        aggregates = base.aggregate(uploads, weights, stats, valid, num_clients)
        jax.debug.callback(lambda *leaves: seen.append([np.asarray(x) for x in leaves]),
                           *jax.tree.leaves(aggregates["delta"]["encoder"]))
        return aggregates

    sim = _sim(uneven_data, dataclasses.replace(base, aggregate=spy), clients_per_round=2,
               batch_size=4)
    state = sim.init()
    w0 = state.params
    before = sim.evaluated_params(state)["encoder"]
    for _ in range(4):
        new = sim.run(state, 1)
        sampled = np.asarray(new.participation) - np.asarray(state.participation)
        after = sim.evaluated_params(new)["encoder"]
        for c, took_part in enumerate(sampled):
            moved = max(float(jnp.abs(a[c] - b[c]).max())
                        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))
            assert (moved > 0) == bool(took_part), (c, moved)
        state, before = new, after
    assert len(seen) == 8 and all(np.all(x == 0) for leaves in seen for x in leaves)
    for a, b in zip(jax.tree.leaves(state.params["encoder"]), jax.tree.leaves(w0["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _panel_data(keep="all", seed=0, extra=None):
    cfg = {"name": "iid", "panels": {"shared": 4, "coverage": 0.4, "keep": keep, **(extra or {})}}
    return build_federated(load_dataset({"name": "breast_cancer"}), cfg, 4, seed=seed)


def test_panels_zero_fill_restandardise_and_keep_shared():
    data, stats = _panel_data()
    masks = panel_masks({"shared": 4, "coverage": 0.4}, 30, 4, 0)
    # The documented draw: default_rng([seed, 4]); 4 shared columns, then uniforms < 0.4.
    rng = np.random.default_rng([0, 4])
    common = rng.choice(30, 4, replace=False)
    want = rng.random((4, 30)) < 0.4
    want[:, common] = True
    np.testing.assert_array_equal(masks, want)
    assert stats["panels"]["columns"] == [np.flatnonzero(m).tolist() for m in masks]
    assert stats["panels"]["shared"] == np.flatnonzero(masks.all(0)).tolist()
    assert set(common.tolist()) <= set(stats["panels"]["shared"])
    counts, test_counts = np.asarray(data.train_counts), np.asarray(data.test_counts)
    train, test = np.asarray(data.train_x), np.asarray(data.test_x)
    for c in range(4):
        assert np.all(train[c, :counts[c]][:, ~masks[c]] == 0)
        assert np.all(test[c, :test_counts[c]][:, ~masks[c]] == 0)
        assert np.all(np.abs(train[c, :counts[c]][:, masks[c]]).sum(0) > 0)
    for j in np.flatnonzero(masks.any(0)):  # standardised over the measuring sites' training rows
        values = np.concatenate([train[c, :counts[c], j] for c in np.flatnonzero(masks[:, j])])
        np.testing.assert_allclose([values.mean(), values.std()], [0, 1], atol=1e-5)
    shared, shared_stats = _panel_data(keep="shared")
    cols = shared_stats["panels"]["shared"]
    assert shared.feature_shape == (len(cols),)
    np.testing.assert_allclose(np.asarray(shared.train_x), train[:, :, cols], atol=1e-6)
    # Explicit columns replace the draw.
    _, explicit = _panel_data(extra={"columns": [[0, 1], [1, 2], [1, 3], [1]]})
    assert explicit["panels"]["shared"] == [1]


def test_a_site_encoder_never_moves_on_columns_it_does_not_measure():
    data, stats = _panel_data()
    sim = _sim(data, {"name": "semifed", "local": ["encoder"]}, clients_per_round=4,
               local_epochs=1, batch_size=16, model=SemiFederated(2, (8,), (8,)))
    state0 = sim.init()
    state = sim.run(state0, 3)
    kernel0 = np.asarray(state0.params["encoder"]["Dense_0"]["kernel"])
    kernels = np.asarray(sim.evaluated_params(state)["encoder"]["Dense_0"]["kernel"])
    for c, cols in enumerate(stats["panels"]["columns"]):
        unmeasured = np.setdiff1d(np.arange(30), cols)
        np.testing.assert_array_equal(kernels[c][unmeasured], kernel0[unmeasured])
        assert np.abs(kernels[c][cols] - kernel0[cols]).max() > 0


def test_bytes_count_only_the_federated_parameters(uneven_data, tmp_path):
    from fedbench.run import run_experiment

    # 4 features, 3 classes. Semi (encoder 6, body 5): encoder 4*6+6 = 30 stays at the site;
    # body 6*5+5 = 35 and head 5*3+3 = 18 are sent: 53 float32.
    semi = _sim(uneven_data, {"name": "semifed", "local": ["encoder"]})
    assert semi.dense_bits == 32 * 53 and semi.down_bits == 32 * 53
    both = _sim(uneven_data, {"name": "semifed", "local": ["encoder", "head"]})
    assert both.dense_bits == 32 * 35
    # MLP(8): body 4*8+8 = 40 sent; FedPer's and FedRep's head 8*3+3 = 27 stay; FedAvg all.
    mlp = MLP(3, (8,))
    for name, sent in (("fedper", 40), ("fedrep", 40), ("fedavg", 67)):
        assert _sim(uneven_data, {"name": name}, model=mlp).dense_bits == 32 * sent, name
    # Through the CLI's config and metrics: 30 inputs, encoder 32, body 32, 2 classes:
    # body 32*32+32 = 1056, head 32*2+2 = 66 -> 1122 float32 per upload; 2 rounds x 4 sites.
    cfg = compose(["dataset=breast_cancer", "partition=panels", "dataset.num_clients=4",
                   "clients_per_round=4", "model=semi", "algorithm=semifed", "rounds=2",
                   "eval_every=2"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    final = summary.get("final", summary)
    assert final["bytes_up"] == 8 * 4 * 1122 and final["bytes_down"] == 8 * 4 * 1122


def test_config_errors_name_key_and_value(uneven_data):
    with pytest.raises(ConfigError) as err:
        build_model({"name": "semi", "encoder": [8], "body": [8], "local": ["decoder"]}, (4,), 3)
    assert err.value.key == "model.local" and "encoder, body, head" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_model({"name": "semi", "encoder": [], "body": [8], "local": []}, (4,), 3)
    assert err.value.key == "model.encoder"
    with pytest.raises(ConfigError) as err:
        build_algorithm({"name": "semifed", "local": "encoder"})
    assert err.value.key == "algorithm.local"
    with pytest.raises(ConfigError) as err:  # a name the model does not have
        _sim(uneven_data, {"name": "semifed", "local": ["decoder"]})
    assert err.value.key == "model.local"
    with pytest.raises(ConfigError) as err:  # local parts with an algorithm that federates all
        check_local({"local": ["encoder"]}, build_algorithm({"name": "fedavg"}))
    assert err.value.key == "model.local" and "semifed" in str(err.value)
    check_local({"local": ["encoder"]}, build_algorithm({"name": "local"}))
    for panels, key in (({"keep": "some"}, "partition.panels.keep"),
                        ({"colour": 1}, "partition.panels.colour"),
                        ({"shared": 0, "coverage": 0.0}, "partition.panels.coverage"),
                        ({"shared": 31}, "partition.panels.shared"),
                        ({"columns": [[0], [1]]}, "partition.panels.columns")):
        with pytest.raises(ConfigError) as err:
            build_federated(load_dataset({"name": "breast_cancer"}),
                            {"name": "iid", "panels": panels}, 4, seed=0)
        assert err.value.key == key, panels
