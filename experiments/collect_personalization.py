"""Collects experiments/personalization.sh's runs into results/personalization/.

Reads ``multirun/personalization/<study>/<algorithm>/seed=<s>/`` (``summary.json``: each site's
accuracy on its own test split with the model it uses, ``sites.own``; ``metrics.jsonl``: the
final evaluation) and writes

* ``sites.csv``: one row per study, algorithm, seed and client: ``group`` (the scenario's known
  group, rotated study), ``cluster`` (ifca, cfl), ``n_test``, ``accuracy``;
* ``summary.csv``: one row per study, algorithm and seed: the final ``client_accuracy_mean``,
  ``_p10``, ``_min``, ``_std``, ``test_accuracy`` (pooled test set; for per-client models the
  mean over them), ``cluster_ari``, the number of clusters used, ``compile_seconds`` and
  ``run_seconds`` (``timing`` of summary.json; one program, so the same in each seed's row);
* ``PROVENANCE.json``: the commit of the runs, checked before anything is written;
* ``personalization.png``: each client's accuracy (mean over the 3 seeds), per algorithm;

then re-renders ``results/personalization/README.md`` from those files (:func:`readme_values`,
fedbench/study_readme.py).

Usage: python experiments/collect_personalization.py [--runs DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedbench.provenance import study_provenance  # noqa: E402
from fedbench.study_readme import (compare, excludes_zero, fmt, markdown_table,  # noqa: E402
                                   paired_t, render_file)

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "rotated": ["local", "fedavg", "ifca", "cfl"],
    "synthetic": ["local", "fedavg", "finetune", "ditto", "fedrep", "apfl", "pfedme",
                  "perfedavg", "perfedavg_hf", "perfedavg_lr"],
}
TITLES = {
    "rotated": "(a) rotated digits, 4 groups of 5 clients (0/90/180/270 degrees)",
    "synthetic": "(b) Synthetic(0.5, 0.5), 100 devices",
}
NAMES = {"local": "local", "fedavg": "FedAvg", "ifca": "IFCA", "cfl": "CFL",
         "finetune": "finetune", "ditto": "Ditto", "fedrep": "FedRep", "apfl": "APFL",
         "pfedme": "pFedMe", "perfedavg": "Per-FedAvg (FO)", "perfedavg_hf": "Per-FedAvg (HF)",
         "perfedavg_lr": "Per-FedAvg (FO, outer lr 0.005)"}
#: The table rows' names, where they say more than the algorithm's name.
ROW_NAMES = {"ifca": "IFCA (K = 4)", "finetune": "finetune (20 steps)"}
#: partition=rotated's default angles, one per group (fedbench/partition/groups.py).
ANGLES = (0, 90, 180, 270)
PERSONALISED = ["finetune", "ditto", "fedrep", "apfl", "pfedme", "perfedavg", "perfedavg_hf",
                "perfedavg_lr"]
#: The study's earlier runs (commit 679fe37, 2026-12-01), from results/personalization/summary.csv
#: as committed in 679fe37, seeds 0, 1, 2: each configuration's final client_accuracy_mean, and
#: pFedMe's other columns. pFedMe's personal pass then stepped at the client lr (0.005), not
#: algorithm.personal_lr (0.01); commit 7164694 fixed that. Kept to say what the rerun changed.
PRE_FIX_CLIENT_MEAN = {
    ("rotated", "local"): [0.826144, 0.81781, 0.823366],
    ("rotated", "fedavg"): [0.930392, 0.938399, 0.94134],
    ("rotated", "ifca"): [0.944118, 0.944281, 0.935948],
    ("rotated", "cfl"): [0.949673, 0.941176, 0.93268],
    ("synthetic", "local"): [0.871652, 0.875456, 0.87129],
    ("synthetic", "fedavg"): [0.62622, 0.571401, 0.539317],
    ("synthetic", "finetune"): [0.813912, 0.792931, 0.799704],
    ("synthetic", "ditto"): [0.814786, 0.814409, 0.825322],
    ("synthetic", "fedrep"): [0.808018, 0.799111, 0.80161],
    ("synthetic", "apfl"): [0.788844, 0.800588, 0.788322],
    ("synthetic", "pfedme"): [0.804116, 0.799056, 0.800628],
}
PRE_FIX_PFEDME = {
    "client_accuracy_mean": PRE_FIX_CLIENT_MEAN[("synthetic", "pfedme")],
    "client_accuracy_std": [0.208525, 0.216651, 0.21393],
    "client_accuracy_p10": [0.505263, 0.488785, 0.497468],
    "client_accuracy_min": [0.25, 0.3125, 0.296296],
    "test_accuracy": [0.722056, 0.703095, 0.703716],
}
SPREAD = ["client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min",
          "client_accuracy_std", "client_accuracy_p10_skipped", "test_accuracy"]


def read_runs(runs: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    sites, finals = [], []
    for study, algorithms in STUDIES.items():
        for algorithm in algorithms:
            for run in sorted((runs / study / algorithm).glob("seed=*")):
                seed = int(run.name.split("=")[1])
                summary = json.loads((run / "summary.json").read_text())
                final = summary["final"]
                own, sizes = summary["sites"]["own"], summary["sites"]["test_sizes"]
                groups = (summary["partition_stats"].get("groups") or {}).get("client_groups")
                clusters = final.get("clusters")
                for c, (acc, n) in enumerate(zip(own, sizes)):
                    sites.append({
                        "study": study, "algorithm": algorithm, "seed": seed, "client": c,
                        "group": None if groups is None else groups[c],
                        "cluster": None if clusters is None else clusters[c],
                        "n_test": n, "accuracy": acc,
                    })
                finals.append({
                    "study": study, "algorithm": algorithm, "seed": seed,
                    "rounds": final["round"], "status": summary["status"],
                    **{k: final.get(k) for k in SPREAD},
                    "cluster_ari": final.get("cluster_ari"),
                    "clusters_used": None if clusters is None else len(set(clusters)),
                    # one compiled program runs all seeds: the same times in each seed's row
                    "compile_seconds": summary.get("timing", {}).get("compile_seconds"),
                    "run_seconds": summary.get("timing", {}).get("run_seconds"),
                })
    sites = pd.DataFrame(sites)
    for column in ("group", "cluster"):  # integers, empty where there are none
        sites[column] = sites[column].astype("Int64")
    finals = pd.DataFrame(finals)
    finals["clusters_used"] = finals["clusters_used"].astype("Int64")
    return sites, finals


def plot(sites: pd.DataFrame, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [4, 7]})
    for ax, (study, algorithms) in zip(axes, STUDIES.items()):
        part = sites[(sites["study"] == study) & (sites["n_test"] > 0)]
        per_client = part.groupby(["algorithm", "client"])["accuracy"].mean().reset_index()
        present = [a for a in algorithms if a in set(per_client["algorithm"])]
        values = [per_client.loc[per_client["algorithm"] == a, "accuracy"] for a in present]
        ax.boxplot(values, whis=(10, 90), showfliers=False)
        rng = np.random.default_rng(0)
        for i, v in enumerate(values):
            ax.scatter(i + 1 + rng.uniform(-0.18, 0.18, len(v)), v, s=7, alpha=0.5,
                       color=f"C{i}", linewidth=0)
            ax.scatter(i + 1, np.mean(v), marker="D", color="k", s=18, zorder=3,
                       label="mean over clients" if i == 0 else None)
        ax.set_xticks(range(1, len(present) + 1), present, rotation=30, ha="right")
        ax.set_ylabel("client's accuracy on its own test split")
        ax.set_title(TITLES[study], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Per-site accuracy with the model each site uses (points: clients, mean over 3 "
                 "seeds; box: quartiles, whiskers: 10th-90th percentile)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=130)


# ---------------------------------------------------------------------------------------------
# README values (fedbench/study_readme.py): every table and quoted number, from the committed
# summary.csv and sites.csv only.


def _pm(values: pd.Series, digits: int = 3) -> str:
    """``mean ± sd`` over seeds (sd with ddof 1)."""
    return f"{fmt(values.mean(), digits)} ± {fmt(values.std(ddof=1), digits)}"


def _range(values, digits: int = 3) -> str:
    low, high = min(values), max(values)
    return fmt(low, digits) if fmt(low, digits) == fmt(high, digits) else \
        f"{fmt(low, digits)}-{fmt(high, digits)}"


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _seeds(items: list[int]) -> str:
    return ("seed " if len(items) == 1 else "seeds ") + _names([str(i) for i in items])


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/personalization/README.md quotes, from ``summary.csv``
    and ``sites.csv`` in ``folder``. Comparisons between algorithms are paired over seeds (the
    seeds share the partition) with a 95% t interval (:func:`fedbench.study_readme.compare`)."""
    folder = Path(folder)
    finals = pd.read_csv(folder / "summary.csv").sort_values("seed")
    sites = pd.read_csv(folder / "sites.csv")
    provenance = json.loads((folder / "PROVENANCE.json").read_text())

    def col(study: str, algorithm: str, column: str = "client_accuracy_mean") -> pd.Series:
        rows = finals[(finals["study"] == study) & (finals["algorithm"] == algorithm)]
        return rows[column].reset_index(drop=True)

    def cmp(study: str, a: str, b: str, column: str = "client_accuracy_mean",
            name_a: str | None = None, name_b: str | None = None, **kw) -> str:
        return compare(name_a or NAMES[a], name_b or NAMES[b], col(study, a, column),
                       col(study, b, column), **kw)

    def ahead(study: str, a: str, b: str, column: str = "client_accuracy_mean") -> int:
        """+1 / -1 when a's paired interval against b lies above / below 0, else 0."""
        interval = paired_t(col(study, a, column), col(study, b, column))
        return 0 if not excludes_zero(interval) else 1 if interval[0] > 0 else -1

    n_seeds = {len(col(study, a)) for study, algorithms in STUDIES.items() for a in algorithms}
    if len(n_seeds) != 1:
        raise ValueError(f"algorithms with different numbers of seeds: {n_seeds}")
    values = {"n_seeds": str(n_seeds.pop())}

    rotated = sites[sites["study"] == "rotated"]
    values["rotated_n_test"] = _range(rotated["n_test"], 0)
    skipped = set(finals.loc[finals["study"] == "synthetic", "client_accuracy_p10_skipped"])
    if len(skipped) != 1:
        raise ValueError(f"synthetic runs that skip different devices: {skipped}")
    values["synthetic_skipped"] = str(int(skipped.pop()))

    def row(study: str, algorithm: str) -> list[str]:
        name = ROW_NAMES.get(algorithm, NAMES[algorithm])
        return [name, _pm(col(study, algorithm)),
                fmt(col(study, algorithm, "client_accuracy_std").mean()),
                fmt(col(study, algorithm, "client_accuracy_p10").mean()),
                _pm(col(study, algorithm, "client_accuracy_min")),
                _pm(col(study, algorithm, "test_accuracy"))]

    def clusters(algorithm: str) -> str:
        used = col("rotated", algorithm, "clusters_used").astype(int).tolist()
        counts = (f"{used[0]} in every seed" if len(set(used)) == 1
                  else ", ".join(str(u) for u in used))
        return f"{counts}; ARI {_pm(col('rotated', algorithm, 'cluster_ari'))}"

    header = ["algorithm", "client mean", "client std", "p10", "worst client", "pooled test"]
    values["table_a"] = markdown_table(
        header + ["clusters (ARI)"],
        [row("rotated", a) + (["" if a in ("local", "fedavg") else clusters(a)])
         for a in ["local", "fedavg", "ifca", "cfl"]], "lrrrrrl")
    values["table_b"] = markdown_table(
        header, [row("synthetic", a) for a in STUDIES["synthetic"]])

    # (a) IFCA and CFL against FedAvg and local
    ari = col("rotated", "ifca", "cluster_ari")
    used = col("rotated", "ifca", "clusters_used").astype(int)
    if (ari == 1).all() and (used == len(ANGLES)).all():
        values["ifca_found"] = (f"found the {len(ANGLES)} rotation groups exactly in every "
                                f"seed (ARI 1)")
    else:
        values["ifca_found"] = (f"found {', '.join(str(u) for u in used)} clusters "
                                f"(ARI {_pm(ari)})")
    values["ifca_vs_fedavg"] = cmp("rotated", "ifca", "fedavg")
    values["ifca_vs_fedavg_worst"] = cmp("rotated", "ifca", "fedavg", "client_accuracy_min",
                                         "IFCA's worst client", "FedAvg's")
    if ahead("rotated", "ifca", "fedavg") > 0:
        values["ifca_paper"] = "**reproduced** in this setting"
    else:
        pooled = fmt(col("rotated", "fedavg", "test_accuracy").mean())
        values["ifca_paper"] = (
            "**not reproduced** in this setting at this number of seeds. A likely reason: the "
            "2NN is large enough to learn all four rotations of 8x8 digits in one model "
            f"(FedAvg's pooled test accuracy is {pooled}), and each IFCA model is trained on a "
            "quarter of the data")
    used = col("rotated", "cfl", "clusters_used").astype(int)
    values["cfl_clusters"] = (f"{_range(used, 0)} clusters, ARI "
                              f"{_range(col('rotated', 'cfl', 'cluster_ari'), 2)}")
    whole, split = [], []
    cfl = rotated[rotated["algorithm"] == "cfl"]
    for seed, part in cfl.groupby("seed"):
        members = sorted(part.groupby("cluster")["group"].apply(
            lambda g: sorted({int(x) for x in g})))
        if all(part.groupby("group")["cluster"].nunique() == 1):
            angles = ["{" + ", ".join(str(ANGLES[g]) for g in m) + "}" for m in members]
            whole.append(f"in seed {seed} the {len(members)} clusters hold whole groups "
                         f"({_names(angles)} degrees)")
        else:
            split.append(int(seed))
    text = "; ".join(whole)
    if split:
        text += ("; in " if text else "in ") + f"{_seeds(split)} some groups are split across " \
                "clusters"
    values["cfl_groups"] = text[0].upper() + text[1:]
    values["cfl_vs_others"] = (cmp("rotated", "cfl", "ifca") + "; "
                               + cmp("rotated", "cfl", "fedavg"))
    values["rotated_vs_local"] = "; ".join(cmp("rotated", a, "local")
                                           for a in ["ifca", "cfl", "fedavg"])

    # (b) the personalised algorithms against FedAvg, each other and local
    against = [(a, ahead("synthetic", a, "fedavg")) for a in PERSONALISED]
    diffs = [paired_t(col("synthetic", a), col("synthetic", "fedavg"))[0] for a in PERSONALISED]
    better = [NAMES[a] for a, v in against if v > 0]
    if len(better) == len(PERSONALISED):
        values["personal_vs_fedavg"] = (
            f"every personalised algorithm is ahead of FedAvg's per-client accuracy "
            f"({fmt(col('synthetic', 'fedavg').mean())}), by {_range(diffs)} (each paired t "
            f"interval over seeds excludes 0), as in the paper")
    else:
        values["personal_vs_fedavg"] = "; ".join(cmp("synthetic", a, "fedavg")
                                                 for a in PERSONALISED)
    values["fedavg_synthetic_worst"] = fmt(col("synthetic", "fedavg", "client_accuracy_min").mean())
    values["fedavg_synthetic_p10"] = fmt(col("synthetic", "fedavg", "client_accuracy_p10").mean())
    others = [a for a in PERSONALISED if a != "pfedme"]
    verdicts = [ahead("synthetic", "pfedme", a) for a in others]
    values["pfedme_best"] = ("pFedMe is ahead of every other personalised algorithm"
                             if all(v > 0 for v in verdicts) else
                             "pFedMe is **not** ahead of every other personalised algorithm")
    values["pfedme_vs_others"] = "; ".join(cmp("synthetic", "pfedme", a) for a in others)
    # Dinh et al.'s ordering: pFedMe > Per-FedAvg > FedAvg, each gap at least 1 point
    order = []
    for variant in ("perfedavg", "perfedavg_hf", "perfedavg_lr"):
        gaps = [paired_t(col("synthetic", "pfedme"), col("synthetic", variant)),
                paired_t(col("synthetic", variant), col("synthetic", "fedavg"))]
        holds = all(low > 0 and mean >= 0.01 for mean, low, _ in gaps)
        order.append(f"{NAMES[variant]}: the ordering pFedMe > Per-FedAvg > FedAvg with gaps of "
                     f"at least 1 point is **{'reproduced' if holds else 'not reproduced'}** "
                     f"({cmp('synthetic', 'pfedme', variant)}; "
                     f"{cmp('synthetic', variant, 'fedavg')})")
    values["perfedavg_order"] = ". ".join(order)
    values["perfedavg_pooled"] = "; ".join(
        cmp("synthetic", variant, "fedavg", "test_accuracy",
            f"{NAMES[variant]}'s pooled test accuracy (its global model)", "FedAvg's")
        for variant in ("perfedavg", "perfedavg_hf", "perfedavg_lr"))
    rest = [a for a in STUDIES["synthetic"] if a != "local"]
    verdicts = [ahead("synthetic", "local", a) for a in rest]
    mean = fmt(col("synthetic", "local").mean())
    values["local_best"] = (f"**Local training is ahead of every other algorithm** on per-client "
                            f"accuracy ({mean}), which none of these papers report"
                            if all(v > 0 for v in verdicts) else
                            f"**Local training is not ahead of every other algorithm** on "
                            f"per-client accuracy ({mean})")
    values["local_vs_others"] = "; ".join(cmp("synthetic", "local", a) for a in rest)
    values["fedavg_pooled_vs_client"] = compare(
        "FedAvg's pooled test accuracy", "its mean client accuracy",
        col("synthetic", "fedavg", "test_accuracy"), col("synthetic", "fedavg"),
        higher="above", lower="below")

    # pFedMe before and after the personal-lr fix; the other configurations against their
    # earlier runs
    commit = provenance["commit"]
    if not isinstance(commit, str) or provenance.get("exploration"):
        raise ValueError(f"{folder}/PROVENANCE.json: not one clean commit: {provenance}")
    values["commit"] = commit[:7]
    rows = []
    for column, label in [("client_accuracy_mean", "client mean"),
                          ("client_accuracy_std", "client std"), ("client_accuracy_p10", "p10"),
                          ("client_accuracy_min", "worst client"),
                          ("test_accuracy", "pooled test")]:
        before, after = pd.Series(PRE_FIX_PFEDME[column]), col("synthetic", "pfedme", column)
        mean, low, high = paired_t(after, before)
        rows.append([label, _pm(before), _pm(after),
                     f"{fmt(mean, 3, True)} [{fmt(low, 3, True)}, {fmt(high, 3, True)}]"])
    values["pfedme_change_table"] = markdown_table(
        ["pFedMe", "before the fix (personal lr 0.005)", "rerun (personal lr 0.01)",
         "rerun - before [95% paired t CI]"], rows)
    values["pfedme_change"] = compare(
        "the rerun's pFedMe", "the earlier runs'", col("synthetic", "pfedme"),
        PRE_FIX_PFEDME["client_accuracy_mean"], higher="above", lower="below")
    shifts = [abs(a - b) for (study, algorithm), old in PRE_FIX_CLIENT_MEAN.items()
              if algorithm != "pfedme"
              for a, b in zip(col(study, algorithm).round(6), old)]
    values["others_shift"] = ("the same per-seed client means as their earlier runs (to the 6 "
                              "decimals of the earlier summary.csv)" if max(shifts) < 5e-7 else
                              f"per-seed client means within {fmt(max(shifts))} of their earlier "
                              f"runs'")

    # runtime: compile and run seconds of each configuration (one program for all seeds)
    if {"compile_seconds", "run_seconds"} <= set(finals.columns) and \
            finals[["compile_seconds", "run_seconds"]].notna().all().all():
        once = finals.drop_duplicates(["study", "algorithm"])
        parts, total = [], 0.0
        for label, (study, algorithms) in zip("ab", STUDIES.items()):
            times = []
            for a in algorithms:
                r = once[(once["study"] == study) & (once["algorithm"] == a)].iloc[0]
                seconds = r["compile_seconds"] + r["run_seconds"]
                total += seconds
                times.append(f"{a} {seconds:.0f} s")
            parts.append(f"({label}) " + ", ".join(times))
        values["runtime"] = ("; ".join(parts) + f". {total / 60:.0f} min in all")
    else:
        values["runtime"] = "not recorded in `summary.csv` for these runs"
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "multirun" / "personalization")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "personalization")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.runs, args.out, args.allow_dirty)
    sites, finals = read_runs(args.runs)
    if sites.empty:
        raise SystemExit(f"no runs under {args.runs}: run experiments/personalization.sh first")
    args.out.mkdir(parents=True, exist_ok=True)
    sites.to_csv(args.out / "sites.csv", index=False)
    finals.to_csv(args.out / "summary.csv", index=False, float_format="%.6g")
    plot(sites, args.out / "personalization.png")
    table = finals.groupby(["study", "algorithm"], sort=False)[
        ["client_accuracy_mean", "client_accuracy_p10", "client_accuracy_min",
         "client_accuracy_std", "test_accuracy", "cluster_ari"]].agg(["mean", "std"])
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3))
    if (args.out / "README.md").exists():
        render_file(args.out)  # the README's tables and numbers, from the files just written


if __name__ == "__main__":
    main()
