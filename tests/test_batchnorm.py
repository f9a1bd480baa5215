"""``model.norm=batch`` (fedbench.model.BatchNorm, fedbench.local.batchnorm_estimator) against
plain loops written from the definitions: Ioffe & Szegedy 2015's batch normalisation with
PyTorch's conventions (biased batch variance to normalise, unbiased in the running variance,
running = 0.9 running + 0.1 batch), FedAvg (McMahan et al. 2017: the example-weighted mean of the
local models, running statistics included) and FedBN (Li et al. 2021, Algorithm 1: every
BatchNorm layer, statistics included, stays at its site)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.errors import ConfigError
from fedbench.model import MLP, BatchNorm, train_apply
from fedbench.simulator import Settings, Simulator

LR, EPOCHS, EPS, MOM = 0.1, 2, 1e-5, 0.1


def _sim(data, name, clients_per_round=3, axis="map", **extra):
    settings = Settings(clients_per_round=clients_per_round, local_epochs=EPOCHS,
                        batch_size=32, lr=LR, client_axis=axis)
    return Simulator(MLP(hidden=(8,), num_classes=data.num_classes, norm="batch"),
                     build_algorithm({"name": name, **extra}), data, settings, seed=0)


def _data():
    return make_uneven_data(sizes=(9, 17, 8, 25, 6, 12))  # every client >= 2 examples


def _close(a, b, atol=3e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol, rtol=1e-4)


def test_batchnorm_trains_on_the_real_examples_and_evaluates_with_running_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 3, 4)).astype(np.float32)  # [B, H, W, C]: spatial axes too
    valid = np.array([1, 1, 1, 1, 0, 0], bool)
    layer = BatchNorm()
    p = {"scale": rng.normal(size=4).astype(np.float32),
         "bias": rng.normal(size=4).astype(np.float32),
         "mean": rng.normal(size=4).astype(np.float32),
         "var": rng.uniform(0.5, 2, size=4).astype(np.float32)}
    out, stats = layer.apply({"params": p}, jnp.asarray(x), jnp.asarray(valid),
                             mutable=["batch_stats"])
    real = x[valid].reshape(-1, 4).astype(np.float64)
    n, mean, var = len(real), real.mean(0), real.var(0)
    want = (x[valid] - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]
    np.testing.assert_allclose(np.asarray(out)[valid], want, atol=1e-5)
    np.testing.assert_allclose(stats["batch_stats"]["mean"], 0.9 * p["mean"] + 0.1 * mean,
                               atol=1e-6)
    np.testing.assert_allclose(stats["batch_stats"]["var"],
                               0.9 * p["var"] + 0.1 * var * n / (n - 1), atol=1e-6)
    evaluated = layer.apply({"params": p}, jnp.asarray(x))  # no mask: evaluation mode
    np.testing.assert_allclose(evaluated, (x - p["mean"]) / np.sqrt(p["var"] + EPS)
                               * p["scale"] + p["bias"], atol=1e-5)


def _forward(p, x):
    """Dense, BatchNorm in training mode (the whole client is one batch), ReLU, Dense: the
    loss and the layer's new running statistics."""
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    bn = p["BatchNorm_0"]
    n, mean, var = h.shape[0], h.mean(0), h.var(0)
    h = jax.nn.relu((h - mean) / jnp.sqrt(var + EPS) * bn["scale"] + bn["bias"])
    running = {"mean": (1 - MOM) * bn["mean"] + MOM * mean,
               "var": (1 - MOM) * bn["var"] + MOM * var * n / (n - 1)}
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], running


def _local(p, x, y):
    """``EPOCHS`` full-batch SGD steps; each step then sets the running statistics."""
    def loss(q):
        logits, running = _forward(q, x)
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
        return ce, running

    for _ in range(EPOCHS):
        grads, running = jax.grad(loss, has_aux=True)(p)
        p = jax.tree.map(lambda a, g: a - LR * g, p, grads)
        p = {**p, "BatchNorm_0": {**p["BatchNorm_0"], **running}}
    return p


def _round(data, w0, sampled):
    counts = np.asarray(data.train_counts, np.float32)
    trained = {}
    for c in sampled:
        n = int(counts[c])
        trained[c] = _local(w0, data.train_x[c, :n], data.train_y[c, :n])
    weights = counts[sampled] / counts[sampled].sum()
    mean = jax.tree.map(lambda w, *t: w + sum(a * (b - w) for a, b in zip(weights, t)),
                        w0, *[trained[c] for c in sampled])
    return trained, mean


def _sampled(before, after):
    return [int(c) for c in np.flatnonzero(np.asarray(after.participation)
                                           - np.asarray(before.participation))]


def test_fedavg_with_batchnorm_equals_a_plain_loop():
    data = _data()
    sim = _sim(data, "fedavg")
    state0 = sim.init()
    state1 = sim.run(state0, 1)
    state2 = sim.run(state1, 1)
    _, want1 = _round(data, state0.params, _sampled(state0, state1))
    _close(state1.params, want1)
    _, want2 = _round(data, want1, _sampled(state1, state2))
    _close(state2.params, want2)
    x = jnp.asarray(data.test_x[0, :2])  # evaluation: the running statistics
    h = x @ want2["Dense_0"]["kernel"] + want2["Dense_0"]["bias"]
    bn = want2["BatchNorm_0"]
    h = jax.nn.relu((h - bn["mean"]) / jnp.sqrt(bn["var"] + EPS) * bn["scale"] + bn["bias"])
    _close(sim.apply_fn(state2.params, x), h @ want2["Dense_1"]["kernel"]
           + want2["Dense_1"]["bias"])


