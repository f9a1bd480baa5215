"""Checkpoints and resume (fedbench/checkpoint.py), with injected faults.

A run stopped at any point and started again must end exactly where an uninterrupted run ends:
the same ``metrics.jsonl`` (no round missing or repeated) and the same final state, bit for bit
on CPU. Faults: an exception between blocks, SIGKILL of the real command at a random moment, a
corrupted or half-written latest checkpoint, an unwritable run directory, a sweep with one job
killed.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, compose

import fedbench.replicas
import fedbench.run
from fedbench.checkpoint import CHECKPOINTS, CheckpointWarning, check_writable
from fedbench.config_check import check_command_line, check_overrides
from fedbench.errors import ConfigError
from fedbench.run import run_experiment

TINY = ["dataset=breast_cancer", "model=logreg", "num_clients=4", "clients_per_round=2",
        "eval_every=2"]
CASES = {  # per-client store, FedBuff's clients in flight, adaptive clip, stacked states
    "fedavg": [],
    "scaffold": ["algorithm=scaffold"],
    "fedbuff": ["algorithm=fedbuff", "algorithm.concurrency=3", "algorithm.buffer_size=2",
                "site_speed=0.5"],
    "dp_client_adaptive": ["privacy=dp_client", "privacy.target_epsilon=null",
                           "privacy.noise_multiplier=1.0", "privacy.adaptive_clip.enabled=true",
                           "privacy.adaptive_clip.count_stddev=1.0", "privacy.accountant=rdp"],
    "seeds=2": ["seeds=2"],
    # DP-FTRL's noise state (every round's draw, ServerState.dp_noise), mid-horizon.
    "dp_ftrl": ["privacy=dp_ftrl", "privacy.matrix=tree", "privacy.target_epsilon=null",
                "privacy.noise_multiplier=1.0", "clients_per_round=4"],
    # the BLT's streamed noise state (its inverse's buffers), sites in 2 cyclic groups
    "dp_ftrl_blt": ["privacy=dp_ftrl", "privacy.matrix=blt", "privacy.target_epsilon=null",
                    "privacy.noise_multiplier=1.0", "privacy.participation=cyclic",
                    "privacy.cycle=2"],
    # every site every round: the BLT is the identity, no noise state at all
    "dp_ftrl_blt_every_round": ["privacy=dp_ftrl", "privacy.matrix=blt",
                                "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0",
                                "clients_per_round=4"],
    # distributed DP: its count of wrapped coordinates (ServerState.wraps); 6 bits and a
    # headroom of half a std, so that it moves
    "ddp": ["privacy=ddp", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0",
            "privacy.bits=6", "privacy.k_stddevs=0.5", "clients_per_round=4"],
}
TIMING = ("compile_seconds", "run_seconds", "rounds_per_second")


class Interrupt(Exception):
    """Stands for a crash between two blocks of rounds."""


def _stop_at(round_: int):
    def progress(metrics, rounds, rate):
        if metrics["round"] == round_:
            raise Interrupt
    return progress


def _quiet(metrics, rounds, rate):
    """A progress callback that prints nothing (the resume notice is still printed)."""


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _run_dirs(run_dir: Path, cfg: dict) -> list[Path]:
    """The directories holding metrics.jsonl: the run's, or one per seed."""
    seeds = cfg.get("seeds") or 1
    return [run_dir] if seeds == 1 else [run_dir / f"seed={cfg['seed'] + i}" for i in range(seeds)]


def _saved_state(run_dir: Path, step: int) -> list[np.ndarray]:
    """Every array of the state checkpointed at ``step`` (no target: plain arrays)."""
    import orbax.checkpoint as ocp

    path = (run_dir / CHECKPOINTS / str(step) / "state").absolute()
    return [np.asarray(leaf) for leaf in jax.tree.leaves(ocp.StandardCheckpointer().restore(path))]


