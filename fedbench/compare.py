"""Federated vs local vs pooled, in one command: the question of the FeTS study.

Pati et al. (Nature Communications 13, 7346, 2022) ask whether a federated model is at least as
good as what any single institution could train alone. ``fedbench-compare`` answers it for any
dataset and federation: it runs, on the same sites and splits (one partition, pinned across the
training seeds ``--seeds``),

* ``local``: every site trains alone (the spine's ``local`` baseline), giving one model per site;
* ``centralized``: one model on all sites' training data pooled (the upper reference that
  privacy rules out in practice);
* one or more federated algorithms (default: the config's ``algorithm``),

and evaluates every model on every site's own test split and on the pooled test set (accuracy,
or the C-index for survival data). Usage::

    fedbench-compare dataset=opt partition=natural clients_per_round=4 model=logreg rounds=50
    fedbench-compare --algorithms fedavg,fedprox --seeds 0,1,2 --out results/x dataset=tcga_brca \\
        partition=natural model=cox clients_per_round=6 batch_size=8 local_steps=100 rounds=5

Writes ``<out>/<algorithm>/seed=<s>/`` run directories, ``<out>/table.csv`` (tidy: one row per
regime, model, seed and evaluation set), ``<out>/scores.npz`` (per-example test scores) and
``<out>/verdicts.json``, and prints the per-site table and the verdicts: each with its test size
and the paired bootstrap interval of the difference (:mod:`fedbench.compare_verdicts`), the best
single-site model chosen on held-out training data, not on the test set.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.errors import ConfigError
from fedbench.results import write_atomic, write_json

BASELINES = ("local", "centralized")


def algorithm_config(name: str, config_dir: str | Path | None = None,
                     config_name: str = "config") -> dict[str, Any]:
    """The ``algorithm`` node Hydra composes for ``algorithm=<name>``, i.e. the settings of
    ``conf/algorithm/<name>.yaml``, exactly as ``fedbench algorithm=<name>`` would run them.

    Raises:
      ConfigError: ``name`` is not an option of the ``algorithm`` group.
    """
    return copy.deepcopy(_composed_algorithm(name, str(config_dir or _conf_dir()), config_name))


def _conf_dir() -> Path:
    from fedbench.paths import CONF_DIR

    return CONF_DIR


@functools.cache
def _composed_algorithm(name: str, config_dir: str, config_name: str) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    options = sorted(p.stem for p in (Path(config_dir) / "algorithm").glob("*.yaml"))
    if name not in options:
        raise ConfigError("--algorithms", name, "one of: " + ", ".join(options))
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=[f"algorithm={name}"])
    except MissingConfigException as err:
        raise ConfigError("--algorithms", name, "one of: " + ", ".join(options)) from err
    return OmegaConf.to_container(cfg.algorithm, resolve=True)


def regime_config(
    cfg: dict[str, Any],
    algorithm: str | dict,
    seed: int,
    config_dir: str | Path | None = None,
    config_name: str = "config",
) -> dict[str, Any]:
    """``cfg`` with another algorithm and training seed; baselines run without DP and stragglers
    (the spine rejects both there), on the same data, partition and schedule.

    The partition is pinned: ``partition.seed`` is the config's ``partition.seed``, else its
    ``seed``, whatever ``seed`` is, so every training seed sees the same sites, splits and test
    examples (site ``j`` is one client in every seed; as ``seeds=S`` replicas do).

    The config's own algorithm keeps its settings (command-line ``algorithm.*`` overrides
    included); any other named algorithm is composed by Hydra from its
    ``conf/algorithm/<name>.yaml`` (:func:`algorithm_config`), so e.g. FedProx runs with the
    YAML's ``mu``, not as FedAvg.
    """
    out = copy.deepcopy(cfg)
    out["seed"] = seed
    out["partition"]["seed"] = partition_seed(cfg)
    if isinstance(algorithm, dict):
        out["algorithm"] = copy.deepcopy(algorithm)
    elif algorithm != cfg["algorithm"]["name"]:
        out["algorithm"] = algorithm_config(algorithm, config_dir, config_name)
    if algorithm in BASELINES:
        out["privacy"] = {"name": "none"}
        out["stragglers"] = {"fraction": 0.0, "policy": "drop"}
        out["site_speed"] = 0.0
    return out


def partition_seed(cfg: dict[str, Any]) -> int:
    """The one partition seed of a comparison: ``partition.seed``, else the config's ``seed``."""
    pinned = cfg["partition"].get("seed")
    return cfg["seed"] if pinned is None else pinned


