"""Hospital links and the clock in seconds (``links`` config group, fedbench/links.py).

Independent expectations: each client's seconds worked out here from the profile table's rates
(rtt + bits / rate per transfer, plus its compute), with the model's size counted by hand from
its layer shapes; largest-remainder counts worked out by hand; FedBuff against the event-driven
reference loop fed those hand-computed durations.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from conftest import compose, make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.compression import build_compression
from fedbench.errors import ConfigError
from fedbench.links import build_links
from fedbench.model import MLP
from reference import run_fedbuff_reference
from fedbench.run import run_experiment
from fedbench.simulator import Settings, Simulator

# (down Mbit/s, up Mbit/s, round trip ms), as documented in conf/links/profiles.yaml
RATES = {"fibre": (1000, 1000, 5), "hospital_dsl": (20, 5, 30), "rural_4g": (10, 2, 60),
         "satellite": (25, 3, 600)}
SITES = ["satellite", "fibre", "rural_4g", "hospital_dsl", "fibre", "rural_4g"]
PARAMS = 4 * 8 + 8 + 8 * 3 + 3  # MLP(hidden 8) on 4 features and 3 classes: 67 floats


def seconds(site, steps, speed, step_seconds, bits_down, bits_up):
    down, up, rtt = RATES[site]
    return (2 * rtt / 1e3 + bits_down / (down * 1e6) + steps * step_seconds * speed
            + bits_up / (up * 1e6))


def make(data, cfg, links, transforms=(), cpr=3, site_speed=0.0):
    settings = Settings(clients_per_round=cpr, local_epochs=2, batch_size=4, lr=0.1,
                        client_axis="vmap")
    algorithm = build_algorithm({**cfg, "site_speed": site_speed}, cpr)
    return Simulator(MLP(data.num_classes, (8,)), algorithm, data, settings, seed=0,
                     links=links, transforms=transforms)


def test_shares_are_split_by_largest_remainder_in_a_seeded_order():
    links = build_links({"name": "profiles", "shares": {"hospital_dsl": 0.7, "rural_4g": 0.3},
                         "step_seconds": 0.01, "seed": 0}, 20)
    assert links.summary()["sites_per_profile"] == {"hospital_dsl": 14, "rural_4g": 6}
    # 7 sites: 4.9 and 2.1 -> 4 and 2, the one left over to the larger remainder (0.9).
    seven = build_links({"name": "profiles", "shares": {"hospital_dsl": 0.7, "rural_4g": 0.3},
                         "step_seconds": 0.01}, 7)
    assert seven.summary()["sites_per_profile"] == {"hospital_dsl": 5, "rural_4g": 2}
    other = build_links({"name": "profiles", "shares": {"hospital_dsl": 0.7, "rural_4g": 0.3},
                         "step_seconds": 0.01, "seed": 1}, 20)
    assert other.names != links.names and sorted(other.names) == sorted(links.names)
    i = links.names.index("rural_4g")
    assert links.up_bps[i] == 2e6 and links.down_bps[i] == 10e6 and links.rtt_s[i] == 0.06


@pytest.mark.parametrize("name, releases", [("fedavg", 1), ("scaffold", 2)])
def test_a_round_lasts_as_long_as_its_slowest_clients_transfers_and_compute(name, releases):
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12))
    links = build_links({"name": "profiles", "sites": SITES, "step_seconds": 0.5}, 6)
    sim = make(data, {"name": name}, links, site_speed=0.5)
    state = sim.init()
    counts, speeds = np.asarray(data.train_counts), np.asarray(sim.speeds, np.float64)
    bits = 32 * PARAMS * releases  # the model (and SCAFFOLD's control variate), dense
    expected = 0.0
    for r in range(3):
        sample_key, _ = jax.random.split(jax.random.fold_in(state.key, r))
        ids = np.asarray(jax.random.choice(sample_key, 6, (3,), replace=False))
        expected += max(seconds(SITES[c], math.ceil(counts[c] / 4) * 2, speeds[c], 0.5, bits,
                                bits) for c in ids)
    got = float(sim.run(state, 3).clock)
    assert got == pytest.approx(expected, rel=1e-5)


def test_compressed_uploads_are_timed_at_their_encoded_size():
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12))
    links = build_links({"name": "profiles", "sites": SITES, "step_seconds": 0.01}, 6)
    # Top-1 over the whole model: one 32-bit value and its position in 7 bits (67 entries).
    compressor = build_compression({"name": "topk", "k": 1, "per_tensor": False})
    sim = make(data, {"name": "fedavg"}, links, transforms=(compressor.transform(),), cpr=6)
    state = sim.init()
    counts = np.asarray(data.train_counts)
    expected = max(seconds(SITES[c], math.ceil(counts[c] / 4) * 2, 1.0, 0.01, 32 * PARAMS,
                           32 + 7) for c in range(6))
    assert float(sim.run(state, 1).clock) == pytest.approx(expected, rel=1e-5)


def test_fedbuff_schedules_arrivals_on_the_same_link_durations():
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 9, 14), seed=3)
    sites = SITES + ["satellite", "hospital_dsl"]
    links = build_links({"name": "profiles", "sites": sites, "step_seconds": 0.2}, 8)
    sim = make(data, {"name": "fedbuff", "buffer_size": 2, "concurrency": 5}, links)
    state = sim.init()
    counts = np.asarray(data.train_counts)
    durations = np.array([seconds(sites[c], math.ceil(counts[c] / 4) * 2, 1.0, 0.2,
                                  32 * PARAMS, 32 * PARAMS) for c in range(8)])
    _, log = run_fedbuff_reference(sim.apply_fn, sim.algorithm, data, state.params, state.key,
                                   6, lr=0.1, local_epochs=2, batch_size=4,
                                   speeds=np.ones(8), durations=durations)
    got = sim.run(state, 6)
    assert float(got.clock) == pytest.approx(log[-1]["clock"], rel=1e-5)
    arrived = np.bincount([c for entry in log for c in entry["clients"]], minlength=8)
    np.testing.assert_array_equal(np.asarray(got.participation), arrived)


@pytest.mark.parametrize("cfg, key", [
    ({"shares": {"dialup": 1.0}}, "links.shares"),
    ({"shares": {"fibre": -1.0}}, "links.shares.fibre"),
    ({"sites": ["fibre"] * 5}, "links.sites"),
    ({"sites": ["fibre"] * 5 + ["carrier_pigeon"]}, "links.sites"),
    ({"profile": "dialup"}, "links.profile"),
    ({"step_seconds": 0}, "links.step_seconds"),
    ({"bandwidth": 3}, "links.bandwidth"),
    ({"profiles": {"mine": {"down_mbps": 1, "up_mbps": 1}}}, "links.profiles.mine"),
])
def test_bad_link_settings_name_the_key(cfg, key):
    base = {"name": "profiles", "shares": {"fibre": 1.0}, "step_seconds": 0.01}
    with pytest.raises(ConfigError) as err:
        build_links({**base, **cfg}, 6)
    assert err.value.key == key


def test_a_run_reports_seconds_bytes_and_the_compression_ratio(tmp_path):
    cfg = compose(["links=profiles", "links.profile=rural_4g", "links.step_seconds=0.02",
                   "rounds=4", "eval_every=2", "compression=topk", "compression.fraction=0.01",
                   "checkpoint_every=0"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    final = summary["final"]
    assert summary["links"]["sites_per_profile"] == {"rural_4g": cfg["num_clients"]}
    assert final["simulated_seconds"] == final["simulated_time"] > 0
    # Dense float32 over the encoded bytes: 1% top-k of the 2NN is more than 10x smaller.
    dense = final["bytes_down"]  # every sampled client downloaded the dense model
    assert final["compression_ratio"] == pytest.approx(dense / final["bytes_up"], rel=1e-9)
    assert final["compression_ratio"] > 10
    # Each round: 10 rural sites download 1.77 Mbit at 10 Mbit/s, upload about 1/10 of it at
    # 2 Mbit/s and compute; four rounds take at least 4 x (0.12 + 0.17) seconds.
    assert final["simulated_seconds"] > 4 * (0.12 + 32 * 55210 / 10e6)
