"""Collects the privacy-audit reports into ``results/audit/`` and draws its two figures.

Run by ``experiments/audit.sh`` after the two ``fedbench-audit`` runs::

    python experiments/plot_audit.py --runs outputs/audit --out results/audit

1. Each ``<runs>/<config>/`` report (``audit.md``, ``audit.html``, ``audit.json``, its image
   grids) is copied to ``<out>/<config>/``; with a headless Chromium the HTML is opened, every
   image checked as loaded, and the page rendered to ``audit.png`` (fedbench/audit/render.py).
2. ``defences.png``: reconstruction quality (median MSE and SSIM over seeds, with the
   interquartile range) against defence strength: Gaussian noise of variance ``v`` on the
   observed gradient, and pruning of each tensor's smallest ``p`` share (Zhu et al. 2019, Fig. 7).
   Two attacks on 8x8 digits in [0, 1], batch of one, one gradient step of an untrained model:
   DLG (L-BFGS, labels learned, 300 iterations) on Zhu et al.'s sigmoid LeNet, and the cosine +
   total-variation attack (Geiping et al. 2020, Adam, 300 iterations) on the suite's 2NN.
3. ``epsilon.png``: the one-run lower bound on epsilon (Steinke, Nasr, Jagielski 2023,
   ``jax_privacy.auditing.CanaryScoreAuditor``; and its f-DP version, Mahloujifar et al. 2024)
   against the theoretical epsilon of one Gaussian-mechanism round (client-level DP-FedAvg with
   the canaries as clients, fedbench/audit/epsilon.py) over a range of noise multipliers, with
   the largest bound the canary count allows (every guess right); beside it, canary sites
   through whole short DP-FedAvg runs of the simulator (fedbench/audit/canaries.py: 600 sites
   of digits, the last 500 canaries, Poisson rate 1/2, 3 rounds, logistic regression) against
   the accountant's epsilon of those runs.

All numbers go to ``<out>/figures.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

CONFIGS = ("nonprivate", "dp_client", "ditto")
NOISE = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
PRUNE = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


def collect(runs: Path, out: Path) -> dict:
    """Copies each configuration's report; renders and checks its HTML where Chromium exists."""
    from fedbench.audit.render import find_chromium, image_load_status, render_png

    found = {}
    for name in CONFIGS:
        src, dst = runs / name, out / name
        if not (src / "audit.json").exists():
            print(f"{src}: no audit.json (run experiments/audit.sh first); skipped")
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for f in ["audit.md", "audit.html", "audit.json", *sorted(p.name for p in
                                                                   src.glob("reconstructions_*.png"))]:
            shutil.copy2(src / f, dst / f)
        entry = {"report": str(dst / "audit.html"), "rendered": None}
        if find_chromium() is None:
            entry["rendered"] = "no Chromium installed: audit.png not rendered"
        else:
            status = image_load_status(dst / "audit.html")
            render_png(dst / "audit.html", dst / "audit.png")
            entry["rendered"] = str(dst / "audit.png")
            entry["images_loaded"] = f"{sum(s['loaded'] for s in status)} of {len(status)}"
        print(f"{name}: {entry}")
        found[name] = entry
    return found


def defence_sweep(seeds_dlg: int, seeds_cosine: int) -> dict:
    """Median and quartiles of MSE and SSIM for each attack and defence strength."""
    from sklearn.datasets import load_digits

    from fedbench.audit.attack import InversionSetting, run_trials
    from fedbench.audit.lenet import SigmoidLeNet
    from fedbench.audit.metrics import image_metrics
    from fedbench.model import MLP

    d = load_digits()
    x, y = jnp.asarray(d.images[..., None] / 16.0, jnp.float32), jnp.asarray(d.target)
    grid = tuple([("noise", v) for v in NOISE] + [("prune", p) for p in PRUNE])
    attacks = {
        "DLG, sigmoid LeNet (Zhu et al.)": (SigmoidLeNet(10), InversionSetting(
            attack="dlg", iterations=300, tol=1e-10), seeds_dlg),
        "cosine + TV, 2NN (Geiping et al.)": (MLP(10), InversionSetting(
            attack="cosine", iterations=300), seeds_cosine),
    }
    results = {}
    for label, (model, setting, seeds) in attacks.items():
        t0 = time.time()
        outs = run_trials(model.apply, lambda k, m=model: m.init(k, x[:1]), x, y,
                          jnp.arange(seeds), 1, setting, 10, defence_grid=grid)
        rows = []
        for (name, strength), out in zip(grid, outs):
            m = jax.vmap(image_metrics)(out["x"], out["original"])
            row = {"defence": name, "strength": strength, "seeds": seeds,
                   "label_accuracy": float(np.mean(np.asarray(out["labels"])
                                                   == np.asarray(out["true_labels"])))}
            for key in ("mse", "ssim"):
                v = np.asarray(m[key])[:, 0]
                row[key] = {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                            "q75": float(np.quantile(v, 0.75))}
            rows.append(row)
        results[label] = rows
        print(f"{label}: {len(grid)} defences x {seeds} seeds in {time.time() - t0:.0f} s")
    return results


