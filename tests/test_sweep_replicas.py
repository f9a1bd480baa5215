"""In-program sweeps (``sweep.<name>=[...]``, fedbench/replicas.py) against separate jobs.

Independent expectation: each replica's metrics.jsonl is byte for byte the file of the separate
``fedbench`` job with the same values set on the command line (a run of its own, with constants
baked into its trace), and its epsilon is what that job's own calibration and accountant give.
"""

from __future__ import annotations

import json

import pytest
from conftest import compose

from fedbench.errors import ConfigError
from fedbench.privacy.mechanism import mechanism_class, registry
from fedbench.run import run_experiment

SMALL = ["rounds=4", "eval_every=2", "clients_per_round=5", "checkpoint_every=0"]


def check_against_separate_jobs(tmp_path, job_overrides, replicas):
    """``replicas``: directory name -> the overrides of the separate job it stands for."""
    summary = run_experiment(compose(SMALL + job_overrides), tmp_path / "job", progress=None)
    assert sorted(summary["replicas"]) == sorted(replicas)
    assert summary["timing"]["round_program_traces"] == 1  # one program for all of them
    names = sorted(replicas)
    for name in (names[0], names[-1]):  # the first and the last of the program's replicas
        overrides = replicas[name]
        alone = tmp_path / name
        run_experiment(compose(SMALL + overrides), alone, progress=None)
        got = (tmp_path / "job" / name / "metrics.jsonl").read_bytes()
        assert got == (alone / "metrics.jsonl").read_bytes(), name
        mine = json.loads((tmp_path / "job" / name / "summary.json").read_text())
        theirs = json.loads((alone / "summary.json").read_text())
        assert mine["config"] == theirs["config"]
        assert mine["privacy"] == theirs["privacy"]
    return summary


def test_learning_rates_and_seeds_equal_separate_jobs(tmp_path):
    check_against_separate_jobs(tmp_path, ["sweep.lr=[0.05,0.2]", "seeds=2"], {
        f"lr={lr:g},seed={s}": [f"lr={lr}", f"seed={s}", "partition.seed=0"]
        for lr in (0.05, 0.2) for s in (0, 1)
    })


def test_fedprox_mu_including_zero_equals_separate_jobs(tmp_path):
    check_against_separate_jobs(tmp_path, ["algorithm=fedprox", "sweep.mu=[0,0.5]"], {
        f"mu={mu:g},seed=0": ["algorithm=fedprox", f"algorithm.mu={mu}", "partition.seed=0"]
        for mu in (0, 0.5)
    })


def test_feddyn_alpha_equals_separate_jobs(tmp_path):
    check_against_separate_jobs(tmp_path, ["algorithm=feddyn", "sweep.alpha=[0.003,0.1]"], {
        f"alpha={a:g},seed=0": ["algorithm=feddyn", f"algorithm.alpha={a}", "partition.seed=0"]
        for a in (0.003, 0.1)
    })


def test_server_learning_rates_equal_separate_jobs(tmp_path, algorithm="fedadam"):
    """FedAdam's server step (FedAvgM's and FedBuff's are the same ``server_step``)."""
    check_against_separate_jobs(tmp_path, [f"algorithm={algorithm}", "sweep.server_lr=[0.3,1]"], {
        f"server_lr={v:g},seed=0": [f"algorithm={algorithm}", f"algorithm.server_lr={v}",
                                    "partition.seed=0"]
        for v in (0.3, 1)
    })


def test_client_dp_noise_multipliers_equal_separate_jobs(tmp_path):
    dp = ["privacy=dp_client", "privacy.target_epsilon=null", "privacy.clip=0.5"]
    summary = check_against_separate_jobs(tmp_path, dp + ["sweep.noise_multiplier=[0.3,1.5]"], {
        f"noise_multiplier={z:g},seed=0": dp + [f"privacy.noise_multiplier={z}",
                                                "partition.seed=0"]
        for z in (0.3, 1.5)
    })
    eps = [json.loads((tmp_path / "job" / n / "summary.json").read_text())["privacy"]["epsilon"]
           for n in summary["replicas"]]
    assert eps[0] > eps[1]  # less noise, more epsilon spent


#: what a mechanism needs beyond SMALL: DP-FTRL takes a fixed group of sites per round (20
#: sites in 4 groups of 5); a smaller clip keeps its noise from diverging at epsilon 2
MECHANISM_BASE = {"dp_ftrl": ["privacy.matrix=blt", "privacy.participation=cyclic",
                              "privacy.cycle=4", "privacy.clip=0.1"]}


@pytest.mark.parametrize("mechanism", [m for m in registry()
                                       if "target_epsilon" in mechanism_class(m).hyperparameters])