def test_fedbn_keeps_every_batchnorm_layer_and_its_statistics_at_the_site():
    data = _data()
    sim = _sim(data, "fedbn")
    state1 = sim.run(state0 := sim.init(), 1)
    w0 = state0.params
    trained, mean = _round(data, w0, sampled := _sampled(state0, state1))
    want = {**mean, "BatchNorm_0": w0["BatchNorm_0"]}  # never averaged, never moved
    _close(state1.params, want)
    models = sim.evaluated_params(state1)
    for c in range(data.num_clients):
        own = trained[c]["BatchNorm_0"] if c in sampled else w0["BatchNorm_0"]
        _close(jax.tree.map(lambda leaf: leaf[c], models), {**want, "BatchNorm_0": own})


def test_silobn_keeps_only_the_running_statistics_at_the_site():
    """Andreux et al. 2020: every parameter but BatchNorm's running mean and variance is
    averaged (its scale and bias included); each site keeps its statistics."""
    data = _data()
    sim = _sim(data, "silobn")
    state1 = sim.run(state0 := sim.init(), 1)
    w0 = state0.params
    trained, mean = _round(data, w0, sampled := _sampled(state0, state1))
    stats = ("mean", "var")
    want = {**mean, "BatchNorm_0": {**mean["BatchNorm_0"],
                                    **{k: w0["BatchNorm_0"][k] for k in stats}}}
    _close(state1.params, want)
    models = sim.evaluated_params(state1)
    for c in range(data.num_clients):
        own = {k: (trained[c] if c in sampled else w0)["BatchNorm_0"][k] for k in stats}
        _close(jax.tree.map(lambda leaf: leaf[c], models),
               {**want, "BatchNorm_0": {**want["BatchNorm_0"], **own}})


@pytest.mark.parametrize("name, privacy", [
    ("fedavg", "dp_sample"), ("pfedme", None), ("perfedavg", None), ("moon", None),
    ("ditto", None), ("finetune", None),
])
def test_training_outside_batchnorms_training_mode_is_refused(name, privacy):
    from conftest import compose

    from fedbench.run import build_simulator

    overrides = ["dataset=breast_cancer", "partition=iid", "num_clients=4", "clients_per_round=2",
                 "model=mlp", "model.hidden=[8]", "model.norm=batch", f"algorithm={name}"]
    if privacy:
        overrides += [f"privacy={privacy}", "privacy.target_epsilon=null",
                      "privacy.noise_multiplier=1.0"]
    with pytest.raises(ConfigError) as err:
        build_simulator(compose(overrides))
    assert err.value.key == "model.norm" and (privacy or name) in str(err.value)


def test_vmap_equals_map():
    data = _data()
    sims = [_sim(data, "fedavg", axis=axis) for axis in ("map", "vmap")]
    _close(*[sim.run(sim.init(), 2).params for sim in sims], atol=1e-5)


def test_the_cnn_takes_batchnorm_after_each_convolution_and_the_hidden_layer():
    from fedbench.model import CNN

    model = CNN(num_classes=3, norm="batch")
    x = jnp.zeros((4, 8, 8, 1))
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    assert {k for k in params if k.startswith("BatchNorm_")} == {f"BatchNorm_{i}"
                                                                 for i in range(3)}
    _, stats = train_apply(model, params, x + 1.0, jnp.ones(4, bool))
    assert set(stats) == {"BatchNorm_0", "BatchNorm_1", "BatchNorm_2"}


def test_every_algorithm_trains_batchnorm_or_refuses_it():
    """Generated from the registry: with ``model.norm=batch`` each algorithm either refuses
    (naming ``model.norm``) or runs a round whose local training set the running statistics
    (they leave their initial zeros and ones; FedBN's stay at the sites, its clients' models
    carry them)."""
    from conftest import compose

    from fedbench.algorithm import BUILDERS
    from fedbench.run import build_simulator

    base = ["dataset=breast_cancer", "partition=iid", "num_clients=4", "clients_per_round=2",
            "model=mlp", "model.hidden=[4]", "model.norm=batch", "rounds=1", "batch_size=32",
            "local_epochs=1"]
    extra = {"fedbuff": ["algorithm.buffer_size=2", "algorithm.concurrency=2"],
             "ifca": ["algorithm.clusters=2"]}
    refused = set()
    for name in BUILDERS:
        try:
            built = build_simulator(compose(base + [f"algorithm={name}"] + extra.get(name, [])))
        except ConfigError as err:
            assert err.key == "model.norm", (name, err)
            refused.add(name)
            continue
        sim = built.sim
        state = sim.run(sim.init(), 1)
        models = sim.evaluated_params(state)
        mean = np.asarray(jax.tree.leaves(models["BatchNorm_0"]["mean"]))
        assert np.all(np.isfinite(mean)) and np.any(mean != 0), name
        if name in ("fedbn", "silobn"):  # the sites' statistics never reach the global model
            assert not np.any(np.asarray(state.params["BatchNorm_0"]["mean"])), name
    assert refused == {"apfl", "ditto", "finetune", "fedrep", "moon", "perfedavg", "pfedme"}
