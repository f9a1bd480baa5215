"""One tidy results table from a directory of runs: ``fedbench-collect DIR [--out PREFIX]``.

A run is any directory under ``DIR`` (at any depth) holding ``summary.json``, ``metrics.jsonl``
or ``error.json``, as a single run or a sweep (``fedbench -m``) leaves them. The table has one row
per run and evaluation round:

- ``run_dir``: the run's directory relative to ``DIR`` (``.`` for ``DIR`` itself);
- ``status``: ``summary.json``'s status (``completed``, ``diverged``); else ``failed`` when
  ``error.json`` exists (then ``error`` holds its type and message), else ``running`` (a run in
  progress or interrupted, with the evaluations it finished; ``diverged`` if one of them did);
- the config flattened to dotted names (``algorithm.name``, ``partition.alpha``, ``seed``,
  ``privacy.target_epsilon``, ...), lists as JSON strings; a config key that is also a metric
  name gets a ``config.`` prefix;
- ``diverged``: true for the evaluation of a diverged model (training loss non-finite, or the
  last evaluation of a ``diverged`` run); its :data:`MODEL_METRICS` are NaN, also in files
  written before fedbench nulled them (they held the share of the class argmax of NaN picks);
- every key of ``metrics.jsonl`` (``round``, ``test_accuracy``, ``epsilon``, ``simulated_time``,
  ``bytes_up``, ...); a run without ``metrics.jsonl`` gets its ``summary.json`` ``final`` row, one
  that never evaluated gets one row with empty metrics;
- ``summary.json``'s timing (``compile_seconds``, ``run_seconds``, ``rounds_per_second``, ...).

Means over runs (:func:`summarize`, ``--by``) leave diverged runs out unless asked, and count
them. Example::

    fedbench -m sweep_name=alpha partition.alpha=0.1,1 seed=0,1
    fedbench-collect multirun/alpha --by partition.alpha  # also results.parquet, results.csv

    import pandas as pd
    from fedbench.collect import summarize
    table = pd.read_parquet("multirun/alpha/results.parquet")
    summarize(table, by=["partition.alpha"], metrics=["test_accuracy"])

JSON stores non-finite floats as null; where the run's ``.hydra/config.yaml`` has the exact value
(``privacy.target_epsilon=inf``) the table takes it from there. An infinite ``epsilon`` (a run
without noise) is stored as the string ``"inf"`` and read back as a float.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from fedbench.atomic import write_with
from fedbench.metric_names import MODEL_METRICS  # a diverged evaluation has none of them

RUN_FILES = ("summary.json", "metrics.jsonl", "error.json")
_SKIP_DIRS = {".hydra", ".submitit", "wandb", "__pycache__", ".git"}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys; lists become JSON strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break  # files are written atomically; a bad line can only be the last
    return rows


def _hydra_config(run_dir: Path) -> dict[str, Any] | None:
    """The job config Hydra saved (``.hydra/config.yaml``), resolved where possible."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # noqa: BLE001 - an interpolation that needs Hydra's runtime
            return OmegaConf.to_container(cfg, resolve=False)
    except Exception:  # noqa: BLE001 - unreadable: fall back to the JSON config
        return None


def _run_config(run_dir: Path, summary: dict | None, error: dict | None) -> dict[str, Any]:
    stored = (summary or {}).get("config") or (error or {}).get("config")
    hydra = _hydra_config(run_dir)
    if stored is None:
        return flatten(hydra or {})
    flat = flatten(stored)
    if hydra is not None:  # non-finite floats that JSON could only store as null
        for key, value in flatten(hydra).items():
            if flat.get(key, 0) is None and isinstance(value, float) and not math.isfinite(value):
                flat[key] = value
    return flat


def _is_replica_parent(run_dir: Path, filenames: list[str]) -> bool:
    """A ``seeds > 1`` job directory: its summary only lists the per-seed runs below it."""
    if "summary.json" not in filenames or "metrics.jsonl" in filenames:
        return False
    summary = _read_json(run_dir / "summary.json")
    return bool(summary and "replicas" in summary)


