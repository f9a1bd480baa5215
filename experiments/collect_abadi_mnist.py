"""Collects Abadi et al. 2016's MNIST points on mnist5k into results/abadi_mnist/ (CSVs + PNG).

Run after experiments/abadi_mnist.sh (issue #29 item 4)::

    python experiments/collect_abadi_mnist.py [--sweep multirun/abadi_mnist]

Writes ``accounting.csv`` (per noise level: the epochs at q = 0.01 at which dp-accounting's PLD,
improved-RDP and classic-RDP accountants reach the paper's epsilon at delta 1e-5),
``metrics.csv`` (every run, seed and epoch: test accuracy and loss, fedbench's epsilon and this
script's own accountant's epsilon at the run's DP-SGD steps), ``pilot.csv`` (the learning-rate
pilot), ``final.csv`` (per configuration at its last epoch: mean and sd over seeds, drop from the
non-private run, the paper's figures), ``abadi_mnist.png`` (test accuracy against epoch, and
against epsilon beside the paper's points), then re-renders README.md's numbers from them.
Needs matplotlib (``pip install -e ".[analysis]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from fedbench.privacy.accounting import account, classic_rdp_epsilon
from fedbench.provenance import ProvenanceError, write_study_provenance
from fedbench.study_readme import compare, fmt, markdown_table, mean_sd, render_file

# Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning with Differential
# Privacy", CCS 2016, Sec. 5.2 (MNIST: 60,000 training images, PCA to 60 dimensions, one hidden
# layer of 1,000 ReLU units, lots of L = 600 (q = 0.01), clip C = 4, delta = 1e-5). NOTE: these
# figures were supplied from recollection in the session that built this study; they could not be
# checked against the PDF here (no internet). sigma: (epsilon, test accuracy).
PAPER = {8.0: (0.5, 0.90), 4.0: (2.0, 0.95), 2.0: (8.0, 0.97)}
PAPER_NONPRIVATE = 0.983   # the paper's non-private baseline, about 98.3% (same caveat)
PAPER_LOT, PAPER_N = 600, 60_000
Q = 0.01                   # the paper's sampling rate, kept: lots of 40 of 4,000 here
CLIP = 4.0
DELTA = 1e-5
STEPS_PER_EPOCH = 100      # 1 / q
CONFIGS = {"nonprivate": None, "sigma8": 8.0, "sigma4": 4.0, "sigma2": 2.0,
           "nonprivate_long": None}  # nonprivate: the DP runs' epochs; _long: 100 epochs


# ---------------------------------------------------------------------------------------------
# Accounting: the epochs at which epsilon reaches the paper's value.


def _largest_epochs(eps_of_epochs, target: float) -> int:
    """The largest whole number of epochs whose epsilon is at most ``target`` (bisection;
    epsilon grows with the epochs)."""
    hi = 1
    while eps_of_epochs(hi) <= target:
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if eps_of_epochs(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def accounting_rows() -> list[dict]:
    """Per sigma: the epochs (100 DP-SGD steps each at q = 0.01) at which each accountant of
    dp-accounting (as fedbench calls it) reaches the paper's epsilon at delta 1e-5. ``classic``
    is RDP with Mironov 2017's conversion, the moments accountant's bound, closest to what the
    paper used."""
    rows = []
    for sigma, (target, acc) in PAPER.items():
        eps = {
            "pld": lambda e: account(sigma, Q, e * STEPS_PER_EPOCH, DELTA, "pld").epsilon,
            "rdp": lambda e: account(sigma, Q, e * STEPS_PER_EPOCH, DELTA, "rdp").epsilon,
            "classic_rdp": lambda e: classic_rdp_epsilon(sigma, Q, e * STEPS_PER_EPOCH,
                                                         DELTA).epsilon,
        }
        row = {"sigma": sigma, "q": Q, "delta": DELTA, "paper_epsilon": target,
               "paper_accuracy": acc}
        for name, f in eps.items():
            e = _largest_epochs(f, target)
            row[f"epochs_{name}"] = e
            row[f"epsilon_{name}"] = f(e)
        row["classic_rdp_epsilon_at_pld_epochs"] = eps["classic_rdp"](row["epochs_pld"])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Runs.


def replicas(job: Path) -> list[Path]:
    """The per-replica run directories of a ``seeds=S`` (or in-program sweep) job."""
    summary = json.loads((job / "summary.json").read_text())
    if "replicas" in summary:
        return [job / name for name in summary["replicas"]]
    return [job]


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())


def our_epsilon(sigma: float | None, steps: int) -> float:
    """This script's accountant (dp-accounting's PLD, q = 0.01, delta 1e-5) at ``steps``."""
    if sigma is None:
        return math.inf
    if steps == 0:
        return 0.0
    return account(sigma, Q, steps, DELTA, "pld").epsilon


def collect(sweep: Path) -> list[dict]:
    rows = []
    for name, sigma in CONFIGS.items():
        job = sweep / name
        if not (job / "summary.json").exists():
            continue
        for run in replicas(job):
            s = json.loads((run / "summary.json").read_text())
            c = s["config"]
            priv = s.get("privacy") or {}
            if sigma is not None:  # the accounting's assumptions, as fedbench recorded them
                assert priv["noise_multiplier"] == sigma and priv["clip"] == CLIP
                assert priv["worst_client_sampling_rate"] == Q and priv["delta"] == DELTA
                assert priv["worst_client_steps"] == s["final"]["round"] * STEPS_PER_EPOCH
            for line in (run / "metrics.jsonl").read_text().splitlines():
                m = json.loads(line)
                steps = m["round"] * STEPS_PER_EPOCH
                rows.append({
                    "config": name, "sigma": "" if sigma is None else sigma, "seed": c["seed"],
                    "lr": c["lr"], "lot": c["batch_size"], "epoch": m["round"], "steps": steps,
                    "test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"],
                    "train_loss": m["train_loss"],
                    "epsilon_fedbench": m.get("epsilon", math.inf) if sigma is not None
                    else math.inf,
                    "epsilon_accountant": our_epsilon(sigma, steps),
                    "run_epsilon_fedbench": priv.get("epsilon", math.inf) if sigma is not None
                    else math.inf,
                    "compile_seconds": s["timing"]["compile_seconds"],
                    "run_seconds": s["timing"]["run_seconds"],
                    "status": s.get("status", "completed"),
                })
    return rows


def collect_pilot(sweep: Path) -> list[dict]:
    rows = []
    for name in ("pilot_timing", "pilot_lr", "pilot_lr_low"):
        if not (sweep / name / "summary.json").exists():
            continue
        for run in replicas(sweep / name):
            c = json.loads((run / "summary.json").read_text())["config"]
            for line in (run / "metrics.jsonl").read_text().splitlines():
                m = json.loads(line)
                rows.append({"job": name, "sigma": c["privacy"]["noise_multiplier"],
                             "lr": c["lr"], "seed": c["seed"], "epoch": m["round"],
                             "test_accuracy": m["test_accuracy"], "train_loss": m["train_loss"],
                             "epsilon_fedbench": m["epsilon"]})
    return rows


def final_table(rows: list[dict]) -> list[dict]:
    last: dict[tuple, dict] = {}
    for r in rows:
        key = (r["config"], r["seed"])
        if key not in last or r["epoch"] > last[key]["epoch"]:
            last[key] = r
    by: dict[str, list[dict]] = {}
    for (name, _), r in sorted(last.items()):
        by.setdefault(name, []).append(r)
    base = statistics.mean(r["test_accuracy"] for r in by["nonprivate"])
    acct = {r["sigma"]: r for r in accounting_rows()}
    out = []
    for name, rs in by.items():
        sigma = CONFIGS[name]
        acc = [r["test_accuracy"] for r in rs]
        paper_eps, paper_acc = PAPER.get(sigma, (math.inf, PAPER_NONPRIVATE))
        out.append({
            "config": name, "sigma": "" if sigma is None else sigma, "q": Q,
            "lot": rs[0]["lot"], "lr": rs[0]["lr"], "seeds": len(rs),
            "epochs_run": min(r["epoch"] for r in rs),
            "epochs_for_paper_epsilon": acct[sigma]["epochs_pld"] if sigma else "",
            "epsilon_fedbench": max(r["run_epsilon_fedbench"] for r in rs),
            "epsilon_accountant": rs[0]["epsilon_accountant"],
            "test_accuracy_mean": statistics.mean(acc),
            "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "drop_points": 100 * (base - statistics.mean(acc)),
            "paper_epsilon": paper_eps, "paper_accuracy": paper_acc,
            "paper_drop_points": 100 * (PAPER_NONPRIVATE - paper_acc),
            "compile_seconds": rs[0]["compile_seconds"], "run_seconds": rs[0]["run_seconds"],
        })
    return out


# ---------------------------------------------------------------------------------------------
# Plot.


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"nonprivate": "k", "sigma8": "tab:red", "sigma4": "tab:orange",
               "sigma2": "tab:green"}
    for name, sigma in CONFIGS.items():
        series: dict[int, list[dict]] = {}
        for r in rows:
            if r["config"] == name:
                series.setdefault(r["epoch"], []).append(r)
        if not series:
            continue
        xs = sorted(series)
        mean = [statistics.mean(r["test_accuracy"] for r in series[x]) for x in xs]
        if name == "nonprivate_long":  # 100 epochs: a level, not a curve, in both panels
            for ax in (ax1, ax2):
                ax.axhline(mean[-1], color="tab:blue", ls="-.", lw=1,
                           label=f"mnist5k non-private, epoch {xs[-1]}")
            continue
        label = "non-private" if sigma is None else f"sigma = {sigma:g}"
        ax1.plot(xs, mean, marker="o", color=colours[name], label=label)
        ax1.fill_between(xs, [min(r["test_accuracy"] for r in series[x]) for x in xs],
                         [max(r["test_accuracy"] for r in series[x]) for x in xs],
                         color=colours[name], alpha=0.2)
        if sigma is not None:
            xe = [x for x in xs if x > 0]
            ax2.plot([series[x][0]["epsilon_accountant"] for x in xe],
                     [statistics.mean(r["test_accuracy"] for r in series[x]) for x in xe],
                     marker="o", color=colours[name],
                     label=f"mnist5k, sigma = {sigma:g} (after each epoch)")
            eps, acc = PAPER[sigma]
            ax2.plot([eps], [acc], "*", ms=13, color=colours[name], mec="k",
                     label=f"Abadi et al., sigma = {sigma:g} (epsilon {eps:g})")
        else:
            ax2.axhline(mean[-1], color="k", ls="--", lw=1,
                        label=f"mnist5k non-private, epoch {xs[-1]}")
    ax2.axhline(PAPER_NONPRIVATE, color="k", ls=":", lw=1, label="Abadi et al. non-private")
    ax1.set_xlabel("epoch (100 steps at q = 0.01)")
    ax1.set_ylabel("test accuracy (mean over seeds, shaded min-max)")
    ax1.set_title("mnist5k, 1,000 ReLU units, lots of 40", fontsize=9)
    ax2.set_xscale("log")
    ax2.set_xlabel("epsilon (delta = 1e-5; PLD)")
    ax2.set_ylabel("test accuracy")
    ax2.set_title("against the paper's points (MNIST 60k, PCA 60, lots of 600)", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# README values, from the committed CSVs only.


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/abadi_mnist/README.md quotes, from ``accounting.csv``,
    ``final.csv``, ``metrics.csv`` and ``pilot.csv`` (fedbench/study_readme.py)."""
    acct = _read(folder / "accounting.csv")
    final = {r["config"]: r for r in _read(folder / "final.csv")}
    metrics = _read(folder / "metrics.csv")
    pilot = _read(folder / "pilot.csv")
    v: dict[str, str] = {}

    v["accounting_table"] = markdown_table(
        ["sigma", "q", "paper epsilon", "epochs (PLD)", "epsilon (PLD)",
         "epochs (improved RDP)", "epochs (classic RDP)", "classic-RDP epsilon at the PLD epochs"],
        [[f"{float(r['sigma']):g}", r["q"], f"{float(r['paper_epsilon']):g}", r["epochs_pld"],
          fmt(float(r["epsilon_pld"]), 3), r["epochs_rdp"], r["epochs_classic_rdp"],
          fmt(float(r["classic_rdp_epsilon_at_pld_epochs"]), 2)] for r in acct], "rrrrrrrr")
    v["epochs_pld"] = ", ".join(r["epochs_pld"] for r in acct)
    v["epochs_classic"] = ", ".join(r["epochs_classic_rdp"] for r in acct)
    v["full_epochs_total"] = str(sum(int(r["epochs_pld"]) for r in acct))

    per_seed: dict[str, dict[int, dict]] = {}
    for r in metrics:
        d = per_seed.setdefault(r["config"], {})
        s = int(r["seed"])
        if s not in d or int(r["epoch"]) > int(d[s]["epoch"]):
            d[s] = r
    seeds = sorted(per_seed["nonprivate"])

    def accs(name):
        return [float(per_seed[name][s]["test_accuracy"]) for s in seeds]

    rows = []
    for name in CONFIGS:
        if name not in final:
            continue
        f = final[name]
        private = f["sigma"] != ""
        rows.append([
            "none (non-private)" if not private else f"{float(f['sigma']):g}",
            f["q"], f"{f['lot']}", f["epochs_run"] + (f" of {f['epochs_for_paper_epsilon']}"
                                                       if private else ""),
            fmt(float(f["epsilon_accountant"]), 4) if private else "inf",
            fmt(float(f["epsilon_fedbench"]), 4) if private else "inf",
            mean_sd(accs(name)),
            fmt(float(f["drop_points"]), 1) if private else "",
            f"{float(f['paper_epsilon']):g}" if private else "inf",
            fmt(float(f["paper_accuracy"]), 3),
            fmt(float(f["paper_drop_points"]), 1) if private else "",
        ])
    v["results_table"] = markdown_table(
        ["sigma", "q", "lot", "epochs run (of those the paper's epsilon allows)",
         "epsilon (our PLD)", "epsilon (fedbench)", "test accuracy", "drop (points)", "paper epsilon",
         "paper accuracy", "paper drop (points)"], rows, "lrrrrrrrrrr")
    v["seeds"] = str(len(seeds))
    v["runs"] = str(sum(len(d) for d in per_seed.values()))
    epochs_run = sorted({int(final[n]["epochs_run"]) for n in final if final[n]["sigma"] != ""})
    v["epochs_run"] = "/".join(str(e) for e in epochs_run)  # the DP runs' (one value)
    v["long_epochs"] = final["nonprivate_long"]["epochs_run"]
    v["lr"] = f"{float(final['nonprivate']['lr']):g}"
    # fedbench's epsilon against ours, over every private row of metrics.csv.
    diffs = [abs(float(r["epsilon_fedbench"]) - float(r["epsilon_accountant"]))
             for r in metrics if r["sigma"] != ""]
    v["eps_max_diff"] = f"{max(diffs):.1e}"
    v["eps_rows"] = str(len(diffs))

    # Rankings: paired over seeds (pairs share the seed: initialisation and lots).
    def points(name):  # test accuracy in percentage points, per seed
        return [100 * a for a in accs(name)]

    v["rank_nonprivate"] = "; ".join(
        compare(f"non-private ({final['nonprivate']['epochs_run']} epochs)",
                f"sigma {CONFIGS[n]:g}", points("nonprivate"), points(n), digits=1)
        for n in ("sigma8", "sigma4", "sigma2") if n in final)
    v["rank_sigma"] = "; ".join(
        compare(f"sigma {CONFIGS[a]:g}", f"sigma {CONFIGS[b]:g}", points(a), points(b), digits=1)
        for a, b in (("sigma2", "sigma4"), ("sigma4", "sigma8")) if a in final and b in final)

    # Run time (fedbench's own timing, one program of 3 seeds per configuration).
    v["time_table"] = markdown_table(
        ["configuration", "epochs x seeds", "compile (s)", "run (s)", "s per epoch and seed"],
        [[n, f"{final[n]['epochs_run']} x {final[n]['seeds']}",
          fmt(float(final[n]["compile_seconds"]), 0), fmt(float(final[n]["run_seconds"]), 0),
          fmt(float(final[n]["run_seconds"]) / (int(final[n]["epochs_run"])
                                                * int(final[n]["seeds"])), 1)]
         for n in CONFIGS if n in final], "lrrrr")
    timed = sum(float(final[n]["compile_seconds"]) + float(final[n]["run_seconds"]) for n in final)
    v["main_minutes"] = f"{timed / 60:.0f}"
    dp = [n for n in ("sigma8", "sigma4", "sigma2") if n in final]
    per_epoch = [float(final[n]["run_seconds"]) / (int(final[n]["epochs_run"])
                                                   * int(final[n]["seeds"])) for n in dp]
    v["dp_epoch_seconds"] = f"{min(per_epoch):.0f}-{max(per_epoch):.0f}"
    np_epoch = float(final["nonprivate"]["run_seconds"]) / (int(final["nonprivate"]["epochs_run"])
                                                            * int(final["nonprivate"]["seeds"]))
    v["dp_cost_ratio"] = f"{min(per_epoch) / np_epoch:.0f}-{max(per_epoch) / np_epoch:.0f}"
    v["eps_fraction"] = "; ".join(
        f"sigma {CONFIGS[n]:g}: {float(final[n]['epsilon_accountant']):.3f} of the paper's "
        f"{float(final[n]['paper_epsilon']):g}" for n in dp)
    full = 3 * sum(int(r["epochs_pld"]) for r in acct)
    v["full_hours"] = (f"{full * min(per_epoch) / 3600:.0f}-{full * max(per_epoch) / 3600:.0f}")

    # Learning-rate pilot (sigma 4, seed 0): test accuracy at epoch 2.
    at2 = sorted((float(r["lr"]), float(r["test_accuracy"]), float(r["train_loss"]))
                 for r in pilot if int(r["epoch"]) == 2)
    v["pilot_table"] = markdown_table(
        ["lr", "test accuracy after 2 epochs", "train loss after 2 epochs"],
        [[f"{lr:g}", fmt(a, 3), fmt(loss, 2)] for lr, a, loss in at2], "rrr")
    return v


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("multirun/abadi_mnist"))
    parser.add_argument("--out", type=Path, default=Path("results/abadi_mnist"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py), checked before any write.
    # This is fedbench.provenance.study_provenance(args.sweep, ...) on every replica's run: a
    # seeds=3 (or in-program sweep) job's own summary.json lists its replicas and records no
    # provenance, so study_provenance, which reads every summary.json under the root, refuses it.
    runs = [run / "summary.json" for job in jobs(args.sweep) for run in replicas(job)]
    try:
        write_study_provenance(args.out, runs, args.allow_dirty)
    except ProvenanceError as err:
        raise SystemExit(f"{args.sweep}: {err}") from None
    rows = collect(args.sweep)
    if not rows:
        raise SystemExit(f"no runs under {args.sweep}: run experiments/abadi_mnist.sh first")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "accounting.csv", accounting_rows())
    write_csv(args.out / "metrics.csv", rows)
    write_csv(args.out / "pilot.csv", collect_pilot(args.sweep))
    table = final_table(rows)
    write_csv(args.out / "final.csv", table)
    plot(rows, args.out / "abadi_mnist.png")
    if (args.out / "README.md").exists():
        render_file(args.out)  # the README's numbers from the files just written
    for t in table:
        print(f"{t['config']:10} epochs {t['epochs_run']:4} eps fedbench "
              f"{t['epsilon_fedbench']:.4f} ours {t['epsilon_accountant']:.4f}  acc "
              f"{t['test_accuracy_mean']:.4f} ± {t['test_accuracy_sd']:.4f}")


if __name__ == "__main__":
    main()
