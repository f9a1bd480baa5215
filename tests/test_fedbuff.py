"""Asynchronous FedBuff and the simulated clock against event-driven references."""

from __future__ import annotations

import math

import jax
import numpy as np
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.model import MLP
from fedbench.reference import run_fedbuff_reference
from fedbench.simulator import Settings, Simulator


def close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=2e-5)


def make(data, cfg, site_speed=0.0, cpr=3, axis="vmap"):
    settings = Settings(clients_per_round=cpr, local_epochs=2, batch_size=4, lr=0.1,
                        client_axis=axis)
    algorithm = build_algorithm({**cfg, "site_speed": site_speed}, cpr)
    return Simulator(MLP(data.num_classes, (8,)), algorithm, data, settings, seed=0)


def test_fedbuff_with_full_buffer_and_no_staleness_is_fedavg(uneven_data):
    buff = make(uneven_data, {"name": "fedbuff"}, site_speed=0.7)
    avg = make(uneven_data, {"name": "fedavg"}, site_speed=0.7)
    a, b = buff.run(buff.init(), 4), avg.run(avg.init(), 4)
    close(a.params, b.params, atol=1e-6)
    assert float(a.inflight["staleness_max"]) == 0
    # Every round waits for its slowest client either way: the clocks agree too.
    # (equal up to float32 rounding: XLA may fuse the multiply-add differently)
    assert float(b.clock) > 0 and abs(float(a.clock) - float(b.clock)) <= 1e-6 * float(b.clock)


def test_fedbuff_with_staleness_equals_event_driven_reference():
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 9, 14), seed=3)
    for axis in ("vmap", "map"):
        sim = make(data, {"name": "fedbuff", "buffer_size": 2, "concurrency": 5},
                   site_speed=1.0, axis=axis)
        state = sim.init()
        expected, log = run_fedbuff_reference(
            sim.apply_fn, sim.algorithm, data, state.params, state.key, 6, lr=0.1,
            local_epochs=2, batch_size=4, speeds=np.asarray(sim.speeds),
        )
        got = sim.run(state, 6)
        close(got.params, expected)
        assert abs(float(got.clock) - log[-1]["clock"]) <= 1e-6 * log[-1]["clock"]
        stale = [t for entry in log for t in entry["staleness"]]
        assert max(stale) > 0  # the comparison exercises stale updates
        assert int(got.inflight["staleness_max"]) == max(stale)
        assert float(got.inflight["staleness_sum"]) == sum(stale)
        metrics = sim.evaluate(got)
        assert metrics["staleness_mean"] == sum(stale) / (6 * 2)


def test_synchronous_clock_waits_for_the_slowest_sampled_client(uneven_data):
    sim = make(uneven_data, {"name": "fedavg"}, site_speed=0.5)
    state = sim.init()
    speeds, counts = np.asarray(sim.speeds), np.asarray(uneven_data.train_counts)
    expected = np.float32(0)
    for r in range(3):
        sample_key, _ = jax.random.split(jax.random.fold_in(state.key, r))
        ids = np.asarray(jax.random.choice(sample_key, uneven_data.num_clients, (3,), replace=False))
        expected = expected + max(
            np.float32(math.ceil(counts[c] / 4) * 2) * speeds[c] for c in ids)
    got = float(sim.run(state, 3).clock)
    assert abs(got - float(expected)) <= 1e-6 * float(expected)
