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
from fedbench.study_readme import (compare, excludes_zero, fmt, markdown_table, mean_sd, paired_t,
                                   render_file)

METHODS = ["pooled", "local", "fedavg", "fedprox", "scaffold", "fedadam", "fedyogi", "fedadagrad"]
# Ogier du Terrail et al. 2022 (FLamby), Fed-TCGA-BRCA, pooled-test C-index means over 5 seeds
# (FLamby's result files flamby/results/results_benchmark_fed_tcga_brca/tcga_seed42..46.csv;
# Scaffold 0.6995 from the same files); None where there is no comparable number.
PUBLISHED = {"pooled": 0.70, "local": None, "fedavg": 0.74, "fedprox": 0.72, "scaffold": 0.70,
             "fedadam": 0.84, "fedyogi": 0.84, "fedadagrad": 0.83}
# FLamby's own per-seed results (not our data): owkin/FLamby at commit edacf54,
# flamby/results/results_benchmark_fed_tcga_brca/tcga_seed42.csv ... tcga_seed46.csv (seeds 42-46
# in this order), methods "Pooled Training", "FedAvg100", "FedProx100", "Scaffold100",
# "FedAdam100", "FedYogi100", "FedAdagrad100". FLAMBY_POOLED_TEST: the "Pooled Test" row's
# C-index (rounded to 6 decimals); FLAMBY_REGION_MEAN: the unweighted mean of the 6
# "client_test_k" rows (each region's own test set), per seed.
FLAMBY_SEEDS = [42, 43, 44, 45, 46]
FLAMBY_POOLED_TEST = {
    "pooled": [0.796337, 0.779853, 0.609524, 0.782418, 0.552381],
    "fedavg": [0.802564, 0.422711, 0.808059, 0.828938, 0.814286],
    "fedprox": [0.775824, 0.427839, 0.796337, 0.808425, 0.775092],
    "scaffold": [0.69707, 0.657875, 0.751282, 0.709158, 0.682051],
    "fedadam": [0.838095, 0.820879, 0.856044, 0.861905, 0.8337],
    "fedyogi": [0.838462, 0.820879, 0.856044, 0.861538, 0.8337],
    "fedadagrad": [0.831136, 0.836996, 0.824176, 0.832234, 0.844322],
}
FLAMBY_REGION_MEAN = {
    "pooled": [0.779762, 0.740797, 0.617348, 0.697019, 0.54481],
    "fedavg": [0.811661, 0.408145, 0.814844, 0.82029, 0.804733],
    "fedprox": [0.798743, 0.429584, 0.807501, 0.828282, 0.781054],
    "scaffold": [0.689913, 0.710344, 0.65775, 0.731682, 0.644767],
    "fedadam": [0.807315, 0.77687, 0.840797, 0.836208, 0.81458],
    "fedyogi": [0.807315, 0.77687, 0.840797, 0.836208, 0.81458],
    "fedadagrad": [0.819511, 0.816264, 0.808789, 0.808953, 0.81105],
}
# FLamby's paper (Ogier du Terrail et al. 2022), Fed-TCGA-BRCA panel of its benchmark figure:
# the mean over the 6 regional test sets, read off the figure (no SCAFFOLD there).
FLAMBY_PAPER_REGION_MEAN = {"pooled": 0.676, "fedavg": 0.732, "fedprox": 0.729, "fedadam": 0.815,
                            "fedyogi": 0.815, "fedadagrad": 0.813}
# Our own first run (2026-11-28, commit 34c3472, its results/tcga_brca/summary.csv): SCAFFOLD's
# pooled-test means before client updates were averaged uniformly; no longer in this folder.
FIRST_RUN_SCAFFOLD = {"none": 0.7402, "standardize": 0.8236}


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


# ---------------------------------------------------------------------------------------------
# results/tcga_brca/README.md: every number it quotes, from runs.csv and summary.csv
# (fedbench/study_readme.py) and the FLamby constants above.

