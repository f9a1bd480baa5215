"""fedbench-collect: a sweep tree of hand-written run files plus one real run -> one tidy table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose

from fedbench.collect import collect, flatten, main

TIMING = {"compile_seconds": 1.5, "run_seconds": 2.0, "rounds_per_second": 5.0}


def _config(alpha, seed, epsilon=None):
    return {
        "algorithm": {"name": "fedavg", "server_lr": 1.0},
        "partition": {"name": "dirichlet", "alpha": alpha},
        "privacy": {"name": "dp_client", "target_epsilon": epsilon},
        "tracking": {"name": "wandb", "tags": ["a", "b"]},
        "seed": seed,
        "rounds": 10,
    }


def _metrics(rounds, accuracy):
    return [
        {"round": r, "test_accuracy": accuracy + r / 100, "epsilon": 0.1 * r, "bytes_up": 100 * r}
        for r in rounds
    ]


def _write_run(run_dir: Path, status=None, config=None, metrics=None, error=None, hydra=None):
    run_dir.mkdir(parents=True)
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if status is not None:
        final = metrics[-1] if metrics else {"round": 10, "test_accuracy": 0.5}
        summary = {"status": status, "final": final, "config": config, "timing": TIMING}
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if error is not None:
        (run_dir / "error.json").write_text(
            json.dumps({"status": "failed", "type": "ValueError", "message": error,
                        "traceback": "...", "config": config})
        )
    if hydra is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text(hydra)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep tree: runs at several depths, every status, one real run."""
    root = tmp_path_factory.mktemp("sweep")
    _write_run(root / "partition.alpha=0.1,seed=0", "completed", _config(0.1, 0, 4.0),
               _metrics([0, 5, 10], 0.5))
    _write_run(root / "group" / "deeper" / "partition.alpha=1,seed=1", "diverged",
               _config(1, 1, 4.0), _metrics([0, 5], 0.6))
    _write_run(root / "lr=-1", config=_config(0.5, 0), error="lr=-1 is not allowed")
    _write_run(  # interrupted: no summary yet; inf lives only in Hydra's config.yaml
        root / "privacy.target_epsilon=inf", metrics=_metrics([0], 0.7),
        hydra="seed: 2\nrounds: 10\nprivacy:\n  name: dp_client\n  target_epsilon: .inf\n",
    )
    _write_run(root / "summary_only", "completed", _config(10, 3, 1.0))  # no metrics.jsonl
    cfg = compose(["rounds=2", "eval_every=1", "dataset=breast_cancer", "model=logreg",
                   "num_clients=4", "clients_per_round=2"])
    from fedbench.run import run_experiment

    run_experiment(cfg, root / "real", progress=None)
    (root / "real" / "wandb").mkdir()  # tracker files inside a run are not runs
    (root / "real" / "wandb" / "summary.json").write_text("{}")
    return root


def test_flatten_nested_config_and_lists():
    flat = flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None, "f": "x"})
    assert flat == {"a.b.c": 1, "a.d": "[1, 2]", "e": None, "f": "x"}


def test_rows_statuses_and_columns(sweep):
    table = collect(sweep)
    per_run = table.groupby("run_dir").size().to_dict()
    assert per_run == {
        "partition.alpha=0.1,seed=0": 3,
        "group/deeper/partition.alpha=1,seed=1": 2,
        "lr=-1": 1,
        "privacy.target_epsilon=inf": 1,
        "summary_only": 1,
        "real": 3,  # rounds=2, eval_every=1: rounds 0, 1, 2
    }
    status = table.drop_duplicates("run_dir").set_index("run_dir")["status"].to_dict()
    assert status == {
        "partition.alpha=0.1,seed=0": "completed",
        "group/deeper/partition.alpha=1,seed=1": "diverged",
        "lr=-1": "failed",
        "privacy.target_epsilon=inf": "running",
        "summary_only": "completed",
        "real": "completed",
    }
    columns = list(table.columns)
    assert columns[:2] == ["run_dir", "status"]
    for name in ("algorithm.name", "partition.alpha", "seed", "privacy.target_epsilon",
                 "tracking.tags", "round", "test_accuracy", "epsilon", "bytes_up",
                 "compile_seconds", "run_seconds", "rounds_per_second", "error"):
        assert name in columns, name
    # config first (sorted), then round, metrics, timing, error
    assert columns.index("seed") < columns.index("round") < columns.index("test_accuracy")
    assert columns.index("test_accuracy") < columns.index("compile_seconds")
    assert columns[-1] == "error"
    # the real run brings the simulator's metrics and the dataset config
    real = table[table.run_dir == "real"]
    assert list(real["round"]) == [0, 1, 2]
    assert set(real["dataset.name"]) == {"breast_cancer"}
    assert real["train_loss"].notna().all() and real["compile_seconds"].notna().all()


def test_values_from_the_run_files(sweep):
    table = collect(sweep).set_index(["run_dir", "round"])
    row = table.loc[("partition.alpha=0.1,seed=0", 5)]
    assert row["test_accuracy"] == pytest.approx(0.55)
    assert row["bytes_up"] == 500 and row["partition.alpha"] == 0.1
    assert row["privacy.target_epsilon"] == 4.0 and row["tracking.tags"] == '["a", "b"]'
    assert row["rounds_per_second"] == 5.0 and row["algorithm.server_lr"] == 1.0
    failed = collect(sweep).query("run_dir == 'lr=-1'").iloc[0]
    assert failed["error"] == "ValueError: lr=-1 is not allowed"
    assert pd.isna(failed["round"]) and failed["partition.alpha"] == 0.5
    running = table.loc[("privacy.target_epsilon=inf", 0)]
    assert running["seed"] == 2 and math.isinf(running["privacy.target_epsilon"])
    assert table.loc[("summary_only", 10)]["test_accuracy"] == 0.5


def test_parquet_and_csv_round_trip(sweep, tmp_path):
    table = collect(sweep)
    main([str(sweep), "--out", str(tmp_path / "out" / "results")])
    parquet = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(parquet, table)
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(csv.columns) == list(table.columns)

    def missing_as_none(df):  # CSV has one kind of empty cell
        return df.astype(object).where(df.notna(), None)

    pd.testing.assert_frame_equal(missing_as_none(csv), missing_as_none(table), check_dtype=False)
    assert csv["privacy.target_epsilon"].map(math.isinf).sum() == 1  # inf survives CSV
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_default_output_next_to_the_sweep_and_recollect(sweep, capsys):
    main([str(sweep)])
    assert "6 runs" in capsys.readouterr().out
    first = pd.read_parquet(sweep / "results.parquet")
    main([str(sweep)])  # the tables it wrote are not runs
    pd.testing.assert_frame_equal(pd.read_parquet(sweep / "results.parquet"), first)
    assert (sweep / "results.csv").is_file()


def test_no_runs_exits_nonzero(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path)])
    assert exit_.value.code == 1
