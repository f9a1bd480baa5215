"""Collects experiments/fl_vs_local.sh into results/fl_vs_local/ (CSVs + one PNG).

    python experiments/collect_fl_vs_local.py [--runs multirun/fl_vs_local] [--out results/fl_vs_local]

For each study writes ``<study>.csv`` (the tidy table of fedbench-compare: regime, model, seed,
evaluation set, metric, value) and ``summary.csv`` (mean and sd over seeds per study, regime and
evaluation set, where ``local`` on a site means that site's own model on its own test split and
``local`` on ``pooled`` the mean over site models), ``<study>_verdicts.json`` (fedbench-compare's
verdicts with their bootstrap intervals) and ``fl_vs_local.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance

STUDIES = ["tcga_brca", "opt", "indo_rct", "digits_scenario"]


def read(path: Path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["value"] = float(r["value"])
    return rows


def summarise(study: str, rows: list[dict]) -> list[dict]:
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    out = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        for s in sets:
            if regime == "local" and s != "pooled":
                picked = [r for r in rows if r["regime"] == "local" and r["eval_set"] == s
                          and r["model"] == f"site model: {s}"]
            else:
                picked = [r for r in rows if r["regime"] == regime and r["eval_set"] == s]
            by_seed: dict[str, list[float]] = {}
            for r in picked:
                by_seed.setdefault(r["seed"], []).append(r["value"])
            vals = [statistics.mean(v) for v in by_seed.values()]
            vals = [v for v in vals if math.isfinite(v)]
            out.append({
                "study": study, "regime": regime, "eval_set": s, "metric": rows[0]["metric"],
                "n_test": picked[0]["n_test"] if picked else "",
                "mean": round(statistics.mean(vals), 4) if vals else float("nan"),
                "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else float("nan"),
                "seeds": len(vals),
            })
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = list(dict.fromkeys(r["study"] for r in summary))
    fig, axes = plt.subplots(1, len(studies), figsize=(4.2 * len(studies), 3.8), squeeze=False)
    for ax, study in zip(axes[0], studies):
        rows = [r for r in summary if r["study"] == study]
        sets = list(dict.fromkeys(r["eval_set"] for r in rows))
        regimes = list(dict.fromkeys(r["regime"] for r in rows))
        width = 0.8 / len(regimes)
        for i, regime in enumerate(regimes):
            vals = {r["eval_set"]: r for r in rows if r["regime"] == regime}
            xs = [j + (i - (len(regimes) - 1) / 2) * width for j in range(len(sets))]
            ax.bar(xs, [vals[s]["mean"] for s in sets], width,
                   yerr=[0 if math.isnan(vals[s]["sd"]) else vals[s]["sd"] for s in sets],
                   capsize=2, label={"local": "local (site's own model)",
                                     "centralized": "pooled data"}.get(regime, regime))
        ax.set_xticks(range(len(sets)), [s[:10] for s in sets], rotation=30, fontsize=8)
        ax.set_title(f"{study} ({rows[0]['metric']})", fontsize=10)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Each site's test split and the pooled test set; mean and sd over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("multirun/fl_vs_local"))
    parser.add_argument("--out", type=Path, default=Path("results/fl_vs_local"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.runs, args.out, args.allow_dirty)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for study in STUDIES:
        table = args.runs / study / "table.csv"
        if not table.exists():
            print(f"missing {table}; skipped")
            continue
        shutil.copyfile(table, args.out / f"{study}.csv")
        if (table.parent / "verdicts.json").exists():  # each verdict with its 95% interval
            shutil.copyfile(table.parent / "verdicts.json", args.out / f"{study}_verdicts.json")
        summary += summarise(study, read(table))
    with open(args.out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot(summary, args.out / "fl_vs_local.png")
    for r in summary:
        print(r)


if __name__ == "__main__":
    main()
