"""Collects IFCA on rotated mnist5k (Ghosh et al. 2020, Table 1 setting) into results/ifca_rotated/.

Run after experiments/ifca_rotated.sh (from a clean commit):

    python experiments/collect_ifca_rotated.py [--runs multirun/ifca_rotated] [--log LOG ...]

Writes ``metrics.csv`` (every evaluated round of every run: the mean over clients of each
client's test accuracy with the model it is served, the worst client's, cluster ARI for IFCA),
``final.csv`` (the last round of each run, with fedbench's compile and run seconds and the
program's wall time from the log) and ``accuracy.png`` (client accuracy against round, mean over
seeds with a min-max band, one panel per n), then re-renders README.md. Needs matplotlib.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance
from fedbench.study_readme import (
    collect_arguments, fmt, markdown_table, mean_sd, paired_t, read_rows, render_file, wall_times,
    write_rows,
)

ALGORITHMS = {"ifca": "IFCA (K = 4)", "global": "global model (FedAvg)", "local": "local models"}
#: Ghosh et al. 2020, Table 1, rotated MNIST, test accuracy in % (mean ± sd over 5 runs) for
#: (IFCA, global model, local model), keyed by n (m = 4800 / 2400 / 1200 machines). Supplied
#: from recollection of the paper by the session that built this study and NOT checked against
#: the PDF (no internet there); the issue that asked for the study puts the gap at "about 6-8
#: points over the global model".
PUBLISHED = {50: (94.20, 86.74, 63.32), 100: (95.05, 88.65, 73.66), 200: (95.25, 89.73, 80.17)}
PAPER_M = {50: 4800, 100: 2400, 200: 1200}


def collect(runs: Path, walls: dict[str, float]) -> tuple[list[dict], list[dict]]:
    metrics, final = [], []
    for row in sorted(p for p in runs.iterdir() if (p / "summary.json").exists()):
        m = re.fullmatch(r"n(\d+)_(ifca|global|local)", row.name)
        if not m:
            continue
        n, alg = int(m[1]), m[2]
        program = json.loads((row / "summary.json").read_text())
        for name in program.get("replicas") or ["."]:
            summary = json.loads((row / name / "summary.json").read_text())
            cfg = summary["config"]
            seed = int(cfg["seed"])
            for line in (row / name / "metrics.jsonl").read_text().splitlines():
                r = json.loads(line)
                metrics.append({
                    "n": n, "algorithm": alg, "seed": seed, "round": r["round"],
                    "client_accuracy_mean": r["client_accuracy_mean"],
                    "client_accuracy_min": r["client_accuracy_min"],
                    "cluster_ari": r.get("cluster_ari", ""),
                })
            last = metrics[-1]
            sizes = summary["partition_stats"]["client_sizes"]  # training examples per client
            final.append({
                "row": row.name, "n": n, "m": cfg["num_clients"], "algorithm": alg, "seed": seed,
                "rounds": cfg["rounds"], "local_steps": cfg["local_steps"],
                "batch_size": cfg["batch_size"], "lr": cfg["lr"],
                "largest_client": max(sizes),
                "client_accuracy_mean": last["client_accuracy_mean"],
                "client_accuracy_min": last["client_accuracy_min"],
                "cluster_ari": last["cluster_ari"],
                "compile_seconds": round(summary["timing"]["compile_seconds"], 2),
                "run_seconds": round(summary["timing"]["run_seconds"], 2),
                "program_wall_seconds": walls.get(row.name, ""),
            })
    return metrics, final


def plot(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({int(r["n"]) for r in metrics})
    colours = {"ifca": "tab:red", "global": "tab:blue", "local": "tab:green"}
    fig, axes = plt.subplots(1, len(ns), figsize=(4 * len(ns), 3.4), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        for alg in ALGORITHMS:
            series: dict[int, list[float]] = {}
            for r in metrics:
                if int(r["n"]) == n and r["algorithm"] == alg:
                    series.setdefault(int(r["round"]), []).append(float(r["client_accuracy_mean"]))
            if not series:
                continue
            xs = sorted(series)
            ax.plot(xs, [statistics.mean(series[x]) for x in xs], color=colours[alg], lw=1.2,
                    label=ALGORITHMS[alg])
            ax.fill_between(xs, [min(series[x]) for x in xs], [max(series[x]) for x in xs],
                            color=colours[alg], alpha=0.15)
        published = PUBLISHED.get(n)
        if published:  # the paper's final accuracies (recollection, README), dotted
            for alg, value in zip(ALGORITHMS, published):
                ax.axhline(value / 100, color=colours[alg], ls=":", lw=0.8)
        ax.set_title(f"n = {n} training images per client", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean client test accuracy")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# README values, from final.csv only.


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/ifca_rotated/README.md quotes (fedbench/study_readme.py)."""
    final = read_rows(folder / "final.csv")
    acc: dict[tuple[int, str], dict[int, float]] = {}
    for r in final:
        acc.setdefault((int(r["n"]), r["algorithm"]), {})[int(r["seed"])] = \
            float(r["client_accuracy_mean"])
    ns = sorted({n for n, _ in acc})
    v: dict[str, str] = {"runs": str(len(final)),
                         "seeds": str(len({r["seed"] for r in final}))}

    def paired(n, a, b):
        seeds = sorted(set(acc[(n, a)]) & set(acc[(n, b)]))
        return paired_t([acc[(n, a)][s] for s in seeds], [acc[(n, b)][s] for s in seeds])

    def pts(x):
        return fmt(100 * x, 1, True)

    rows, gaps, verdicts, vs_local = [], [], [], {}
    for n in ns:
        m = next(r["m"] for r in final if int(r["n"]) == n)
        cells = [mean_sd([100 * x for x in acc[(n, a)].values()], 1) if (n, a) in acc else "not run"
                 for a in ALGORITHMS]
        mean, low, high = paired(n, "ifca", "global")
        gap = f"{pts(mean)} [{pts(low)}, {pts(high)}]"
        pub = PUBLISHED[n]
        rows.append([f"{n}", m, *cells, gap,
                     f"{PAPER_M[n]}: {pub[0]:.2f} / {pub[1]:.2f} / {pub[2]:.2f} "
                     f"(gap +{pub[0] - pub[1]:.1f})"])
        paper_gap = (pub[0] - pub[1]) / 100
        if low > 0 and low <= paper_gap <= high:
            verdict = "IFCA ahead, and the interval contains the paper's gap: reproduced"
        elif low > 0 and high < paper_gap:
            verdict = "IFCA ahead, but by less than the paper's gap (the interval lies below it)"
        elif low > paper_gap:
            verdict = "IFCA ahead by more than the paper's gap (the interval lies above it)"
        elif high < 0:
            verdict = "IFCA behind the global model: not reproduced"
        else:
            verdict = "no difference between IFCA and the global model at this number of seeds"
        verdicts.append(f"n = {n}: {verdict}")
        gaps.append(mean)
        ml, ll, hl = paired(n, "ifca", "local")
        vs_local[n] = f"{pts(ml)} [{pts(ll)}, {pts(hl)}]"
    v["table"] = "\n" + markdown_table(
        ["n (train images per client)", "m (clients)", "IFCA, %", "global, %", "local, %",
         "IFCA - global, points [95% paired t]", "paper: m, IFCA / global / local, %"],
        rows, "rrrrrrl") + "\n"
    v["verdicts"] = "\n" + "\n".join(f"- {x}" for x in verdicts) + "\n"
    v["ifca_local"] = "; ".join(f"n = {n}: {vs_local[n]}" for n in ns)
    v["ifca_seeds"] = "; ".join(
        f"n = {n}: " + ", ".join(
            f"{100 * float(r['client_accuracy_mean']):.1f}% (ARI {float(r['cluster_ari']):.2f})"
            for r in sorted(final, key=lambda r: int(r["seed"]))
            if int(r["n"]) == n and r["algorithm"] == "ifca") for n in ns)
    aris = [float(r["cluster_ari"]) for r in final if r["algorithm"] == "ifca"]
    v["ari"] = (f"{min(aris):.2f}-{max(aris):.2f}" if min(aris) != max(aris)
                else f"{aris[0]:.2f}") + f" over all {len(aris)} IFCA runs"
    v["gap_range"] = f"{100 * min(gaps):.1f} to {100 * max(gaps):.1f}"
    # Against the paper's Table 1 (recollection, PUBLISHED): local models against shared ones.
    def ours(n, alg):
        return 100 * statistics.mean(acc[(n, alg)].values())

    local_off = [abs(ours(n, "local") - PUBLISHED[n][2]) for n in ns]
    shared_below = [PUBLISHED[n][i] - ours(n, alg) for n in ns
                    for i, alg in ((0, "ifca"), (1, "global"))]
    v["local_vs_paper"] = f"{max(local_off):.1f}"
    v["shared_vs_paper"] = f"{min(shared_below):.1f}-{max(shared_below):.1f}"
    v["global_range"] = f"{min(ours(n, 'global') for n in ns):.1f}-" \
                        f"{max(ours(n, 'global') for n in ns):.1f}%"
    v["ifca_range"] = f"{min(ours(n, 'ifca') for n in ns):.1f}-" \
                      f"{max(ours(n, 'ifca') for n in ns):.1f}%"
    wrong = [r for r in final if r["algorithm"] == "ifca" and float(r["cluster_ari"]) < 0.999]
    v["n_wrong"] = f"{len(wrong)} of {len(aris)}"
    v["wrong_ari"] = (f"{min(float(r['cluster_ari']) for r in wrong):.2f}-"
                      f"{max(float(r['cluster_ari']) for r in wrong):.2f}") if wrong else "none"
    v["wrong_where"] = "; ".join(
        f"n = {n}: {sum(int(r['n']) == n for r in wrong)} of "
        f"{sum(int(r['n']) == n and r['algorithm'] == 'ifca' for r in final)}" for n in ns)
    # Is each IFCA run's ARI the same at every evaluation after round 0 (metrics.csv)?
    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in read_rows(folder / "metrics.csv"):
        if r["algorithm"] == "ifca" and int(r["round"]) > 0:
            series.setdefault((r["n"], r["seed"]), []).append((int(r["round"]),
                                                               float(r["cluster_ari"])))
    fixed = sum(len({round(a, 6) for _, a in seq}) == 1 for seq in series.values())
    first = min(rd for seq in series.values() for rd, _ in seq)
    v["ari_fixed"] = f"in {fixed} of {len(series)} IFCA runs, from round {first} on"
    walls = {r["row"]: float(r["program_wall_seconds"]) for r in final
             if r["program_wall_seconds"]}
    v["time_total"] = f"{sum(walls.values()) / 60:.0f}"
    v["time_rows"] = "; ".join(f"{k} {walls[k]:.0f} s" for k in sorted(walls))
    return v


def main() -> None:
    args = collect_arguments("ifca_rotated", __doc__.splitlines()[0])
    study_provenance(args.runs, args.out, args.allow_dirty)  # before any write
    metrics, final = collect(args.runs, wall_times(args.log))
    if not final:
        raise SystemExit(f"no runs under {args.runs}")
    for r in final:  # every local step must be one full batch, as the authors' code
        if int(r["batch_size"]) < int(r["largest_client"]):
            raise SystemExit(f"{r['row']}: batch_size below the largest client")
    write_rows(args.out / "metrics.csv", metrics)
    write_rows(args.out / "final.csv", final)
    plot(metrics, args.out / "accuracy.png")
    render_file(args.out)
    for r in final:
        print(f"n {r['n']:>3} {r['algorithm']:6} seed {r['seed']}: {r['client_accuracy_mean']:.3f}")


if __name__ == "__main__":
    main()
