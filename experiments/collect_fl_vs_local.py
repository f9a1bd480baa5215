"""Collects experiments/fl_vs_local.sh into results/fl_vs_local/ (CSVs + one PNG).

    python experiments/collect_fl_vs_local.py [--runs multirun/fl_vs_local] [--out results/fl_vs_local]

For each study writes ``<study>.csv`` (the tidy table of fedbench-compare: regime, model, seed,
evaluation set, metric, value) and ``summary.csv`` (mean and sd over seeds per study, regime and
evaluation set, where ``local`` on a site means that site's own model on its own test split and
``local`` on ``pooled`` the mean over site models), ``<study>_verdicts.json`` (fedbench-compare's
verdicts with their bootstrap intervals) and ``fl_vs_local.png``, then re-renders
``results/fl_vs_local/README.md`` from those files (:func:`readme_values`,
fedbench/study_readme.py).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import json
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance
from fedbench.study_readme import fmt, markdown_table, render_file

STUDIES = ["tcga_brca", "opt", "indo_rct", "digits_scenario"]
#: The README's order: the clinical survival study, the image scenario, the two trials.
README_ORDER = ["tcga_brca", "digits_scenario", "opt", "indo_rct"]
CLINICAL = ["tcga_brca", "opt", "indo_rct"]
METRIC_NAMES = {"cindex": "C-index", "auc": "AUC", "accuracy": "accuracy"}
#: What a site of each study is, and what its test examples are.
SITE_WORD = {"tcga_brca": ("region", "patients"), "opt": ("clinic", "patients"),
             "indo_rct": ("hospital", "patients"), "digits_scenario": ("site", "images")}
#: The digits scenario's sites, named by what was done to them (experiments/fl_vs_local.sh).
SITE_LABELS = {"digits_scenario": {"site 1": "site 1 (contrast)", "site 2": "site 2 (noise)",
                                   "site 3": "site 3 (few zeros)"}}
VERDICT_WORDS = {"FL better": "FedAvg better", "local better": "site's model better",
                 "no difference": "no difference", "undefined": "undefined (no case)",
                 "no test examples": "no test examples"}
#: Published, quoted for context only: Pati et al., Nat. Commun. 13, 7346 (2022), abstract
#: (data from 71 sites).
FETS_SITES = 71


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


# ---------------------------------------------------------------------------------------------
# README values (fedbench/study_readme.py): every table and quoted number, from the committed
# summary.csv and <study>_verdicts.json only.


def _label(study: str, site: str) -> str:
    return SITE_LABELS.get(study, {}).get(site, site)


def _interval(v: dict) -> str:
    return (f"{fmt(v['difference'], 3, True)} [{fmt(v['ci_low'], 3, True)}, "
            f"{fmt(v['ci_high'], 3, True)}]")


def _range(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    return fmt(low, digits) if low == high else f"{fmt(low, digits)}-{fmt(high, digits)}"


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _counted(study: str, v: dict) -> str:
    """``14 events`` / ``5 positive patients`` / ``50 test images``: what the interval rests on."""
    if v["events"] is not None:
        return f"{v['events']} event{'s' if v['events'] != 1 else ''}"
    if v["positives"] is not None:
        return f"{v['positives']} positive patients"
    return f"{v['n']} test {SITE_WORD[study][1]}"


def _pooled_sentence(study: str, v: dict) -> str:
    """The pooled-test verdict: FedAvg against the best single-site model chosen on validation."""
    metric = METRIC_NAMES[v["metric"]]
    site, examples = SITE_WORD[study]
    where = (f"On the pooled test set ({v['n']} {examples}"
             + (f", {v['events']} events" if v["events"] is not None else "")
             + (f", {v['positives']} positive" if v["positives"] is not None else "") + ")")
    best = (f"the best single-{site} model chosen on {v['selected_on']} data "
            f"({_label(study, v['local_model'])}'s, {fmt(v['local'])})")
    # FedAvg's score first, then the chosen site's; the interval is FedAvg minus that site.
    if v["verdict"] == "FL better":
        return f"{where} FedAvg's {metric} {fmt(v['fl'])} is above {best}: {_interval(v)}."
    if v["verdict"] == "local better":
        return (f"{where} {best[0].upper() + best[1:]} is above FedAvg's {fmt(v['fl'])}: "
                f"{_interval(v)}.")
    return (f"{where} FedAvg ({fmt(v['fl'])}) and {best} do not differ ({_interval(v)} holds 0)"
            + (". The largest site alone holds most of what there is to learn."
               if v["local_model"] == "site 0" else "."))


def _sites_sentence(study: str, verdicts: list[dict]) -> str:
    """The per-site verdicts grouped: better, worse, no difference, no score."""
    sites = [v for v in verdicts if v["eval_set"] != "pooled"]
    parts = []
    for key, lead in (("FL better", "FedAvg is better for"),
                      ("local better", "the site's own model is better for")):
        picked = [v for v in sites if v["verdict"] == key]
        if picked:
            parts.append(f"{lead} " + _names([f"{_label(study, v['eval_set'])} by {_interval(v)} "
                                              f"({_counted(study, v)})" for v in picked]))
    level = [v for v in sites if v["verdict"] == "no difference"]
    if level:
        counts = [v["events"] if v["events"] is not None else v["positives"]
                  if v["positives"] is not None else v["n"] for v in level]
        what = ("events" if level[0]["events"] is not None else "positive patients"
                if level[0]["positives"] is not None else f"test {SITE_WORD[study][1]}")
        parts.append(_names([_label(study, v["eval_set"]) for v in level])
                     + f" show{'s' if len(level) == 1 else ''} no difference (interval"
                     + f"{'s' if len(level) > 1 else ''} holding 0; {_range(counts)} {what}"
                     + (" each)" if len(level) > 1 else ")"))
    text = "; ".join(parts)
    return "On their own test splits, " + text + "."


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/fl_vs_local/README.md quotes, from ``summary.csv`` and
    ``<study>_verdicts.json`` in ``folder``."""
    folder = Path(folder)
    with open(folder / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    for r in summary:
        r["mean"], r["sd"] = float(r["mean"]), float(r["sd"])
    cell = {(r["study"], r["regime"], r["eval_set"]): r for r in summary}
    runs = {s: json.loads((folder / f"{s}_verdicts.json").read_text()) for s in README_ORDER}
    verdicts = {s: runs[s]["verdicts"] for s in README_ORDER}
    seeds = {len(runs[s]["seeds"]) for s in README_ORDER}
    if len(seeds) != 1:
        raise ValueError(f"studies with different numbers of seeds: {seeds}")
    values = {"n_seeds": str(seeds.pop()), "fets_sites": str(FETS_SITES)}

    def mean_sd(study: str, regime: str, site: str) -> str:
        r = cell[(study, regime, site)]
        if math.isnan(r["mean"]):
            return "n/a"
        return f"{fmt(r['mean'])} ± {fmt(0.0 if math.isnan(r['sd']) else r['sd'])}"

    rows = []
    for study in README_ORDER:
        sets = list(dict.fromkeys(r["eval_set"] for r in summary if r["study"] == study))
        metric = METRIC_NAMES[cell[(study, "fedavg", "pooled")]["metric"]]
        for i, site in enumerate(sets):
            rows.append([f"{study} ({metric})" if i == 0 else "", _label(study, site),
                         cell[(study, "fedavg", site)]["n_test"],
                         *(mean_sd(study, regime, site)
                           for regime in ("local", "centralized", "fedavg"))])
    values["results_table"] = markdown_table(
        ["study", "test set", "n", "local (site's own model)", "pooled data", "FedAvg"], rows,
        "llrrrr")

    rows = []
    for study in README_ORDER:
        for v in verdicts[study]:
            model = _label(study, v["local_model"])
            if v["selected_on"]:
                model += f" (chosen on {v['selected_on']})"
            counted = (v["events"] if v["events"] is not None else v["positives"]
                       if v["positives"] is not None else "")
            rows.append([study, _label(study, v["eval_set"]), v["n"], counted, model,
                         fmt(v["fl"]) if v["fl"] is not None else "n/a",
                         fmt(v["local"]) if v["local"] is not None else "n/a",
                         _interval(v) if v["difference"] is not None else "n/a",
                         VERDICT_WORDS[v["verdict"]]])
    values["verdict_table"] = markdown_table(
        ["study", "test set", "n", "events / positives", "single-site model", "FedAvg",
         "single site", "FedAvg - single site [95% CI]", "verdict"], rows, "llrrlrrrl")

    for study, key in (("tcga_brca", "tcga"), ("digits_scenario", "digits")):
        pooled = next(v for v in verdicts[study] if v["eval_set"] == "pooled")
        values[f"{key}_pooled"] = _pooled_sentence(study, pooled)
        values[f"{key}_sites"] = _sites_sentence(study, verdicts[study])

    trials = ["opt", "indo_rct"]
    values["trials_pooled_auc"] = _range(
        [cell[(s, regime, "pooled")]["mean"] for s in trials
         for regime in ("local", "centralized", "fedavg")], 2)
    defined = [(s, v) for s in trials for v in verdicts[s] if v["difference"] is not None]
    odd = [(s, v) for s, v in defined if v["verdict"] != "no difference"]
    if not odd:
        values["trials_verdicts"] = "every pooled and per-site verdict is \"no difference\""
    else:
        said = []
        for s, v in odd:
            better = "FedAvg" if v["verdict"] == "FL better" else "the site's own model"
            aucs = [v["fl"], v["local"]]
            said.append(f"{s}'s {v['eval_set']}, where {better} is better ({_interval(v)}) at "
                        f"AUCs of {_range(aucs, 2)}"
                        + (" that both models get backwards" if max(aucs) < 0.5 else "")
                        + f" ({_counted(s, v)})")
        values["trials_verdicts"] = ("every pooled and per-site verdict is \"no difference\" "
                                     "except " + _names(said))
    values["trials_positives"] = _range(
        [v["positives"] for s, v in defined if v["eval_set"] != "pooled"])
    below = [(s, site) for s in trials
             for site in dict.fromkeys(r["eval_set"] for r in summary if r["study"] == s)
             if site != "pooled" and not math.isnan(cell[(s, "fedavg", site)]["mean"])
             and all(cell[(s, regime, site)]["mean"] < 0.5
                     for regime in ("local", "centralized", "fedavg"))]
    values["trials_below_half"] = (
        _names([f"{site} ({s})" for s, site in below]) + " sit below 0.5 for every model (AUCs "
        + _range([cell[(s, regime, site)]["mean"] for s, site in below
                  for regime in ("local", "centralized", "fedavg")], 2) + ")")
    unscored = []
    for s in trials:
        for v in verdicts[s]:
            if v["verdict"] == "undefined":
                unscored.append(f"{v['eval_set']}'s test split ({v['n']} patients) has no case")
            elif v["verdict"] == "no test examples":
                unscored.append(f"{v['eval_set']} has no test patient (all of its patients train)")
    values["trials_unscored"] = (f"{len(unscored)} sites get no AUC: " + _names(unscored)
                                 if unscored else "every site gets an AUC")

    clinical = [v for s in CLINICAL for v in verdicts[s]
                if v["eval_set"] != "pooled" and v["difference"] is not None]
    widths = [v["ci_high"] - v["ci_low"] for v in clinical]
    sds = [cell[(s, regime, v["eval_set"])]["sd"] for s in CLINICAL for v in verdicts[s]
           if v["eval_set"] != "pooled" and v["difference"] is not None
           for regime in ("local", "fedavg")]
    values["clinical_ci_width"] = fmt(statistics.median(widths))
    values["clinical_seed_sd"] = fmt(statistics.median(sds))
    return values


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
    if (args.out / "README.md").exists():
        render_file(args.out)  # the README's tables and numbers, from the files just written


if __name__ == "__main__":
    main()