def find_runs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (``root`` included) holding one of :data:`RUN_FILES`;
    a job of in-program seeds counts as its per-seed runs (``seed=<s>/``), not itself."""
    root = Path(root)
    runs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        if any(name in filenames for name in RUN_FILES) and not _is_replica_parent(
            Path(dirpath), filenames
        ):
            runs.append(Path(dirpath))
    return sorted(runs)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mark_diverged(status: str, metrics: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Flags the evaluations of a diverged model and blanks their model metrics.

    An evaluation diverged when its training loss is non-finite (JSON null), or when it is the
    last of a run whose ``status`` is ``diverged`` (the run stops at the evaluation that sees
    non-finite parameters or loss). Its :data:`MODEL_METRICS` become NaN: files written before
    fedbench nulled them hold the accuracy of argmax over NaN logits. A run without
    ``summary.json`` whose evaluations diverged is ``diverged``.
    """
    flags = [("train_loss" in row and not _finite_number(row["train_loss"])) for row in metrics]
    if status == "diverged" and metrics:
        flags[-1] = True
    if status == "running" and any(flags):
        status = "diverged"
    rows = [
        {**row, **{k: float("nan") for k in MODEL_METRICS if k in row}, "diverged": True}
        if flag else {**row, "diverged": False}
        for row, flag in zip(metrics, flags)
    ]
    return status, rows