def epsilon_sweep(trials: int, canaries: int, delta: float, significance: float) -> dict:
    """One-run lower bounds over noise multipliers, ``trials`` independent runs each."""
    from fedbench.audit.epsilon import audit_scores, gaussian_canary_scores, gaussian_epsilon

    rows = []
    for i, sigma in enumerate(SIGMAS):
        theory = gaussian_epsilon(sigma, delta)
        keys = jax.random.split(jax.random.PRNGKey(1000 + i), trials)
        runs = [audit_scores(*gaussian_canary_scores(k, canaries, sigma), delta=delta,
                             significance=significance) for k in keys]
        row = {"noise_multiplier": sigma, "theoretical": theory, "trials": trials}
        for key in ("epsilon_one_run", "epsilon_one_run_fdp", "auroc"):
            v = np.array([r[key] for r in runs])
            row[key] = {"median": float(np.median(v)), "q05": float(np.quantile(v, 0.05)),
                        "q95": float(np.quantile(v, 0.95)), "max": float(v.max())}
        row["share_at_or_below_theory"] = float(np.mean(
            [r["epsilon_one_run"] <= theory for r in runs]))
        rows.append(row)
        print(f"sigma {sigma}: theory {theory:.2f}, one-run median "
              f"{row['epsilon_one_run']['median']:.2f}, f-DP median "
              f"{row['epsilon_one_run_fdp']['median']:.2f}")
    half = canaries // 2  # every canary guessed right: the most m canaries can show
    ceiling = audit_scores(np.full(half, 1.0), np.zeros(canaries - half), delta=delta,
                           significance=significance)["epsilon_one_run"]
    return {"rows": rows, "canaries": canaries, "delta": delta, "significance": significance,
            "ceiling_all_correct": float(ceiling)}


RUN_CFG = ["model=logreg", "partition=iid", "dataset.num_clients=600", "clients_per_round=300",
           "rounds=3", "local_steps=1", "batch_size=4", "privacy=dp_client",
           "privacy.target_epsilon=null"]


def run_sweep(trials: int, canaries: int, significance: float) -> dict:
    """Canary sites through whole DP-FedAvg runs over noise multipliers, ``trials`` runs each."""
    from fedbench.audit.canaries import canary_scores
    from fedbench.audit.epsilon import audit_scores
    from fedbench.suitability import compose  # the config fedbench would run

    rows = []
    for sigma in SIGMAS:
        t0 = time.time()
        cfg = compose(RUN_CFG + [f"privacy.noise_multiplier={sigma}"])
        out = canary_scores(cfg, canaries, list(range(trials)))
        runs = [audit_scores(r["in"], r["out"], out["delta"], significance) for r in out["runs"]]
        row = {"noise_multiplier": sigma, "theoretical": out["claimed_epsilon"], "trials": trials}
        for key in ("epsilon_one_run", "epsilon_one_run_fdp", "auroc"):
            v = np.array([r[key] for r in runs])
            row[key] = {"median": float(np.median(v)), "q05": float(np.quantile(v, 0.05)),
                        "q95": float(np.quantile(v, 0.95)), "max": float(v.max())}
        row["share_at_or_below_theory"] = float(np.mean(
            [r["epsilon_one_run_fdp"] <= out["claimed_epsilon"] for r in runs]))
        rows.append(row)
        print(f"run sigma {sigma}: theory {out['claimed_epsilon']:.2f}, f-DP median "
              f"{row['epsilon_one_run_fdp']['median']:.2f} ({time.time() - t0:.0f} s)")
    return {"rows": rows, "config": RUN_CFG, "canaries": canaries, "delta": out["delta"],
            "significance": significance}


