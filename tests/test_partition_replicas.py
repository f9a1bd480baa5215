"""Partitions as replicas (``sweep.partition_alpha``, ``sweep.partition_seed``; fedbench/replica_data.py):
each replica trains on its own partition, padded to the program's common shapes, and its
metrics.jsonl is byte for byte the separate job's (unpadded data, constants in its trace)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import compose
from test_sweep_replicas import SMALL, check_against_separate_jobs

from fedbench.errors import ConfigError
from fedbench.replica_data import stack_padded
from fedbench.run import build_simulator, run_experiment


def test_dirichlet_alphas_and_seeds_equal_separate_jobs(tmp_path):
    summary = check_against_separate_jobs(tmp_path, ["sweep.partition_alpha=[0.1,5]", "seeds=2"], {
        f"partition_alpha={a:g},seed={s}": [f"partition.alpha={a}", f"seed={s}", "partition.seed=0"]
        for a in (0.1, 5) for s in (0, 1)
    })
    assert summary["timing"]["replica_data_mb"] > 0  # the stacked partitions' memory, reported
    # the partitions differ: each replica's own site sizes, not the first replica's
    sizes = [json.loads((tmp_path / "job" / f"partition_alpha={a},seed=0" / "summary.json").read_text())
             ["partition_stats"]["client_sizes"] for a in ("0.1", "5")]
    assert sizes[0] != sizes[1]


def test_partition_seeds_equal_separate_jobs(tmp_path):
    check_against_separate_jobs(tmp_path, ["sweep.partition_seed=[3,4]", "algorithm=scaffold"], {
        f"partition_seed={p},seed=0": [f"partition.seed={p}", "algorithm=scaffold"]
        for p in (3, 4)
    })


def test_padding_keeps_each_partitions_rows_and_counts():
    datas = [build_simulator(compose([f"partition.alpha={a}"])).data for a in (0.05, 10)]
    stacked = stack_padded(datas)
    for r, d in enumerate(datas):
        n, m, t = d.train_x.shape[1], d.test_x.shape[1], d.pooled_test_x.shape[0]
        np.testing.assert_array_equal(stacked.train_x[r, :, :n], d.train_x)
        np.testing.assert_array_equal(stacked.train_counts[r], d.train_counts)
        np.testing.assert_array_equal(stacked.pooled_test_y[r, :t], d.pooled_test_y)
        assert not np.asarray(stacked.train_x[r, :, n:]).any()
        assert not np.asarray(stacked.test_x[r, :, m:]).any()


@pytest.mark.parametrize("overrides,key", [
    (["sweep.partition_alpha=[0.1,1]", "partition=iid"], "sweep.partition_alpha"),
    (["sweep.partition_alpha=[0.1,1]", "privacy=dp_client"], "sweep.partition_alpha"),
    (["sweep.partition_alpha=[0.1,1]", "local_steps=3"], "sweep.partition_alpha"),
    (["sweep.partition_seed=[0,1]", "algorithm=ditto"], "sweep.partition_seed"),
    (["sweep.partition_seed=[0.5]"], "sweep.partition_seed"),
    (["sweep.partition_seed=[-1]"], "sweep.partition_seed"),  # NumPy's seeds are >= 0
])
def test_partition_sweeps_that_cannot_share_a_program_are_refused(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        run_experiment(compose(SMALL + overrides), tmp_path, progress=None)
    assert err.value.key == key
