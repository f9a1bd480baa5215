"""Collects the q-FFL fairness study (issue 33 item 4) into results/qffl_fairness/.

Run after experiments/qffl_fairness.sh (from a clean commit):

    python experiments/collect_qffl_fairness.py [--runs multirun/qffl_fairness] [--log LOG ...]

Reads each replica's ``summary.json`` (``sites.own``: each device's accuracy on its own test
split with the global model; ``sites.test_sizes``) and writes

* ``sites.csv``: one row per q, seed and device: ``n_test``, ``accuracy``;
* ``runs.csv``: one row per q and seed: the device accuracies' mean (unweighted, over devices
  with test examples), the mean of the worst and of the best 10% of devices, their variance (in
  percent squared, as Li et al. report it), the pooled test accuracy, rounds, and the program's
  compile, run and wall seconds (one program for all replicas: the same in every row);
* ``PROVENANCE.json`` (checked first); ``fairness.png``: the devices' accuracies per q;

then re-renders results/qffl_fairness/README.md from those files. Needs matplotlib.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from fedbench.study_readme import (collected, compare, markdown_table, mean_sd,
                                   paired_t, read_rows, render_file, write_rows)

STUDY = "qffl_fairness"
TAIL = 0.10  # the worst / best 10% of devices (Li et al. 2020's "worst 10%", "best 10%")


def tails(accuracies: list[float]) -> tuple[float, float]:
    """The mean accuracy of the worst and of the best ``TAIL`` of the devices."""
    ordered = sorted(accuracies)
    k = max(1, math.floor(TAIL * len(ordered)))
    return statistics.mean(ordered[:k]), statistics.mean(ordered[-k:])


def collect(runs: Path, walls: dict[str, float]) -> tuple[list[dict], list[dict], list[dict]]:
    job = runs / "sweep"
    index = json.loads((job / "summary.json").read_text())
    sites, rows, curves = [], [], []
    for name in index["replicas"]:
        summary = json.loads((job / name / "summary.json").read_text())
        cfg, final = summary["config"], summary["final"]
        q, seed = float(cfg["algorithm"]["q"]), int(cfg["seed"])
        own, sizes = summary["sites"]["own"], summary["sites"]["test_sizes"]
        for line in (job / name / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            curves.append({"q": q, "seed": seed, "round": m["round"],
                           "train_loss": m["train_loss"], "test_accuracy": m["test_accuracy"],
                           "client_accuracy_mean": m["client_accuracy_mean"]})
        acc = []
        for client, (a, n) in enumerate(zip(own, sizes)):
            sites.append({"q": q, "seed": seed, "client": client, "n_test": n, "accuracy": a})
            if n > 0:
                acc.append(float(a))
        worst, best = tails(acc)
        rows.append({
            "q": q, "seed": seed, "devices": len(acc), "average": statistics.mean(acc),
            "worst10": worst, "best10": best,
            "variance_pct2": statistics.pvariance([100 * a for a in acc]),
            "test_accuracy": final["test_accuracy"], "rounds": final["round"],
            "status": summary["status"],
            "compile_seconds": summary["timing"]["compile_seconds"],
            "run_seconds": summary["timing"]["run_seconds"],
            "program_wall_seconds": walls.get("sweep", ""),
        })
    return sites, rows, curves


def plot(sites: list[dict], qs: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, q in enumerate(qs):
        by_client: dict[int, list[float]] = {}
        for r in sites:
            if float(r["q"]) == q and int(r["n_test"]) > 0:
                by_client.setdefault(int(r["client"]), []).append(float(r["accuracy"]))
        ordered = sorted(statistics.mean(v) for v in by_client.values())
        ax.plot([100 * (j + 0.5) / len(ordered) for j in range(len(ordered))], ordered,
                color=f"C{i}", lw=1.4, label=f"q = {q:g}")
    ax.set_xlabel("devices, sorted by accuracy (percentile)")
    ax.set_ylabel("device's test accuracy (mean over seeds)")
    ax.set_title("q-FedAvg on Synthetic(1, 1), 100 devices: each device's accuracy",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/qffl_fairness/README.md quotes, from runs.csv only."""
    rows = read_rows(folder / "runs.csv")
    curves = read_rows(folder / "curves.csv")
    qs = sorted({float(r["q"]) for r in rows})

    def col(q: float, key: str) -> list[float]:
        picked = sorted((int(r["seed"]), float(r[key])) for r in rows if float(r["q"]) == q)
        return [v for _, v in picked]

    v: dict[str, str] = {
        "seeds": str(len({r["seed"] for r in rows})),
        "devices": "-".join(sorted({r["devices"] for r in rows})),
        "rounds": "-".join(sorted({r["rounds"] for r in rows})),
    }
    table = []
    for q in qs:
        table.append([f"{q:g}", mean_sd(col(q, "average")), mean_sd(col(q, "worst10")),
                      mean_sd(col(q, "best10")), mean_sd(col(q, "variance_pct2"), 0),
                      mean_sd(col(q, "test_accuracy"))])
    v["table"] = "\n" + markdown_table(
        ["q", "average (devices)", "worst 10%", "best 10%", "variance (%^2)",
         "pooled test"], table) + "\n"
    rounds = sorted({int(r["round"]) for r in curves if int(r["round"]) > 0})
    by_round = []
    for q in qs:
        cells = []
        for t in rounds:
            got = [float(r["client_accuracy_mean"]) for r in curves
                   if float(r["q"]) == q and int(r["round"]) == t]
            cells.append(f"{statistics.mean(got):.3f}")
        by_round.append([f"{q:g}"] + cells)
    v["curve_table"] = "\n" + markdown_table(["q"] + [f"round {t}" for t in rounds],
                                              by_round) + "\n"
    lines, verdicts = [], []
    for q in qs[1:]:
        worst = paired_t(col(q, "worst10"), col(0.0, "worst10"))
        var = paired_t(col(q, "variance_pct2"), col(0.0, "variance_pct2"))
        lines.append("; ".join(
            compare(f"q = {q:g}'s {label}", "q = 0's", col(q, key), col(0.0, key),
                    digits=digits, higher="above", lower="below")
            for key, label, digits in [("worst10", "worst 10%", 3),
                                       ("variance_pct2", "variance", 0),
                                       ("average", "average", 3)]))
        held = [name for name, ok in [("a smaller variance", var[2] < 0),
                                      ("a larger worst 10%", worst[1] > 0)] if ok]
        word = ("**reproduced**" if len(held) == 2 else
                f"**in part** ({held[0]} only)" if held else "**not reproduced**")
        verdicts.append(f"at q = {q:g} {word}")
    v["comparisons"] = "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    v["verdict"] = "; ".join(verdicts)
    compile_s = {float(r["compile_seconds"]) for r in rows}.pop()
    run_s = {float(r["run_seconds"]) for r in rows}.pop()
    walls = {r["program_wall_seconds"] for r in rows}
    wall = walls.pop() if len(walls) == 1 else ""
    v["runtime"] = (f"compilation {compile_s:.0f} s and rounds {run_s:.0f} s for the "
                    f"{len(rows)} replicas" + (f", {float(wall):.0f} s wall" if wall else ""))
    return v


def main(argv=None) -> None:
    args, (sites, rows, curves) = collected(STUDY, __doc__.splitlines()[0],
                                    lambda runs, walls: collect(runs, walls) if
                                    (runs / "sweep" / "summary.json").exists() else [], argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "sites.csv", sites)
    write_rows(args.out / "runs.csv", rows)
    write_rows(args.out / "curves.csv", curves)
    plot(sites, sorted({float(r["q"]) for r in rows}), args.out / "fairness.png")
    render_file(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
