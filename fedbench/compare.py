"""Federated vs local vs pooled, in one command: the question of the FeTS study.

Pati et al. (Nature Communications 13, 7346, 2022) ask whether a federated model is at least as
good as what any single institution could train alone. ``fedbench-compare`` answers it for any
dataset and federation: it runs, on the same sites, splits and seeds,

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
regime, model, seed and evaluation set) and prints the per-site table and the verdicts.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.errors import ConfigError
from fedbench.results import write_atomic

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
    from fedbench.cli import CONF_DIR

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
    """``cfg`` with another algorithm and seed; baselines run without DP and stragglers (the
    spine rejects both there), on the same data, partition and schedule.

    The config's own algorithm keeps its settings (command-line ``algorithm.*`` overrides
    included); any other named algorithm is composed by Hydra from its
    ``conf/algorithm/<name>.yaml`` (:func:`algorithm_config`), so e.g. FedProx runs with the
    YAML's ``mu``, not as FedAvg.
    """
    out = copy.deepcopy(cfg)
    out["seed"] = seed
    if isinstance(algorithm, dict):
        out["algorithm"] = copy.deepcopy(algorithm)
    elif algorithm != cfg["algorithm"]["name"]:
        out["algorithm"] = algorithm_config(algorithm, config_dir, config_name)
    if algorithm in BASELINES:
        out["privacy"] = {"name": "none"}
        out["stragglers"] = {"fraction": 0.0, "policy": "drop"}
        out["site_speed"] = 0.0
    return out


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
) -> list[dict]:
    """Runs local, centralized and the federated ``algorithms`` for every seed; returns the
    tidy rows also written to ``<out_dir>/table.csv``.

    Every algorithm other than ``cfg``'s own runs with the settings Hydra composes for it from
    ``<config_dir>/algorithm/<name>.yaml`` (default: fedbench's ``conf/``); see
    :func:`regime_config`.

    Raises:
      ConfigError: bad settings (checked by the first run before training), an algorithm name
        that is one of the baselines or has no config file.
    """
    from fedbench.run import run_experiment

    out_dir = Path(out_dir)
    algorithms = list(algorithms or [cfg["algorithm"]["name"]])
    for name in algorithms:
        if name in BASELINES:
            raise ConfigError("--algorithms", name, "federated algorithms (local and centralized always run)")
    for regime in [*BASELINES, *algorithms]:  # unknown names fail before any training
        regime_config(cfg, regime, 0, config_dir, config_name)
    seeds = list(seeds if seeds is not None else [cfg["seed"]])
    rows: list[dict] = []
    for seed in seeds:
        for regime in [*BASELINES, *algorithms]:
            run_cfg = regime_config(cfg, regime, seed, config_dir, config_name)
            summary = run_experiment(run_cfg, out_dir / regime / f"seed={seed}",
                                     progress=None)
            if summary["status"] != "completed" or not summary.get("sites"):
                raise RuntimeError(f"{regime} (seed {seed}) did not complete: {summary['status']}")
            names = summary["partition_stats"].get("client_names") or [
                f"site {j}" for j in range(len(summary["sites"]["own"]))
            ]
            new = site_rows(regime, seed, summary["sites"], [str(n) for n in names], metric)
            rows += new
            if progress:
                pooled = np.mean([r["value"] for r in new if r["eval_set"] == "pooled"])
                print(f"fedbench-compare: {regime:<12} seed {seed}: pooled-test "
                      f"{new[0]['metric']} {pooled:.4f}", flush=True)
    write_table(out_dir / "table.csv", rows)
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


def verdicts(rows: list[dict], algorithms: Sequence[str]) -> list[str]:
    """The FeTS question in words, from seed-averaged values."""
    def value(regime: str, model: str | None, eval_set: str) -> float:
        return _mean([r["value"] for r in rows if r["regime"] == regime and r["eval_set"] == eval_set
                      and (model is None or r["model"] == model)])

    sites = [s for s in dict.fromkeys(r["eval_set"] for r in rows) if s != "pooled"]
    local_models = list(dict.fromkeys(r["model"] for r in rows if r["regime"] == "local"))
    out = []
    for alg in algorithms:
        fed_pooled = value(alg, "global model", "pooled")
        best = max(local_models, key=lambda m: value("local", m, "pooled"))
        best_value = value("local", best, "pooled")
        out.append(
            f"{alg}: pooled test {fed_pooled:.4f} vs best single-site model ({best}) "
            f"{best_value:.4f} -> {'at least as good' if fed_pooled >= best_value else 'WORSE'}"
        )
        worse = []
        for k, site in enumerate(sites):
            own = value("local", local_models[k], site) if k < len(local_models) else float("nan")
            fed = value(alg, "global model", site)
            if math.isfinite(own) and math.isfinite(fed) and fed < own:
                worse.append(f"{site} ({fed:.3f} < {own:.3f})")
        out.append(
            f"{alg}: on its own test split, every site's own model is beaten or matched"
            if not worse else f"{alg}: sites whose own model beats the federated one: " + ", ".join(worse)
        )
    return out


def print_table(rows: list[dict], algorithms: Sequence[str]) -> None:
    sets, lines = wide_table(rows)
    width = max(len(label) for label, _ in lines)
    print(f"{'':<{width}}  " + "  ".join(f"{s[:10]:>10}" for s in sets))
    for label, values in lines:
        print(f"{label:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in values))
    for line in verdicts(rows, algorithms):
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
                       config_dir=config_dir, config_name=args.config_name)
    except ConfigError as err:
        print(f"fedbench-compare: config error: {err}", file=sys.stderr)
        return 2
    print_table(rows, algorithms or [cfg["algorithm"]["name"]])
    print(f"fedbench-compare: wrote {Path(args.out) / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
