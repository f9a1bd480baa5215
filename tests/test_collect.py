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


# ------------------------------------------------------------------ diverged runs (issue 19)

#: Metrics computed from the model; a diverged (non-finite) model has none of them.
MODEL_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy",
                 "client_accuracy_mean", "client_accuracy_p10")


@pytest.fixture(scope="module")
def diverging(tmp_path_factory) -> Path:
    """Two finished runs and one that diverges for real (lr 1e30 blows up the MLP at round 1)."""
    root = tmp_path_factory.mktemp("diverging")
    _write_run(root / "ok,seed=0", "completed", _config(0.5, 0), _metrics([0, 5, 10], 0.5))
    _write_run(root / "ok,seed=1", "completed", _config(0.5, 1), _metrics([0, 5, 10], 0.7))
    cfg = compose(["dataset=breast_cancer", "model=mlp", "num_clients=4", "clients_per_round=2",
                   "rounds=4", "eval_every=1", "lr=1e30"])
    from fedbench.run import run_experiment

    assert run_experiment(cfg, root / "blown", progress=None)["status"] == "diverged"
    return root


def test_a_diverged_evaluation_reports_no_accuracy(diverging):
    lines = (diverging / "blown" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows[0]["round"] == 0 and all(isinstance(rows[0][k], float) for k in MODEL_METRICS)
    last = rows[-1]
    assert last["round"] >= 1
    # argmax of NaN logits picks one class; that share is not an accuracy: JSON null instead.
    assert {k: last[k] for k in MODEL_METRICS} == dict.fromkeys(MODEL_METRICS)
    assert last["bytes_up"] > 0  # what does not depend on the model is still reported
    summary = json.loads((diverging / "blown" / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] is None


def test_collect_marks_diverged_runs(diverging):
    table = collect(diverging)
    assert "diverged" in table.columns
    blown = table[table.run_dir == "blown"]
    assert set(blown["status"]) == {"diverged"}
    assert bool(blown["diverged"].iloc[-1]) and not blown["diverged"].iloc[:-1].any()
    accuracy = blown["test_accuracy"]
    assert accuracy.iloc[:-1].notna().all() and pd.isna(accuracy.iloc[-1])
    assert not table[table.run_dir != "blown"]["diverged"].any()


def test_collect_blanks_accuracy_of_diverged_evaluations_in_old_files(tmp_path):
    # Written before diverged evaluations were nulled: the loss is null, the accuracy is the
    # share of the class argmax(NaN) picks.
    metrics = [{"round": 0, "train_loss": 2.3, "test_accuracy": 0.12},
               {"round": 5, "train_loss": None, "test_accuracy": 0.10}]
    _write_run(tmp_path / "old", "diverged", _config(0.5, 0), metrics)
    table = collect(tmp_path)
    assert list(table["diverged"]) == [False, True]
    assert table["test_accuracy"].iloc[0] == 0.12 and pd.isna(table["test_accuracy"].iloc[1])


def test_summaries_leave_diverged_runs_out_unless_asked(diverging):
    from fedbench.collect import final, summarize

    table = collect(diverging)
    assert set(final(table)["run_dir"]) == {"ok,seed=0", "ok,seed=1"}
    every = final(table, include_diverged=True)
    assert set(every["run_dir"]) == {"ok,seed=0", "ok,seed=1", "blown"}
    out = summarize(table, by=["algorithm.name"], metrics=["test_accuracy"]).loc["fedavg"]
    # the two finished runs end at 0.5 + 10/100 and 0.7 + 10/100
    assert out["test_accuracy_mean"] == pytest.approx(0.7)
    assert out["test_accuracy_std"] == pytest.approx(pd.Series([0.6, 0.8]).std())
    assert (out["runs"], out["diverged"]) == (2, 1)
    both = summarize(table, by=["algorithm.name"], metrics=["test_accuracy"],
                     include_diverged=True).loc["fedavg"]
    assert both["runs"] == 3 and math.isnan(both["test_accuracy_mean"])


def test_cli_summary_excludes_diverged(diverging, capsys):
    main([str(diverging), "--out", str(diverging / "out" / "results"), "--by", "algorithm.name"])
    out = capsys.readouterr().out
    assert "1 diverged" in out and "0.7" in out


def test_collect_and_run_agree_on_the_model_metrics():
    from fedbench import collect as collect_module
    from fedbench import results  # run.py's NaN-for-diverged metrics (results.without_model_metrics)

    assert collect_module.MODEL_METRICS == results.MODEL_METRICS
    assert set(MODEL_METRICS) <= set(results.MODEL_METRICS)
