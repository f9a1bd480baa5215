"""Collects experiments/contribution.sh into results/contribution/ (one CSV, one PNG, the README).

    python experiments/collect_contribution.py [--out results/contribution]

Reads ``<out>/<study>/contribution.json`` (``fedbench-contribution``'s output) for the two studies
and writes ``contribution.csv`` (one row per site: training size and share, Shapley value, its
share of ``v(all) - v(none)``, leave-one-out drop) and ``contribution.png``, then re-renders
``<out>/README.md`` from ``contribution.csv`` (:func:`readme_values`, fedbench/study_readme.py).
Needs matplotlib (``.[analysis]``).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fedbench.study_readme import fmt, markdown_table, render_file

#: The sites of each study, in fedbench-contribution's order (experiments/contribution.sh).
STUDIES = {"tcga_brca": ["Region 0", "Region 1", "Region 2", "Region 3", "Region 4", "Region 5"],
           "digits_scenario": ["large (900)", "zeros 25%, contrast (250)", "noise (150)",
                               "few zeros (80)"]}


def collect(out: Path) -> list[dict]:
    """One row per site of each study, from ``<out>/<study>/contribution.json``."""
    rows = []
    for name, labels in STUDIES.items():
        r = json.loads((out / name / "contribution.json").read_text())
        total = sum(r["train_sizes"])
        for i in range(r["sites"]):
            rows.append({"study": name, "site": i, "label": labels[i],
                         "train_size": r["train_sizes"][i],
                         "train_share": round(r["train_sizes"][i] / total, 4),
                         "shapley": round(r["shapley"][i], 5),
                         "shapley_share": round(r["shapley"][i] / (r["v_all"] - r["v_empty"]), 4),
                         "leave_one_out": round(r["leave_one_out"][i], 5),
                         "v_all": round(r["v_all"], 5), "v_empty": round(r["v_empty"], 5),
                         "value": r["value"], "method": r["method"], "seeds": r["seeds"],
                         "rounds": r["rounds"]})
    return rows


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, (name, labels) in zip(axes, STUDIES.items()):
        r = json.loads((out / name / "contribution.json").read_text())
        total = sum(r["train_sizes"])
        x = range(r["sites"])
        ax.bar([i - 0.2 for i in x], r["shapley"], 0.4, label="Shapley")
        ax.bar([i + 0.2 for i in x], r["leave_one_out"], 0.4, label="leave-one-out drop")
        ax2 = ax.twinx()
        ax2.plot(list(x), [s / total for s in r["train_sizes"]], "k.:", label="training share")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("share of training data")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(list(x), labels, rotation=20, fontsize=7, ha="right")
        metric = "C-index" if name == "tcga_brca" else "accuracy"
        ax.set_ylabel(f"pooled-test {metric}")
        ax.set_title(f"{name}: v(all) {r['v_all']:.3f}, v(none) {r['v_empty']:.3f}")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "contribution.png", dpi=110)


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/contribution/README.md quotes, from ``contribution.csv``
    in ``folder``. The exact Shapley values there are means over training seeds, with no
    per-seed or per-coalition values kept, so no sentence ranks one site above another."""
    with open(folder / "contribution.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    study = {name: [r for r in rows if r["study"] == name] for name in STUDIES}

    def col(name: str, key: str) -> list[float]:
        return [float(r[key]) for r in study[name]]

    v: dict[str, str] = {}
    for name, unit in (("tcga_brca", "training patients"), ("digits_scenario", "training images")):
        metric = "C-index" if name == "tcga_brca" else "accuracy"
        v[f"{name}_table"] = markdown_table(
            ["site", f"{unit} (share)", f"Shapley ({metric})", "share of v(all) - v(none)",
             "leave-one-out drop"],
            [[r["label"], f"{r['train_size']} ({_pct(float(r['train_share']))})",
              fmt(float(r["shapley"])), _pct(float(r["shapley_share"])),
              fmt(float(r["leave_one_out"]))] for r in study[name]])
        first = study[name][0]
        v[f"{name}_v_all"] = fmt(float(first["v_all"]))
        v[f"{name}_v_none"] = fmt(float(first["v_empty"]))
        v[f"{name}_gain"] = fmt(float(first["v_all"]) - float(first["v_empty"]))
        v[f"{name}_sum"] = fmt(sum(col(name, "shapley")))

    v["seeds"] = " and ".join(sorted({r["seeds"] for r in rows}))

    # Fed-TCGA-BRCA: value against size, regions by index (contribution.sh's order).
    t_size, t_share = col("tcga_brca", "train_share"), col("tcga_brca", "shapley_share")
    t_phi, t_n = col("tcga_brca", "shapley"), col("tcga_brca", "train_size")
    v["tcga_top3_data"] = _pct(sum(t_size[:3]))
    v["tcga_top3_value"] = _pct(sum(t_share[:3]))
    smallest = min(range(len(t_n)), key=lambda i: t_n[i])
    v["tcga_smallest"] = f"region {smallest} ({int(t_n[smallest])} patients)"
    v["tcga_smallest_shares"] = (f"{_pct(t_share[smallest])} of the value for "
                                 f"{_pct(t_size[smallest])} of the training patients")
    v["tcga_r3"] = f"{fmt(t_phi[3])} ({_pct(t_share[3])})"
    v["tcga_r4"] = f"{fmt(t_phi[4])} ({_pct(t_share[4])})"
    v["tcga_r34_size"] = f"{int(t_n[3])} and {int(t_n[4])}"
    v["tcga_r5_r3"] = (f"{fmt(t_phi[5])} against {fmt(t_phi[3])}, a difference of "
                       f"{fmt(t_phi[5] - t_phi[3])}")
    v["tcga_r4_r2"] = (f"{fmt(t_phi[4])} against {fmt(t_phi[2])}, a difference of "
                       f"{fmt(t_phi[4] - t_phi[2], 4)}")

    # Digits: the large site (site 0) against the three small ones.
    d_size, d_share = col("digits_scenario", "train_share"), col("digits_scenario", "shapley_share")
    d_phi, d_loo = col("digits_scenario", "shapley"), col("digits_scenario", "leave_one_out")
    v["digits_large_shares"] = (f"{_pct(d_size[0])} of the training data but "
                                f"{_pct(d_share[0])} of the value")
    v["digits_small_loo"] = fmt(max(d_loo[1:]))
    v["digits_large_loo"] = fmt(d_loo[0])
    v["digits_small_phi"] = f"{fmt(min(d_phi[1:]))}-{fmt(max(d_phi[1:]))}"
    v["digits_large_phi"] = fmt(d_phi[0])
    v["digits_contrast_share"] = _pct(d_size[1])
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/contribution"))
    args = parser.parse_args()
    rows = collect(args.out)
    with open(args.out / "contribution.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(args.out)
    render_file(args.out)
    print(f"wrote {args.out / 'contribution.csv'}, {args.out / 'contribution.png'} and "
          f"{args.out / 'README.md'}")


if __name__ == "__main__":
    main()
