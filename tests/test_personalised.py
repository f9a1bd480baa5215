"""Personalised FL (fedbench.algorithm.personalised, apfl, pfedme, perfedavg): Ditto, FedPer,
FedRep, APFL, pFedMe, Per-FedAvg, finetune.

* Ditto's global model is FedAvg's exactly (its global objective is FedAvg's); its personal
  update equals a plain-JAX loop of ``v <- v - lr (grad L_k(v) + lambda (v - w^t))`` written
  here (Li et al., ICML 2021, Algorithm 1) over two rounds.
* FedPer's body after one round equals a plain-JAX FedAvg of body deltas trained from (global
  body, own head); heads of clients never sampled stay the initial head; the server never sees
  a head (Arivazhagan et al. 2019).
* On clients whose labellings are different permutations, each client's own model (every
  personalised algorithm) beats the one global FedAvg model on the clients' test splits.
* Client-level DP refuses FedPer and FedRep before training, allows Ditto, APFL and pFedMe
  (they release only the global model's delta); dp_sample refuses FedRep, APFL and pFedMe.
* FedRep with an empty head is FedAvg exactly; with a head, one round equals a plain-JAX loop of
  head steps (body fixed), body steps (head fixed), a FedAvg of bodies (Collins et al. Alg. 1).
* APFL's ``w``, ``v`` and adaptive ``alpha`` over two rounds equal a plain-JAX loop of Deng et
  al.'s Algorithm 1; each client is evaluated with ``alpha v + (1 - alpha) w``.
* pFedMe's server and personalised models equal a plain-JAX loop of Dinh et al.'s Algorithm 1.
* FedBN's global model and each client's own LayerNorm equal a plain-JAX loop of Li et al.'s
  Algorithm 1 (the normalisation layer never averaged); without norm layers it is refused.
* Per-FedAvg's FO, HF and exact-Hessian variants and its one-step personalised models equal a
  plain-JAX loop of Fallah et al.'s Algorithm 1 (the exact one with an explicit Hessian matrix).
* FedRep, APFL, pFedMe, Per-FedAvg: ``vmap`` over the cohort equals ``lax.map``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm, check_client_dp
from fedbench.algorithm.personalised import head_key, param_labels
from fedbench.dataset.federated import from_client_arrays
from fedbench.errors import ConfigError
from fedbench.model import MLP
from fedbench.simulator import Settings, Simulator

LR = 0.1


def _sim(data, cfg, clients_per_round=6, local_epochs=3, batch_size=32, axis="map", hidden=8):
    settings = Settings(clients_per_round=clients_per_round, local_epochs=local_epochs,
                        batch_size=batch_size, lr=LR, client_axis=axis)
    algorithm = cfg if not isinstance(cfg, dict) else build_algorithm(cfg)
    return Simulator(MLP(hidden=(hidden,), num_classes=data.num_classes), algorithm, data,
                     settings, seed=0)


def _loss(params, x, y):
    """Mean softmax cross-entropy of the one-hidden-layer ReLU MLP, written out."""
    h = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    logits = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def _gd(start, x, y, steps, extra=lambda p: jax.tree.map(jnp.zeros_like, p)):
    """``steps`` full-batch gradient steps (batch_size >= every client's size)."""
    p = start
    for _ in range(steps):
        g = jax.grad(_loss)(p, x, y)
        p = jax.tree.map(lambda p, g, e: p - LR * (g + e), p, g, extra(p))
    return p


def _client(data, c):
    n = int(data.train_counts[c])
    return data.train_x[c, :n], data.train_y[c, :n]


def _close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


def _row(tree, c):
    return jax.tree.map(lambda leaf: leaf[c], tree)


@pytest.mark.parametrize("axis", ["map", "vmap"])
def test_ditto_global_model_is_fedavg_exactly(uneven_data, axis):
    ditto = _sim(uneven_data, {"name": "ditto", "lam": 0.5}, 3, 2, 4, axis)
    fedavg = _sim(uneven_data, {"name": "fedavg"}, 3, 2, 4, axis)
    got, want = ditto.run(ditto.init(), 3), fedavg.run(fedavg.init(), 3)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ... while the personal models moved away from both w^0 and the global model.
    personal = ditto.evaluated_params(got)
    assert max(float(jnp.abs(v - w[None]).max()) for v, w in
               zip(jax.tree.leaves(personal), jax.tree.leaves(got.params))) > 1e-3


def test_ditto_personal_update_equals_a_plain_loop(uneven_data):
    lam, epochs = 0.5, 3
    sim = _sim(uneven_data, {"name": "ditto", "lam": lam}, local_epochs=epochs)
    state0 = sim.init()
    w0 = state0.params
    state1 = sim.run(state0, 1)
    state2 = sim.run(state1, 1)
    assert np.asarray(state2.participation).tolist() == [2] * uneven_data.num_clients
    for c in (1, 3, 4):  # 17, 25 and 1 examples; one full-batch step per epoch
        x, y = _client(uneven_data, c)
        # Round 1: v_k^0 = w^0 (the paper's initialisation), anchored at w^0.
        v1 = _gd(w0, x, y, epochs, lambda v: jax.tree.map(lambda a, b: lam * (a - b), v, w0))
        _close(_row(sim.evaluated_params(state1), c), v1)
        # Round 2: from v_k^1, anchored at the global model w^1 the client received.
        w1 = state1.params
        v2 = _gd(v1, x, y, epochs, lambda v: jax.tree.map(lambda a, b: lam * (a - b), v, w1))
        _close(_row(sim.evaluated_params(state2), c), v2)


def test_fedper_labels_the_last_dense_layer_as_head(uneven_data):
    params = _sim(uneven_data, {"name": "fedper"}).init().params
    assert head_key(params) == "Dense_1"
    labels = param_labels(params)
    assert set(jax.tree.leaves(labels["Dense_1"])) == {"head"}
    assert set(jax.tree.leaves(labels["Dense_0"])) == {"body"}


def test_fedper_body_equals_a_plain_fedavg_of_body_deltas(uneven_data):
    epochs = 2
    sim = _sim(uneven_data, {"name": "fedper"}, clients_per_round=3, local_epochs=epochs)
    state0 = sim.init()
    w0 = state0.params
    state1 = sim.run(state0, 1)
    sampled = np.flatnonzero(np.asarray(state1.participation))
    assert len(sampled) == 3
    counts = np.asarray(uneven_data.train_counts, np.float32)
    trained = {int(c): _gd(w0, *_client(uneven_data, c), epochs) for c in sampled}
    weights = counts[sampled] / counts[sampled].sum()
    mean_body = jax.tree.map(
        lambda *ks: sum(w * k for w, k in zip(weights, ks)),
        *[trained[int(c)]["Dense_0"] for c in sampled])
    _close(state1.params["Dense_0"], mean_body)
    # The global head is never updated; each sampled client keeps its trained head.
    _close(state1.params["Dense_1"], w0["Dense_1"], atol=0)
    models = sim.evaluated_params(state1)
    for c in range(uneven_data.num_clients):
        own = _row(models, c)
        _close(own["Dense_0"], state1.params["Dense_0"], atol=0)  # the global body
        want = trained[c]["Dense_1"] if c in trained else w0["Dense_1"]
        _close(own["Dense_1"], want)


def test_fedper_heads_of_clients_never_sampled_stay_and_never_reach_the_server(uneven_data):
    seen = []
    base = build_algorithm({"name": "fedper"})

    def spy(uploads, weights, stats, valid, num_clients):
        jax.debug.callback(lambda *head: seen.append([np.asarray(h) for h in head]),
                           *jax.tree.leaves(uploads["delta"]["Dense_1"]))
        return base.aggregate(uploads, weights, stats, valid, num_clients)

    sim = _sim(uneven_data, dataclasses.replace(base, aggregate=spy), clients_per_round=2,
               local_epochs=2, batch_size=4)
    state0 = sim.init()
    state = sim.run(state0, 2)
    participation = np.asarray(state.participation)
    assert (participation == 0).any() and (participation > 0).any()
    heads = sim.evaluated_params(state)["Dense_1"]
    for c, times in enumerate(participation):
        initial = jax.tree.leaves(state0.params["Dense_1"])
        moved = max(float(jnp.abs(h[c] - h0).max())
                    for h, h0 in zip(jax.tree.leaves(heads), initial))
        assert (moved > 0) == (times > 0), c
    assert len(seen) == 2 and all(np.all(leaf == 0) for leaves in seen for leaf in leaves)
    _close(state.params["Dense_1"], state0.params["Dense_1"], atol=0)


def _permuted_labels_data(seed=0, clients=4, n=60, features=4):
    """Clients sharing inputs' distribution and a linear rule, each relabelling the classes by
    its own permutation: no single model can be right on every client."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, 3))
    perms = [np.array(p) for p in ((0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1))][:clients]
    xs, ys, txs, tys = [], [], [], []
    for p in perms:
        x = rng.normal(size=(n, features)).astype(np.float32)
        tx = rng.normal(size=(n // 2, features)).astype(np.float32)
        xs.append(x), txs.append(tx)
        ys.append(p[np.argmax(x @ w, 1)].astype(np.int32))
        tys.append(p[np.argmax(tx @ w, 1)].astype(np.int32))
    return from_client_arrays(xs, ys, txs, tys, 3)


def test_personal_models_beat_the_global_model_on_permuted_labellings():
    data = _permuted_labels_data()
    accuracy = {}
    for cfg in ({"name": "fedavg"}, {"name": "ditto", "lam": 0.05}, {"name": "fedper"},
                {"name": "finetune", "steps": 20}, {"name": "fedrep"},
                {"name": "apfl", "alpha": 0.75},
                {"name": "pfedme", "lam": 0.5, "personal_lr": 0.3, "inner_steps": 20}):
        sim = _sim(data, cfg, clients_per_round=4, local_epochs=2, batch_size=16, hidden=16)
        state = sim.run(sim.init(), 30)
        metrics = sim.evaluate(state)
        accuracy[cfg["name"]] = metrics["client_accuracy_mean"]
        own = sim.site_results(state)["own"]
        np.testing.assert_allclose(np.mean(own), metrics["client_accuracy_mean"], atol=1e-6)
    for name in ("ditto", "fedper", "finetune", "fedrep", "apfl", "pfedme"):
        assert accuracy[name] > accuracy["fedavg"] + 0.2, accuracy
    assert accuracy["fedavg"] < 0.7, accuracy


def test_finetune_trains_as_fedavg_and_evaluates_fine_tuned_models(uneven_data):
    tuned = _sim(uneven_data, {"name": "finetune", "steps": 3}, 3, 2, 4)
    fedavg = _sim(uneven_data, {"name": "fedavg"}, 3, 2, 4)
    got, want = tuned.run(tuned.init(), 2), fedavg.run(fedavg.init(), 2)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    models = tuned.evaluated_params(got)
    assert jax.tree.leaves(models)[0].shape[0] == uneven_data.num_clients
    assert min(float(jnp.abs(m - p[None]).reshape(m.shape[0], -1).max(1).min())
               for m, p in zip(jax.tree.leaves(models), jax.tree.leaves(got.params))) > 0
    _close(models, tuned.evaluated_params(got), atol=0)  # a fixed key per evaluated round
    with pytest.raises(ConfigError) as err:
        build_algorithm({"name": "finetune", "steps": 0})
    assert err.value.key == "algorithm.steps"


def test_client_dp_refuses_fedper_and_allows_ditto():
    with pytest.raises(ConfigError) as err:
        check_client_dp(build_algorithm({"name": "fedper"}))
    assert err.value.key == "algorithm.name" and "head" in str(err.value)
    check_client_dp(build_algorithm({"name": "ditto"}))
    check_client_dp(build_algorithm({"name": "finetune"}))


def test_local_still_scores_each_client_with_its_own_model():
    data = make_uneven_data()
    sim = _sim(data, {"name": "local"}, 3, 1, 4)
    state = sim.run(sim.init(), 1)
    assert sim.evaluated_params(state) is state.params
    assert "matrix" in sim.site_results(state)


# -- FedRep, APFL, pFedMe ------------------------------------------------------------------------
def _grad_of(part, g):
    """``g`` with the other part (``head``: Dense_1, ``body``: Dense_0) zeroed."""
    keep = "Dense_1" if part == "head" else "Dense_0"
    return {k: v if k == keep else jax.tree.map(jnp.zeros_like, v) for k, v in g.items()}


@pytest.mark.parametrize("axis", ["map", "vmap"])
def test_fedrep_with_an_empty_head_is_fedavg(uneven_data, axis):
    rep = _sim(uneven_data, {"name": "fedrep", "head_layers": 0, "head_steps": 3}, 3, 2, 4, axis)
    fedavg = _sim(uneven_data, {"name": "fedavg"}, 3, 2, 4, axis)
    got, want = rep.run(rep.init(), 3), fedavg.run(fedavg.init(), 3)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(rep.evaluate(got)["client_accuracy_mean"],
                               fedavg.evaluate(want)["client_accuracy_mean"])
    head = _sim(uneven_data, {"name": "fedrep", "head_layers": 1, "head_steps": 3}, 3, 2, 4, axis)
    moved = head.run(head.init(), 3).params["Dense_0"]["kernel"] - want.params["Dense_0"]["kernel"]
    assert float(jnp.abs(moved).max()) > 1e-4  # with a head, the body trains differently


def test_fedrep_round_equals_a_plain_loop_of_head_then_body(uneven_data):
    epochs, head_steps = 2, 3
    sim = _sim(uneven_data, {"name": "fedrep", "head_layers": 1, "head_steps": head_steps},
               clients_per_round=3, local_epochs=epochs)
    state1 = sim.run(state0 := sim.init(), 1)
    w0 = state0.params
    sampled = np.flatnonzero(np.asarray(state1.participation))
    counts = np.asarray(uneven_data.train_counts, np.float32)
    bodies, heads = {}, {}
    for c in sampled:
        x, y = _client(uneven_data, int(c))
        p = w0
        for _ in range(head_steps):  # line 6-8: the head, body fixed
            p = jax.tree.map(lambda a, g: a - LR * g, p, _grad_of("head", jax.grad(_loss)(p, x, y)))
        for _ in range(epochs):  # lines 9-11: the body, the new head fixed
            p = jax.tree.map(lambda a, g: a - LR * g, p, _grad_of("body", jax.grad(_loss)(p, x, y)))
        bodies[int(c)], heads[int(c)] = p["Dense_0"], p["Dense_1"]
    weights = counts[sampled] / counts[sampled].sum()
    body = jax.tree.map(lambda *b: sum(w * x for w, x in zip(weights, b)),
                        *[bodies[int(c)] for c in sampled])
    _close(state1.params["Dense_0"], body)
    _close(state1.params["Dense_1"], w0["Dense_1"], atol=0)  # the global head never moves
    models = sim.evaluated_params(state1)
    for c in range(uneven_data.num_clients):
        _close(_row(models, c)["Dense_1"], heads.get(c, w0["Dense_1"]))
        _close(_row(models, c)["Dense_0"], body)


def test_apfl_equals_a_plain_loop_of_algorithm_1(uneven_data):
    epochs, alpha0, alpha_lr = 2, 0.4, 0.3
    cfg = {"name": "apfl", "alpha": alpha0, "mixing": "adaptive", "alpha_lr": alpha_lr}
    sim = _sim(uneven_data, cfg, 6, epochs)
    fedavg = _sim(uneven_data, {"name": "fedavg"}, 6, epochs)
    states = [sim.init()]
    states += [sim.run(states[0], 1)]
    states += [sim.run(states[1], 1)]
    _close(states[2].params, fedavg.run(fedavg.init(), 2).params, atol=1e-6)  # w: FedAvg's
    fixed = _sim(uneven_data, {"name": "apfl", "alpha": alpha0}, 6, epochs)  # mixing=fixed
    np.testing.assert_allclose(fixed.run(fixed.init(), 1).store["algorithm"]["alpha"], alpha0)
    counts = np.asarray(uneven_data.train_counts, np.float32)
    v = {c: states[0].params for c in range(6)}
    alpha = {c: alpha0 for c in range(6)}
    w = states[0].params
    for r in range(2):
        ws = []
        for c in range(6):
            x, y = _client(uneven_data, c)
            wc, vc, ac = w, v[c], alpha[c]
            for _ in range(epochs):  # one full-batch step per epoch, all from step t-1 values
                mixed = jax.tree.map(lambda a, b: ac * a + (1 - ac) * b, vc, wc)
                g_mix = jax.grad(_loss)(mixed, x, y)
                g_w = jax.grad(_loss)(wc, x, y)
                d_alpha = sum(float(jnp.vdot(a - b, g)) for a, b, g in zip(
                    jax.tree.leaves(vc), jax.tree.leaves(wc), jax.tree.leaves(g_mix)))
                vc = jax.tree.map(lambda a, g: a - LR * ac * g, vc, g_mix)
                wc = jax.tree.map(lambda a, g: a - LR * g, wc, g_w)
                ac = float(np.clip(ac - alpha_lr * d_alpha, 0.0, 1.0))
            ws.append(wc)
            v[c], alpha[c] = vc, ac
        w = jax.tree.map(lambda *m: sum(n * x for n, x in zip(counts / counts.sum(), m)), *ws)
        got = states[r + 1]
        np.testing.assert_allclose(np.asarray(got.store["algorithm"]["alpha"]),
                                   [alpha[c] for c in range(6)], atol=1e-5)
        models = sim.evaluated_params(got)
        for c in range(6):
            want = jax.tree.map(lambda a, b: alpha[c] * a + (1 - alpha[c]) * b, v[c], got.params)
            _close(_row(models, c), want, atol=5e-5)
    assert len({round(a, 4) for a in alpha.values()}) > 1  # alpha adapted per client


def test_pfedme_equals_a_plain_loop_of_algorithm_1(uneven_data):
    epochs, lam, k, plr, beta = 2, 2.0, 3, 0.05, 1.5
    cfg = {"name": "pfedme", "lam": lam, "inner_steps": k, "personal_lr": plr, "beta": beta}
    sim = _sim(uneven_data, cfg, clients_per_round=3, local_epochs=epochs)
    state1 = sim.run(state0 := sim.init(), 1)
    w0 = state0.params
    sampled = [int(c) for c in np.flatnonzero(np.asarray(state1.participation))]
    counts = np.asarray(uneven_data.train_counts, np.float32)

    def prox(centre, x, y):  # K steps on f(theta) + lam/2 ||theta - centre||^2 from the centre
        theta = centre
        for _ in range(k):
            g = jax.grad(_loss)(theta, x, y)
            theta = jax.tree.map(lambda t, g, c: t - plr * (g + lam * (t - c)), theta, g, centre)
        return theta

    local, personal = {}, {}
    for c in sampled:
        x, y = _client(uneven_data, c)
        w = w0
        for _ in range(epochs):  # R local steps (full batch: one per epoch)
            theta = prox(w, x, y)
            w = jax.tree.map(lambda a, t: a - LR * lam * (a - t), w, theta)
        local[c], personal[c] = w, prox(w, x, y)
    weights = counts[sampled] / counts[sampled].sum()
    mean = jax.tree.map(lambda *m: sum(n * x for n, x in zip(weights, m)),
                        *[local[c] for c in sampled])
    _close(state1.params, jax.tree.map(lambda a, m: (1 - beta) * a + beta * m, w0, mean))
    models = sim.evaluated_params(state1)
    for c in range(uneven_data.num_clients):  # never sampled: the global model
        _close(_row(models, c), personal.get(c, state1.params))


@pytest.mark.parametrize("variant", ["fo", "hf", "exact"])
def test_perfedavg_equals_a_plain_loop_of_algorithm_1(uneven_data, variant):
    """Fallah et al. 2020, Algorithm 1 written out (full batch, so D = D' = D''): the inner
    step, the meta step with the Hessian left out (fo), as a finite difference (hf) or as the
    explicit Hessian matrix times the vector (exact); the example-weighted mean of the local
    models; each client evaluated after one gradient step at alpha from the new model."""
    from jax.flatten_util import ravel_pytree

    epochs, alpha, delta = 2, 0.3, 0.01
    cfg = {"name": "perfedavg", "alpha": alpha, "variant": variant, "delta": delta}
    sim = _sim(uneven_data, cfg, clients_per_round=3, local_epochs=epochs)
    state1 = sim.run(state0 := sim.init(), 1)
    w0 = state0.params
    sampled = [int(c) for c in np.flatnonzero(np.asarray(state1.participation))]
    counts = np.asarray(uneven_data.train_counts, np.float32)
    grad = jax.grad(_loss)

    def axpy(a, x, y):  # a x + y
        return jax.tree.map(lambda u, v: a * u + v, x, y)

    local = {}
    for c in sampled:
        x, y = _client(uneven_data, c)
        w = w0
        for _ in range(epochs):  # one meta step per epoch (full batch)
            g = grad(axpy(-alpha, grad(w, x, y), w), x, y)
            if variant == "hf":
                hg = axpy(-1.0, grad(axpy(-delta, g, w), x, y), grad(axpy(delta, g, w), x, y))
                g = axpy(-alpha / (2 * delta), hg, g)
            elif variant == "exact":
                flat, unravel = ravel_pytree(w)
                hess = jax.hessian(lambda f: _loss(unravel(f), x, y))(flat)
                g = axpy(-alpha, unravel(hess @ ravel_pytree(g)[0]), g)
            w = axpy(-LR, g, w)
        local[c] = w
    weights = counts[sampled] / counts[sampled].sum()
    mean = jax.tree.map(lambda *m: sum(n * x for n, x in zip(weights, m)),
                        *[local[c] for c in sampled])
    _close(state1.params, mean, atol=5e-5)
    models = sim.evaluated_params(state1)
    for c in range(uneven_data.num_clients):
        x, y = _client(uneven_data, c)
        _close(_row(models, c), axpy(-alpha, grad(state1.params, x, y), state1.params), atol=5e-5)


def test_perfedavg_hessian_free_approaches_the_exact_product(uneven_data):
    """Per-FedAvg (HF) with a small delta ends where the exact Hessian-vector product does
    (minibatches of 4, two epochs; the ReLU's kinks make larger deltas, 0.01-0.1, land 0.08-0.37
    away), while the first-order step ends about 0.04 away."""
    from jax.flatten_util import ravel_pytree

    runs = {}
    for variant, delta in (("exact", 1e-3), ("hf", 1e-3), ("fo", 1e-3)):
        sim = _sim(uneven_data, {"name": "perfedavg", "alpha": 0.5, "variant": variant,
                                 "delta": delta}, 3, 2, 4)
        runs[variant] = np.asarray(ravel_pytree(sim.run(sim.init(), 1).params)[0])
    gap = float(np.max(np.abs(runs["hf"] - runs["exact"])))
    assert gap < 1e-4 and float(np.max(np.abs(runs["fo"] - runs["exact"]))) > 1e-2


def test_fedbn_equals_a_plain_loop_with_local_normalisation(uneven_data):
    """Li et al. 2021, Algorithm 1 with LayerNorm written out: each sampled client trains the
    whole model from (global weights, its own normalisation layer) by full-batch gradient
    steps; the server averages the other parameters' deltas by examples and never moves the
    normalisation layer; each client is scored with the new global weights and its own layer
    (the initial one if never sampled)."""
    epochs = 3
    settings = Settings(clients_per_round=3, local_epochs=epochs, batch_size=32, lr=LR)
    sim = Simulator(MLP(hidden=(8,), num_classes=3, norm="layer"),
                    build_algorithm({"name": "fedbn"}), uneven_data, settings, seed=0)
    state1 = sim.run(state0 := sim.init(), 1)
    w0 = state0.params
    assert set(w0) == {"Dense_0", "LayerNorm_0", "Dense_1"}

    def loss(p, x, y):  # Dense, LayerNorm (eps 1e-6, biased variance), ReLU, Dense
        h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-6)
        h = jax.nn.relu(h * p["LayerNorm_0"]["scale"] + p["LayerNorm_0"]["bias"])
        logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    sampled = [int(c) for c in np.flatnonzero(np.asarray(state1.participation))]
    counts = np.asarray(uneven_data.train_counts, np.float32)
    trained = {}
    for c in sampled:
        x, y = _client(uneven_data, c)
        p = w0
        for _ in range(epochs):
            p = jax.tree.map(lambda a, g: a - LR * g, p, jax.grad(loss)(p, x, y))
        trained[c] = p
    weights = counts[sampled] / counts[sampled].sum()
    want = {k: jax.tree.map(lambda w, *t: w + sum(n * (a - w) for n, a in zip(weights, t)),
                            w0[k], *[trained[c][k] for c in sampled])
            for k in ("Dense_0", "Dense_1")}
    want["LayerNorm_0"] = w0["LayerNorm_0"]  # never averaged, never moved by the server
    _close(state1.params, want)
    models = sim.evaluated_params(state1)
    for c in range(uneven_data.num_clients):
        own = trained[c]["LayerNorm_0"] if c in trained else w0["LayerNorm_0"]
        _close(_row(models, c), {**want, "LayerNorm_0": own})


def test_fedbn_needs_normalisation_layers(uneven_data):
    with pytest.raises(ConfigError) as err:
        _sim(uneven_data, {"name": "fedbn"})  # MLP without norm
    assert err.value.key == "model.norm"
    with pytest.raises(ConfigError, match="normalisation layers"):
        check_client_dp(build_algorithm({"name": "fedbn"}))


def test_dp_sample_refuses_what_dp_sgd_does_not_cover(uneven_data):
    from fedbench.algorithm.base import check_sample_dp
    from fedbench.privacy.dp_sample import SampleDP

    for name, reason in (("fedrep", "head"), ("apfl", "retraces"), ("pfedme", "inner"),
                         ("perfedavg", "meta gradient")):
        with pytest.raises(ConfigError) as err:  # at construction, before any training
            Simulator(MLP(hidden=(8,), num_classes=3), build_algorithm({"name": name}),
                      uneven_data, Settings(3, 1, 4, LR), seed=0, privacy=SampleDP(1.0, 1.0, 8))
        assert err.value.key == "algorithm.name" and reason in str(err.value), name
    check_sample_dp(build_algorithm({"name": "ditto"}))
    with pytest.raises(ConfigError, match="head"):
        check_client_dp(build_algorithm({"name": "fedrep"}))
    for name in ("apfl", "pfedme", "perfedavg"):
        check_client_dp(build_algorithm({"name": name}))


@pytest.mark.parametrize("cfg, key", [
    ({"name": "fedrep", "head_layers": -1}, "algorithm.head_layers"),
    ({"name": "fedrep", "head_steps": 0}, "algorithm.head_steps"),
    ({"name": "apfl", "alpha": 1.5}, "algorithm.alpha"),
    ({"name": "apfl", "mixing": "yes"}, "algorithm.mixing"),
    ({"name": "pfedme", "inner_steps": 0}, "algorithm.inner_steps"),
    ({"name": "pfedme", "lam": 0}, "algorithm.lam"),
    ({"name": "perfedavg", "variant": "so"}, "algorithm.variant"),
    ({"name": "perfedavg", "alpha": -1}, "algorithm.alpha"),
    ({"name": "fedrep", "head_layers": 3}, "algorithm.head_layers"),  # MLP(8): 2 Dense layers
])
def test_bad_settings_name_the_key(uneven_data, cfg, key):
    with pytest.raises(ConfigError) as err:
        _sim(uneven_data, cfg)  # builds the algorithm, then the model-dependent checks
    assert err.value.key == key


@pytest.mark.parametrize("cfg", [
    {"name": "fedrep", "head_steps": 2},
    {"name": "apfl", "mixing": "adaptive"},
    {"name": "pfedme", "lam": 1.0, "inner_steps": 2},
    {"name": "perfedavg", "variant": "hf"},
], ids=lambda c: c["name"])
def test_vmap_equals_map(uneven_data, cfg):
    sims = [_sim(uneven_data, cfg, 3, 2, 4, axis) for axis in ("map", "vmap")]
    states = [sim.run(sim.init(), 2) for sim in sims]
    _close(*[(s.params, sim.evaluated_params(s)) for sim, s in zip(sims, states)], atol=1e-5)
