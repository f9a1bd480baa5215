"""``fedbench -m ... sweep_group=true``: a multirun's vectorisable sweeps run in one program, with
the same per-run results as separate jobs (fedbench/sweep_group.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedbench.errors import ConfigError
from fedbench.sweep_group import group_argv


def test_vectorisable_sweeps_move_in_program_and_shape_changing_ones_stay_jobs():
    argv, notes = group_argv(["-m", "lr=0.03,0.1", "privacy=dp_client",
                              "privacy.target_epsilon=1,8,inf", "model=mlp,logreg",
                              "seed=3,4,5", "partition.seed=0", "sweep_group=true"])
    assert argv == ["-m", "sweep.lr=[0.03,0.1]", "privacy=dp_client",
                    "sweep.target_epsilon=[1,8,inf]", "model=mlp,logreg", "seed=3", "seeds=3",
                    "partition.seed=0"]
    assert len(notes) == 3


@pytest.mark.parametrize("seeds,extra,why", [("0,1,2", [], "partition.seed"),
                                             ("0,2", ["partition.seed=1"], "consecutive")])
def test_seeds_stay_separate_jobs_unless_pinned_and_consecutive(seeds, extra, why):
    argv, notes = group_argv(["-m", f"seed={seeds}", *extra, "sweep_group=true"])
    assert f"seed={seeds}" in argv and "seeds=" not in " ".join(argv)
    assert why in notes[0]


def test_without_the_flag_nothing_changes_and_misuse_names_the_key():
    assert group_argv(["-m", "lr=0.1,0.2"]) == (["-m", "lr=0.1,0.2"], [])
    assert group_argv(["-m", "lr=0.1,0.2", "sweep_group=false"])[0] == ["-m", "lr=0.1,0.2"]
    with pytest.raises(ConfigError, match="sweep_group"):
        group_argv(["lr=0.1", "sweep_group=true"])  # not a multirun
    with pytest.raises(ConfigError, match="sweep_group"):
        group_argv(["-m", "sweep_group=yes"])
    with pytest.raises(ConfigError, match=r"sweep\.lr"):
        group_argv(["-m", "lr=0.1,0.2", "sweep.lr=[0.3]", "sweep_group=true"])


def _finals(root):
    out = {}
    for path in root.rglob("summary.json"):
        summary = json.loads(path.read_text())
        cfg = summary.get("config", {})
        if cfg.get("seeds", 1) == 1 and "final" in summary:
            out[(cfg["lr"], cfg["seed"])] = summary["final"]
    return out


@pytest.mark.slow
def test_a_grouped_multirun_writes_the_runs_separate_jobs_write(tmp_path):
    common = ["-m", "lr=0.05,0.1", "seed=0,1", "partition.seed=0", "rounds=4", "eval_every=2"]
    for name, extra in (("grouped", ["sweep_group=true"]), ("jobs", [])):
        done = subprocess.run([sys.executable, "-m", "fedbench", *common, *extra,
                               f"hydra.sweep.dir={tmp_path / name}"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    grouped, jobs = _finals(tmp_path / "grouped"), _finals(tmp_path / "jobs")
    assert sorted(grouped) == [(0.05, 0), (0.05, 1), (0.1, 0), (0.1, 1)]
    assert grouped == jobs  # bit for bit: map replicas are each their separate job's program
