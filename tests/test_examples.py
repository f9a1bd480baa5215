"""The worked examples of docs/architecture.md run as written (``docs/examples/*.py``).

FedExP (``docs/examples/fedexp.py``) against a NumPy loop written from Jhunjhunwala et al.,
ICLR 2023, Algorithm 1 (full-batch local gradient descent, so the loop shares no code and no
randomness with the simulator), and refused under client-level DP because it has its own
aggregation and declares no ``dp_aggregate``. The privacy mechanism ``docs/examples/dp_full.py``
(every site in every round) against the Gaussian mechanism's closed form: the noise's scale and
the composed epsilon.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fedbench.algorithm import check_client_dp
from fedbench.dataset.federated import from_client_arrays
from fedbench.errors import ConfigError
from fedbench.model import build_model
from fedbench.simulator import Settings, Simulator

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def _softmax_grad(w, b, x, y, classes):
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y), p.mean(0)


def test_fedexp_example_equals_the_paper_loop():
    fedexp = _example("fedexp")
    rng = np.random.default_rng(0)
    classes, features, sizes = 3, 5, (10, 14, 8, 12)
    truth = rng.normal(size=(features, classes))
    xs = [rng.normal(size=(n, features)).astype(np.float32) for n in sizes]
    ys = [np.argmax(x @ truth + rng.normal(size=(n, classes)), 1).astype(np.int32)
          for x, n in zip(xs, sizes)]
    data = from_client_arrays(xs, ys, xs, ys, classes)
    model = build_model({"name": "logreg"}, data.feature_shape, classes, data.task)
    lr, epochs, rounds, eps = 0.5, 3, 4, 1e-3
    settings = Settings(clients_per_round=len(sizes), local_epochs=epochs, batch_size=16,
                        lr=lr, client_axis="map")
    algorithm = fedexp.fedexp({"eps": eps})
    sim = Simulator(model, algorithm, data, settings, seed=0)
    state = sim.init()
    (kernel, bias) = (np.asarray(state.params["Dense_0"]["kernel"], np.float64),
                      np.asarray(state.params["Dense_0"]["bias"], np.float64))
    steps = []
    for _ in range(rounds):  # every client every round; full batches (batch 16 >= 14)
        deltas = []
        for x, y in zip(xs, ys):
            w, b = kernel.copy(), bias.copy()
            for _ in range(epochs):
                gw, gb = _softmax_grad(w, b, x.astype(np.float64), y, classes)
                w, b = w - lr * gw, b - lr * gb
            deltas.append((w - kernel, b - bias))
        mean_w = np.mean([d[0] for d in deltas], 0)
        mean_b = np.mean([d[1] for d in deltas], 0)
        squares = sum(np.sum(d[0] ** 2) + np.sum(d[1] ** 2) for d in deltas)
        step = max(1.0, squares / (2 * len(deltas) * (np.sum(mean_w ** 2) + np.sum(mean_b ** 2)
                                                      + eps)))
        steps.append(step)
        kernel, bias = kernel + step * mean_w, bias + step * mean_b
    got = sim.run(state, rounds)
    np.testing.assert_allclose(np.asarray(got.params["Dense_0"]["kernel"]), kernel, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.params["Dense_0"]["bias"]), bias, rtol=1e-4,
                               atol=1e-5)
    assert max(steps) > 1.0  # the extrapolation was taken, so this is not FedAvg's path
    with pytest.raises(ConfigError, match="fedexp has its own aggregate"):
        check_client_dp(algorithm)
    jax.clear_caches()


def _gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a mu-GDP mechanism at ``delta`` (Dong, Roth, Su 2019, Cor. 2.13:
    ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``), solved by bisection."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def excess(eps):
        return norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 100.0)


def test_dp_full_example_noise_scale_and_epsilon_against_the_gaussian_closed_form(monkeypatch):
    """docs/examples/dp_full.py registered as a mechanism: (1) with a vanishing learning rate the
    released update is the noise alone, whose per-coordinate std must be ``z * clip / n``;
    (2) its epsilon after T rounds must be the T-fold composed Gaussian mechanism's, i.e. a
    ``sqrt(T) / z``-GDP mechanism's, computed here in closed form; (3) a cohort smaller than
    the federation, and an algorithm that releases more than its delta, are refused."""
    from conftest import compose

    from fedbench.privacy.mechanism import registry
    from fedbench.run import build_simulator

    dp_full = _example("dp_full")
    monkeypatch.setitem(registry(), "dp_full", dp_full)
    z, clip, n, rounds = 2.0, 0.5, 4, 3
    base = compose(["dataset=breast_cancer", "partition=iid", f"num_clients={n}",
                    f"clients_per_round={n}", f"rounds={rounds}", "model=mlp",
                    "model.hidden=[64]", "checkpoint_every=0", "lr=1e-9"])
    privacy = {"name": "dp_full", "clip": clip, "noise_multiplier": z, "target_epsilon": None,
               "delta": 1e-5, "accountant": "pld"}
    built = build_simulator({**base, "privacy": privacy})
    state = built.sim.init()
    after = built.sim.run(state, 1)
    moved = np.concatenate([np.ravel(np.asarray(b) - np.asarray(a)) for a, b in
                            zip(jax.tree.leaves(state.params), jax.tree.leaves(after.params))])
    assert moved.size > 2000
    # The std of a sample of ~2100 normals is within 4 standard errors (1.5% each) of the truth.
    np.testing.assert_allclose(moved.std(), z * clip / n, rtol=0.06)
    spent = built.privacy.report(rounds, np.full(n, rounds))["epsilon"]
    np.testing.assert_allclose(spent, _gaussian_epsilon(np.sqrt(rounds) / z, 1e-5), rtol=1e-4)
    calibrated = build_simulator({**base, "privacy": {**privacy, "noise_multiplier": None,
                                                      "target_epsilon": spent}})
    assert abs(calibrated.privacy.noise_multiplier - z) < 2e-3  # calibration inverts the report
    with pytest.raises(ConfigError) as error:
        build_simulator({**base, "clients_per_round": n - 1, "privacy": privacy})
    assert error.value.key == "clients_per_round"
    with pytest.raises(ConfigError, match="scaffold"):
        build_simulator({**compose(["dataset=breast_cancer", f"num_clients={n}",
                                    f"clients_per_round={n}", "algorithm=scaffold"]),
                         "privacy": privacy})
    jax.clear_caches()