def site_rows(
    regime: str, seed: int, sites: dict[str, Any], names: Sequence[str], metric: str | None = None
) -> list[dict]:
    """Tidy rows of one run's :meth:`fedbench.simulator.Simulator.site_results`
    (``metric="auc"``: its ROC AUC entries, binary tasks)."""
    if metric == "auc":
        if "auc" not in sites:
            raise ConfigError("--metric", metric, "accuracy (AUC needs a binary classification task)")
        sites = {**sites, **sites["auc"], "metric": "auc"}
    metric = sites["metric"]
    rows = []

    def add(model: str, pooled: float, per_site: Sequence[float]) -> None:
        rows.append({"regime": regime, "model": model, "seed": seed, "eval_set": "pooled",
                     "metric": metric, "value": pooled, "n_test": sum(sites["test_sizes"])})
        for j, value in enumerate(per_site):
            rows.append({"regime": regime, "model": model, "seed": seed, "eval_set": names[j],
                         "metric": metric, "value": value, "n_test": sites["test_sizes"][j]})

    if "matrix" in sites:  # local: one model per site
        for k, row in enumerate(sites["matrix"]):
            add(f"site model: {names[k]}", sites["pooled_by_model"][k], row)
    else:
        add("global model", sites["pooled"], sites["own"])
    return rows


