"""A compressed run with error feedback against a sequential reference loop (#11 item 5).

The reference is written here from Stich et al. (NeurIPS 2018, Algorithm 1, "memory") with
FedAvg's example-weighted mean (McMahan et al. 2017): a Python loop over rounds and sampled
clients, local SGD one minibatch at a time (:func:`reference.client_sgd`), each
client's residual in a dict (untouched while the client is not sampled), top-k per tensor by
NumPy's ``argsort`` of magnitudes. It shares no code with :mod:`fedbench.compression`, the
per-client store or the client map.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.compression import build_compression
from fedbench.model import MLP
from reference import client_sgd
from fedbench.simulator import Settings, Simulator


def top_k(values: np.ndarray, fraction: float) -> np.ndarray:
    flat = values.reshape(-1)
    k = max(1, round(fraction * flat.size))
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(values.shape)


def reference(sim, data, rounds, fraction, cpr):
    state = sim.init()
    params = jax.tree.map(lambda p: np.asarray(p, np.float32), state.params)
    residual: dict[int, object] = {}
    for r in range(rounds):
        sample_key, clients_key = jax.random.split(jax.random.fold_in(state.key, r))
        ids = [int(i) for i in jax.random.choice(sample_key, data.num_clients, (cpr,),
                                                 replace=False)]
        keys = jax.random.split(clients_key, cpr)
        sent, sizes = [], []
        for key, c in zip(keys, ids):
            x, y = data.client_train(c)
            local, _ = client_sgd(sim.apply_fn, params, x, y, key, lr=0.1, local_epochs=2,
                                  batch_size=4)
            delta = jax.tree.map(lambda a, b: np.asarray(a, np.float32) - b, local, params)
            target = jax.tree.map(np.add, delta, residual.get(c, jax.tree.map(np.zeros_like,
                                                                              params)))
            message = jax.tree.map(lambda t: top_k(t, fraction), target)
            residual[c] = jax.tree.map(np.subtract, target, message)
            sent.append(message)
            sizes.append(len(y))
        total = sum(sizes)
        mean = jax.tree.map(lambda *m: sum(n / total * mi.astype(np.float64)
                                           for n, mi in zip(sizes, m)), *sent)
        params = jax.tree.map(lambda p, d: (p + d).astype(np.float32), params, mean)
    return params, residual


@pytest.mark.parametrize("axis", ["vmap", "map"])
def test_topk_with_error_feedback_equals_the_sequential_reference(axis):
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 9, 14), seed=3)
    fraction, cpr, rounds = 0.25, 3, 4
    settings = Settings(clients_per_round=cpr, local_epochs=2, batch_size=4, lr=0.1,
                        client_axis=axis)
    compressor = build_compression({"name": "topk", "fraction": fraction,
                                    "error_feedback": True})
    sim = Simulator(MLP(data.num_classes, (8,)), build_algorithm({"name": "fedavg"}, cpr), data,
                    settings, seed=0, transforms=(compressor.transform(),))
    expected, residual = reference(sim, data, rounds, fraction, cpr)
    got = sim.run(sim.init(), rounds)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), b, atol=2e-5, rtol=2e-5)
    stored = got.store["transforms"]
    for c in range(data.num_clients):  # every client's residual, sampled or not
        mine = jax.tree.map(lambda s: np.asarray(s[c]), stored)
        theirs = residual.get(c, jax.tree.map(np.zeros_like, expected))
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(a, b, atol=2e-5)
