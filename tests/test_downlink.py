"""Downlink compression (``compression.downlink``): the model each client receives, quantised.

Independent expectations: message sizes counted by hand (b bits per value plus one float32
scale per tensor), a learning rate of zero (clients return exactly what they received, so the
server's exact model must not move), a dense run for the 16-bit case, and hand-computed
transfer times over a link.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from conftest import compose, make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.compression.downlink import build_downlink
from fedbench.errors import ConfigError
from fedbench.links import build_links
from fedbench.model import MLP
from fedbench.run import run_experiment
from fedbench.simulator import Settings, Simulator

TENSORS = (4 * 8, 8, 8 * 3, 3)  # MLP(hidden 8), 4 features, 3 classes: 67 floats in 4 tensors


def make(data, down, lr=0.1, name="fedavg", links=None):
    settings = Settings(clients_per_round=3, local_epochs=2, batch_size=4, lr=lr,
                        client_axis="vmap")
    algorithm = build_algorithm({"name": name}, 3)
    downlink = build_downlink({"name": "none", "downlink": down})
    return Simulator(MLP(data.num_classes, (8,)), algorithm, data, settings, seed=0,
                     downlink=downlink, links=links)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name, releases", [("fedavg", 1), ("scaffold", 2)])
def test_a_download_is_counted_at_its_quantised_size(name, releases):
    data = make_uneven_data()
    sim = make(data, {"name": "quantize", "bits": 4}, name=name)
    # 4 bits per value and one float32 scale per tensor; SCAFFOLD's control variate dense.
    assert sim.down_bits == 4 * sum(TENSORS) + 32 * len(TENSORS) + 32 * 67 * (releases - 1)


def test_the_server_keeps_its_exact_model():
    data = make_uneven_data()
    sim = make(data, {"name": "quantize", "bits": 2}, lr=0.0)
    state = sim.init()
    after = sim.run(state, 2)  # no training: each client returns the model it received
    for a, b in zip(leaves(state.params), leaves(after.params)):
        np.testing.assert_array_equal(a, b)


def test_clients_train_from_the_quantised_model():
    data = make_uneven_data()
    dense = make(data, None)
    fine, coarse = make(data, {"name": "quantize", "bits": 16}), make(data, {"name": "quantize",
                                                                             "bits": 1})
    ref = leaves(dense.run(dense.init(), 1).params)
    gap = lambda sim: max(np.abs(a - b).max()  # noqa: E731
                          for a, b in zip(ref, leaves(sim.run(sim.init(), 1).params)))
    assert gap(fine) < 1e-3 < gap(coarse)


def test_the_link_carries_the_quantised_model():
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12))
    links = build_links({"name": "profiles", "profile": "satellite", "step_seconds": 0.1}, 6)
    sim = make(data, {"name": "qsgd", "levels": 3, "bucket_size": None}, links=links)
    state = sim.init()
    # QSGD with s = 3: a sign bit and 2 bits of level per value, one float32 norm per tensor.
    bits_down, bits_up = 3 * 67 + 32 * 4, 32 * 67
    counts = np.asarray(data.train_counts)
    sample_key, _ = jax.random.split(jax.random.fold_in(state.key, 0))
    ids = np.asarray(jax.random.choice(sample_key, 6, (3,), replace=False))
    expected = max(1.2 + bits_down / 25e6 + math.ceil(counts[c] / 4) * 2 * 0.1 + bits_up / 3e6
                   for c in ids)
    assert float(sim.run(state, 1).clock) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("down, kind, key", [
    ("topk", "federated", "compression.downlink"),
    ({"name": "quantize", "error_feedback": True}, "federated", "compression.downlink.error_feedback"),
    ({"name": "quantize", "bits": 0}, "federated", "compression.downlink.bits"),
    ("quantize", "async", "compression.downlink"),
])
def test_bad_downlink_settings_name_the_key(down, kind, key):
    with pytest.raises(ConfigError) as err:
        build_downlink({"name": "none", "downlink": down}, kind)
    assert err.value.key == key


def test_a_run_reports_the_quantised_bytes_down(tmp_path):
    cfg = compose(["compression.downlink=quantize", "rounds=2", "eval_every=1",
                   "checkpoint_every=0"])
    final = run_experiment(cfg, tmp_path, progress=None)["final"]
    # The 2NN on digits: 64-200-200-10, 6 tensors; 8 bits per value and a scale per tensor.
    size = 64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert final["bytes_down"] == 2 * 10 * math.ceil((8 * size + 32 * 6) / 8)
    assert final["bytes_up"] == 2 * 10 * 4 * size
