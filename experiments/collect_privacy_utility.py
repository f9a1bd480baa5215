"""Collects the privacy-utility sweeps into results/privacy_utility/ (CSV + PNG).

Run after the two sweeps in experiments/privacy_utility_{client,sample}.yaml:

    python experiments/collect_privacy_utility.py [--sweeps multirun] [--out results/privacy_utility]

Reads every ``summary.json`` under ``multirun/privacy_utility_client`` and
``multirun/privacy_utility_sample``; writes one row per run (mechanism, target and spent epsilon,
delta, noise multiplier, seed, final accuracies) and a figure of test accuracy against the
target epsilon (mean and standard deviation over seeds), with the non-private runs as a line;
then re-renders the numbers in ``README.md`` there (:func:`readme_values`, which also reads the
``mnist5k.csv`` of experiments/collect_privacy_utility_mnist5k.py; fedbench/study_readme.py).
Needs matplotlib (``pip install -e ".[analysis]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance
from fedbench.study_readme import excludes_zero, fmt, markdown_table, mean_sd, paired_t, render_file

FIELDS = [
    "mechanism", "target_epsilon", "epsilon", "delta", "noise_multiplier", "accountant",
    "seed", "rounds", "test_accuracy", "test_loss", "client_accuracy_mean",
    "client_accuracy_p10", "status",
]
MECHANISMS = ("dp_client", "dp_sample")

# Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Sec. 5.2 (MNIST) and its
# Fig. 3 (the large, medium and small noise runs): test accuracy about 90%, 95% and 97% at
# (epsilon, delta) = (0.5, 1e-5), (2, 1e-5) and (8, 1e-5), with noise multipliers sigma 8, 4 and
# 2 (lots of 600 of the 60,000 MNIST training images, PCA to 60 dimensions, 1,000 hidden units);
# about 98% for the same network without privacy. Quoted from the paper, not rerun.
ABADI = {0.5: 0.90, 2.0: 0.95, 8.0: 0.97}
ABADI_SIGMA = {0.5: 8, 2.0: 4, 8.0: 2}
ABADI_NOISE = {0.5: "large", 2.0: "medium", 8.0: "small"}
ABADI_NONPRIVATE = 0.98
# The two Synthetic sweeps before the privacy-correctness rerun (shared noise draws): mean test
# accuracy over seeds 0-2, as computed from `git show
# 7fbbb0b:results/privacy_utility/privacy_utility.csv` (full precision); no longer in this folder.
EARLIER = {
    ("dp_client", 0.5): 0.640999972820282, ("dp_client", 1.0): 0.7385333180427551,
    ("dp_client", 2.0): 0.8023999929428101, ("dp_client", 4.0): 0.829866627852122,
    ("dp_client", 8.0): 0.8390666445096334, ("dp_client", math.inf): 0.8464666406313578,
    ("dp_sample", 0.5): 0.5445000131924947, ("dp_sample", 1.0): 0.6176667014757792,
    ("dp_sample", 2.0): 0.6788333654403687, ("dp_sample", 4.0): 0.7136666973431905,
    ("dp_sample", 8.0): 0.7255000472068787, ("dp_sample", math.inf): 0.7348333597183228,
}


def collect(sweeps: Path) -> list[dict]:
    rows = []
    for name in ("privacy_utility_client", "privacy_utility_sample"):
        for path in sorted((sweeps / name).glob("*/summary.json")):
            s = json.loads(path.read_text())
            p, f, c = s["privacy"], s["final"], s["config"]
            target = c["privacy"]["target_epsilon"]
            rows.append({
                "mechanism": p["mechanism"],
                "target_epsilon": math.inf if target is None else target,
                "epsilon": math.inf if p["epsilon"] is None else float(p["epsilon"]),  # "inf" too
                "delta": p["delta"],
                "noise_multiplier": p["noise_multiplier"],
                "accountant": p["accountant"],
                "seed": c["seed"],
                "rounds": f["round"],
                "test_accuracy": f["test_accuracy"],
                "test_loss": f["test_loss"],
                "client_accuracy_mean": f["client_accuracy_mean"],
                "client_accuracy_p10": f["client_accuracy_p10"],
                "status": s.get("status", "completed"),
            })
    rows.sort(key=lambda r: (r["mechanism"], r["target_epsilon"], r["seed"]))
    return rows


def summarise(rows: list[dict]) -> dict[tuple[str, float], tuple[float, float, int]]:
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["mechanism"], r["target_epsilon"]), []).append(r["test_accuracy"])
    return {
        k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for k, v in groups.items()
    }


def plot(stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    titles = {
        "dp_client": "client-level DP-FedAvg\nSynthetic-IID, 1,000 clients, q = 0.1, 200 rounds",
        "dp_sample": "record-level DP-SGD in each client\nSynthetic-IID, 100 clients, 50 rounds",
    }
    for ax, mech in zip(axes, ("dp_client", "dp_sample")):
        finite = sorted(e for m, e in stats if m == mech and math.isfinite(e))
        if not finite:
            continue
        means = [stats[(mech, e)][0] for e in finite]
        stds = [stats[(mech, e)][1] for e in finite]
        ax.errorbar(finite, means, yerr=stds, marker="o", capsize=3, label="DP (mean ± sd, 3 seeds)")
        if (mech, math.inf) in stats:
            m, s, _ = stats[(mech, math.inf)]
            ax.axhline(m, color="k", ls="--", label=f"non-private ({m:.3f})")
            ax.axhspan(m - s, m + s, color="k", alpha=0.1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(finite)
        ax.set_xticklabels([f"{e:g}" for e in finite])
        ax.set_xlabel("epsilon (delta = 1e-5, PLD accountant)")
        ax.set_title(titles[mech], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("test accuracy (pooled test set)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# results/privacy_utility/README.md: every table and number it quotes, from privacy_utility.csv and
# mnist5k.csv in the study folder (fedbench/study_readme.py) and the published constants above.
# Drops are in accuracy points (x 100), the non-private run minus the private one; intervals are
# 95% paired t intervals over the seeds, paired by seed.


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _eps(e: float) -> str:
    return "inf" if math.isinf(e) else f"{e:g}"


def _pts(x: float, sign: bool = False) -> str:
    return fmt(100 * x, 1, sign)


def _interval(t: tuple[float, float, float]) -> str:
    return f"{_pts(t[0])} [{_pts(t[1], True)}, {_pts(t[2], True)}]"


def _against(ours: tuple[float, float, float], theirs: float) -> str:
    """Where a published drop lies against our interval: inside, or ours larger / smaller."""
    if ours[1] <= theirs <= ours[2]:
        return "inside our interval"
    return f"our drop is {'larger' if theirs < ours[1] else 'smaller'} than theirs"


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/privacy_utility/README.md quotes, from
    ``privacy_utility.csv`` (the two Synthetic sweeps) and ``mnist5k.csv`` in ``folder``."""
    folder = Path(folder)
    rows = [r for r in _read(folder / "privacy_utility.csv") if r["status"] == "completed"]
    mrows = [r for r in _read(folder / "mnist5k.csv") if r["status"] == "completed"]

    def col(rs: list[dict], eps: float, name: str = "test_accuracy",
            mech: str | None = None) -> list[float]:
        """``name`` per seed (in seed order) at target ``eps``."""
        got = sorted((int(r["seed"]), float(r[name])) for r in rs
                     if float(r["target_epsilon"]) == eps
                     and (mech is None or r["mechanism"] == mech))
        return [x for _, x in got]

    def drop(rs: list[dict], eps: float, mech: str | None = None) -> tuple[float, float, float]:
        return paired_t(col(rs, math.inf, mech=mech), col(rs, eps, mech=mech))

    def mean(xs: list[float]) -> float:
        return statistics.mean(xs)

    v: dict[str, str] = {}
    eps_all = sorted({float(r["target_epsilon"]) for r in rows})
    finite = [e for e in eps_all if math.isfinite(e)]
    seeds = {len(col(rows, e, mech=m)) for e in eps_all for m in MECHANISMS}
    seeds |= {len(col(mrows, e)) for e in eps_all}
    if len(seeds) != 1:
        raise ValueError(f"cells with different numbers of seeds: {sorted(seeds)}")
    n = seeds.pop()

    # The epsilon spent against the target.
    spent = [(float(r["target_epsilon"]), float(r["epsilon"])) for r in rows
             if math.isfinite(float(r["target_epsilon"]))]
    over = sum(e > t for t, e in spent)
    v["eps_spent"] = (
        f"it is at most {max((t - e) / t for t, e in spent):.3%} below the target"
        + (" and never above it" if not over else f", and above it in {over} runs"))

    # The Synthetic sweeps: accuracy, noise multipliers, drops.
    def nm(rs: list[dict], eps: float, mech: str | None = None) -> str:
        x = col(rs, eps, "noise_multiplier", mech)[0]
        return "0" if x == 0 else fmt(x, 2)

    v["synthetic_table"] = markdown_table(
        ["target epsilon", "noise multiplier (dp_client)", "dp_client",
         "noise multiplier (dp_sample)", "dp_sample"],
        [[_eps(e) if math.isfinite(e) else "inf (no noise; clipping kept)",
          nm(rows, e, "dp_client"), mean_sd(col(rows, e, mech="dp_client")),
          nm(rows, e, "dp_sample"), mean_sd(col(rows, e, mech="dp_sample"))]
         for e in eps_all], "r" * 5)
    down = sorted(finite, reverse=True)
    for mech in MECHANISMS:
        v[f"{mech}_drops"] = _and([_pts(drop(rows, e, mech)[0]) for e in down])
    v["synthetic_eps_order"] = _and([_eps(e) for e in down])
    v["synthetic_drop_table"] = markdown_table(
        ["target epsilon", "dp_client drop [95% paired t]", "dp_sample drop [95% paired t]"],
        [[_eps(e)] + [_interval(drop(rows, e, m)) for m in MECHANISMS] for e in finite], "rrr")
    unresolved = {m: [e for e in finite if not excludes_zero(drop(rows, e, m))] for m in MECHANISMS}
    names = {"dp_client": "client-level DP", "dp_sample": "record-level DP-SGD"}
    parts = [f"{names[m]} at epsilon {_and([_eps(e) for e in es])}"
             for m, es in unresolved.items() if es]
    v["synthetic_unresolved"] = (
        "Every interval excludes zero: every epsilon costs accuracy at this number of seeds"
        if not parts else "The interval includes zero, so there is no difference from the "
        "non-private run at this number of seeds, for " + _and(parts)
        + "; every other interval excludes zero")
    v["synthetic_nonprivate"] = " / ".join(fmt(mean(col(rows, math.inf, mech=m)), 2)
                                           for m in MECHANISMS)
    at_low = [drop(rows, min(finite), m)[0] for m in MECHANISMS]
    v["synthetic_low_drops"] = f"{100 * min(at_low):.0f}-{100 * max(at_low):.0f}"

    # The rerun after the privacy-correctness fixes, against the earlier table.
    change = {(m, e): mean(col(rows, e, mech=m)) - EARLIER[(m, e)]
              for m in MECHANISMS for e in eps_all}
    sd = {(m, e): statistics.stdev(col(rows, e, mech=m)) for m in MECHANISMS for e in eps_all}
    worst = max(change, key=lambda k: abs(change[k]))
    v["rerun_max"] = f"{_pts(abs(change[worst]))} points ({worst[0]} at epsilon {_eps(worst[1])})"
    beyond = [k for k in change if abs(change[k]) > sd[k]]
    v["rerun_sd"] = (
        "within one standard deviation over seeds of the rerun at every epsilon" if not beyond
        else "within one standard deviation over seeds of the rerun except for " + _and(
            [f"{m} at epsilon {_eps(e)} ({_pts(abs(change[(m, e)]))} points, "
             f"{abs(change[(m, e)]) / sd[(m, e)]:.2f} sd)" for m, e in beyond]))
    v["rerun_earlier"] = " and ".join(
        f"{m} " + " / ".join(fmt(EARLIER[(m, e)]) for e in eps_all) for m in MECHANISMS)
    v["rerun_eps"] = " / ".join(_eps(e) for e in eps_all)

    # Abadi et al.'s MNIST numbers.
    pub = sorted(ABADI)
    v["abadi_acc"] = _and([f"{100 * ABADI[e]:.0f}% at epsilon {_eps(e)}" for e in pub])
    v["abadi_nonprivate"] = f"{100 * ABADI_NONPRIVATE:.0f}%"
    v["abadi_drops"] = _and([f"{100 * (ABADI_NONPRIVATE - ABADI[e]):.0f}" for e in pub])

    # mnist5k against Abadi et al.
    meps = sorted({float(r["target_epsilon"]) for r in mrows})
    mbase = col(mrows, math.inf)
    table = []
    for e in meps:
        acc = col(mrows, e)
        pub_acc = ABADI.get(e)
        table.append([
            _eps(e) if math.isfinite(e) else "inf (clipping, no noise)", nm(mrows, e),
            mean_sd(acc), "0" if math.isinf(e) else _interval(drop(mrows, e)),
            "" if pub_acc is None else fmt(pub_acc, 2) if math.isfinite(e) else "",
            "" if pub_acc is None else f"about {100 * (ABADI_NONPRIVATE - pub_acc):.0f}"])
    table[-1][4] = f"about {fmt(ABADI_NONPRIVATE, 2)}"
    v["mnist5k_table"] = markdown_table(
        ["target epsilon", "noise multiplier", f"test accuracy (mean ± sd, {n} seeds)",
         "drop (points) [95% paired t]", "Abadi et al. accuracy", "Abadi et al. drop (points)"],
        table, "r" * 6)
    ours = {e: drop(mrows, e) for e in pub}
    theirs = {e: 100 * (ABADI_NONPRIVATE - ABADI[e]) for e in pub}
    rel = {e: _against(tuple(100 * x for x in ours[e]), theirs[e]) for e in pub}
    inside = [e for e in pub if rel[e] == "inside our interval"]
    v["abadi_inside"] = (
        "**At no epsilon does Abadi et al.'s drop lie inside our interval**" if not inside else
        f"**At epsilon {_and([_eps(e) for e in inside])} Abadi et al.'s drop"
        f"{'s lie' if len(inside) > 1 else ' lies'} inside our 95% interval**: ours "
        + _and([f"{_interval(ours[e])}" for e in inside]) + " points against their about "
        + _and([f"{theirs[e]:.0f}" for e in inside]))
    outside = [e for e in pub if e not in inside]
    v["abadi_outside"] = (
        "**Everywhere else ours is within theirs**" if not outside else _and([
            f"**At epsilon {_eps(e)} {rel[e]}**: {_interval(ours[e])} points against their "
            f"about {theirs[e]:.0f}, {100 * ours[e][0] / theirs[e]:.1f} times theirs"
            for e in outside]))
    low = min(pub)
    v["mnist5k_nm_low"] = fmt(col(mrows, low, "noise_multiplier")[0], 2)
    v["abadi_sigma_low"] = (f"sigma {ABADI_SIGMA[low]} there (their {ABADI_NOISE[low]}-noise "
                            "setting)")
    v["abadi_sigma_rest"] = _and([
        f"sigma {ABADI_SIGMA[e]} ({ABADI_NOISE[e]} noise, epsilon {_eps(e)}; ours "
        f"{fmt(col(mrows, e, 'noise_multiplier')[0], 2)})" for e in pub if e != low])
    ours_np = mean(mbase)
    v["mnist5k_abs"] = ("lower" if ours_np < ABADI_NONPRIVATE else "not lower")
    v["mnist5k_abs_pair"] = (f"{fmt(ours_np, 2)} without noise against their "
                             f"{fmt(ABADI_NONPRIVATE, 2)}")
    v["abadi_quote"] = (_and([f"{100 * ABADI[e]:.0f}%" for e in pub]) + " at epsilon "
                        + _and([_eps(e) for e in pub]))
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=Path, default=Path("multirun"))
    parser.add_argument("--out", type=Path, default=Path("results/privacy_utility"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.sweeps, args.out, args.allow_dirty)
    rows = collect(args.sweeps)
    if not rows:
        raise SystemExit(f"no summary.json under {args.sweeps}/privacy_utility_*")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "privacy_utility.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    stats = summarise(rows)
    plot(stats, args.out / "privacy_utility.png")
    print("mechanism  target_eps  test_acc_mean  sd  n")
    for (mech, eps), (m, s, n) in sorted(stats.items()):
        print(f"{mech:10} {eps:>10} {m:13.4f} {s:.4f} {n}")
    if (args.out / "README.md").exists() and (args.out / "mnist5k.csv").exists():
        render_file(args.out)


if __name__ == "__main__":
    main()