def _assert_same_run(a: Path, b: Path, cfg: dict, rounds: int) -> None:
    for da, db in zip(_run_dirs(a, cfg), _run_dirs(b, cfg)):
        assert (db / "metrics.jsonl").read_text() == (da / "metrics.jsonl").read_text()
        rows = _metrics(db)
        assert [r["round"] for r in rows] == list(range(0, rounds + 1, cfg["eval_every"]))
        assert json.loads((db / "summary.json").read_text())["final"] == json.loads(
            (da / "summary.json").read_text())["final"]
    want, got = _saved_state(a, rounds), _saved_state(b, rounds)
    assert len(want) == len(got)
    for x, y in zip(want, got):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize("case", list(CASES))
def test_stopped_and_resumed_run_equals_the_uninterrupted_run(case, tmp_path, capsys,
                                                             monkeypatch):
    cfg = compose(TINY + CASES[case] + ["rounds=8"])
    whole = run_experiment(cfg, tmp_path / "whole", progress=None)
    assert whole["status"] == "completed"

    # Checkpoints every 3 rounds (blocks cut at 2, 3, 4, 6, 8); a crash right after round 4's
    # metrics were written (for seeds=2: the first seed's only), so it continues from round 3,
    # runs round 4 again and must not write its metrics twice.
    cut = {**cfg, "checkpoint_every": 3}
    write_jsonl = fedbench.run.write_jsonl

    def crash_after_round_4(path, rows):
        write_jsonl(path, rows)
        if rows[-1]["round"] == 4:
            raise Interrupt

    with monkeypatch.context() as patch, pytest.raises(Interrupt):
        patch.setattr(fedbench.run, "write_jsonl", crash_after_round_4)  # a single run
        patch.setattr(fedbench.replicas, "write_jsonl", crash_after_round_4)  # seeds
        run_experiment(cut, tmp_path / "cut", progress=None)
    assert sorted(p.name for p in (tmp_path / "cut" / CHECKPOINTS).iterdir()) == ["3"]
    assert [r["round"] for r in _metrics(_run_dirs(tmp_path / "cut", cfg)[0])] == [0, 2, 4]
    capsys.readouterr()
    resumed = run_experiment({**cut, "resume": True}, tmp_path / "cut", progress=_quiet)
    assert "fedbench: resuming from round 3" in capsys.readouterr().out
    assert resumed["status"] == "completed"
    _assert_same_run(tmp_path / "whole", tmp_path / "cut", cfg, 8)
    assert sorted(p.name for p in (tmp_path / "cut" / CHECKPOINTS).iterdir()) == ["6", "8"]


def test_checkpoint_settings_and_resume_rules(tmp_path, capsys):
    cfg = compose(TINY + ["rounds=4"])
    for key, value in (("checkpoint_every", -1), ("checkpoint_every", 1.5),
                       ("checkpoint_every", True), ("resume", "yes"), ("resume", 1)):
        with pytest.raises(ConfigError) as err:
            run_experiment({**cfg, key: value}, tmp_path / "bad", progress=None)
        assert err.value.key == key
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    check_overrides(["checkpoint_every=5", "resume=true"], REPO / "conf")
    check_overrides(["checkpoint_every=null", "resume=false"], REPO / "conf")

    with pytest.raises(ConfigError, match="holds none") as err:  # nothing to resume
        run_experiment({**cfg, "resume": True}, tmp_path / "run", progress=None)
    assert err.value.key == "resume"

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "run", progress=_stop_at(2))
    other = {**cfg, "lr": 0.05}
    with pytest.raises(ConfigError, match="differs in lr"):  # resume=true: this config's only
        run_experiment({**other, "resume": True}, tmp_path / "run", progress=None)
    assert (tmp_path / "run" / CHECKPOINTS / "2").is_dir()
    # resume=null: a checkpoint of another config is replaced, with a warning.
    with pytest.warns(CheckpointWarning, match="another config .*differs in lr"):
        run_experiment(other, tmp_path / "run", progress=_quiet)
    assert "resuming" not in capsys.readouterr().out
    run_experiment(other, tmp_path / "fresh", progress=None)
    assert _metrics(tmp_path / "run") == _metrics(tmp_path / "fresh")
    # resume=false starts afresh even from a checkpoint of the same config.
    run_experiment({**other, "resume": False}, tmp_path / "run", progress=_quiet)
    assert "resuming" not in capsys.readouterr().out
    # resume=null, same config, finished: nothing to run, the same results again.
    run_experiment(other, tmp_path / "run", progress=_quiet)
    assert "resuming from round 4" in capsys.readouterr().out
    assert _metrics(tmp_path / "run") == _metrics(tmp_path / "fresh")
    # checkpoint_every=0: none written.
    run_experiment({**cfg, "checkpoint_every": 0}, tmp_path / "none", progress=None)
    assert not (tmp_path / "none" / CHECKPOINTS).exists()


