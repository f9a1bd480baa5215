"""Collects the privacy-utility sweeps into results/privacy_utility/ (CSV + PNG).

Run after the two sweeps in experiments/privacy_utility_{client,sample}.yaml:

    python experiments/collect_privacy_utility.py [--sweeps multirun] [--out results/privacy_utility]

Reads every ``summary.json`` under ``multirun/privacy_utility_client`` and
``multirun/privacy_utility_sample``; writes one row per run (mechanism, target and spent epsilon,
delta, noise multiplier, seed, final accuracies) and a figure of test accuracy against the
target epsilon (mean and standard deviation over seeds), with the non-private runs as a line.
Needs matplotlib (``pip install -e ".[analysis]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance

FIELDS = [
    "mechanism", "target_epsilon", "epsilon", "delta", "noise_multiplier", "accountant",
    "seed", "rounds", "test_accuracy", "test_loss", "client_accuracy_mean",
    "client_accuracy_p10", "status",
]


def collect(sweeps: Path) -> list[dict]:
    rows = []
    for name in ("privacy_utility_client", "privacy_utility_sample"):
        for path in sorted((sweeps / name).glob("*/summary.json")):
            s = json.loads(path.read_text())
            p, f, c = s["privacy"], s["final"], s["config"]
            target = c["privacy"]["target_epsilon"]
            rows.append({
                "mechanism": p["mechanism"],
                "target_epsilon": math.inf if target is None else target,
                "epsilon": math.inf if p["epsilon"] is None else float(p["epsilon"]),  # "inf" too
                "delta": p["delta"],
                "noise_multiplier": p["noise_multiplier"],
                "accountant": p["accountant"],
                "seed": c["seed"],
                "rounds": f["round"],
                "test_accuracy": f["test_accuracy"],
                "test_loss": f["test_loss"],
                "client_accuracy_mean": f["client_accuracy_mean"],
                "client_accuracy_p10": f["client_accuracy_p10"],
                "status": s.get("status", "completed"),
            })
    rows.sort(key=lambda r: (r["mechanism"], r["target_epsilon"], r["seed"]))
    return rows


def summarise(rows: list[dict]) -> dict[tuple[str, float], tuple[float, float, int]]:
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["mechanism"], r["target_epsilon"]), []).append(r["test_accuracy"])
    return {
        k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for k, v in groups.items()
    }


def plot(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    titles = {
        "dp_client": "client-level DP-FedAvg\nSynthetic-IID, 1,000 clients, q = 0.1, 200 rounds",
        "dp_sample": "record-level DP-SGD in each client\nSynthetic-IID, 100 clients, 50 rounds",
    }
    for ax, mech in zip(axes, ("dp_client", "dp_sample")):
        finite = sorted(e for m, e in stats if m == mech and math.isfinite(e))
        if not finite:
            continue
        means = [stats[(mech, e)][0] for e in finite]
        stds = [stats[(mech, e)][1] for e in finite]
        ax.errorbar(finite, means, yerr=stds, marker="o", capsize=3, label="DP (mean ± sd, 3 seeds)")
        if (mech, math.inf) in stats:
            m, s, _ = stats[(mech, math.inf)]
            ax.axhline(m, color="k", ls="--", label=f"non-private ({m:.3f})")
            ax.axhspan(m - s, m + s, color="k", alpha=0.1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(finite)
        ax.set_xticklabels([f"{e:g}" for e in finite])
        ax.set_xlabel("epsilon (delta = 1e-5, PLD accountant)")
        ax.set_title(titles[mech], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("test accuracy (pooled test set)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=Path, default=Path("multirun"))
    parser.add_argument("--out", type=Path, default=Path("results/privacy_utility"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.sweeps, args.out, args.allow_dirty)
    rows = collect(args.sweeps)
    if not rows:
        raise SystemExit(f"no summary.json under {args.sweeps}/privacy_utility_*")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "privacy_utility.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    stats = summarise(rows)
    plot(stats, args.out / "privacy_utility.png")
    print("mechanism  target_eps  test_acc_mean  sd  n")
    for (mech, eps), (m, s, n) in sorted(stats.items()):
        print(f"{mech:10} {eps:>10} {m:13.4f} {s:.4f} {n}")


if __name__ == "__main__":
    main()
