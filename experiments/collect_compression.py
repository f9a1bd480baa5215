"""Collects the compression study into results/compression/ (CSV + PNG).

Run after experiments/compression.sh:

    python experiments/collect_compression.py [--runs multirun/compression] \
        [--out results/compression]

Each configuration ran as one job with ``seeds=3`` in ``<runs>/<config>/``; the job writes one
run directory per seed, ``<runs>/<config>/seed=<s>/`` with its own ``metrics.jsonl`` (one row per
evaluation) and ``summary.json`` (its own config, ``seeds: 1``), and lists them in
``<runs>/<config>/summary.json`` (``replicas``). This reads every seed's ``metrics.jsonl`` and
writes one row per configuration, seed and evaluation (``compression.csv``), and a figure of
test accuracy against cumulative uplink bytes (log x) and against simulated seconds on the
mixed hospital links, the mean over seeds, one line per configuration (``compression.png``).
``compression_ratio`` is dense float32 bytes over the bytes sent; fedbench reports it only for
compressed runs, so the dense run's is written as 1 (its upload is the dense float32 model).
Needs matplotlib (``pip install -e ".[analysis]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance

FIELDS = [
    "config", "seed", "round", "bytes_up", "simulated_seconds", "test_accuracy",
    "client_accuracy_mean", "compression_ratio",
]

#: plotting (and table) order, and each configuration's label
CONFIGS = {
    "dense": "dense FedAvg",
    "topk_10pct": "top-k 10%",
    "topk_10pct_ef": "top-k 10% + EF",
    "topk_1pct": "top-k 1%",
    "topk_1pct_ef": "top-k 1% + EF",
    "topk_0.1pct": "top-k 0.1%",
    "topk_0.1pct_ef": "top-k 0.1% + EF",
    "quantize_8bit": "quantize 8-bit",
    "quantize_2bit": "quantize 2-bit",
    "qsgd": "QSGD (s=16, bucket 512)",
    "ef_signsgd": "EF-SignSGD",
}


def replicas(job: Path) -> list[Path]:
    """The per-seed run directories of a ``seeds=S`` job (or the job itself for ``seeds=1``)."""
    summary = json.loads((job / "summary.json").read_text())
    if "replicas" in summary:
        return [job / name for name in summary["replicas"]]
    return [job]


def collect(runs: Path) -> list[dict]:
    rows = []
    for job in sorted(p for p in runs.iterdir() if (p / "summary.json").exists()):
        for run in replicas(job):
            seed = json.loads((run / "summary.json").read_text())["config"]["seed"]
            for line in (run / "metrics.jsonl").read_text().splitlines():
                m = json.loads(line)
                ratio = m.get("compression_ratio")
                if ratio is None and job.name == "dense" and m["bytes_up"]:
                    ratio = 1.0
                rows.append({
                    "config": job.name,
                    "seed": seed,
                    "round": m["round"],
                    "bytes_up": m["bytes_up"],
                    "simulated_seconds": m["simulated_seconds"],
                    "test_accuracy": m["test_accuracy"],
                    "client_accuracy_mean": m["client_accuracy_mean"],
                    "compression_ratio": ratio,
                })
    order = {name: i for i, name in enumerate(CONFIGS)}
    rows.sort(key=lambda r: (order.get(r["config"], len(order)), r["config"], r["seed"],
                             r["round"]))
    return rows


def over_seeds(rows: list[dict]) -> dict[str, list[dict]]:
    """Per configuration and evaluation round: the mean over seeds of the plotted columns."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["round"]), []).append(r)
    curves: dict[str, list[dict]] = {}
    for (config, rnd), group in sorted(groups.items(), key=lambda kv: kv[0][1]):
        curves.setdefault(config, []).append({
            "round": rnd,
            "seeds": len(group),
            **{k: statistics.mean(g[k] for g in group)
               for k in ("bytes_up", "simulated_seconds", "test_accuracy")},
        })
    return curves


