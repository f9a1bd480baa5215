"""Experiment tracking: W&B offline runs read back, and the disabled default.

The offline run is read back with ``wandb leet inspect --json`` (W&B's own reader of the
``.wandb`` transaction log: one JSON object per record) and ``--summary --json`` (config and
summary as the run ended), so nothing here depends on W&B's private modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose

from fedbench.errors import ConfigError
from fedbench.run import run_experiment
from fedbench.tracking import Tracker, WandbTracker, build_tracker

TINY = ["rounds=3", "eval_every=1", "dataset=breast_cancer", "model=logreg", "num_clients=4",
        "clients_per_round=2"]


def _leet(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return proc.stdout


def read_offline_run(run_path: Path) -> tuple[list[dict], dict]:
    """(records, state) of the offline W&B run in ``run_path``."""
    records = [json.loads(line) for line in _leet("--json", str(run_path)).splitlines() if line]
    state = json.loads(_leet("--summary", "--json", str(run_path)))
    return records, state


def test_build_tracker_choices(tmp_path):
    assert type(build_tracker(None, tmp_path)) is Tracker
    assert type(build_tracker(compose([])["tracking"], tmp_path)) is Tracker  # the default
    tracker = build_tracker(compose(["tracking=wandb"])["tracking"], tmp_path, group="g",
                            run_name="seed=1")
    assert isinstance(tracker, WandbTracker)
    assert (tracker.mode, tracker.project, tracker.group, tracker.run_name) == (
        "online", "fedbench", "g", "seed=1")
    explicit = build_tracker({"name": "wandb", "mode": "offline", "group": "mine", "dir": "d"},
                             tmp_path, group="g")
    assert explicit.group == "mine" and explicit.dir == Path("d")
    for cfg, key in [({"name": "mlflow"}, "tracking.name"),
                     ({"name": "wandb", "mode": "offlin"}, "tracking.mode"),
                     ({"name": "wandb", "tags": "a"}, "tracking.tags")]:
        with pytest.raises(ConfigError) as err:
            build_tracker(cfg, tmp_path)
        assert err.value.key == key


def test_wandb_environment_variables_work_and_the_config_wins(tmp_path, monkeypatch):
    """W&B's convention: WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR apply where the
    config leaves the key null, and a key set in the config wins."""
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    default = compose(["tracking=wandb"])["tracking"]
    assert build_tracker(default, tmp_path).mode == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "ward")
    monkeypatch.setenv("WANDB_ENTITY", "hospital")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "env"))
    tracker = build_tracker(default, tmp_path)
    assert (tracker.mode, tracker.project, tracker.entity, tracker.dir) == (
        "offline", "ward", "hospital", tmp_path / "env")
    given = compose(["tracking=wandb", "tracking.mode=disabled", "tracking.project=mine"])
    tracker = build_tracker(given["tracking"], tmp_path)
    assert (tracker.mode, tracker.project) == ("disabled", "mine")
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's older name for offline
    assert build_tracker(default, tmp_path).mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "offlin")
    with pytest.raises(ConfigError) as err:
        build_tracker(default, tmp_path)
    assert err.value.key == "WANDB_MODE"


def test_wandb_mode_offline_from_the_environment_runs_without_an_api_key(tmp_path, monkeypatch):
    """`WANDB_MODE=offline fedbench tracking=wandb` with no API key anywhere: the run finishes
    and W&B writes an offline run (it ended in 'No API key configured')."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))  # no stored login
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    summary = run_experiment(compose(TINY + ["tracking=wandb"]), tmp_path / "run", progress=None)
    assert summary["status"] == "completed"
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_wandb_offline_logs_what_the_run_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "ignored"))  # tracking.dir wins
    monkeypatch.chdir(tmp_path)
    wandb_dir = tmp_path / "wb"
    cfg = compose(TINY + ["tracking=wandb", "tracking.mode=offline", "tracking.project=fedtest",
                          "tracking.tags=[tiny,test]", f"tracking.dir={wandb_dir}"])
    out = tmp_path / "run"
    summary = run_experiment(cfg, out, progress=None)

    (run_path,) = (wandb_dir / "wandb").glob("offline-run-*")
    assert not (tmp_path / "ignored").exists() and not (out / "wandb").exists()
    records, state = read_offline_run(run_path)
    assert state["state"] == "finished" and state["exit_code"] == 0
    assert state["project"] == "fedtest" and state["tags"] == ["tiny", "test"]

    # One history row per evaluation, against round, with the values of metrics.jsonl.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [h["round"] for h in history] == [m["round"] for m in metrics] == [0, 1, 2, 3]
    for logged, written in zip(history, metrics):
        for key, value in written.items():
            assert logged[key] == pytest.approx(value), key
    (metric_def,) = [r["metric"] for r in records
                     if r["type"] == "metric" and r["metric"].get("glob_name") == "*"]
    assert metric_def["step_metric"] == "round"

    # The resolved config, with the scalar partition statistics.
    config = state["config"]
    for key in ("dataset", "model", "algorithm", "partition", "privacy", "rounds", "seed", "lr"):
        assert config[key] == cfg[key], key
    stats = summary["partition_stats"]
    assert config["partition_stats"]["mean_total_variation"] == pytest.approx(
        stats["mean_total_variation"])
    assert config["partition_stats"]["size_min"] == stats["size_min"]

    # The summary: summary.json (status, final metrics, timing), and the per-client table.
    run_summary = state["summary"]
    assert run_summary["status"] == "completed"
    for key, value in summary["final"].items():
        assert run_summary["final"][key] == pytest.approx(value), key
    assert run_summary["timing"]["compile_seconds"] == pytest.approx(
        summary["timing"]["compile_seconds"])
    table_ref = run_summary["partition/clients"]
    table = json.loads((run_path / "files" / table_ref["path"]).read_text())
    column = table["columns"].index("client_sizes")
    assert [row[column] for row in table["data"]] == stats["client_sizes"]
    assert table["columns"][:2] == ["client", "client_sizes"] and "label_1" in table["columns"]


def test_disabled_default_writes_and_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would now fail
    monkeypatch.delenv("WANDB_DIR", raising=False)
    # checkpoint_every=0: no checkpoints/ either (they are the run's, not the tracker's files).
    cfg = compose(TINY[:1] + ["rounds=1", "checkpoint_every=0"] + TINY[1:])
    assert cfg["tracking"] == {"name": "disabled"}
    run_experiment(cfg, tmp_path / "run", progress=None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics.jsonl", "run", "summary.json"]


@pytest.mark.slow
def test_cli_bad_tracking_mode_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedbench", "tracking=wandb", "tracking.mode=offlin",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedbench: error: tracking.mode='offlin' is not allowed")
    assert not list(tmp_path.rglob("wandb"))