LABELS = {"pooled": "pooled", "local": "local", "fedavg": "FedAvg", "fedprox": "FedProx",
          "scaffold": "SCAFFOLD", "fedadam": "FedAdam", "fedyogi": "FedYogi",
          "fedadagrad": "FedAdagrad"}
ROW_LABELS = {"local": "local (mean of the 6 regional models)", "fedprox": "FedProx (mu 0.1)"}
FEDERATED = ["fedavg", "fedprox", "scaffold", "fedadam", "fedyogi", "fedadagrad"]
ADAPTIVE = ["fedadam", "fedyogi", "fedadagrad"]
NORMS = {"none": "raw", "standardize": "standardised"}


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digits(t: tuple[float, float, float]) -> int:
    """3 decimals, more while an interval end would print as 0.000 (at most 5)."""
    d = 3
    while d < 5 and min(abs(t[1]), abs(t[2])) < 0.5 * 10 ** -d:
        d += 1
    return d


def _interval(t: tuple[float, float, float], digits: int | None = None) -> str:
    """``"+0.056 [+0.008, +0.103]"``: a difference and its interval."""
    d = digits or _digits(t)
    return f"{fmt(t[0], d, True)} [{fmt(t[1], d, True)}, {fmt(t[2], d, True)}]"


def _welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``a`` minus mean of ``b`` and its 95% Welch t interval (unpaired, unequal
    variances; scipy.stats.ttest_ind)."""
    import scipy.stats

    ci = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return statistics.mean(a) - statistics.mean(b), float(ci.low), float(ci.high)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/tcga_brca/README.md quotes, from ``runs.csv`` and
    ``summary.csv`` in ``folder``; FLamby's numbers are the constants above."""
    runs = _read(folder / "runs.csv")
    summary = {(r["normalize"], r["method"]): r for r in _read(folder / "summary.csv")}

    def seeds(method: str, norm: str, col: str = "test_cindex") -> list[float]:
        by_seed = {int(r["seed"]): float(r[col]) for r in runs
                   if r["method"] == method and r["normalize"] == norm}
        return [by_seed[s] for s in sorted(by_seed)]

    def t(a: str, b: str, norm: str, col: str = "test_cindex"):
        return paired_t(seeds(a, norm, col), seeds(b, norm, col))

    def ahead(a: str, b: str, norm: str) -> bool:
        """A resolved above B: the paired t interval of A - B lies above zero."""
        return excludes_zero(t(a, b, norm)) and t(a, b, norm)[0] > 0

    def cmp(a: str, b: str, norm: str) -> str:
        return compare(LABELS[a], LABELS[b], seeds(a, norm), seeds(b, norm),
                       digits=_digits(t(a, b, norm)))

    def mean(method: str, norm: str, col: str = "test_cindex") -> float:
        return statistics.mean(seeds(method, norm, col))

    def sd(method: str, norm: str) -> float:
        return statistics.stdev(seeds(method, norm))

    v: dict[str, str] = {"runs": str(len(runs)),
                         "seeds": str(len(seeds("fedavg", "none")))}

    # The pooled-test table: issue #5's 2-digit value (summary.csv), FLamby's CSVs, ours.
    rows = []
    for m in METHODS:
        pub = summary[("none", m)]["flamby_published"]
        flamby = FLAMBY_POOLED_TEST.get(m)
        rows.append([ROW_LABELS.get(m, LABELS[m]), fmt(float(pub), 2) if pub else "-",
                     fmt(statistics.mean(flamby)) if flamby else "-",
                     mean_sd(seeds(m, "none")), mean_sd(seeds(m, "standardize"))])
    v["pooled_table"] = markdown_table(
        ["method", "FLamby, issue #5 (`flamby_published`)", "FLamby's CSVs, 5-seed mean",
         "ours, raw features (as FLamby)", "ours, standardised features"], rows)
    v["flamby_scaffold"] = fmt(statistics.mean(FLAMBY_POOLED_TEST["scaffold"]))
    v["scaffold_first"] = (f"{FIRST_RUN_SCAFFOLD['none']:.4f} -> "
                           f"{float(summary[('none', 'scaffold')]['cindex_mean']):.4f} raw, "
                           f"{FIRST_RUN_SCAFFOLD['standardize']:.4f} -> "
                           f"{float(summary[('standardize', 'scaffold')]['cindex_mean']):.4f} "
                           "standardised")

    # The mean over the regional test sets: FLamby's paper figure, its CSVs, ours.
    rows = []
    for m in METHODS:
        paper = FLAMBY_PAPER_REGION_MEAN.get(m)
        csvs = FLAMBY_REGION_MEAN.get(m)
        label = ("local (each region's own model on its own test set)" if m == "local"
                 else ROW_LABELS.get(m, LABELS[m]))
        rows.append([label, fmt(paper) if paper else "-",
                     fmt(statistics.mean(csvs)) if csvs else "-",
                     mean_sd(seeds(m, "none", "client_cindex_mean")),
                     mean_sd(seeds(m, "standardize", "client_cindex_mean"))])
    v["region_table"] = markdown_table(
        ["method", "FLamby's paper figure", "FLamby's CSVs, 5-seed mean", "ours, raw features",
         "ours, standardised features"], rows)
    v["paper_values"] = _and([fmt(x) for x in FLAMBY_PAPER_REGION_MEAN.values()])
    v["paper_methods"] = _and([LABELS[m] for m in FLAMBY_PAPER_REGION_MEAN])
    off = [m for m, x in FLAMBY_PAPER_REGION_MEAN.items()
           if fmt(statistics.mean(FLAMBY_REGION_MEAN[m])) != fmt(x)]
    v["paper_reproduced"] = ("reproduce all of these to 3 digits" if not off else
                             "differ from the figure for " + _and([LABELS[m] for m in off]))
    v["flamby_scaffold_region"] = fmt(statistics.mean(FLAMBY_REGION_MEAN["scaffold"]))

    # Every pair of methods, paired t over seeds, per feature setting.
    pairs = [(a, b) for i, a in enumerate(METHODS) for b in METHODS[i + 1:]]

    def verdict(a: str, b: str, norm: str) -> str:
        tt = t(a, b, norm)
        if not excludes_zero(tt):
            return "no difference at this number of seeds"
        return f"{LABELS[a] if tt[0] > 0 else LABELS[b]} ahead"

    v["pairs_table"] = markdown_table(
        ["A - B", "raw: difference [95% paired t]", "raw",
         "standardised: difference [95% paired t]", "standardised"],
        [[f"{LABELS[a]} - {LABELS[b]}", _interval(t(a, b, "none")), verdict(a, b, "none"),
          _interval(t(a, b, "standardize")), verdict(a, b, "standardize")] for a, b in pairs],
        "lrlrl")
    v["pairs"] = str(len(pairs))
    v["n_intervals"] = str(len(pairs) * len(NORMS))
    v["chance"] = f"{0.05 * len(pairs) * len(NORMS):.1f}"
    for norm, key in (("none", "raw"), ("standardize", "std")):
        resolved = [(a, b) for a, b in pairs if excludes_zero(t(a, b, norm))]
        v[f"{key}_resolved"] = str(len(resolved))
        v[f"{key}_resolved_list"] = "; ".join(
            (f"{LABELS[a]} above {LABELS[b]} {_interval(t(a, b, norm))}" if t(a, b, norm)[0] > 0
             else f"{LABELS[b]} above {LABELS[a]} {_interval(t(b, a, norm))}")
            for a, b in resolved) or "none"
    edge = [(a, b, n) for a, b in pairs for n in NORMS
            if excludes_zero(t(a, b, n)) and min(abs(t(a, b, n)[1]), abs(t(a, b, n)[2])) < 0.001]
    v["edge"] = ("; ".join(f"{LABELS[a]} - {LABELS[b]} ({NORMS[n]}) {_interval(t(a, b, n))}"
                           for a, b, n in edge) or "none")

    # Raw features, the pairs the README discusses.
    v["raw_prox_avg"] = _cap(cmp("fedprox", "fedavg", "none"))
    v["flamby_prox_avg_means"] = (f"{fmt(statistics.mean(FLAMBY_POOLED_TEST['fedprox']))} and "
                                  f"{fmt(statistics.mean(FLAMBY_POOLED_TEST['fedavg']))}")
    fl = paired_t(FLAMBY_POOLED_TEST["fedprox"], FLAMBY_POOLED_TEST["fedavg"])
    v["flamby_prox_avg"] = compare("FedProx", "FedAvg", FLAMBY_POOLED_TEST["fedprox"],
                                   FLAMBY_POOLED_TEST["fedavg"], digits=_digits(fl))
    v["raw_pooled_avg"] = _cap(cmp("pooled", "fedavg", "none"))
    v["raw_pooled_prox"] = _cap(cmp("pooled", "fedprox", "none"))
    above_pooled = [m for m in FEDERATED if ahead(m, "pooled", "none")]
    v["raw_fed_vs_pooled"] = (
        "No federated method is resolved above the pooled model with raw features: we do not "
        "show that federated training beats pooled training here" if not above_pooled else
        "Resolved above the pooled model with raw features: "
        + _and([LABELS[m] for m in above_pooled]))
    v["raw_adagrad_adam"] = _cap(cmp("fedadagrad", "fedadam", "none"))
    v["adam_yogi_max"] = fmt(max(abs(a - b) for a, b in zip(seeds("fedadam", "none"),
                                                           seeds("fedyogi", "none"))), 4)
    v["raw_adam_avg"] = _cap(cmp("fedadam", "fedavg", "none"))
    v["raw_adagrad_avg"] = _cap(cmp("fedadagrad", "fedavg", "none"))
    first = [m for m in ADAPTIVE if ahead(m, "fedavg", "none")]
    v["raw_adaptive_first"] = (
        "No adaptive optimiser is resolved above FedAvg, so \"the adaptive optimisers come first\" "
        "is not established here" if not first else
        "Resolved above FedAvg: " + _and([LABELS[m] for m in first]))

    # Standardised features.
    v["std_avg_prox"] = _cap(cmp("fedavg", "fedprox", "standardize"))
    v["std_avg_adam"] = _cap(cmp("fedavg", "fedadam", "standardize"))
    v["std_avg_yogi"] = _cap(cmp("fedavg", "fedyogi", "standardize"))
    split = excludes_zero(t("fedavg", "fedadam", "standardize")) != excludes_zero(
        t("fedavg", "fedyogi", "standardize"))
    v["std_adam_yogi_note"] = (
        " FedAdam and FedYogi differ by at most "
        + fmt(max(abs(a - b) for a, b in zip(seeds("fedadam", "standardize"),
                                             seeds("fedyogi", "standardize"))), 4)
        + " in any seed, yet only one of these two intervals excludes zero: read both as at the"
        " edge of zero." if split else "")

    # Against FLamby, like with like: ours (raw, as FLamby) against FLamby's 5 per-seed values.
    fed_pooled = [m for m in FLAMBY_POOLED_TEST]
    welch_p = {m: _welch(seeds(m, "none"), FLAMBY_POOLED_TEST[m]) for m in fed_pooled}
    welch_r = {m: _welch(seeds(m, "none", "client_cindex_mean"), FLAMBY_REGION_MEAN[m])
               for m in fed_pooled}
    v["flamby_table"] = markdown_table(
        ["method", "pooled test: ours - FLamby [95% Welch t]",
         "mean over regional test sets: ours - FLamby [95% Welch t]"],
        [[LABELS[m], _interval(welch_p[m]), _interval(welch_r[m])] for m in fed_pooled])
    apart = [f"{LABELS[m]} ({where})" for m in fed_pooled
             for where, w in (("pooled test", welch_p[m]), ("regional mean", welch_r[m]))
             if excludes_zero(w)]
    v["flamby_verdict"] = (
        "Every interval includes zero: no difference from FLamby at this number of seeds"
        if not apart else "The interval excludes zero for " + _and(apart)
        + "; every other one includes zero (no difference at this number of seeds)")
    low = {m: min(range(5), key=lambda i: FLAMBY_POOLED_TEST[m][i]) for m in ("fedavg", "fedprox")}
    v["flamby_low_seed"] = str(FLAMBY_SEEDS[low["fedavg"]])
    assert low["fedavg"] == low["fedprox"], "FLamby's lowest FedAvg and FedProx seeds differ"

    def rest(m: str) -> str:
        others = [x for i, x in enumerate(FLAMBY_POOLED_TEST[m]) if i != low[m]]
        return f"{fmt(min(others))}-{fmt(max(others))}"
    v["flamby_low_values"] = (f"{fmt(FLAMBY_POOLED_TEST['fedavg'][low['fedavg']])} and "
                              f"{fmt(FLAMBY_POOLED_TEST['fedprox'][low['fedprox']])}")
    v["flamby_rest"] = f"{rest('fedavg')} and {rest('fedprox')}"
    v["flamby_sds"] = (f"{fmt(statistics.stdev(FLAMBY_POOLED_TEST['fedavg']))}, "
                       f"{fmt(statistics.stdev(FLAMBY_POOLED_TEST['fedprox']))}")
    v["our_sds"] = f"{fmt(sd('fedavg', 'none'))}, {fmt(sd('fedprox', 'none'))}"

    # The pooled baseline with raw features.
    pooled_raw = sorted(seeds("pooled", "none"))
    v["pooled_raw_sd"] = fmt(sd("pooled", "none"))
    v["pooled_raw_low"] = fmt(pooled_raw[0])
    v["pooled_raw_rest"] = f"{fmt(pooled_raw[1])}-{fmt(pooled_raw[-1])}"
    v["pooled_std"] = mean_sd(seeds("pooled", "standardize"))

    # Standardised minus raw, per method.
    gain = {m: paired_t(seeds(m, "standardize"), seeds(m, "none")) for m in METHODS}
    up = [m for m in METHODS if excludes_zero(gain[m]) and gain[m][0] > 0]
    down = [m for m in METHODS if excludes_zero(gain[m]) and gain[m][0] < 0]
    same = [m for m in METHODS if not excludes_zero(gain[m])]

    def moved(m: str) -> str:
        return (f"{LABELS[m]} {_interval(gain[m])} ({fmt(mean(m, 'none'))} to "
                f"{fmt(mean(m, 'standardize'))})")
    v["std_up"] = "; ".join(moved(m) for m in up) or "none"
    v["std_down"] = "; ".join(moved(m) for m in down) or "none"
    v["std_same"] = "; ".join(moved(m) for m in same) or "none"
    v["std_adaptive_note"] = (
        "All three adaptive server optimisers, which rescale each coordinate already, are among "
        "those with no difference." if set(ADAPTIVE) <= set(same) else
        "The adaptive server optimisers rescale each coordinate already; "
        + _and([LABELS[m] for m in ADAPTIVE if m not in same]) + " still gain or lose here.")

    # SCAFFOLD and local training.
    v["scaffold_ours"] = fmt(mean("scaffold", "none"))
    v["scaffold_welch"] = ("an interval that excludes zero" if excludes_zero(welch_p["scaffold"])
                           else "no difference at this number of seeds")
    v["local_means"] = (f"{fmt(mean('local', 'none'))} (raw) and "
                        f"{fmt(mean('local', 'standardize'))} (standardised)")
    behind = {n: [m for m in FEDERATED if ahead(m, "local", n)] for n in NORMS}
    v["local_behind"] = (
        "every federated method is ahead of them in both feature settings (table above)"
        if all(behind[n] == FEDERATED for n in NORMS) else
        "; ".join(f"with {NORMS[n]} features, ahead of them: "
                  + (_and([LABELS[m] for m in behind[n]]) if behind[n] else "none")
                  for n in NORMS) + " (table above)")
    return v


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
    render_file(args.out)


if __name__ == "__main__":
    main()
