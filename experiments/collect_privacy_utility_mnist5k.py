"""Collects the mnist5k privacy-utility sweep (one in-program job) into results/privacy_utility/.

Run after the sweep in experiments/privacy_utility_mnist5k.yaml (issue #15 item 7)::

    python experiments/collect_privacy_utility_mnist5k.py [--run outputs/privacy_utility_mnist5k]

Reads each replica's ``summary.json`` (``target_epsilon=<e>,seed=<s>/``), writes
``mnist5k.csv`` (one row per run) and ``mnist5k.png``: test accuracy and its drop from the
non-private run against epsilon, beside Abadi et al. (CCS 2016)'s MNIST figures (about 90%, 95%
and 97% test accuracy at epsilon 0.5, 2 and 8, delta 1e-5, against about 98% without privacy;
the constants live in experiments/collect_privacy_utility.py). Then re-renders the numbers in
``README.md`` there: experiments/collect_privacy_utility.py's ``readme_values`` reads this
``mnist5k.csv`` too (fedbench/study_readme.py).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import statistics
from pathlib import Path

from fedbench.provenance import study_provenance
from fedbench.study_readme import render_file


def _sibling():
    """experiments/collect_privacy_utility.py, which holds the README's values and Abadi et al.'s
    published numbers (imported by path: experiments/ is not a package)."""
    path = Path(__file__).with_name("collect_privacy_utility.py")
    spec = importlib.util.spec_from_file_location("collect_privacy_utility", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PUBLISHED = _sibling()
# Abadi et al. 2016, Sec. 5.2 and Fig. 3 (MNIST, PCA 60 + 1,000 ReLU units, lots of 600, delta
# 1e-5); their source is noted in collect_privacy_utility.py.
ABADI = _PUBLISHED.ABADI
ABADI_NONPRIVATE = _PUBLISHED.ABADI_NONPRIVATE
FIELDS = ["target_epsilon", "epsilon", "delta", "noise_multiplier", "seed", "rounds",
          "test_accuracy", "test_loss", "status"]


def collect(run: Path) -> list[dict]:
    rows = []
    for path in sorted(run.glob("target_epsilon=*/summary.json")):
        s = json.loads(path.read_text())
        p, f, c = s["privacy"], s["final"], s["config"]
        target = c["privacy"]["target_epsilon"]
        rows.append({
            "target_epsilon": math.inf if target is None else float(target),
            "epsilon": math.inf if p["epsilon"] is None else float(p["epsilon"]),
            "delta": p["delta"], "noise_multiplier": p["noise_multiplier"], "seed": c["seed"],
            "rounds": f["round"], "test_accuracy": f["test_accuracy"],
            "test_loss": f["test_loss"], "status": s.get("status", "completed"),
        })
    return sorted(rows, key=lambda r: (r["target_epsilon"], r["seed"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("outputs/privacy_utility_mnist5k"))
    parser.add_argument("--out", type=Path, default=Path("results/privacy_utility"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    args = parser.parse_args()
    # Results only from one clean commit (fedbench/provenance.py): checked before any write.
    study_provenance(args.run, args.out, args.allow_dirty)
    rows = collect(args.run)
    if not rows:
        raise SystemExit(f"no target_epsilon=*/summary.json under {args.run}")
    with open(args.out / "mnist5k.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    groups: dict[float, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["target_epsilon"], []).append(r)
    base = statistics.mean(r["test_accuracy"] for r in groups[math.inf])
    print("| target epsilon | noise multiplier | test accuracy (mean ± sd, 3 seeds) | drop | "
          "Abadi et al. accuracy | Abadi et al. drop |")
    print("|---:|---:|---:|---:|---:|---:|")
    stats = {}
    for eps, rs in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in rs]
        m, s = statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0
        stats[eps] = (m, s)
        ab = ABADI.get(eps)
        print(f"| {eps:g} | {rs[0]['noise_multiplier']:.2f} | {m:.3f} ± {s:.3f} | "
              f"{100 * (base - m):.1f} | {'' if ab is None else f'{ab:.2f}'} | "
              f"{'' if ab is None else f'{100 * (ABADI_NONPRIVATE - ab):.0f}'} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    finite = sorted(e for e in stats if math.isfinite(e))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(finite, [stats[e][0] for e in finite], yerr=[stats[e][1] for e in finite],
                marker="o", capsize=3, label="fedbench: mnist5k, DP-SGD in 5 clients (3 seeds)")
    ax.axhline(base, color="C0", ls="--", lw=1, label=f"fedbench non-private ({base:.3f})")
    ax.plot(list(ABADI), list(ABADI.values()), "k*", ms=10,
            label="Abadi et al. 2016: MNIST 60k (published)")
    ax.axhline(ABADI_NONPRIVATE, color="k", ls=":", lw=1,
               label=f"Abadi et al. non-private (~{ABADI_NONPRIVATE:.2f})")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(finite, [f"{e:g}" for e in finite])
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Record-level DP-SGD on MNIST digits", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out / "mnist5k.png", dpi=120)
    if (args.out / "README.md").exists() and (args.out / "privacy_utility.csv").exists():
        render_file(args.out)


if __name__ == "__main__":
    main()