def _garble_metadata(step_dir: Path) -> None:
    (step_dir / "state" / "_METADATA").write_text("{not json")


def _truncate_arrays(step_dir: Path) -> None:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[:7])


def _lose_host_state(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "host")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 8-round run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    cfg = compose(TINY + ["rounds=8", "checkpoint_every=2"])
    run_experiment(cfg, run_dir, progress=None)
    return cfg, run_dir


@pytest.mark.parametrize("damage", [_garble_metadata, _truncate_arrays, _lose_host_state])
# orbax's failed read of damaged arrays can leave a callback for its closed asyncio loop
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(damage, reference, tmp_path,
                                                                  capsys):
    cfg, whole = reference
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        run_experiment(cfg, run_dir, progress=_stop_at(6))
    assert sorted(p.name for p in (run_dir / CHECKPOINTS).iterdir()) == ["4", "6"]
    damage(run_dir / CHECKPOINTS / "6")
    capsys.readouterr()
    with pytest.warns(CheckpointWarning, match="round 6 .* unreadable .*continuing from round 4"):
        run_experiment(cfg, run_dir, progress=_quiet)
    assert "resuming from round 4" in capsys.readouterr().out
    _assert_same_run(whole, run_dir, cfg, 8)


def test_half_written_latest_checkpoint_is_ignored(reference, tmp_path, capsys):
    cfg, whole = reference
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        run_experiment(cfg, run_dir, progress=_stop_at(6))
    # What a crash during the save of round 8 leaves: orbax's temporary directory, never renamed.
    partial = run_dir / CHECKPOINTS / "8.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(run_dir / CHECKPOINTS / "6", partial)
    shutil.rmtree(partial / "host")
    capsys.readouterr()
    run_experiment(cfg, run_dir, progress=_quiet)
    assert "resuming from round 6" in capsys.readouterr().out
    assert not partial.exists()
    _assert_same_run(whole, run_dir, cfg, 8)


def test_unwritable_run_directory_is_refused_before_any_work(tmp_path):
    cfg = compose(TINY + ["rounds=2"])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    with pytest.raises(ConfigError, match="a_file is not a directory") as err:
        run_experiment(cfg, blocker / "run", progress=None)
    assert err.value.key == "out_dir" and "\n" not in str(err.value)
    assert blocker.read_text() == "not a directory\n"

    # Earlier results stay as they were when the checkpoints cannot be written.
    run_dir = tmp_path / "earlier"
    run_dir.mkdir()
    earlier = {"metrics.jsonl": '{"round": 0}\n', "summary.json": '{"status": "completed"}\n',
               CHECKPOINTS: "in the way\n"}
    for name, text in earlier.items():
        (run_dir / name).write_text(text)
    with pytest.raises(ConfigError, match="checkpoints is not a directory"):
        run_experiment(cfg, run_dir, progress=None)
    assert {p.name: p.read_text() for p in run_dir.iterdir()} == earlier
    check_writable(tmp_path / "new" / "deeper")  # a directory still to be made is fine
    assert not (tmp_path / "new").exists()

    # The command line is checked before Hydra writes its logs there (exit status 2).
    for argv, key in (([f"hydra.run.dir={blocker / 'run'}"], "hydra.run.dir"),
                      (["-m", "seed=0,1", f"hydra.sweep.dir={blocker / 'sweep'}"],
                       "hydra.sweep.dir")):
        with pytest.raises(ConfigError, match="a_file is not a directory") as err:
            check_command_line(argv, REPO / "conf")
        assert err.value.key == key


