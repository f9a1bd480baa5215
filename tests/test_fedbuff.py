"""Asynchronous FedBuff and the simulated clock against event-driven references.

Independent expectations: the event-driven reference loop (:func:`run_fedbuff_reference`, a heap
of finish events written from Nguyen et al. 2022, Algorithm 1), schedules worked out by hand, and
a timing-only event simulation written here (NumPy's generator, no JAX, no training).
"""

from __future__ import annotations

import heapq
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.errors import ConfigError
from fedbench.model import MLP, LogReg
from reference import run_fedbuff_reference
from fedbench.simulator import Settings, Simulator


def close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=2e-5)


def make(data, cfg, site_speed=0.0, cpr=3, axis="vmap", local_epochs=2, batch_size=4, model=None):
    settings = Settings(clients_per_round=cpr, local_epochs=local_epochs, batch_size=batch_size,
                        lr=0.1, client_axis=axis)
    algorithm = build_algorithm({**cfg, "site_speed": site_speed}, cpr)
    return Simulator(model or MLP(data.num_classes, (8,)), algorithm, data, settings, seed=0)


def test_fedbuff_flushing_a_full_buffer_without_staleness_is_fedavg(uneven_data):
    buff = make(uneven_data, {"name": "fedbuff", "restart": "at_flush"}, site_speed=0.7)
    avg = make(uneven_data, {"name": "fedavg"}, site_speed=0.7)
    a, b = buff.run(buff.init(), 4), avg.run(avg.init(), 4)
    close(a.params, b.params, atol=1e-6)
    assert float(a.inflight["staleness_max"]) == 0
    # Every round waits for its slowest client either way: the clocks agree too.
    # (equal up to float32 rounding: XLA may fuse the multiply-add differently)
    assert float(b.clock) > 0 and abs(float(a.clock) - float(b.clock)) <= 1e-6 * float(b.clock)


def test_restart_setting_is_checked():
    assert build_algorithm({"name": "fedbuff"}, 3).settings["restart"] == "at_arrival"
    with pytest.raises(ConfigError) as err:
        build_algorithm({"name": "fedbuff", "restart": "later"}, 3)
    assert err.value.key == "algorithm.restart"


@pytest.mark.parametrize("restart", ["at_arrival", "at_flush"])
def test_fedbuff_with_staleness_equals_event_driven_reference(restart):
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 9, 14), seed=3)
    for axis in ("vmap", "map"):
        sim = make(data, {"name": "fedbuff", "buffer_size": 2, "concurrency": 5,
                          "restart": restart}, site_speed=1.0, axis=axis)
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
        arrived = np.bincount([c for entry in log for c in entry["clients"]],
                              minlength=data.num_clients)
        np.testing.assert_array_equal(np.asarray(got.participation), arrived)
        # Every client started downloads the model: the first 5 and one per arrival.
        assert int(got.downloads.sum()) == log[-1]["downloads"] == 5 + 6 * 2


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


def _three_sites(restart):
    """Three clients of one step each (4 examples, batch 4, one epoch), seconds per step 1, 4.5
    and 7.5, all three in flight, a buffer of two. With as many clients as slots, a freed slot
    can only be refilled by the client that just left it, so the schedule is fixed."""
    data = make_uneven_data(sizes=(4, 4, 4), seed=5)
    sim = make(data, {"name": "fedbuff", "buffer_size": 2, "concurrency": 3, "restart": restart},
               local_epochs=1, batch_size=4)
    sim.speeds = jnp.asarray([1.0, 4.5, 7.5], jnp.float32)
    state = sim.init()
    clocks, stale = [], []
    for _ in range(5):
        before = float(state.inflight["staleness_sum"])
        state = sim.run(state, 1)
        clocks.append(float(state.clock))
        stale.append(float(state.inflight["staleness_sum"]) - before)
    return state, clocks, stale


def test_a_finished_slot_restarts_at_once_on_the_current_model():
    """The paper's schedule, worked out by hand: the fast client (1 s) finishes at 1, 2, 3, ...
    and restarts each time on the model current then; the others (4.5 s, 7.5 s) arrive stale.

    update 0: t=1 c0 (tau 0), t=2 c0 (started at 1 on version 0: tau 0)     -> clock 2
    update 1: t=3 c0, t=4 c0 (tau 0)                                        -> clock 4
    update 2: t=4.5 c1 (version 0: tau 2), t=5 c0 (tau 0)                   -> clock 5
    update 3: t=6 c0, t=7 c0                                                -> clock 7
    update 4: t=7.5 c2 (version 0: tau 4), t=8 c0                           -> clock 8
    """
    state, clocks, stale = _three_sites("at_arrival")
    assert clocks == [2.0, 4.0, 5.0, 7.0, 8.0]
    assert stale == [0, 0, 2, 0, 4]
    np.testing.assert_array_equal(np.asarray(state.participation), [8, 1, 1])
    np.testing.assert_array_equal(np.asarray(state.downloads), [1 + 8, 1 + 1, 1 + 1])


