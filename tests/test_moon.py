"""MOON (fedbench.algorithm.moon) against a plain loop written from Li, He, Song 2021
(Algorithm 1, Eq. 3-4): full-batch local steps on the task loss plus mu times the contrastive
loss between the representations of the local, global and previous local models, the previous
local model starting as the initial one; the example-weighted mean at the server."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.errors import ConfigError
from fedbench.model import MLP, LogReg
from fedbench.simulator import Settings, Simulator

LR, EPOCHS = 0.1, 2


def _sim(data, cfg, clients_per_round=3, axis="map", model=None):
    settings = Settings(clients_per_round=clients_per_round, local_epochs=EPOCHS,
                        batch_size=32, lr=LR, client_axis=axis)
    model = model or MLP(hidden=(8,), num_classes=data.num_classes)
    return Simulator(model, build_algorithm(cfg), data, settings, seed=0)


def _hidden(p, x):
    return jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])


def _objective(p, x, y, z_glob, z_prev, mu, tau):
    """Eq. 4 for the one-hidden-layer MLP, written out: cross-entropy plus mu times Eq. 3."""
    h = _hidden(p, x)
    logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    def cos(a, b):
        return jnp.sum(a * b, 1) / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1))

    pos, neg = jnp.exp(cos(h, z_glob) / tau), jnp.exp(cos(h, z_prev) / tau)
    return ce + mu * jnp.mean(-jnp.log(pos / (pos + neg)))


def _close(a, b, atol=3e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol, rtol=1e-4)


def test_moon_equals_a_plain_loop_of_algorithm_1():
    """Three rounds of 3 of 6 clients: a client sampled for the first time contrasts against
    the initial model, a returning one against its own last local model."""
    data = make_uneven_data(sizes=(9, 17, 8, 25, 6, 12))  # every client >= 6: no 1-example cos
    mu, tau = 2.0, 0.5
    sim = _sim(data, {"name": "moon", "mu": mu, "temperature": tau})
    states = [sim.init()]
    for _ in range(3):
        states.append(sim.run(states[-1], 1))
    w0 = states[0].params
    prev = {c: w0 for c in range(data.num_clients)}
    counts = np.asarray(data.train_counts, np.float32)
    grad = jax.grad(_objective)
    wg, returning = w0, 0
    for before, after in zip(states, states[1:]):
        sampled = [int(c) for c in np.flatnonzero(np.asarray(after.participation)
                                                 - np.asarray(before.participation))]
        returning += sum(int(np.asarray(before.participation)[c]) > 0 for c in sampled)
        local = {}
        for c in sampled:
            n = int(counts[c])
            x, y = data.train_x[c, :n], data.train_y[c, :n]
            z_glob, z_prev = _hidden(wg, x), _hidden(prev[c], x)
            w = wg
            for _ in range(EPOCHS):  # full batch: one step an epoch
                g = grad(w, x, y, z_glob, z_prev, mu, tau)
                w = jax.tree.map(lambda p, g: p - LR * g, w, g)
            local[c] = prev[c] = w
        weights = counts[sampled] / counts[sampled].sum()
        wg = jax.tree.map(lambda *m: sum(a * b for a, b in zip(weights, m)),
                          *[local[c] for c in sampled])
        _close(after.params, wg)
    assert returning > 0  # the previous-model path was exercised


def test_moon_without_the_contrastive_term_is_fedavg_and_mu_changes_it(uneven_data):
    runs = {}
    for name, cfg in [("fedavg", {"name": "fedavg"}),
                      ("mu0", {"name": "moon", "mu": 0.0, "temperature": 0.5}),
                      ("mu1", {"name": "moon", "mu": 1.0, "temperature": 0.5})]:
        sim = _sim(uneven_data, cfg)
        runs[name] = sim.run(sim.init(), 2).params
    _close(runs["mu0"], runs["fedavg"], atol=1e-7)
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(runs["mu1"]), jax.tree.leaves(runs["fedavg"])))
    assert gap > 1e-4


@pytest.mark.parametrize("cfg, key", [
    ({"name": "moon", "mu": -1.0, "temperature": 0.5}, "algorithm.mu"),
    ({"name": "moon", "mu": 1.0, "temperature": 0.0}, "algorithm.temperature"),
])
def test_bad_settings_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        build_algorithm(cfg)
    assert err.value.key == key


def test_a_model_without_a_hidden_layer_is_refused(uneven_data):
    sim = _sim(uneven_data, {"name": "moon", "mu": 1.0, "temperature": 0.5},
               model=LogReg(num_classes=uneven_data.num_classes))
    with pytest.raises(ConfigError) as err:
        sim.run(sim.init(), 1)
    assert err.value.key == "model.name" and "moon" in str(err.value)


def test_vmap_equals_map(uneven_data):
    cfg = {"name": "moon", "mu": 1.0, "temperature": 0.5}
    sims = [_sim(uneven_data, cfg, axis=axis) for axis in ("map", "vmap")]
    _close(*[sim.run(sim.init(), 2).params for sim in sims], atol=1e-5)


def test_a_zero_representation_has_a_finite_gradient():
    """Dead ReLUs give an example the representation 0: the cosine is 0 there (the paper's
    clamped similarity) and the gradient stays finite, not 0/0."""
    from fedbench.algorithm.moon import contrastive_loss

    z = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    others = jnp.array([[1.0, 0.0], [0.5, 1.0]])
    grad = jax.grad(lambda z: contrastive_loss(z, others, others[::-1], jnp.ones(2, bool), 0.5))(z)
    assert np.all(np.isfinite(np.asarray(grad)))
    value = contrastive_loss(z[:1], others[:1], others[1:], jnp.ones(1, bool), 0.5)
    np.testing.assert_allclose(float(value), np.log(2.0), rtol=1e-6)  # both cosines 0
