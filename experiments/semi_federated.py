"""Semi-federated lab panels: per-site input encoders against three baselines.

    python experiments/semi_federated.py [--seeds 5] [--out results/semi_federated]
                                         [--conditions A,B] [--collect]

Scenario ``partition=panels`` (conf/partition/panels.yaml) on ``dataset=breast_cancer``: 4 hospitals
(an iid split of the 569 patients) that each measure 4 shared columns plus each other column
with probability 0.4 (a new draw per seed). Three conditions: ``panels`` (the sites' columns
differ), ``panels+units`` (each site also measures in its own units: an additive assay offset
per site, ``partition.feature_shift.kind=intensity``, strength 1 sd) and ``10 sites+units``
(the same over 10 smaller sites, all 10 per round). Four arms, the
same network (30 -> 32 -> 32 -> 2, ReLU) and schedule (100 rounds, all 4 sites per round, 1
epoch, batch 10, lr 0.05):

- ``semifed``: ``model=semi algorithm=semifed``, each site's own encoder layer (30 -> 32) never
  leaves it; the body and head are FedAvg;
- ``semifed_head``: the same with the head kept at each site too (``model.local=[encoder,head]``);
- ``fedavg_zero``: FedAvg of the whole MLP on the zero-filled table;
- ``fedavg_shared``: FedAvg of the MLP on the columns every site measures
  (``partition.panels.keep=shared``);
- ``local``: each site trains the MLP alone on its zero-filled table.

Writes ``runs.csv`` (one row per condition, arm, seed and site: own-site accuracy, AUC and log
loss, bytes), ``summary.csv`` (mean and sd over seeds of the site-mean metrics) and
``semi_federated.png``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent
BASE = ["dataset=breast_cancer", "partition=panels", "dataset.num_clients=4", "clients_per_round=4",
        "lr=0.05", "rounds=100", "eval_every=100"]
MLP = ["model=mlp", "model.hidden=[32,32]"]
ARMS = {
    "semifed": ["model=semi", "algorithm=semifed"],
    "semifed_head": ["model=semi", "algorithm=semifed", "model.local=[encoder,head]"],
    "fedavg_zero": MLP,
    "fedavg_shared": [*MLP, "partition.panels.keep=shared"],
    "local": [*MLP, "algorithm=local"],
}
UNITS = ["partition.feature_shift.kind=intensity", "partition.feature_shift.strength=1.0"]
CONDITIONS = {
    "panels": [],
    "panels+units": UNITS,
    "10 sites+units": ["dataset.num_clients=10", "clients_per_round=10", *UNITS],
}


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def log_loss(sim, state) -> list[float]:
    """Each site's mean cross-entropy on its own test split, with the model it uses."""
    params = sim.evaluated_params(state)
    data = sim.data
    out = []
    for c in range(data.num_clients):
        p = jax.tree.map(lambda a, c=c: a[c], params) if sim.per_client_models else params
        m = int(data.test_counts[c])
        logits = np.asarray(sim.apply_fn(p, data.test_x[c, :m]), np.float64)
        y = np.asarray(data.test_y[c, :m])
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        out.append(float(-logp[np.arange(m), y].mean()))
    return out


