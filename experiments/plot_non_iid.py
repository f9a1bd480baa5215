"""Figure and summary of the non-IID study (experiments/non_iid.yaml) in results/non_iid/.

    fedbench-collect multirun/non_iid --out results/non_iid/results
    python experiments/plot_non_iid.py [--table results/non_iid/results.csv] [--out results/non_iid]

Writes ``final.csv`` (final-round test accuracy per dataset, algorithm and heterogeneity: mean,
sd, min and max over seeds) and ``accuracy_vs_alpha.png`` (one panel per dataset; Dirichlet alpha
on a log axis, 2 shards per client as a separate point on the left), then re-renders the numbers in
``README.md`` there (:func:`readme_values`, fedbench/study_readme.py). Needs pandas and matplotlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from fedbench.study_readme import (compare, excludes_zero, fmt, markdown_table, mean_sd, paired_t,
                                   render_file)

ALGORITHMS = ["fedavg", "fedprox", "scaffold", "fedadam"]


def final_table(table: pd.DataFrame) -> pd.DataFrame:
    table = table[table["status"] == "completed"]
    last = table[table["round"] == table.groupby("run_dir")["round"].transform("max")].copy()
    last["heterogeneity"] = last.apply(
        lambda r: "shards2" if r["partition.name"] == "shards" else f"alpha={r['partition.alpha']:g}",
        axis=1,
    )
    last["alpha"] = last["partition.alpha"].where(last["partition.name"] == "dirichlet")
    grouped = last.groupby(["dataset.name", "algorithm.name", "heterogeneity"], dropna=False)
    out = grouped["test_accuracy"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    out = out.merge(grouped["alpha"].first().reset_index(),
                    on=["dataset.name", "algorithm.name", "heterogeneity"])
    return out.rename(columns={"count": "seeds"}).round(4)


def plot(final: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(final["dataset.name"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    shard_x = 0.015
    for ax, name in zip(axes[0], datasets):
        for k, alg in enumerate(ALGORITHMS):
            rows = final[(final["dataset.name"] == name) & (final["algorithm.name"] == alg)]
            if rows.empty:
                continue
            dirichlet = rows[rows["alpha"].notna()].sort_values("alpha")
            line = ax.errorbar(dirichlet["alpha"], dirichlet["mean"], yerr=dirichlet["std"],
                               marker="o", capsize=3, label=alg)
            shards = rows[rows["heterogeneity"] == "shards2"]
            if not shards.empty:
                ax.errorbar([shard_x * (1 + 0.08 * k)], shards["mean"], yerr=shards["std"],
                            marker="s", capsize=3, color=line[0].get_color())
        ax.set_xscale("log")
        ax.axvline(0.03, color="grey", lw=0.5)
        ax.set_xlim(0.01, 20)
        ax.set_xlabel("Dirichlet alpha (log); squares at left: 2 shards per client")
        ax.set_ylabel("final test accuracy (pooled test set)")
        ax.set_title(f"{name}: mean and sd over seeds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# results/non_iid/README.md: every table and number it quotes, from results.csv in the study folder
# (fedbench/study_readme.py). Differences are in accuracy points (x 100); intervals are 95% paired
# t intervals over the seeds (paired by seed: the same initialisation, client sampling and SGD
# order; each alpha has its own partition and test set, so intervals between alphas cover training
# noise only).

HETEROGENEITY = ["alpha=0.05", "alpha=0.1", "alpha=0.5", "alpha=1", "alpha=10", "shards2"]
LABELS = {"fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD", "fedadam": "FedAdam"}
DATASETS = {"digits": "digits", "synthetic": "Synthetic-IID", "mnist5k": "mnist5k"}
# mnist5k's pooled test set per alpha: 20% of its 5,000 images (a setting, not a result).
MNIST5K_TEST_IMAGES = 1000
# Our first run (2026-11-28, commit 739c397; `git show 739c397:results/non_iid/final.csv`), before
# the partitioner's balancing (e27661b) and SCAFFOLD's uniform averaging; no longer in this folder.
FIRST_RUN = {
    ("synthetic", "scaffold", "alpha=0.05"): 0.6842,
    ("synthetic", "fedavg", "alpha=0.05"): 0.6532,
    ("mnist5k", "fedadam", "alpha=0.05"): 0.9417,
    ("mnist5k", "scaffold", "alpha=0.05"): 0.9219,
}
FIRST_RUN_SCAFFOLD_MNIST5K_A01_MIN = 0.8507  # the same file's min over seeds, SCAFFOLD, alpha 0.1


def _where(het: str, short: bool = False) -> str:
    """``"alpha 0.05"`` (or ``"0.05"`` when ``short``), ``"2 shards"``."""
    if het == "shards2":
        return "2 shards"
    return het.split("=")[1] if short else het.replace("=", " ")


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pts(x: float, sign: bool = False) -> str:
    """An accuracy difference in points, one decimal."""
    return fmt(100 * x, 1, sign)


def _interval(t: tuple[float, float, float]) -> str:
    """``"+4.5 [-0.6, +9.6]"`` (points) for a paired t triple in accuracy units."""
    return f"{_pts(t[0], True)} [{_pts(t[1], True)}, {_pts(t[2], True)}]"


def _outcomes(name_a: str, name_b: str, items: list[tuple[str, tuple[float, float, float]]]
              ) -> str:
    """Sorts labelled paired t intervals (A - B) into ahead / behind / no difference."""
    def one(w: str, t: tuple[float, float, float]) -> str:
        if t[2] - t[1] < 1e-6:  # every seed the same difference (to float32): zero width
            return f"{w} ({_pts(t[0], True)} in every seed)"
        return f"{w} ({_interval(t)})"

    ahead = [one(w, t) for w, t in items if excludes_zero(t) and t[0] > 0]
    behind = [one(w, t) for w, t in items if excludes_zero(t) and t[0] < 0]
    level = [one(w, t) for w, t in items if not excludes_zero(t)]
    parts = []
    if ahead:
        parts.append(f"{name_a} ahead of {name_b} at {_and(ahead)}")
    if behind:
        parts.append(f"{name_a} behind {name_b} at {_and(behind)}")
    if level:
        parts.append(f"no difference at this number of seeds at {_and(level)}")
    return "; ".join(parts)


def _change(t: tuple[float, float, float], down: str, up: str) -> str:
    """A paired change between two settings (first minus second, points): ``down`` when the
    first is resolved above the second, ``up`` when below, else no difference."""
    span = f"paired t interval [{_pts(t[1], True)}, {_pts(t[2], True)}]"
    if not excludes_zero(t):
        return f"shows no difference at this number of seeds ({span})"
    return f"{down if t[0] > 0 else up} {_pts(abs(t[0]))} points ({span})"


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/non_iid/README.md quotes, from ``results.csv`` in
    ``folder`` (the final round of every run)."""
    table = pd.read_csv(Path(folder) / "results.csv")
    table = table[table["status"] == "completed"]
    last = table[table["round"] == table.groupby("run_dir")["round"].transform("max")].copy()
    last["heterogeneity"] = [
        "shards2" if n == "shards" else f"alpha={a:g}"
        for n, a in zip(last["partition.name"], last["partition.alpha"])]

    def seeds(ds: str, alg: str, het: str) -> np.ndarray:
        rows = last[(last["dataset.name"] == ds) & (last["algorithm.name"] == alg)
                    & (last["heterogeneity"] == het)].sort_values("seed")
        return rows["test_accuracy"].to_numpy(float)

    def mean(ds: str, alg: str, het: str) -> float:
        return float(seeds(ds, alg, het).mean())

    def t(ds: str, a: str, ha: str, b: str, hb: str | None = None) -> tuple[float, float, float]:
        """Paired t of (a, ha) minus (b, hb or ha)."""
        return paired_t(seeds(ds, a, ha), seeds(ds, b, hb or ha))

    def argbest(ds: str, alg: str) -> str:
        return max(HETEROGENEITY, key=lambda h: mean(ds, alg, h))

    n_seeds = {len(seeds(d, a, h)) for d in DATASETS for a in ALGORITHMS for h in HETEROGENEITY}
    if len(n_seeds) != 1:
        raise ValueError(f"cells with different numbers of seeds: {sorted(n_seeds)}")
    n = n_seeds.pop()
    v: dict[str, str] = {"runs": str(last["run_dir"].nunique())}
    jobs = last.assign(job=last["run_dir"].str.replace(r"/seed=\d+$", "", regex=True))
    jobs = jobs.groupby("job")[["compile_seconds", "run_seconds"]].first()
    v["jobs"] = str(len(jobs))
    v["job_minutes"] = fmt(float(jobs.to_numpy().sum()) / 60, 1)

    # Part 1: digits and Synthetic-IID.
    header = ["final test accuracy (mean over %d seeds)" % n] + [
        _where(h, short=i > 0) for i, h in enumerate(HETEROGENEITY)]
    v["part1_table"] = markdown_table(header, [
        [f"{DATASETS[ds]}, {LABELS[alg]}"] + [fmt(mean(ds, alg, h)) for h in HETEROGENEITY]
        for ds in ("digits", "synthetic") for alg in ("fedavg", "scaffold", "fedadam")])
    part1 = [(ds, h) for ds in ("digits", "synthetic") for h in HETEROGENEITY]
    v["prox_part1_max"] = fmt(max(abs(mean(d, "fedprox", h) - mean(d, "fedavg", h))
                                  for d, h in part1))
    resolved = [(d, h) for d, h in part1 if excludes_zero(t(d, "fedprox", h, "fedavg"))]
    v["prox_part1_pairs"] = (
        f"no paired t interval excludes zero in any of the {len(part1)} cells" if not resolved
        else "the paired t interval excludes zero at " + _and(
            [f"{DATASETS[d]} {_where(h)} ({_interval(t(d, 'fedprox', h, 'fedavg'))} points)"
             for d, h in resolved]))
    cells = {(alg, h): mean("digits", alg, h) for alg in ALGORITHMS for h in HETEROGENEITY}
    v["digits_range"] = f"{fmt(min(cells.values()), 2)}-{fmt(max(cells.values()), 2)}"

    def extreme(value: float) -> str:
        """The cells that print as ``value``, FedProx left out where it prints as FedAvg."""
        at = [k for k in cells if fmt(cells[k]) == fmt(value)
              and not (k[0] == "fedprox" and fmt(cells[("fedavg", k[1])]) == fmt(value))]
        where = {h: [LABELS[a] for a, hh in at if hh == h] for _, h in at}
        return f"{fmt(value)}, " + _and([f"{_and(algs)} at {_where(h)}"
                                         for h, algs in where.items()])

    v["digits_low"] = extreme(min(cells.values()))
    v["digits_high"] = extreme(max(cells.values()))
    v["digits_gap"] = _pts(max(cells.values()) - min(cells.values()))
    train = last.loc[last["dataset.name"] == "digits", "train_accuracy"]
    v["digits_train"] = f"{fmt(float(train.min()))}-{fmt(float(train.max()))}"
    syn = [mean("synthetic", "fedavg", h) for h in HETEROGENEITY]
    v["syn_fedavg_range"] = f"{fmt(min(syn))}-{fmt(max(syn))}"
    adam = {h: t("synthetic", "fedadam", h, "fedavg") for h in HETEROGENEITY}
    if all(excludes_zero(x) and x[0] > 0 for x in adam.values()):
        v["syn_adam"] = (f"FedAdam is ahead of FedAvg at every alpha and at 2 shards, by "
                         f"{_pts(min(x[0] for x in adam.values()))}-"
                         f"{_pts(max(x[0] for x in adam.values()))} points (every paired t "
                         "interval excludes zero)")
    else:
        v["syn_adam"] = "Paired t intervals: " + _outcomes(
            "FedAdam", "FedAvg", [(_where(h), x) for h, x in adam.items()])
    v["syn_scaffold"] = _cap(_outcomes("SCAFFOLD", "FedAvg", [
        (_where(h), t("synthetic", "scaffold", h, "fedavg")) for h in HETEROGENEITY]))
    v["syn_scaffold_means"] = _and([
        f"{fmt(mean('synthetic', 'scaffold', h))} against {fmt(mean('synthetic', 'fedavg', h))} "
        f"at {_where(h)}" for h in ("alpha=0.05", "alpha=0.1")])
    v["syn_first_run"] = (f"SCAFFOLD at {fmt(FIRST_RUN[('synthetic', 'scaffold', 'alpha=0.05')])}"
                          f" and FedAvg at {fmt(FIRST_RUN[('synthetic', 'fedavg', 'alpha=0.05')])}")

    # Part 2: mnist5k.
    header = ["final test accuracy (mean ± sd over %d seeds)" % n] + [
        _where(h, short=i > 0) for i, h in enumerate(HETEROGENEITY)]
    names = {"fedprox": "FedProx (mu 0.01)"}
    v["part2_table"] = markdown_table(header, [
        [names.get(alg, LABELS[alg])] + [mean_sd(seeds("mnist5k", alg, h)) for h in HETEROGENEITY]
        for alg in ALGORITHMS])
    m = {h: mean("mnist5k", "fedavg", h) for h in HETEROGENEITY}
    flat = [m[h] for h in ("alpha=0.5", "alpha=1", "alpha=10")]
    spread = max(flat) - min(flat)
    v["avg_flat_range"] = f"{fmt(min(flat))}-{fmt(max(flat))}"
    v["avg_flat_spread"] = _pts(spread)
    v["avg_flat_images"] = str(round(spread * MNIST5K_TEST_IMAGES))
    hi_h = max(("alpha=0.5", "alpha=1", "alpha=10"), key=m.get)
    lo_h = min(("alpha=0.5", "alpha=1", "alpha=10"), key=m.get)
    binom = np.sqrt(sum(m[h] * (1 - m[h]) for h in (hi_h, lo_h)) / MNIST5K_TEST_IMAGES)
    v["avg_flat_binomial"] = _pts(float(binom))
    v["avg_flat_seeds"] = (f"{_where(hi_h)} minus {_where(lo_h)}, "
                           f"{_interval(t('mnist5k', 'fedavg', hi_h, 'fedavg', lo_h))}")
    best = argbest("mnist5k", "fedavg")
    v["avg_best"] = f"{fmt(m[best])} at {_where(best)}"
    v["avg_to_01"] = _change(t("mnist5k", "fedavg", "alpha=0.5", "fedavg", "alpha=0.1"),
                             "falls", "rises")
    v["avg_to_005"] = _change(t("mnist5k", "fedavg", "alpha=0.1", "fedavg", "alpha=0.05"),
                              "falls a further", "rises")
    v["avg_loss_005"] = _pts(m[best] - m["alpha=0.05"])
    v["shards_vs_10"] = _change(t("mnist5k", "fedavg", "alpha=10", "fedavg", "shards2"),
                                "costs", "gains")
    v["shards_vs_best"] = _change(t("mnist5k", "fedavg", best, "fedavg", "shards2"),
                                  "costs", "gains")
    prox = {h: t("mnist5k", "fedprox", h, "fedavg") for h in HETEROGENEITY}
    v["prox_part2_max"] = _pts(max(abs(x[0]) for x in prox.values()))
    v["prox_part2"] = _cap(_outcomes("FedProx", "FedAvg",
                                     [(_where(h), x) for h, x in prox.items()]))
    gaps = [abs(x[0]) for x in prox.values() if excludes_zero(x)]
    v["prox_part2_note"] = (
        "No gap is resolved" if not gaps else
        f"The resolved gaps are at most {_pts(max(gaps))} points, about "
        f"{round(max(gaps) * MNIST5K_TEST_IMAGES)} test images of about {MNIST5K_TEST_IMAGES:,}")
    skewed = ("alpha=0.05", "alpha=0.1", "shards2")
    loss = {h: m[best] - m[h] for h in skewed}
    gain = {h: mean("mnist5k", "scaffold", h) - m[h] for h in skewed}
    share = {h: gain[h] / loss[h] for h in skewed}
    v["scaffold_share_range"] = (f"{min(share.values()):.0%}-{max(share.values()):.0%}"
                                 .replace("%-", "-"))
    v["scaffold_shares"] = _and([
        f"{share[h]:.0%} {'of it ' if i == 0 else ''}at {_where(h, short=0 < i < 2)} "
        f"({_pts(gain[h], True)} of {_pts(loss[h])} points)" for i, h in enumerate(skewed)])
    v["scaffold_intervals"] = _cap(_outcomes("SCAFFOLD", "FedAvg", [
        (_where(h), t("mnist5k", "scaffold", h, "fedavg")) for h in skewed]))
    v["scaffold_01_sd"] = fmt(float(seeds("mnist5k", "scaffold", "alpha=0.1").std(ddof=1)))
    v["scaffold_01_first_min"] = fmt(FIRST_RUN_SCAFFOLD_MNIST5K_A01_MIN)
    a005 = {alg: seeds("mnist5k", alg, "alpha=0.05") for alg in ALGORITHMS}
    v["adam_scaffold_005"] = _cap(compare("FedAdam", "SCAFFOLD", 100 * a005["fedadam"],
                                          100 * a005["scaffold"], digits=1))
    v["means_005"] = (f"FedAdam {fmt(a005['fedadam'].mean())}, SCAFFOLD "
                      f"{fmt(a005['scaffold'].mean())}, FedAvg {fmt(a005['fedavg'].mean())}")
    first = {alg: fmt(FIRST_RUN[("mnist5k", alg, "alpha=0.05")]) for alg in ("fedadam", "scaffold")}
    v["first_run_005"] = f"FedAdam at {first['fedadam']} and SCAFFOLD at {first['scaffold']}"
    adam_best = argbest("mnist5k", "fedadam")
    v["adam_best"] = f"{fmt(mean('mnist5k', 'fedadam', adam_best))} at {_where(adam_best)}"
    v["adam_loss_005"] = _pts(mean("mnist5k", "fedadam", adam_best)
                              - mean("mnist5k", "fedadam", "alpha=0.05"))
    v["adam_vs_avg"] = _outcomes("FedAdam", "FedAvg", [
        (_where(h), t("mnist5k", "fedadam", h, "fedavg")) for h in HETEROGENEITY])
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=Path("results/non_iid/results.csv"))
    parser.add_argument("--out", type=Path, default=Path("results/non_iid"))
    args = parser.parse_args()
    final = final_table(pd.read_csv(args.table))
    final.to_csv(args.out / "final.csv", index=False)
    plot(final, args.out / "accuracy_vs_alpha.png")
    print(final.to_string(index=False))
    if (args.out / "README.md").exists():
        render_file(args.out)


if __name__ == "__main__":
    main()
