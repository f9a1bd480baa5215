"""Collects the FedProx Synthetic sweep into results/fedprox_synthetic/ (CSVs + PNGs).

Run after the sweep in experiments/fedprox_synthetic.yaml:

    python experiments/collect_fedprox_synthetic.py [--sweep multirun/fedprox_synthetic]

Writes ``metrics.csv`` (one row per run and evaluation round), ``final.csv`` (mean and sd over
seeds of the last round's test accuracy and training loss per dataset, method and straggler
share), ``test_accuracy.png`` and ``train_loss.png`` (mean over seeds, shaded min-max), laid out
like Li et al. 2020, Fig. 1: one column per dataset, one row per straggler share.
Needs matplotlib (``pip install -e ".[analysis]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance

VARIANTS = {"s00": "Synthetic(0,0)", "s0505": "Synthetic(0.5,0.5)", "s11": "Synthetic(1,1)",
            "iid": "Synthetic-IID"}
METHODS = {"fedavg": "FedAvg (stragglers dropped)", "fedprox": "FedProx mu=1 (partial work)"}


def parse_overrides(name: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in name.split(","))


def collect(sweep: Path) -> list[dict]:
    rows = []
    for run in sorted(p for p in sweep.iterdir() if (p / "metrics.jsonl").exists()):
        o = parse_overrides(run.name)
        status = "incomplete"
        if (run / "summary.json").exists():
            status = json.loads((run / "summary.json").read_text()).get("status", "completed")
        for line in (run / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            rows.append({
                "dataset": o["synthetic_variant"], "method": o["method"],
                "stragglers": float(o["stragglers.fraction"]), "seed": int(o["seed"]),
                "round": m["round"], "train_loss": m["train_loss"],
                "test_accuracy": m["test_accuracy"], "status": status,
            })
    return rows


def final_table(rows: list[dict]) -> list[dict]:
    last: dict[tuple, dict] = {}
    for r in rows:
        key = (r["dataset"], r["method"], r["stragglers"], r["seed"])
        if key not in last or r["round"] > last[key]["round"]:
            last[key] = r
    groups: dict[tuple, list[dict]] = {}
    for (d, m, s, _), r in last.items():
        groups.setdefault((d, m, s), []).append(r)
    out = []
    for (d, m, s), rs in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in rs]
        loss = [r["train_loss"] for r in rs if r["train_loss"] is not None]
        out.append({
            "dataset": d, "method": m, "stragglers": s, "seeds": len(rs),
            "rounds": min(r["round"] for r in rs),
            "test_accuracy_mean": statistics.mean(acc),
            "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "train_loss_mean": statistics.mean(loss) if loss else None,
            "train_loss_sd": statistics.stdev(loss) if len(loss) > 1 else 0.0,
        })
    return out


def plot(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["stragglers"] for r in rows})
    variants = [v for v in VARIANTS if any(r["dataset"] == v for r in rows)]
    fig, axes = plt.subplots(len(levels), len(variants), figsize=(3.2 * len(variants),
                             2.6 * len(levels)), squeeze=False, sharex=True)
    for i, level in enumerate(levels):
        for j, variant in enumerate(variants):
            ax = axes[i][j]
            for method, colour in (("fedavg", "tab:blue"), ("fedprox", "tab:red")):
                series: dict[int, list[float]] = {}
                for r in rows:
                    if (r["dataset"], r["method"], r["stragglers"]) == (variant, method, level):
                        if r[metric] is not None:
                            series.setdefault(r["round"], []).append(r[metric])
                if not series:
                    continue
                xs = sorted(series)
                ax.plot(xs, [statistics.mean(series[x]) for x in xs], color=colour,
                        label=METHODS[method])
                ax.fill_between(xs, [min(series[x]) for x in xs], [max(series[x]) for x in xs],
                                color=colour, alpha=0.2)
            if metric == "train_loss":
                ax.set_yscale("log")
            ax.set_title(f"{VARIANTS[variant]}, {level:.0%} stragglers", fontsize=8)
            ax.grid(alpha=0.3)
            if i == len(levels) - 1:
                ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel(metric.replace("_", " "))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("multirun/fedprox_synthetic"))
    parser.add_argument("--out", type=Path, default=Path("results/fedprox_synthetic"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.sweep, args.out, args.allow_dirty)
    rows = collect(args.sweep)
    if not rows:
        raise SystemExit(f"no runs under {args.sweep}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "metrics.csv", rows)
    table = final_table(rows)
    write_csv(args.out / "final.csv", table)
    plot(rows, "test_accuracy", args.out / "test_accuracy.png")
    plot(rows, "train_loss", args.out / "train_loss.png")
    for t in table:
        print(f"{t['dataset']:6} {t['method']:8} stragglers {t['stragglers']:.1f}: acc "
              f"{t['test_accuracy_mean']:.4f} ± {t['test_accuracy_sd']:.4f}  loss "
              f"{t['train_loss_mean'] if t['train_loss_mean'] is None else round(t['train_loss_mean'], 4)}"
              f"  ({t['seeds']} seeds, round {t['rounds']})")


if __name__ == "__main__":
    main()