def test_target_epsilons_are_calibrated_per_replica(tmp_path, mechanism):
    """Every registered mechanism that declares ``target_epsilon`` sweepable joins by
    registering: each replica's calibration, noise and epsilon are its separate job's."""
    # RDP: every such mechanism accepts it, and its epsilons take milliseconds where PLD's take
    # about a second each (the PLD path's calibration: tests/test_privacy_correctness.py)
    dp = [f"privacy={mechanism}", "privacy.clip=1.0", "privacy.accountant=rdp"
          ] + MECHANISM_BASE.get(mechanism, [])
    check_against_separate_jobs(tmp_path, dp + ["sweep.target_epsilon=[2,20]"], {
        f"target_epsilon={e:g},seed=0": dp + [f"privacy.target_epsilon={e}", "partition.seed=0"]
        for e in (2, 20)
    })


def test_dp_sgd_clips_equal_separate_jobs(tmp_path):
    dp = ["privacy=dp_sample", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
    check_against_separate_jobs(tmp_path, dp + ["sweep.clip=[0.1,2]"], {
        f"clip={c:g},seed=0": dp + [f"privacy.clip={c}", "partition.seed=0"] for c in (0.1, 2)
    })


@pytest.mark.parametrize("overrides, key", [
    (["+sweep.batch_size=[5,10]"], "sweep.batch_size"),
    (["sweep.mu=[0.1]"], "sweep.mu"),
    (["sweep.noise_multiplier=[1.0]"], "sweep.noise_multiplier"),
    (["sweep.lr=[fast]"], "sweep.lr"),
    (["privacy=dp_client", "privacy.adaptive_clip.enabled=true", "sweep.clip=[0.5,1]"],
     "sweep.clip"),
    (["privacy=dp_client", "sweep.target_epsilon=[1,2]", "sweep.noise_multiplier=[1.0]"],
     "sweep.noise_multiplier"),
])
def test_bad_sweeps_name_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        run_experiment(compose(SMALL + overrides), tmp_path, progress=None)
    assert err.value.key == key


def test_a_memory_budget_runs_replicas_in_chunks_with_the_same_results(tmp_path):
    job = ["sweep.lr=[0.05,0.2]", "seeds=2"]
    whole = run_experiment(compose(SMALL + job), tmp_path / "whole", progress=None)
    assert whole["timing"]["replica_chunks"] == 1
    budget = 3.5 * whole["timing"]["replica_memory_mb_estimate"]  # 3 a chunk: 4 = 3 + 1 padded
    parts = run_experiment(compose(SMALL + job + [f"replica_memory_mb={budget}"]),
                           tmp_path / "parts", progress=None)
    assert parts["timing"]["replica_chunks"] == 2
    assert parts["timing"]["round_program_traces"] == 1  # equal chunk shapes: one program
    for name in whole["replicas"]:
        assert ((tmp_path / "parts" / name / "metrics.jsonl").read_bytes()
                == (tmp_path / "whole" / name / "metrics.jsonl").read_bytes())


@pytest.mark.parametrize("overrides, key", [
    (["sweep.lr=[0.1,-0.5]"], "lr"),
    (["sweep.lr=[0.1,nan]"], "lr"),
    (["algorithm=fedprox", "sweep.mu=[0.1,-1]"], "algorithm.mu"),
])
def test_every_replica_value_is_checked_not_only_the_first(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        run_experiment(compose(SMALL + overrides), tmp_path, progress=None)
    assert err.value.key == key


def test_a_diverged_replica_reports_what_its_separate_job_spent(tmp_path):
    """The job of a replica that diverges stops there: its summary's rounds, participation and
    epsilon are those of that round, not of the round the other replicas reached."""
    dp = ["privacy=dp_client", "privacy.target_epsilon=null", "privacy.noise_multiplier=0.5",
          "privacy.clip=1.0"]  # lr 1e9 overflows to a NaN delta, which clipping keeps NaN
    check_against_separate_jobs(tmp_path, dp + ["sweep.lr=[0.05,1e9]"], {
        f"lr={lr:g},seed=0": dp + [f"lr={lr}", "partition.seed=0"] for lr in (0.05, 1e9)
    })
    diverged = json.loads((tmp_path / "job" / "lr=1e+09,seed=0" / "summary.json").read_text())
    finished = json.loads((tmp_path / "job" / "lr=0.05,seed=0" / "summary.json").read_text())
    assert diverged["status"] == "diverged" and finished["status"] == "completed"
    assert diverged["privacy"]["steps"] < finished["privacy"]["steps"] == 4
