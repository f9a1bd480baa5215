"""Collects the Fed-TCGA-BRCA sweep (experiments/tcga_brca.yaml) into results/tcga_brca/.

    python experiments/collect_tcga_brca.py [--sweep multirun/tcga_brca] [--out results/tcga_brca]

Writes ``runs.csv`` (one row per run: method, feature normalisation, seed, pooled-test C-index,
mean per-region C-index, each region's C-index), ``summary.csv`` (mean and sd over seeds beside
FLamby's published 5-seed means) and ``cindex.png``. Needs matplotlib (``.[analysis]``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance

METHODS = ["pooled", "local", "fedavg", "fedprox", "scaffold", "fedadam", "fedyogi", "fedadagrad"]
# Ogier du Terrail et al. 2022 (FLamby), Fed-TCGA-BRCA, pooled-test C-index means over 5 seeds
# (FLamby's result files flamby/results/results_benchmark_fed_tcga_brca/tcga_seed42..46.csv;
# Scaffold 0.6995 from the same files); None where there is no comparable number.
PUBLISHED = {"pooled": 0.70, "local": None, "fedavg": 0.74, "fedprox": 0.72, "scaffold": 0.70,
             "fedadam": 0.84, "fedyogi": 0.84, "fedadagrad": 0.83}


def overrides(name: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in name.split(","))


def collect(sweep: Path) -> list[dict]:
    rows = []
    for run in sorted(p for p in sweep.iterdir() if (p / "summary.json").exists()):
        o = overrides(run.name)
        summary = json.loads((run / "summary.json").read_text())
        sites = summary.get("sites") or {}
        row = {
            "method": o["flamby_method"],
            "normalize": o["dataset.normalize"],
            "seed": int(o["seed"]),
            "status": summary["status"],
            "rounds": summary["final"]["round"],
            "test_cindex": summary["final"]["test_cindex"],
            "client_cindex_mean": summary["final"]["client_cindex_mean"],
        }
        for k, value in enumerate(sites.get("own", [])):
            row[f"region{k}_cindex"] = value
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for norm in ("none", "standardize"):
        for method in METHODS:
            vals = [r["test_cindex"] for r in rows if r["method"] == method and r["normalize"] == norm]
            regional = [r["client_cindex_mean"] for r in rows
                        if r["method"] == method and r["normalize"] == norm]
            if not vals:
                continue
            out.append({
                "normalize": norm,
                "method": method,
                "seeds": len(vals),
                "cindex_mean": round(statistics.mean(vals), 4),
                "cindex_sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
                "region_cindex_mean": round(statistics.mean(regional), 4),
                "flamby_published": PUBLISHED[method],
            })
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.27
    for j, norm in enumerate(("none", "standardize")):
        rows = {r["method"]: r for r in summary if r["normalize"] == norm}
        xs = [i + (j - 0.5) * width for i in range(len(METHODS))]
        ax.bar(xs, [rows[m]["cindex_mean"] if m in rows else 0 for m in METHODS], width,
               yerr=[rows[m]["cindex_sd"] if m in rows else 0 for m in METHODS], capsize=3,
               label=f"fedbench, features: {'raw (as FLamby)' if norm == 'none' else 'standardised'}")
    pub = [(i + width, PUBLISHED[m]) for i, m in enumerate(METHODS) if PUBLISHED[m] is not None]
    ax.scatter([p[0] for p in pub], [p[1] for p in pub], marker="D", color="k", zorder=3,
               label="FLamby published (5-seed mean)")
    ax.set_xticks(range(len(METHODS)), METHODS)
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax.set_ylabel("C-index, pooled test set")
    ax.set_title("Fed-TCGA-BRCA: mean and sd over 5 seeds")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("multirun/tcga_brca"))
    parser.add_argument("--out", type=Path, default=Path("results/tcga_brca"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.sweep, args.out, args.allow_dirty)
    rows = collect(args.sweep)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "runs.csv", rows)
    summary = summarise(rows)
    write_csv(args.out / "summary.csv", summary)
    plot(summary, args.out / "cindex.png")
    for r in summary:
        print(r)


if __name__ == "__main__":
    main()
