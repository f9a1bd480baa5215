"""Figure and summary of the non-IID study (experiments/non_iid.yaml) in results/non_iid/.

    fedbench-collect multirun/non_iid --out results/non_iid/results
    python experiments/plot_non_iid.py [--table results/non_iid/results.csv] [--out results/non_iid]

Writes ``final.csv`` (final-round test accuracy per dataset, algorithm and heterogeneity: mean,
sd, min and max over seeds) and ``accuracy_vs_alpha.png`` (one panel per dataset; Dirichlet alpha
on a log axis, 2 shards per client as a separate point on the left). Needs pandas and matplotlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=Path("results/non_iid/results.csv"))
    parser.add_argument("--out", type=Path, default=Path("results/non_iid"))
    args = parser.parse_args()
    final = final_table(pd.read_csv(args.table))
    final.to_csv(args.out / "final.csv", index=False)
    plot(final, args.out / "accuracy_vs_alpha.png")
    print(final.to_string(index=False))


if __name__ == "__main__":
    main()
