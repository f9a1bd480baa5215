"""Collects experiments/personalization.sh's runs into results/personalization/.

Reads ``multirun/personalization/<study>/<algorithm>/seed=<s>/`` (``summary.json``: each site's
accuracy on its own test split with the model it uses, ``sites.own``; ``metrics.jsonl``: the
final evaluation) and writes

* ``sites.csv``: one row per study, algorithm, seed and client: ``group`` (the scenario's known
  group, rotated study), ``cluster`` (ifca, cfl), ``n_test``, ``accuracy``;
* ``summary.csv``: one row per study, algorithm and seed: the final ``client_accuracy_mean``,
  ``_p10``, ``_min``, ``_std``, ``test_accuracy`` (pooled test set; for per-client models the
  mean over them), ``cluster_ari`` and the number of clusters used;
* ``personalization.png``: each client's accuracy (mean over the 3 seeds), per algorithm.

Usage: python experiments/collect_personalization.py [--runs DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedbench.provenance import study_provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "rotated": ["local", "fedavg", "ifca", "cfl"],
    "synthetic": ["local", "fedavg", "finetune", "ditto", "fedrep", "apfl", "pfedme"],
}
TITLES = {
    "rotated": "(a) rotated digits, 4 groups of 5 clients (0/90/180/270 degrees)",
    "synthetic": "(b) Synthetic(0.5, 0.5), 100 devices",
}
SPREAD = ["client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min",
          "client_accuracy_std", "client_accuracy_p10_skipped", "test_accuracy"]


def read_runs(runs: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    sites, finals = [], []
    for study, algorithms in STUDIES.items():
        for algorithm in algorithms:
            for run in sorted((runs / study / algorithm).glob("seed=*")):
                seed = int(run.name.split("=")[1])
                summary = json.loads((run / "summary.json").read_text())
                final = summary["final"]
                own, sizes = summary["sites"]["own"], summary["sites"]["test_sizes"]
                groups = (summary["partition_stats"].get("groups") or {}).get("client_groups")
                clusters = final.get("clusters")
                for c, (acc, n) in enumerate(zip(own, sizes)):
                    sites.append({
                        "study": study, "algorithm": algorithm, "seed": seed, "client": c,
                        "group": None if groups is None else groups[c],
                        "cluster": None if clusters is None else clusters[c],
                        "n_test": n, "accuracy": acc,
                    })
                finals.append({
                    "study": study, "algorithm": algorithm, "seed": seed,
                    "rounds": final["round"], "status": summary["status"],
                    **{k: final.get(k) for k in SPREAD},
                    "cluster_ari": final.get("cluster_ari"),
                    "clusters_used": None if clusters is None else len(set(clusters)),
                })
    sites = pd.DataFrame(sites)
    for column in ("group", "cluster"):  # integers, empty where there are none
        sites[column] = sites[column].astype("Int64")
    finals = pd.DataFrame(finals)
    finals["clusters_used"] = finals["clusters_used"].astype("Int64")
    return sites, finals


def plot(sites: pd.DataFrame, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [4, 7]})
    for ax, (study, algorithms) in zip(axes, STUDIES.items()):
        part = sites[(sites["study"] == study) & (sites["n_test"] > 0)]
        per_client = part.groupby(["algorithm", "client"])["accuracy"].mean().reset_index()
        present = [a for a in algorithms if a in set(per_client["algorithm"])]
        values = [per_client.loc[per_client["algorithm"] == a, "accuracy"] for a in present]
        ax.boxplot(values, whis=(10, 90), showfliers=False)
        rng = np.random.default_rng(0)
        for i, v in enumerate(values):
            ax.scatter(i + 1 + rng.uniform(-0.18, 0.18, len(v)), v, s=7, alpha=0.5,
                       color=f"C{i}", linewidth=0)
            ax.scatter(i + 1, np.mean(v), marker="D", color="k", s=18, zorder=3,
                       label="mean over clients" if i == 0 else None)
        ax.set_xticks(range(1, len(present) + 1), present)
        ax.set_ylabel("client's accuracy on its own test split")
        ax.set_title(TITLES[study], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Per-site accuracy with the model each site uses (points: clients, mean over 3 "
                 "seeds; box: quartiles, whiskers: 10th-90th percentile)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "multirun" / "personalization")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "personalization")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.runs, args.out, args.allow_dirty)
    sites, finals = read_runs(args.runs)
    if sites.empty:
        raise SystemExit(f"no runs under {args.runs}: run experiments/personalization.sh first")
    args.out.mkdir(parents=True, exist_ok=True)
    sites.to_csv(args.out / "sites.csv", index=False)
    finals.to_csv(args.out / "summary.csv", index=False, float_format="%.6g")
    plot(sites, args.out / "personalization.png")
    table = finals.groupby(["study", "algorithm"], sort=False)[
        ["client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min",
         "client_accuracy_std", "test_accuracy", "cluster_ari"]].agg(["mean", "std"])
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3))


if __name__ == "__main__":
    main()