def compare(
    cfg: dict[str, Any],
    out_dir: str | Path,
    algorithms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    metric: str | None = None,
    config_dir: str | Path | None = None,
    config_name: str = "config",
    val_fraction: float = 0.2,
    n_boot: int = 2000,
) -> list[dict]:
    """Runs local, centralized and the federated ``algorithms`` for every training seed (one
    partition for all, :func:`regime_config`); returns the tidy rows also written to
    ``<out_dir>/table.csv``.

    Also writes ``<out_dir>/scores.npz`` (every model's per-example test scores,
    :class:`fedbench.compare_verdicts.Comparison`) and ``<out_dir>/verdicts.json`` (one record
    per algorithm and test set: test size, both values, their difference and its paired
    bootstrap interval from ``n_boot`` resamples, the verdict;
    :func:`fedbench.compare_verdicts.verdicts`). The best single-site model is chosen on
    ``val_fraction`` of each site's training split held out (0: on the test set, said so).

    Every algorithm other than ``cfg``'s own runs with the settings Hydra composes for it from
    ``<config_dir>/algorithm/<name>.yaml`` (default: fedbench's ``conf/``).

    Raises:
      ConfigError: bad settings (checked by the first run before training), an algorithm name
        that is one of the baselines or has no config file, ``seeds`` other than 1 in ``cfg``,
        ``val_fraction`` outside [0, 1), ``n_boot`` < 1.
    """
    from fedbench.compare_verdicts import (Comparison, site_scores, validation_data,
                                           validation_metric, verdicts)
    from fedbench.run import run_experiment

    out_dir = Path(out_dir)
    algorithms = list(algorithms or [cfg["algorithm"]["name"]])
    for name in algorithms:
        if name in BASELINES:
            raise ConfigError("--algorithms", name, "federated algorithms (local and centralized always run)")
    if cfg.get("seeds") not in (None, 1):
        raise ConfigError("seeds", cfg["seeds"], "1 with fedbench-compare (training seeds: --seeds 0,1,2)")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0 <= val_fraction < 1:
        raise ConfigError("--val-fraction", val_fraction, "a number in [0, 1) (0: select on test)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError("--bootstrap", n_boot, "an integer >= 1 (number of resamples)")
    regimes = [*BASELINES, *algorithms]
    for regime in regimes:  # unknown names fail before any training
        regime_config(cfg, regime, 0, config_dir, config_name)
    seeds = list(seeds if seeds is not None else [cfg["seed"]])
    rows: list[dict] = []
    scores: dict[str, list] = {regime: [] for regime in regimes}
    validation: list[np.ndarray] = []
    for i, (seed, regime) in enumerate((s, r) for s in seeds for r in regimes):
        if progress:  # a stage line before each run: nothing is silent for the length of one
            print(f"fedbench-compare: training {regime} (seed {seed}; run {i + 1} of "
                  f"{len(seeds) * len(regimes)})", flush=True)
        run_cfg = regime_config(cfg, regime, seed, config_dir, config_name)
        run: dict[str, Any] = {}
        summary = run_experiment(run_cfg, out_dir / regime / f"seed={seed}", progress=None,
                                 on_finish=lambda sim, state: run.update(sim=sim, state=state))
        if summary["status"] != "completed" or not summary.get("sites"):
            raise RuntimeError(f"{regime} (seed {seed}) did not complete: {summary['status']}")
        names = summary["partition_stats"].get("client_names") or [
            f"site {j}" for j in range(len(summary["sites"]["own"]))
        ]
        new = site_rows(regime, seed, summary["sites"], [str(n) for n in names], metric)
        rows += new
        kind = new[0]["metric"]
        per_example, labels, offsets = site_scores(run["sim"], run["state"], kind)
        scores[regime].append(per_example)
        if regime == "local":
            held = validation_data(run["sim"].data, val_fraction, partition_seed(cfg))
            if held is not None:
                validation.append(validation_metric(run["sim"], held, cfg["rounds"], kind))
        if progress:
            pooled = np.mean([r["value"] for r in new if r["eval_set"] == "pooled"])
            print(f"fedbench-compare: {regime:<12} seed {seed}: pooled-test "
                  f"{kind} {pooled:.4f}", flush=True)
    write_table(out_dir / "table.csv", rows)
    comparison = Comparison(
        kind, [str(n) for n in names], offsets, labels,
        {k: np.stack(v) for k, v in scores.items()},
        np.stack(validation) if validation else None,
        run["sim"].data.task == "classification" and run["sim"].data.num_classes == 2,
        seeds, partition_seed(cfg))
    comparison.save(out_dir / "scores.npz")
    write_json(out_dir / "verdicts.json", {
        "seeds": seeds, "partition_seed": partition_seed(cfg), "val_fraction": val_fraction,
        "verdicts": verdicts(comparison, algorithms, n_boot)})
    return rows


def write_table(path: Path, rows: list[dict]) -> None:
    """Writes tidy rows as CSV, atomically."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def wide_table(rows: list[dict]) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Seed-averaged table: one line per (regime, model), columns pooled then each site."""
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    lines = []
    for key in dict.fromkeys((r["regime"], r["model"]) for r in rows):
        label = key[0] if key[1] == "global model" else f"{key[0]} / {key[1]}"
        if key[0] == "centralized":
            label = "centralized (pooled data)"
        lines.append((label, [_mean([r["value"] for r in rows if (r["regime"], r["model"]) == key
                                     and r["eval_set"] == s]) for s in sets]))
    return sets, lines


def print_table(rows: list[dict], report: dict[str, Any] | None = None) -> None:
    """The seed-averaged table, then the verdicts of ``report`` (``verdicts.json``'s content)."""
    from fedbench.compare_verdicts import verdict_lines

    sets, lines = wide_table(rows)
    width = max(len(label) for label, _ in lines)
    print(f"{'':<{width}}  " + "  ".join(f"{s[:10]:>10}" for s in sets))
    for label, values in lines:
        print(f"{label:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in values))
    if report:
        for line in verdict_lines(report["verdicts"], len(report["seeds"]),
                                  report["partition_seed"]):
            print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedbench-compare",
        description="Federated vs local vs pooled on every site's test split (FeTS question).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for fedbench")
    parser.add_argument("--algorithms", default=None,
                        help="comma-separated federated algorithms (default: the config's)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: seed)")
    parser.add_argument("--out", default="outputs/compare", help="output directory")
    parser.add_argument("--metric", default=None, choices=["accuracy", "auc"],
                        help="classification metric (default accuracy; auc for binary tasks)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of each site's training split held out to choose the best "
                             "single-site model (default 0.2; 0: chosen on the test set)")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="bootstrap resamples of each verdict's interval (default 2000)")
    parser.add_argument("--config-dir", default=None, help="config directory (default: conf/)")
    parser.add_argument("--config-name", default="config")
    args = parser.parse_args(argv)

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    config_dir = Path(args.config_dir or _conf_dir()).resolve()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = OmegaConf.to_container(
                hydra_compose(config_name=args.config_name, overrides=list(args.overrides)),
                resolve=True,
            )
        algorithms = args.algorithms.split(",") if args.algorithms else None
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        rows = compare(cfg, args.out, algorithms, seeds, progress=True,
                       metric=None if args.metric == "accuracy" else args.metric,
                       config_dir=config_dir, config_name=args.config_name,
                       val_fraction=args.val_fraction, n_boot=args.bootstrap)
    except ConfigError as err:
        print(f"fedbench-compare: config error: {err}", file=sys.stderr)
        return 2
    print_table(rows, json.loads((Path(args.out) / "verdicts.json").read_text()))
    print(f"fedbench-compare: wrote {Path(args.out) / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
