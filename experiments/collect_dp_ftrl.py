"""Collects the DP-FTRL study (issue 31 item 3) into results/dp_ftrl/.

Run after experiments/dp_ftrl.sh (from a clean commit):

    python experiments/collect_dp_ftrl.py [--runs multirun/dp_ftrl] [--log LOG ...]

Writes ``runs.csv`` (one row per replica: federation, mechanism, target and spent epsilon, noise
multiplier, the accounted sensitivity, the noise the released models carry and the final test
metric) and ``metric.png`` (the metric against epsilon per mechanism, mean over seeds with the sd
as error bars, one panel per federation), then re-renders README.md. Needs matplotlib.

The noise column, ``model_noise_per_clip``, is what the accounting implies before any training:
the root mean square, over rounds and per coordinate, of the Gaussian noise in the server model
after each round with server learning rate 1, in units of the clip. DP-FTRL: ``z sqrt(E) / m``
with ``E = sens(C)^2 ||A C^-1||_F^2 / T``
(``fedbench.privacy.factorisation.prefix_error``, jax_privacy's matrices) and ``m`` the sites
per round; DP-FedAvg: independent noise ``z`` per round on the sum,
divided by the expected cohort ``q n``, so ``z sqrt((T + 1) / 2) / (q n)``.
``final_noise_per_clip``: the same for the last round's model only (what is evaluated):
``z sens(C) ||(A C^-1)_T|| / m`` and ``z sqrt(T) / (q n)``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from fedbench.study_readme import (
    collected, fmt, markdown_table, mean_sd, paired_t, read_rows, render_file, write_rows,
)

FEDERATIONS = {"tcga": "Fed-TCGA-BRCA, 6 regions, every round",
               "digits": "digits, 20 hospitals, every round",
               "cyclic": "digits, 20 hospitals, 5 groups of 4 in turn"}
MECHANISMS = {"ftrl_blt": "DP-FTRL, BLT", "ftrl_banded": "DP-FTRL, banded",
              "ftrl_dense": "DP-FTRL, dense", "ftrl_independent": "independent noise (C = I)",
              "fedavg_q1": "DP-FedAvg, q = 1", "fedavg_sampled": "DP-FedAvg, Poisson sampling"}
EPSILONS = (1.0, 2.0, 4.0, 8.0)


def _noise_per_clip(privacy: dict, cfg: dict) -> tuple[float, float]:
    """``model_noise_per_clip`` and ``final_noise_per_clip`` (module docstring)."""
    z, rounds = float(privacy["noise_multiplier"]), int(cfg["rounds"])
    if z == 0:
        return 0.0, 0.0
    if privacy["mechanism"] == "dp_ftrl":
        import numpy as np

        from fedbench.privacy import factorisation

        p = cfg["privacy"]
        cycle = 1 if p["participation"] == "every_round" else int(p["cycle"])
        C = factorisation.strategy(p["matrix"], rounds, int(p["bands"]), cycle)
        sens, m = float(privacy["sensitivity"]), int(cfg["num_clients"]) // cycle
        last = np.linalg.norm(np.linalg.solve(C.T, np.ones(rounds)))  # ||row T of A C^-1||
        return (z * math.sqrt(factorisation.prefix_error(C, sens)) / m, z * sens * float(last) / m)
    expected = float(privacy["sampling_rate"]) * int(cfg["num_clients"])
    return z * math.sqrt((rounds + 1) / 2) / expected, z * math.sqrt(rounds) / expected


def collect(runs: Path, walls: dict[str, float]) -> list[dict]:
    rows = []
    for fed in FEDERATIONS:
        for mech in MECHANISMS:
            job = runs / fed / mech
            if not (job / "summary.json").exists():
                continue
            for name in json.loads((job / "summary.json").read_text())["replicas"]:
                summary = json.loads((job / name / "summary.json").read_text())
                cfg, privacy, final = summary["config"], summary["privacy"], summary["final"]
                metric = "test_cindex" if "test_cindex" in final else "test_accuracy"
                target = cfg["privacy"]["target_epsilon"]  # JSON has no inf: null, z = 0
                target = math.inf if target is None and privacy["noise_multiplier"] == 0 else target
                rows.append({
                    "federation": fed, "mechanism": mech, "seed": int(cfg["seed"]),
                    "target_epsilon": float(target), "epsilon": privacy["epsilon"],
                    "delta": privacy["delta"], "noise_multiplier": privacy["noise_multiplier"],
                    "sensitivity": privacy.get("sensitivity", ""),
                    "sampling_rate": privacy.get("sampling_rate", ""),
                    "sites": cfg["num_clients"], "clients_per_round": cfg["clients_per_round"],
                    "rounds": cfg["rounds"], "clip": cfg["privacy"]["clip"],
                    **dict(zip(("model_noise_per_clip", "final_noise_per_clip"),
                               _noise_per_clip(privacy, cfg))),
                    "metric": metric, "value": final[metric], "status": summary["status"],
                    "program_wall_seconds": walls.get(f"{fed}/{mech}", ""),
                })
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feds = [f for f in FEDERATIONS if any(r["federation"] == f for r in rows)]
    fig, axes = plt.subplots(1, len(feds), figsize=(4.2 * len(feds), 3.5), squeeze=False)
    for ax, fed in zip(axes[0], feds):
        mine = [r for r in rows if r["federation"] == fed]
        for i, mech in enumerate(MECHANISMS):
            pts = {}
            for r in mine:
                if r["mechanism"] == mech and math.isfinite(float(r["target_epsilon"])):
                    pts.setdefault(float(r["target_epsilon"]), []).append(float(r["value"]))
            if not pts:
                continue
            xs = sorted(pts)
            ax.errorbar([x * (1 + 0.03 * (i - 2)) for x in xs],
                        [statistics.mean(pts[x]) for x in xs],
                        yerr=[statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0 for x in xs],
                        marker="o", ms=3, lw=1, capsize=2, color=f"C{i}", label=MECHANISMS[mech])
        ceiling = [float(r["value"]) for r in mine if math.isinf(float(r["target_epsilon"]))]
        if ceiling:
            ax.axhline(statistics.mean(ceiling), color="k", ls="--", lw=0.8,
                       label="no noise (clipped)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(EPSILONS, [f"{e:g}" for e in EPSILONS])
        ax.set_xlabel("epsilon (delta fixed)")
        ax.set_ylabel(mine[0]["metric"].replace("_", " "))
        ax.set_title(FEDERATIONS[fed], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# README values, from runs.csv only.


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/dp_ftrl/README.md quotes (fedbench/study_readme.py)."""
    rows = read_rows(folder / "runs.csv")
    value: dict[tuple[str, str, float], dict[int, float]] = {}
    noise: dict[tuple[str, str, float], tuple[float, float]] = {}
    spent: list[tuple[float, float]] = []
    for r in rows:
        key = (r["federation"], r["mechanism"], float(r["target_epsilon"]))
        value.setdefault(key, {})[int(r["seed"])] = float(r["value"])
        noise[key] = (float(r["model_noise_per_clip"]), float(r["final_noise_per_clip"]))
        if math.isfinite(key[2]):
            spent.append((float(r["epsilon"]), key[2]))
    feds = [f for f in FEDERATIONS if any(k[0] == f for k in value)]
    v: dict[str, str] = {"runs": str(len(rows)), "seeds": str(len({r["seed"] for r in rows}))}
    v["eps_spent"] = (f"between {min(s / t for s, t in spent):.5f} and "
                      f"{max(s / t for s, t in spent):.5f} times the target")

    def mechs(fed):
        return [m for m in MECHANISMS if (fed, m, 1.0) in value]

    def diff(fed, a, b, e):
        x, y = value[(fed, a, e)], value[(fed, b, e)]
        seeds = sorted(set(x) & set(y))
        return paired_t([x[s] for s in seeds], [y[s] for s in seeds])

    def cell(d):
        mean, low, high = d
        word = "ahead" if low > 0 else "behind" if high < 0 else "undecided"
        return f"{fmt(mean, 3, True)} [{fmt(low, 3, True)}, {fmt(high, 3, True)}] {word}"

    verdicts: dict[tuple[str, str], list[str]] = {}
    for fed in feds:
        metric = next(r["metric"] for r in rows if r["federation"] == fed)
        v[f"{fed}_metric"] = metric.replace("test_", "test ").replace("cindex", "C-index")
        base = "fedavg_q1" if fed != "cyclic" else "ftrl_independent"
        ceiling = value[(fed, base, math.inf)]
        table = [[f"{e:g}"] + [mean_sd(list(value[(fed, m, e)].values())) for m in mechs(fed)]
                 for e in EPSILONS]
        table.append(["inf (clipped, no noise)"] + [
            mean_sd(list(ceiling.values())) if m == base else "" for m in mechs(fed)])
        v[f"{fed}_table"] = "\n" + markdown_table(
            ["epsilon"] + [MECHANISMS[m] for m in mechs(fed)], table) + "\n"
        ntable = [[f"{e:g}"] + [f"{noise[(fed, m, e)][0]:.2f} / {noise[(fed, m, e)][1]:.2f}"
                                for m in mechs(fed)] for e in EPSILONS]
        v[f"{fed}_noise"] = "\n" + markdown_table(
            ["epsilon"] + [MECHANISMS[m] for m in mechs(fed)], ntable) + "\n"
        # the orderings, paired by seed: each DP-FTRL matrix against independent noise
        # without sampling (base) and against DP-FedAvg with sampling
        otable = []
        for e in EPSILONS:
            for m in ("ftrl_blt", "ftrl_banded", "ftrl_dense"):
                cells = [cell(diff(fed, m, other, e)) for other in (base, "fedavg_sampled")]
                for other, c in zip(("independent", "sampled"), cells):
                    verdicts.setdefault((fed, other), []).append(c.rsplit(" ", 1)[1])
                otable.append([f"{e:g}", MECHANISMS[m], *cells])
        v[f"{fed}_orderings"] = "\n" + markdown_table(
            ["epsilon", "DP-FTRL", f"minus {MECHANISMS[base]}",
             f"minus {MECHANISMS['fedavg_sampled']}"], otable, "llll") + "\n"
    for (fed, other), words in verdicts.items():
        v[f"{fed}_vs_{other}"] = ", ".join(f"{words.count(w)} {w}" for w in
                                           ("ahead", "behind", "undecided") if words.count(w))
    # two code paths, one noise: DP-FTRL's BLT every round against DP-FedAvg with q = 1
    rel = [abs(noise[(f, "ftrl_blt", e)][1] / noise[(f, "fedavg_q1", e)][1] - 1)
           for f in feds if f != "cyclic" for e in EPSILONS]
    v["blt_identity"] = f"{max(rel):.1e}"

    def ratio(fed, a, b, i):
        r = [noise[(fed, a, e)][i] / noise[(fed, b, e)][i] for e in EPSILONS]
        return f"{min(r):.3f}" if max(r) - min(r) < 5e-4 else f"{min(r):.3f}-{max(r):.3f}"

    others = ("ftrl_blt", "ftrl_banded", "ftrl_dense", "fedavg_sampled")
    v["noise_ratios"] = "\n" + markdown_table(
        ["federation (against)"] + [MECHANISMS[m] for m in others],
        [[f"{fed} ({MECHANISMS['fedavg_q1' if fed != 'cyclic' else 'ftrl_independent']})"]
         + [f"{ratio(fed, m, 'fedavg_q1' if fed != 'cyclic' else 'ftrl_independent', 0)} / "
            f"{ratio(fed, m, 'fedavg_q1' if fed != 'cyclic' else 'ftrl_independent', 1)}"
            for m in others] for fed in feds]) + "\n"
    every = [f for f in feds if f != "cyclic"]
    gains = [diff("cyclic", m, "ftrl_independent", e)[0] for m in ("ftrl_blt", "ftrl_banded",
             "ftrl_dense") for e in EPSILONS] if "cyclic" in feds else [0.0]
    v["cyclic_max_gain"] = f"{100 * max(gains):.0f}"
    dense = [noise[(f, "ftrl_dense", e)][0] / noise[(f, "fedavg_q1", e)][0]
             for f in every for e in EPSILONS]
    v["dense_gain"] = f"{100 * (1 - max(dense)):.1f}-{100 * (1 - min(dense)):.1f}%"
    sds = [statistics.stdev(value[k].values()) for k in value if k[0] == "tcga"
           and math.isfinite(k[2])]
    v["tcga_sd"] = f"{min(sds):.2f}-{max(sds):.2f}"
    walls = {f"{r['federation']}/{r['mechanism']}": float(r["program_wall_seconds"])
             for r in rows if r["program_wall_seconds"]}
    v["time_total"] = f"{sum(walls.values()) / 60:.1f}"
    return v


def main() -> None:
    args, rows = collected("dp_ftrl", __doc__.splitlines()[0], collect)
    write_rows(args.out / "runs.csv", rows)
    plot(rows, args.out / "metric.png")
    render_file(args.out)


if __name__ == "__main__":
    main()
