"""The worked examples of docs/architecture.md run as written (``docs/examples/*.py``).

FedExP (``docs/examples/fedexp.py``) against a NumPy loop written from Jhunjhunwala et al.,
ICLR 2023, Algorithm 1 (full-batch local gradient descent, so the loop shares no code and no
randomness with the simulator), and refused under client-level DP because it has its own
aggregation and declares no ``dp_aggregate``.
"""

from __future__ import annotations

import importlib.util
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
