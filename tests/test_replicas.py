"""In-program seeds (``seeds=S``): S runs vmapped in one compiled program, each its own run."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import compose, make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.collect import collect
from fedbench.errors import ConfigError
from fedbench.model import MLP
from fedbench.run import run_experiment
from fedbench.privacy.dp_client import ClientDP
from fedbench.simulator import Settings, Simulator

SMALL = ["dataset=breast_cancer", "model=logreg", "num_clients=5", "clients_per_round=3",
         "rounds=6", "eval_every=3", "partition.min_size=5"]


@pytest.mark.parametrize("name", ["fedavg", "scaffold", "fedbuff", "dp_client"])
def test_replicas_equal_separate_simulations(name):
    data = make_uneven_data()
    privacy = None
    if name == "dp_client":
        privacy = ClientDP(clip=0.5, noise_multiplier=1.0, sampling="fixed", rate=0.5,
                           expected_cohort=3, buffer=3)
        algorithm = build_algorithm({"name": "fedavg"})
    elif name == "fedbuff":
        algorithm = build_algorithm({"name": "fedbuff", "buffer_size": 2, "concurrency": 3}, 3)
    else:
        algorithm = build_algorithm({"name": name})
    sim = Simulator(MLP(3, (8,)), algorithm, data, Settings(3, 2, 4, 0.1, "map"), seed=0,
                    privacy=privacy)
    many = sim.run_replicas(sim.init_replicas([4, 5, 6]), 2)
    many = sim.run_replicas(many, 1)  # a second block reuses the program
    for i, seed in enumerate([4, 5, 6]):
        one = sim.run(sim.run(sim.init(seed), 2), 1)
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(sim.replica(many, i).params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first, second = (jax.tree.leaves(sim.replica(many, i).params)[0] for i in (0, 1))
    assert not np.allclose(first, second)  # the replicas really differ


def test_seeds_job_writes_one_run_per_seed_equal_to_separate_runs(tmp_path):
    summary = run_experiment(compose(SMALL + ["seeds=3", "seed=2"]), tmp_path / "job", progress=None)
    assert summary["seeds"] == [2, 3, 4] and summary["status"] == "completed"
    assert summary["timing"]["round_program_traces"] == 1  # two blocks, one compilation
    for seed in (2, 3, 4):
        replica = json.loads((tmp_path / "job" / f"seed={seed}" / "summary.json").read_text())
        assert replica["config"]["seed"] == seed and replica["config"]["partition"]["seed"] == 2
        # The replica's own config, run on its own, gives the same metrics.
        alone = run_experiment(replica["config"], tmp_path / f"alone{seed}", progress=None)
        got = [json.loads(x) for x in (tmp_path / "job" / f"seed={seed}" / "metrics.jsonl").read_text().splitlines()]
        want = [json.loads(x) for x in (tmp_path / f"alone{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert [m["round"] for m in got] == [0, 3, 6]
        for g, w in zip(got, want):
            for key in ("test_accuracy", "train_loss", "client_accuracy_mean", "bytes_up"):
                np.testing.assert_allclose(g[key], w[key], rtol=1e-6, atol=1e-7)
        assert alone["final"]["test_accuracy"] == pytest.approx(replica["final"]["test_accuracy"])
    table = collect(tmp_path / "job")
    assert sorted(table["seed"].unique()) == [2, 3, 4] and len(table) == 3 * 3


def test_seeds_with_site_speed_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        run_experiment(compose(SMALL + ["seeds=2", "site_speed=0.5"]), tmp_path, progress=None)
    assert err.value.key == "seeds"
    with pytest.raises(ConfigError) as err:
        run_experiment(compose(SMALL + ["seeds=0"]), tmp_path, progress=None)
    assert err.value.key == "seeds"
