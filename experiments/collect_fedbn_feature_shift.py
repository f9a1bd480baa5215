"""Collects the FedBN feature-shift study (issue 33 item 4) into results/fedbn_feature_shift/.

Run after experiments/fedbn_feature_shift.sh (from a clean commit):

    python experiments/collect_fedbn_feature_shift.py [--runs multirun/fedbn_feature_shift] [--log LOG ...]

Reads each replica's ``summary.json`` (``sites.own``: each site's accuracy on its own test split
with the model it uses: the global model, or under FedBN the global model with the site's own
BatchNorm layers) and ``metrics.jsonl``, and writes

* ``sites.csv``: one row per split, algorithm, seed and site: ``n_test``, ``accuracy``;
* ``runs.csv``: one row per split, algorithm and seed: the mean over sites (the FedBN paper's
  metric), the worst site, the pooled test accuracy of the global model, and the program's wall
  seconds;
* ``curves.csv``: the mean over sites at every evaluation;
* ``PROVENANCE.json`` (checked first); ``accuracy.png``: the mean over sites against rounds;

then re-renders results/fedbn_feature_shift/README.md from those files. Needs matplotlib.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from fedbench.study_readme import (collected, compare, markdown_table, mean_sd, read_rows,
                                   render_file, write_rows)

STUDY = "fedbn_feature_shift"
SPLITS = {"shift": "scanner shift (partition=acquisition)", "noshift": "no shift (partition=iid)",
          "shift_group": "scanner shift, GroupNorm (a control)"}
ALGORITHMS = {"fedavg": "FedAvg", "fedprox": "FedProx (mu 0.01)", "fedbn": "FedBN",
              "silobn": "SiloBN"}


def collect(runs: Path, walls: dict[str, float]) -> tuple[list[dict], list[dict], list[dict]]:
    sites, rows, curves = [], [], []
    for split in SPLITS:
        for algorithm in ALGORITHMS:
            job = runs / split / algorithm
            if not (job / "summary.json").exists():
                continue
            for name in json.loads((job / "summary.json").read_text())["replicas"]:
                summary = json.loads((job / name / "summary.json").read_text())
                seed = int(summary["config"]["seed"])
                own, sizes = summary["sites"]["own"], summary["sites"]["test_sizes"]
                for client, (a, n) in enumerate(zip(own, sizes)):
                    sites.append({"split": split, "algorithm": algorithm, "seed": seed,
                                  "site": client, "n_test": n, "accuracy": a})
                for line in (job / name / "metrics.jsonl").read_text().splitlines():
                    m = json.loads(line)
                    curves.append({"split": split, "algorithm": algorithm, "seed": seed,
                                   "round": m["round"],
                                   "client_accuracy_mean": m["client_accuracy_mean"]})
                final = summary["final"]
                rows.append({"split": split, "algorithm": algorithm, "seed": seed,
                             "site_mean": statistics.mean(float(a) for a in own),
                             "worst_site": min(float(a) for a in own),
                             "pooled_test_accuracy": final["test_accuracy"],
                             "rounds": final["round"], "status": summary["status"],
                             "program_wall_seconds": walls.get(f"{split}/{algorithm}", "")})
    return sites, rows, curves


def plot(curves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPLITS), figsize=(4.2 * len(SPLITS), 3.5), sharey=True)
    for ax, split in zip(axes, SPLITS):
        for i, algorithm in enumerate(ALGORITHMS):
            by_round: dict[int, list[float]] = {}
            for r in curves:
                if r["split"] == split and r["algorithm"] == algorithm:
                    by_round.setdefault(int(r["round"]), []).append(
                        float(r["client_accuracy_mean"]))
            xs = sorted(by_round)
            ax.plot(xs, [statistics.mean(by_round[x]) for x in xs], color=f"C{i}", lw=1.3,
                    label=ALGORITHMS[algorithm])
        ax.set_title(SPLITS[split], fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean over sites of own-test accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/fedbn_feature_shift/README.md quotes, from the CSVs."""
    rows = read_rows(folder / "runs.csv")

    def col(split: str, algorithm: str, key: str) -> list[float]:
        picked = sorted((int(r["seed"]), float(r[key])) for r in rows
                        if r["split"] == split and r["algorithm"] == algorithm)
        return [v for _, v in picked]

    v: dict[str, str] = {"runs": str(len(rows)), "seeds": str(len({r["seed"] for r in rows})),
                         "rounds": "-".join(sorted({r["rounds"] for r in rows}))}
    present = [(s, a) for s in SPLITS for a in ALGORITHMS
               if any(r["split"] == s and r["algorithm"] == a for r in rows)]
    table = [[SPLITS[s], ALGORITHMS[a], mean_sd(col(s, a, "site_mean")),
              mean_sd(col(s, a, "worst_site")), mean_sd(col(s, a, "pooled_test_accuracy"))]
             for s, a in present]
    v["table"] = "\n" + markdown_table(
        ["federation", "algorithm", "mean over sites", "worst site",
         "pooled test (global model)"], table) + "\n"
    for split, other in present:
        for local in ("fedbn", "silobn"):  # local statistics against the others
            if other not in ("fedbn", local) and (split, local) in present:
                v[f"{split}_{local}_vs_{other}"] = compare(
                    ALGORITHMS[local], ALGORITHMS[other], col(split, local, "site_mean"),
                    col(split, other, "site_mean"))
    ahead = {s: " ahead of " in v[f"{s}_fedbn_vs_fedavg"] for s in SPLITS}
    level = {s: "no difference" in v[f"{s}_fedbn_vs_fedavg"] for s in SPLITS}
    v["verdict"] = ("**reproduced**" if ahead["shift"] and level["noshift"] else
                    "**in part**" if ahead["shift"] or level["noshift"] else
                    "**not reproduced**")
    walls = [float(r["program_wall_seconds"]) for r in rows if r["program_wall_seconds"]]
    programs = {(r["split"], r["algorithm"]): float(r["program_wall_seconds"]) for r in rows
                if r["program_wall_seconds"]}
    v["time_total"] = f"{sum(programs.values()) / 60:.0f}" if walls else "not recorded"
    return v


def main(argv=None) -> None:
    args, (sites, rows, curves) = collected(
        STUDY, __doc__.splitlines()[0],
        lambda runs, walls: collect(runs, walls) if any(
            (runs / s / a / "summary.json").exists() for s in SPLITS for a in ALGORITHMS)
        else [], argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "sites.csv", sites)
    write_rows(args.out / "runs.csv", rows)
    write_rows(args.out / "curves.csv", curves)
    plot(curves, args.out / "accuracy.png")
    render_file(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