def _infinite_back(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with the infinities that :mod:`fedbench.results` writes as strings
    (``"inf"``, ``"-inf"``; see ``INFINITE_AS_STRING`` there) back as floats."""
    return {k: float(v) if v in ("inf", "-inf") else v for k, v in row.items()}


def _run_rows(root: Path, run_dir: Path) -> tuple[list[dict[str, Any]], set[str], set[str]]:
    """The run's rows, its metric names and its timing names."""
    summary = _read_json(run_dir / "summary.json")
    error = _read_json(run_dir / "error.json")
    metrics = _read_metrics(run_dir / "metrics.jsonl")
    if summary is not None:
        status = summary.get("status", "completed")
    elif error is not None:
        status = "failed"
    else:
        status = "running"
    if not metrics and summary and isinstance(summary.get("final"), Mapping):
        metrics = [dict(summary["final"])]
    metrics = [_infinite_back(row) for row in metrics]
    status, metrics = _mark_diverged(status, metrics)
    metric_names = {k for row in metrics for k in row} | {"round"}
    head: dict[str, Any] = {"run_dir": run_dir.relative_to(root).as_posix(), "status": status}
    for key, value in _run_config(run_dir, summary, error).items():
        clash = key in metric_names or key in head or key == "error"
        head[f"config.{key}" if clash else key] = value
    timing: dict[str, Any] = dict((summary or {}).get("timing") or {})
    timing = {k: v for k, v in timing.items() if k not in metric_names}
    tail = dict(timing)
    if status == "failed" and error is not None:
        tail["error"] = f"{error.get('type')}: {error.get('message')}"
    rows = [{**head, **row, **tail} for row in (metrics or [{}])]
    return rows, metric_names, set(timing)


def _arrow_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Object columns: missing values as None (as Parquet gives them back), and strings mixed
    with other values all as strings (Parquet needs one type per column)."""
    for column in table.columns:
        if table[column].dtype != object:
            continue
        table[column] = table[column].where(table[column].notna(), None)
        kinds = {type(v) for v in table[column] if v is not None and v == v}
        if str in kinds and len(kinds) > 1:
            table[column] = [
                None if v is None or v != v else v if isinstance(v, str) else json.dumps(v)
                for v in table[column]
            ]
    return table


def collect(path: str | Path) -> pd.DataFrame:
    """The results table of every run under ``path`` (see the module docstring for the columns).

    Columns in order: ``run_dir``, ``status``, the config (sorted), ``round``, the metrics, the
    timing, ``error`` (failed runs only); rows ordered by ``run_dir`` then ``round``.
    """
    root = Path(path)
    rows: list[dict[str, Any]] = []
    metric_names: set[str] = set()
    timing_names: set[str] = set()
    for run_dir in find_runs(root):
        run_rows, metrics, timing = _run_rows(root, run_dir)
        rows += run_rows
        metric_names |= metrics
        timing_names |= timing
    if not rows:
        return pd.DataFrame(columns=["run_dir", "status", "round", "diverged"])
    table = pd.DataFrame(rows)
    if "round" not in table.columns:
        table["round"] = None
    if "diverged" not in table.columns:
        table["diverged"] = False
    table["diverged"] = table["diverged"].eq(True)  # failed runs have no evaluation: False
    metric_cols = [c for c in table.columns if c in metric_names and c not in ("round", "diverged")]
    timing_cols = [c for c in table.columns if c in timing_names and c not in metric_names]
    other = {"run_dir", "status", "round", "diverged", "error", *metric_cols, *timing_cols}
    config_cols = sorted(c for c in table.columns if c not in other)
    order = ["run_dir", "status", *config_cols, "round", "diverged", *metric_cols, *timing_cols]
    order += ["error"] if "error" in table.columns else []
    table = table[order].sort_values(["run_dir", "round"], kind="stable", na_position="first")
    table["round"] = table["round"].astype("Int64")  # stays an integer beside failed runs' gaps
    return _arrow_safe(table.reset_index(drop=True))


def final(table: pd.DataFrame, include_diverged: bool = False) -> pd.DataFrame:
    """The last evaluation of every ``completed`` run (one row per run).

    Diverged runs are left out unless ``include_diverged``; then their last row is the
    diverged evaluation, whose model metrics are NaN. Failed and unfinished (``running``) runs
    are always left out.
    """
    keep = ["completed", "diverged"] if include_diverged else ["completed"]
    rows = table[table["status"].isin(keep)]
    return rows.sort_values(["run_dir", "round"], kind="stable").groupby("run_dir").tail(1)


def summarize(
    table: pd.DataFrame,
    by: list[str],
    metrics: list[str] | tuple[str, ...] = ("test_accuracy",),
    include_diverged: bool = False,
) -> pd.DataFrame:
    """Mean and standard deviation over runs of each run's final ``metrics``, per group of ``by``.

    Columns: ``runs`` (runs averaged), ``diverged`` (diverged runs in the group: left out of the
    means by default; with ``include_diverged`` they are averaged in, and as a diverged run has
    no model metrics the group's mean is NaN), then ``<metric>_mean`` and ``<metric>_std``.
    """
    done = final(table, include_diverged=True)
    diverged = done[done["status"] == "diverged"].groupby(by, dropna=False).size()
    rows = done if include_diverged else done[done["status"] != "diverged"]
    groups = rows.groupby(by, dropna=False)
    out = pd.DataFrame({"runs": groups.size()})
    for metric in metrics:
        out[f"{metric}_mean"] = groups[metric].agg(lambda v: v.mean(skipna=False))
        out[f"{metric}_std"] = groups[metric].agg(lambda v: v.std(skipna=False))
    out = out.reindex(out.index.union(diverged.index))
    out["runs"] = out["runs"].fillna(0).astype(int)
    out.insert(1, "diverged", diverged.reindex(out.index).fillna(0).astype(int))
    return out


def save(table: pd.DataFrame, prefix: str | Path) -> tuple[Path, Path]:
    """Writes ``PREFIX.parquet`` and ``PREFIX.csv`` atomically; returns their paths."""
    prefix = Path(prefix)
    parquet = prefix.with_name(prefix.name + ".parquet")
    csv = prefix.with_name(prefix.name + ".csv")
    write_with(parquet, lambda tmp: table.to_parquet(tmp, index=False))
    write_with(csv, lambda tmp: table.to_csv(tmp, index=False))
    return parquet, csv


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``fedbench-collect``."""
    parser = argparse.ArgumentParser(
        prog="fedbench-collect",
        description="Gather every fedbench run under DIR into one table (Parquet and CSV).",
    )
    parser.add_argument("dir", type=Path, help="a run or sweep directory, e.g. multirun/default")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output prefix: writes PREFIX.parquet and PREFIX.csv (default: DIR/results)",
    )
    parser.add_argument(
        "--by", default=None,
        help="comma-separated config keys: also print each group's mean and std over runs of the "
        "final metrics (diverged runs left out, counted in a 'diverged' column)",
    )
    parser.add_argument("--metrics", default="test_accuracy",
                        help="comma-separated metrics for --by (default: test_accuracy)")
    parser.add_argument("--include-diverged", action="store_true",
                        help="with --by: average diverged runs in (their model metrics are NaN)")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.exit(2, f"fedbench-collect: error: {args.dir} is not a directory\n")
    table = collect(args.dir)
    if table.empty:
        parser.exit(1, f"fedbench-collect: no runs (summary.json, metrics.jsonl) in {args.dir}\n")
    parquet, csv = save(table, args.out if args.out is not None else args.dir / "results")
    counts = table.drop_duplicates("run_dir")["status"].value_counts()
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(
        f"fedbench-collect: {table['run_dir'].nunique()} runs ({statuses}), {len(table)} rows "
        f"-> {parquet}, {csv}",
        file=sys.stdout,
    )
    if args.by:
        by = args.by.split(",")
        missing = [k for k in by + args.metrics.split(",") if k not in table.columns]
        if missing:
            parser.exit(2, f"fedbench-collect: error: no column {missing[0]!r} in the table\n")
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(summarize(table, by, args.metrics.split(","), args.include_diverged))


if __name__ == "__main__":
    main()