# --------------------------------------------------------------------------- the real command


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_DIR")}
    env["PYTHONPATH"] = str(REPO)  # this checkout, whatever an editable install points at
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "fedbench", *overrides]


KILLED = TINY + ["rounds=40", "checkpoint_every=2"]


@pytest.mark.slow
def test_run_killed_at_a_random_moment_resumes_to_the_same_results(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(_command(*KILLED, f"hydra.run.dir={whole}"), cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    delay = random.uniform(0.0, 0.5)
    proc = subprocess.Popen(_command(*KILLED, f"hydra.run.dir={killed}"), cwd=tmp_path,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.isdigit() for p in (killed / CHECKPOINTS).glob("*")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill ({delay=:.3f} s)"
    assert not (killed / "summary.json").exists()

    again = subprocess.run(_command(*KILLED, f"hydra.run.dir={killed}"), cwd=tmp_path,
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fedbench: resuming from round" in again.stdout, f"{delay=:.3f} s"
    _assert_same_run(whole, killed, compose(KILLED), 40)


def _without_dac_override(command: list[str]) -> list[str]:
    """``command`` run so that file permissions bind, also for root (which ignores them)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("capsh") is None:
        pytest.skip("running as root without capsh: cannot make a directory unwritable")
    return ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c",
            shlex.join(command)]


@pytest.mark.slow
def test_unwritable_run_directory_exits_2_and_keeps_earlier_results(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    earlier = {"metrics.jsonl": '{"round": 0}\n', "summary.json": '{"status": "completed"}\n'}
    for name, text in earlier.items():
        (run_dir / name).write_text(text)
    run_dir.chmod(0o555)
    try:
        proc = subprocess.run(
            _without_dac_override(_command(*TINY, "rounds=2", f"hydra.run.dir={run_dir}")),
            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
        )
    finally:
        run_dir.chmod(0o755)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"fedbench: error: hydra.run.dir='{run_dir}' is not allowed: "
                                  "a directory fedbench can write to")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert {p.name: p.read_text() for p in run_dir.iterdir()} == earlier


@pytest.mark.slow
def test_sweep_resumes_only_the_interrupted_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    common = TINY + ["rounds=8"]
    jobs = {lr: sweep_dir / ",".join(sorted(common + [f"lr={lr}"])) for lr in ("0.1", "0.2")}
    finished, interrupted = jobs["0.1"], jobs["0.2"]
    run_experiment(compose(common + ["lr=0.1"]), finished, progress=None)
    with pytest.raises(Interrupt):
        run_experiment(compose(common + ["lr=0.2"]), interrupted, progress=_stop_at(4))
    assert not (interrupted / "summary.json").exists()
    whole = tmp_path / "whole"
    run_experiment(compose(common + ["lr=0.2"]), whole, progress=None)

    def results(run_dir):  # what the run wrote (Hydra adds its .hydra/ and log to every job)
        return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")
                if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}

    before = results(finished)

    # checkpoint_every stays out of the job directories' names and the config comparison.
    proc = subprocess.run(
        _command("-m", *common, "lr=0.1,0.2", "checkpoint_every=2",
                 f"hydra.sweep.dir={sweep_dir}"),
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"fedbench: skipped {finished} (summary.json: completed)" in proc.stdout
    assert "fedbench: resuming from round 4" in proc.stdout
    assert proc.stdout.count("resuming") == 1
    assert results(finished) == before
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(
        p.name for p in jobs.values())
    _assert_same_run(whole, interrupted, compose(common), 8)