def plot(defences: dict, eps: dict, out: Path, runs: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for label, rows in defences.items():
        for col, name in enumerate(("noise", "prune")):
            mine = [r for r in rows if r["defence"] == name]
            xs = np.array([r["strength"] for r in mine])
            if name == "noise":
                xs = np.where(xs == 0, NOISE[1] / 10, xs)  # "none" drawn a decade left
            for row_i, key in enumerate(("mse", "ssim")):
                ax = axes[row_i, col]
                med = np.array([r[key]["median"] for r in mine])
                lo = np.array([r[key]["q25"] for r in mine])
                hi = np.array([r[key]["q75"] for r in mine])
                ax.errorbar(xs, med, yerr=[med - lo, hi - med], marker="o", capsize=3,
                            label=f"{label}, {mine[0]['seeds']} seeds")
    for row_i, key in enumerate(("mse", "ssim")):
        for col in range(2):
            ax = axes[row_i, col]
            ax.set_ylabel({"mse": "MSE (median, IQR)", "ssim": "SSIM (median, IQR)"}[key])
            if key == "mse":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        axes[row_i, 0].set_xscale("log")
        axes[row_i, 0].set_xticks([NOISE[1] / 10, *NOISE[1:]],
                                  ["none", *[f"{v:g}" for v in NOISE[1:]]])
    axes[1, 0].set_xlabel("Gaussian noise variance on the gradient")
    axes[1, 1].set_xlabel("pruned fraction of each tensor (smallest entries)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Gradient inversion on 8x8 digits (batch 1, untrained model) against "
                 "defence strength", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "defences.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5))
    rows = eps["rows"]
    theory = np.array([r["theoretical"] for r in rows])
    for key, label in (("epsilon_one_run", "one-run bound (Steinke et al.)"),
                       ("epsilon_one_run_fdp", "one-run f-DP bound (Mahloujifar et al.)")):
        med = np.array([r[key]["median"] for r in rows])
        lo = np.array([r[key]["q05"] for r in rows])
        hi = np.array([r[key]["q95"] for r in rows])
        ax.errorbar(theory, med, yerr=[med - lo, hi - med], marker="o", capsize=3, label=label)
    if runs:
        t = np.array([r["theoretical"] for r in runs["rows"]])
        med = np.array([r["epsilon_one_run_fdp"]["median"] for r in runs["rows"]])
        lo = np.array([r["epsilon_one_run_fdp"]["q05"] for r in runs["rows"]])
        hi = np.array([r["epsilon_one_run_fdp"]["q95"] for r in runs["rows"]])
        ax.errorbar(t, med, yerr=[med - lo, hi - med], marker="s", capsize=3,
                    label=f"f-DP bound, {runs['canaries']} canary sites through 3 DP-FedAvg "
                          "rounds (x: accountant)")
        theory = np.concatenate([theory, t])
    ax.plot([0, theory.max()], [0, theory.max()], "k--", lw=1, label="empirical = theoretical")
    ax.axhline(eps["ceiling_all_correct"], color="grey", lw=1, ls=":",
               label=f"most {eps['canaries']} canaries can show (Steinke et al. bound)")
    for r in rows:
        ax.annotate(f"σ={r['noise_multiplier']:g}", (r["theoretical"], 0), fontsize=7,
                    rotation=90, va="bottom", ha="center", color="grey")
    ax.set_xlabel(f"theoretical epsilon (one Gaussian round, or the run; delta={eps['delta']:g})")
    ax.set_ylabel(f"empirical lower bound ({int(100 * (1 - eps['significance']))}% confidence; "
                  "median, 5-95%)")
    ax.set_title(f"One-run audit, {eps['canaries']} client canaries, "
                 f"{rows[0]['trials']} runs per noise multiplier", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "epsilon.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("outputs/audit"))
    parser.add_argument("--out", type=Path, default=Path("results/audit"))
    parser.add_argument("--seeds-dlg", type=int, default=8)
    parser.add_argument("--seeds-cosine", type=int, default=8)
    parser.add_argument("--eps-trials", type=int, default=20)
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--skip-sweeps", action="store_true",
                        help="only collect and render the reports; redraw the figures from "
                             "figures.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    reports = collect(args.runs, args.out)
    if args.skip_sweeps:
        saved = json.loads((args.out / "figures.json").read_text())
        saved["reports"].update(reports)
        plot(saved["defences"], saved["epsilon"], args.out, saved.get("runs"))
        (args.out / "figures.json").write_text(json.dumps(saved, indent=2))
        return
    defences = defence_sweep(args.seeds_dlg, args.seeds_cosine)
    eps = epsilon_sweep(args.eps_trials, args.canaries, delta=1e-5, significance=0.05)
    runs = run_sweep(args.eps_trials, 500, significance=0.05)
    plot(defences, eps, args.out, runs)
    (args.out / "figures.json").write_text(json.dumps(
        {"reports": reports, "defences": defences, "epsilon": eps, "runs": runs}, indent=2))
    print(f"wrote {args.out}/defences.png, epsilon.png, figures.json")


if __name__ == "__main__":
    main()