def run_one(overrides: list[str]) -> tuple[dict, dict]:
    from fedbench.compression.traffic import traffic
    from fedbench.run import build_simulator

    cfg = compose(overrides)
    built = build_simulator(cfg)
    sim = built.sim
    state = sim.run(sim.init(), cfg["rounds"])
    sites = sim.site_results(state)
    sites["loss"] = log_loss(sim, state)
    bytes_up = (traffic(state, sim.dense_bits // 8, 1)["bytes_up"]
                if built.algorithm.kind == "federated" else 0)
    sites["bytes_up"] = bytes_up
    return sites, built.partition_stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "results" / "semi_federated"))
    parser.add_argument("--conditions", default=None,
                        help="comma-separated conditions to run (default: all); the other "
                             "conditions' rows of <out>/runs.csv are kept")
    parser.add_argument("--collect", action="store_true",
                        help="only rewrite summary.csv and the PNG from <out>/runs.csv")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.collect:
        write_summary(read_runs(out / "runs.csv"), out)
        return
    rows, start = [], time.time()
    run = list(CONDITIONS) if args.conditions is None else args.conditions.split(",")
    if args.conditions is not None and (out / "runs.csv").exists():  # keep the others' rows
        rows = [r for r in read_runs(out / "runs.csv") if r["condition"] not in run]
    for condition in run:
        extra = CONDITIONS[condition]
        for seed in range(args.seeds):
            for arm, arm_overrides in ARMS.items():
                sites, stats = run_one([*BASE, *arm_overrides, *extra, f"seed={seed}"])
                for k, n in enumerate(sites["test_sizes"]):
                    rows.append({
                        "condition": condition, "arm": arm, "seed": seed, "site": k,
                        "n_test": n, "columns": len(stats["panels"]["columns"][k]),
                        "shared_columns": len(stats["panels"]["shared"]),
                        "accuracy": round(sites["own"][k], 4),
                        "auc": round(sites["auc"]["own"][k], 4),
                        "loss": round(sites["loss"][k], 4), "bytes_up": sites["bytes_up"],
                    })
                print(f"{condition:13s} seed {seed} {arm:14s} acc "
                      f"{np.mean(sites['own']):.4f} loss {np.mean(sites['loss']):.4f} "
                      f"bytes {sites['bytes_up']}  ({time.time() - start:.0f} s)", flush=True)
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_summary(rows, out)
    print(f"total {time.time() - start:.0f} s")


def read_runs(path: Path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in ("condition", "arm"):
                r[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return rows


def write_summary(rows: list[dict], out: Path) -> None:
    summary = summarise(rows)
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot(summary, out / "semi_federated.png")


def summarise(rows: list[dict]) -> list[dict]:
    """Per condition and arm: mean and sd over seeds of the site-mean accuracy, AUC and loss,
    of the worst site's accuracy, and the bytes uploaded."""
    out = []
    for condition in CONDITIONS:
        for arm in ARMS:
            picked = [r for r in rows if r["condition"] == condition and r["arm"] == arm]
            seeds = sorted({r["seed"] for r in picked})
            per_seed = {m: [statistics.mean(r[m] for r in picked if r["seed"] == s) for s in seeds]
                        for m in ("accuracy", "auc", "loss")}
            per_seed["worst_accuracy"] = [min(r["accuracy"] for r in picked if r["seed"] == s)
                                          for s in seeds]
            row = {"condition": condition, "arm": arm, "seeds": len(seeds)}
            for m, v in per_seed.items():
                row[f"{m}_mean"] = round(statistics.mean(v), 4)
                row[f"{m}_sd"] = round(statistics.stdev(v), 4) if len(v) > 1 else float("nan")
            row["bytes_up_mean"] = round(statistics.mean(
                next(r["bytes_up"] for r in picked if r["seed"] == s) for s in seeds))
            out.append(row)
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / len(ARMS)
    for ax, metric, label in ((axes[0], "accuracy", "own-site test accuracy (site mean)"),
                              (axes[1], "loss", "own-site test log loss (site mean)")):
        for i, arm in enumerate(ARMS):
            vals = [r for r in summary if r["arm"] == arm]
            xs = np.arange(len(vals)) + (i - (len(ARMS) - 1) / 2) * width
            ax.bar(xs, [r[f"{metric}_mean"] for r in vals], width,
                   yerr=[r[f"{metric}_sd"] for r in vals], label=arm, capsize=3)
        ax.set_xticks(np.arange(len(CONDITIONS)), list(CONDITIONS))
        ax.set_ylabel(label)
        if metric == "accuracy":
            ax.set_ylim(0.8, 1.0)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle("breast_cancer lab panels: own-site test metrics (mean, sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