def final_table(rows: list[dict]) -> list[dict]:
    """Per configuration at its last round: accuracy mean and sd over seeds, uplink MB, ratio,
    simulated hours (means over seeds)."""
    last: dict[str, list[dict]] = {}
    for r in rows:
        best = last.get(r["config"])
        if best is None or r["round"] > best[0]["round"]:
            last[r["config"]] = [r]
        elif r["round"] == best[0]["round"]:
            best.append(r)
    table = []
    for config, group in last.items():
        acc = [g["test_accuracy"] for g in group]
        table.append({
            "config": config,
            "round": group[0]["round"],
            "seeds": len(group),
            "acc_mean": statistics.mean(acc),
            "acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "client_acc_mean": statistics.mean(g["client_accuracy_mean"] for g in group),
            "uplink_mb": statistics.mean(g["bytes_up"] for g in group) / 1e6,
            "ratio": statistics.mean(g["compression_ratio"] for g in group),
            "hours": statistics.mean(g["simulated_seconds"] for g in group) / 3600,
        })
    return table


#: colour and line style per configuration: black for dense, one colour per top-k fraction
#: (solid with error feedback, dashed without), one per quantiser
STYLES = {
    "dense": ("k", "-"),
    "topk_10pct": ("C0", "--"), "topk_10pct_ef": ("C0", "-"),
    "topk_1pct": ("C1", "--"), "topk_1pct_ef": ("C1", "-"),
    "topk_0.1pct": ("C2", "--"), "topk_0.1pct_ef": ("C2", "-"),
    "quantize_8bit": ("C3", "-"), "quantize_2bit": ("C4", "-"),
    "qsgd": ("C5", "-"), "ef_signsgd": ("C6", "-"),
}


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    names = [c for c in CONFIGS if c in curves] + sorted(set(curves) - set(CONFIGS))
    for i, name in enumerate(names):
        points = curves[name]
        color, ls = STYLES.get(name, (f"C{(7 + i) % 10}", ":"))
        style = dict(color=color, ls=ls, marker=".", markersize=4,
                     lw=2.0 if name == "dense" else 1.3, label=CONFIGS.get(name, name))
        up = [(p["bytes_up"], p["test_accuracy"]) for p in points if p["bytes_up"] > 0]
        axes[0].plot([b / 1e6 for b, _ in up], [a for _, a in up], **style)
        axes[1].plot([p["simulated_seconds"] for p in points],
                     [p["test_accuracy"] for p in points], **style)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("cumulative uplink MB, all clients (log scale)")
    axes[1].set_xlabel("simulated seconds (35 sites hospital_dsl 20/5 Mbit/s, 15 rural_4g 10/2)")
    axes[0].set_ylabel("test accuracy (pooled test set)")
    axes[0].set_ylim(0.5, 0.97)  # round 0 (0.07) and the first evaluations of 0.1% top-k are below
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle("Uplink compression, FedAvg 2NN on MNIST (mnist5k), 50 clients, Dirichlet(0.5), "
                 "10 per round, 200 rounds; mean over 3 seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("multirun/compression"))
    parser.add_argument("--out", type=Path, default=Path("results/compression"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.runs, args.out, args.allow_dirty)
    rows = collect(args.runs) if args.runs.is_dir() else []
    if not rows:
        raise SystemExit(f"no runs under {args.runs}: run experiments/compression.sh first")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "compression.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(over_seeds(rows), args.out / "compression.png")
    print(f"{'config':16} round seeds  test_acc (mean ± sd)  client_acc  uplink_MB   ratio"
          "  sim_hours")
    for t in final_table(rows):
        print(f"{t['config']:16} {t['round']:5} {t['seeds']:5}"
              f"  {t['acc_mean']:.4f} ± {t['acc_sd']:.4f}"
              f"       {t['client_acc_mean']:.4f}  {t['uplink_mb']:9.2f} {t['ratio']:7.1f}"
              f"  {t['hours']:9.3f}")


if __name__ == "__main__":
    main()
