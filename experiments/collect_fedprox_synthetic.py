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
from fedbench.study_readme import compare, excludes_zero, fmt, markdown_table, paired_t, render_file

VARIANTS = {"s00": "Synthetic(0,0)", "s0505": "Synthetic(0.5,0.5)", "s11": "Synthetic(1,1)",
            "iid": "Synthetic-IID"}
METHODS = {"fedavg": "FedAvg (stragglers dropped)", "fedprox": "FedProx mu=1 (partial work)"}
NON_IID = ("s00", "s0505", "s11")
#: Li et al. 2020 (MLSys), abstract: FedProx's average absolute test-accuracy gain over FedAvg
#: in the most heterogeneous settings, over all of the paper's datasets (points).
PUBLISHED_MEAN_GAIN = 22


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


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/fedprox_synthetic/README.md quotes, from ``final.csv``
    and ``metrics.csv`` (fedbench/study_readme.py)."""
    final = {(r["dataset"], r["method"], float(r["stragglers"])): r
             for r in _read(folder / "final.csv")}
    runs: dict[tuple, dict[int, dict[int, dict]]] = {}
    for r in _read(folder / "metrics.csv"):
        key = (r["dataset"], r["method"], float(r["stragglers"]))
        runs.setdefault(key, {}).setdefault(int(r["seed"]), {})[int(r["round"])] = r
    levels = sorted({k[2] for k in final})
    last = max(int(r["rounds"]) for r in final.values())

    def f(d, m, s, col):
        return float(final[(d, m, s)][col])

    def per_seed(d, m, s, col, rnd=last):
        return [float(runs[(d, m, s)][seed][rnd][col]) for seed in sorted(runs[(d, m, s)])]

    def name(d, s):
        return f"{VARIANTS[d]} at {s:.0%}"

    rows = []
    for d in VARIANTS:
        for s in levels:
            gain = 100 * (f(d, "fedprox", s, "test_accuracy_mean") - f(d, "fedavg", s, "test_accuracy_mean"))
            rows.append([VARIANTS[d], f"{s:.0%}"]
                        + [f"{f(d, m, s, 'test_accuracy_mean'):.3f} ± {f(d, m, s, 'test_accuracy_sd'):.3f}"
                           for m in METHODS] + [fmt(gain, 1, True)]
                        + [f"{f(d, m, s, 'train_loss_mean'):.3f} ± {f(d, m, s, 'train_loss_sd'):.3f}"
                           for m in METHODS])
    v: dict[str, str] = {"table": markdown_table(
        ["dataset", "stragglers", "FedAvg acc", "FedProx acc", "difference (points)",
         "FedAvg train loss", "FedProx train loss"], rows, "llrrrrr")}
    v["runs"] = str(sum(len(seeds) for seeds in runs.values()))
    v["seeds"] = str(len(next(iter(runs.values()))))

    # Training loss on the non-IID federations: paired t intervals of FedAvg - FedProx.
    settings = [(d, s) for d in NON_IID for s in levels]
    loss = {(d, s): paired_t(per_seed(d, "fedavg", s, "train_loss"),
                             per_seed(d, "fedprox", s, "train_loss")) for d, s in settings}
    lower = [k for k in settings if f(k[0], "fedprox", k[1], "train_loss_mean")
             < f(k[0], "fedavg", k[1], "train_loss_mean")]
    resolved = [k for k in settings if excludes_zero(loss[k]) and loss[k][0] > 0]
    open_ = [k for k in settings if not excludes_zero(loss[k])]
    v["loss_lower"] = f"{len(lower)} of {len(settings)}"
    v["loss_resolved"] = f"{len(resolved)} of {len(settings)}"
    v["loss_resolved_list"] = "; ".join(
        f"{name(d, s)} [{fmt(loss[(d, s)][1], 4, True)}, {fmt(loss[(d, s)][2], 3, True)}]"
        for d, s in resolved) or "none"
    v["loss_open_list"] = "; ".join(
        f"{name(d, s)} [{fmt(loss[(d, s)][1], 2, True)}, {fmt(loss[(d, s)][2], 2, True)}]"
        for d, s in open_) or "none"
    ratios = {k: f(k[0], "fedavg", k[1], "train_loss_sd") / f(k[0], "fedprox", k[1], "train_loss_sd")
              for k in settings}
    v["sd_ratio_range"] = f"{min(ratios.values()):.1f}x to {max(ratios.values()):.0f}x"
    v["sd_ratios"] = "; ".join(
        f"{VARIANTS[d]}: " + ", ".join(f"{ratios[(d, s)]:.2g}" for s in levels) for d in NON_IID)

    # Accuracy: per setting FedProx - FedAvg at the last round, paired over seeds.
    acc = {k: per_seed(k[0], "fedprox", k[1], "test_accuracy") for k in settings}
    acc_avg = {k: per_seed(k[0], "fedavg", k[1], "test_accuracy") for k in settings}
    acc_t = {k: paired_t(acc[k], acc_avg[k]) for k in settings}
    ahead = [k for k in settings if excludes_zero(acc_t[k]) and acc_t[k][0] > 0]
    v["acc_ahead"] = f"{len(ahead)} of {len(settings)}"
    v["acc_ahead_list"] = "; ".join(
        f"{name(d, s)} ({fmt(100 * acc_t[(d, s)][0], 1, True)} points, "
        f"[{fmt(100 * acc_t[(d, s)][1], 1, True)}, {fmt(100 * acc_t[(d, s)][2], 1, True)}])"
        for d, s in ahead) or "none"
    v["acc_behind"] = str(sum(excludes_zero(t) and t[0] < 0 for t in acc_t.values()))
    v["acc_open_list"] = "; ".join(
        f"{name(d, s)} ({fmt(100 * acc_t[(d, s)][0], 1, True)} points, "
        f"[{fmt(100 * acc_t[(d, s)][1], 1, True)}, {fmt(100 * acc_t[(d, s)][2], 1, True)}])"
        for d, s in settings if not excludes_zero(acc_t[(d, s)])) or "none"
    top = levels[-1]
    gains90 = {d: 100 * (f(d, "fedprox", top, "test_accuracy_mean")
                         - f(d, "fedavg", top, "test_accuracy_mean")) for d in NON_IID}
    v["gain90"] = ", ".join(f"{fmt(gains90[d], 1, True)} on {VARIANTS[d]}" for d in NON_IID)
    v["gain90_mean"] = fmt(sum(gains90.values()) / len(gains90), 1, True)
    v["published_gain"] = f"+{PUBLISHED_MEAN_GAIN}"

    # Synthetic(0.5,0.5) at the highest straggler share, over rounds (means over seeds).
    def curve(m, col="test_accuracy"):
        seeds = runs[("s0505", m, top)]
        rounds = sorted(set.intersection(*(set(x) for x in seeds.values())))
        return {r: sum(float(seeds[s][r][col]) for s in seeds) / len(seeds) for r in rounds}
    avg, prox = curve("fedavg"), curve("fedprox")
    gap = {r: 100 * (prox[r] - avg[r]) for r in avg}
    worst = max(gap, key=gap.get)
    v["gap_max"], v["gap_max_round"] = fmt(gap[worst], 1), str(worst)
    v["gap_100"] = fmt(gap[100], 1)
    prev = sorted(gap)[-2]
    v["prev_round"] = str(prev)
    v["gap_prev"] = fmt(abs(gap[prev]), 1)
    v["gap_prev_word"] = "trails" if gap[prev] > 0 else "leads"
    v["acc_prev"] = f"{avg[prev]:.3f} against {prox[prev]:.3f}"

    def behind(rnd):
        a = per_seed("s0505", "fedavg", top, "test_accuracy", rnd)
        p = per_seed("s0505", "fedprox", top, "test_accuracy", rnd)
        return sum(x < y for x, y in zip(a, p))
    v["prev_behind_seeds"] = f"{behind(prev)} of {v['seeds']}"
    v["gap_last"] = fmt(abs(gap[last]), 1)
    v["gap_last_word"] = "behind" if gap[last] > 0 else "ahead"
    v["acc_last"] = f"{avg[last]:.3f} against {prox[last]:.3f}"
    v["last_ahead_seeds"] = f"{int(v['seeds']) - behind(last)} of {v['seeds']}"
    v["last_t"] = compare("FedAvg", "FedProx", per_seed("s0505", "fedavg", top, "test_accuracy"),
                          per_seed("s0505", "fedprox", top, "test_accuracy"))

    # Synthetic-IID.
    iid_gap = [100 * (f("iid", "fedavg", s, "test_accuracy_mean")
                      - f("iid", "fedprox", s, "test_accuracy_mean")) for s in levels]
    v["iid_gap"] = f"{min(iid_gap):.0f}-{max(iid_gap):.0f}"
    v["iid_acc"] = (f"{f('iid', 'fedprox', 0.0, 'test_accuracy_mean'):.2f} against "
                    f"{f('iid', 'fedavg', 0.0, 'test_accuracy_mean'):.2f}")
    iid_ratio = [f("iid", "fedprox", s, "train_loss_mean") / f("iid", "fedavg", s, "train_loss_mean")
                 for s in levels]
    v["iid_loss_ratio"] = f"{min(iid_ratio):.1f} to {max(iid_ratio):.1f}"
    v["iid_losses"] = ", ".join(
        f"{f('iid', 'fedprox', s, 'train_loss_mean'):.2f} against "
        f"{f('iid', 'fedavg', s, 'train_loss_mean'):.2f} at {s:.0%}" for s in levels)
    v["iid_t"] = "; ".join(
        f"{s:.0%}: " + compare("FedAvg", "FedProx", per_seed("iid", "fedavg", s, "test_accuracy"),
                               per_seed("iid", "fedprox", s, "test_accuracy"))
        for s in levels)

    # No stragglers on the non-IID federations.
    g0 = [100 * (f(d, "fedprox", 0.0, "test_accuracy_mean") - f(d, "fedavg", 0.0, "test_accuracy_mean"))
          for d in NON_IID]
    v["gain0_range"] = f"{fmt(min(g0), 1, True)} to {fmt(max(g0), 1, True)}"
    v["fedavg_by_share"] = "; ".join(
        f"{VARIANTS[d]}: " + ", ".join(f"{f(d, 'fedavg', s, 'test_accuracy_mean'):.3f} "
                                       f"(sd {f(d, 'fedavg', s, 'test_accuracy_sd'):.3f})"
                                       for s in levels) for d in NON_IID)
    return v


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
    render_file(args.out)  # the README's numbers from the files just written
    for t in table:
        print(f"{t['dataset']:6} {t['method']:8} stragglers {t['stragglers']:.1f}: acc "
              f"{t['test_accuracy_mean']:.4f} ± {t['test_accuracy_sd']:.4f}  loss "
              f"{t['train_loss_mean'] if t['train_loss_mean'] is None else round(t['train_loss_mean'], 4)}"
              f"  ({t['seeds']} seeds, round {t['rounds']})")


if __name__ == "__main__":
    main()