def test_flushing_waits_for_the_buffer_to_fill():
    """``at_flush`` by hand: freed slots wait for the buffer's second arrival.

    update 0: t=1 c0, t=4.5 c1 (tau 0, 0); both restart at 4.5          -> clock 4.5
    update 1: t=5.5 c0 (tau 0), t=7.5 c2 (tau 1); restart at 7.5        -> clock 7.5
    update 2: t=8.5 c0 (tau 0), t=9 c1 (tau 1)                          -> clock 9
    update 3: t=10 c0 (tau 0), t=13.5 c1 (tau 0)                        -> clock 13.5
    update 4: t=14.5 c0 (tau 0), t=15 c2 (tau 2)                        -> clock 15
    """
    state, clocks, stale = _three_sites("at_flush")
    assert clocks == [4.5, 7.5, 9.0, 13.5, 15.0]
    assert stale == [0, 1, 1, 0, 2]


def timing_only(durations, m, k, updates, restart, rng):
    """FedBuff's clock without training: an event heap (Nguyen et al. 2022, Algorithm 1).

    ``m`` clients in flight, each new one uniform among clients not in flight (``rng``); under
    ``at_arrival`` a finished client is replaced at once (the buffer's last one after the
    update), under ``at_flush`` the buffer's clients are replaced when it is applied. Returns
    ``(time of the last update, mean staleness)``.
    """
    n = len(durations)
    events = [(durations[c], c, 0) for c in rng.choice(n, m, replace=False)]
    heapq.heapify(events)
    version, buffer, stale, clock = 0, 0, [], 0.0
    while version < updates:
        clock, client, started = heapq.heappop(events)
        stale.append(version - started)
        buffer += 1
        if restart == "at_arrival" and buffer < k:
            idle = sorted(set(range(n)) - {c for _, c, _ in events})
            new = int(rng.choice(idle))
            heapq.heappush(events, (clock + durations[new], new, version))
        if buffer == k:
            version, buffer = version + 1, 0
            freed = 1 if restart == "at_arrival" else k
            idle = sorted(set(range(n)) - {c for _, c, _ in events})
            for new in rng.choice(idle, freed, replace=False):
                heapq.heappush(events, (clock + durations[new], int(new), version))
    return clock, float(np.mean(stale))


@pytest.mark.parametrize("k", [3, 10])
def test_arrival_schedule_timing_matches_a_timing_only_simulation(k):
    """m = 10 clients in flight, site_speed = 1, 100 server updates: the simulator's clock and
    staleness (mean over 4 seeds) match the timing-only simulation (mean over 300 seeds), and
    restarting at once is much faster than waiting for the flush (the larger K, the more)."""
    sizes = tuple(int(s) for s in np.random.default_rng(7).integers(4, 40, size=20))
    data = make_uneven_data(sizes=sizes, seed=7)
    rng = np.random.default_rng(0)
    results = {}
    for restart in ("at_arrival", "at_flush"):
        sim = make(data, {"name": "fedbuff", "buffer_size": k, "concurrency": 10,
                          "restart": restart}, site_speed=1.0, cpr=10, axis="map",
                   local_epochs=1, batch_size=8, model=LogReg(data.num_classes))
        states = sim.run_replicas(sim.init_replicas([0, 1, 2, 3]), 100)
        got_clock = float(np.mean(np.asarray(states.clock)))
        got_stale = float(np.mean(np.asarray(states.inflight["staleness_sum"]))) / (100 * k)
        steps = np.ceil(np.asarray(data.train_counts) / 8)
        durations = steps * np.asarray(sim.speeds, np.float64)
        runs = np.array([timing_only(durations, 10, k, 100, restart, rng) for _ in range(300)])
        want_clock, want_stale = runs.mean(0)
        # One run's clock spreads about 3% over seeds (runs.std(0)); the mean of 4, half that.
        assert got_clock == pytest.approx(want_clock, rel=0.06), restart
        assert got_stale == pytest.approx(want_stale, rel=0.03, abs=0.02), restart
        results[restart] = (want_clock, want_stale)
    assert results["at_arrival"][0] < 0.9 * results["at_flush"][0]
    if k == 10:  # a full buffer under at_flush is synchronous: no staleness at all
        assert results["at_flush"][1] == 0 and results["at_arrival"][1] > 0.5
