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

All numbers go to ``<out>/figures.json``. Every number and table that ``<out>/README.md`` quotes
is rendered from ``figures.json`` and the three ``audit.json`` files by :func:`readme_values`
(fedbench/study_readme.py); ``main`` re-renders the README after writing them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from fedbench.study_readme import fmt, markdown_table

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
    import jax
    import jax.numpy as jnp
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
    import jax

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
        render_readme(args.out)
        return
    defences = defence_sweep(args.seeds_dlg, args.seeds_cosine)
    eps = epsilon_sweep(args.eps_trials, args.canaries, delta=1e-5, significance=0.05)
    runs = run_sweep(args.eps_trials, 500, significance=0.05)
    plot(defences, eps, args.out, runs)
    (args.out / "figures.json").write_text(json.dumps(
        {"reports": reports, "defences": defences, "epsilon": eps, "runs": runs}, indent=2))
    print(f"wrote {args.out}/defences.png, epsilon.png, figures.json")
    render_readme(args.out)


def render_readme(out: Path) -> None:
    """Re-renders ``<out>/README.md`` from the files just written (when it exists)."""
    from fedbench.study_readme import render_file

    if (out / "README.md").exists():
        print(f"{out / 'README.md'}: {'re-rendered' if render_file(out) else 'up to date'}")


# ---------------------------------------------------------------------------------------------
# results/audit/README.md: every number it quotes, from figures.json and the three audit.json.

# Published numbers, compared like with like in the README (label accuracy, in %).
# Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020, Table 1, as given in
# the authors' repository PatrickZH/Improved-Deep-Leakage-from-Gradients, README.md.
IDLG_TABLE1 = {"DLG": {"MNIST": 89.9, "CIFAR-100": 83.3, "LFW": 79.1},
               "iDLG": {"MNIST": 100.0, "CIFAR-100": 100.0, "LFW": 100.0}}
# Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019, Sec. 5 (Fig. 7): pruning more than
# about this share of the gradient's entries makes the recovered images unrecognisable.
ZHU_PRUNE_THRESHOLD = 0.2
# This study's previous commit (162e689, results/audit/dp_client/audit.json): the DP federation's
# final.test_accuracy and epsilon.noise_multiplier before configs gained keys (new noise draws).
PREVIOUS_DP = {"commit": "162e689", "test_accuracy": 0.7823343873023987,
               "noise_multiplier": 2.274507100403635}
MSE_RECOGNISABLE = 1e-2  # the median MSE the README reads as "the digit is no longer exact"


def _sci(x: float) -> str:
    """``1.3e-3``: one decimal, the exponent without padding."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f}%"


def _range(values, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
    lo, hi = min(values) * scale, max(values) * scale
    if f"{lo:.{digits}f}" == f"{hi:.{digits}f}":
        return f"{lo:.{digits}f}{unit}"
    return f"{lo:.{digits}f}-{hi:.{digits}f}{unit}"


def _auc_null_se(members: int, nonmembers: int) -> float:
    """Standard error of an AUC (Mann-Whitney) under no signal (Hanley & McNeil 1982 at 0.5)."""
    return math.sqrt((members + nonmembers + 1) / (12 * members * nonmembers))


def _row(rows: list[dict], defence: str, strength: float) -> dict:
    return next(r for r in rows if r["defence"] == defence and r["strength"] == strength)


def _defence_label(defence: str, strength: float, first: bool) -> str:
    if strength == 0:
        return "none"
    if defence == "noise":
        return f"noise {'variance ' if first else ''}{_sci(strength).replace('1.0e', '1e')}"
    return f"prune {_pct(strength)}"


def _inversion(report: dict, scenario_prefix: str, defence: str) -> dict:
    return next(r for r in report["inversion"]["rows"]
                if r["scenario"].startswith(scenario_prefix) and r["defence"] == defence)


def readme_values(folder: Path) -> dict[str, str]:
    """Every number and table ``folder/README.md`` quotes, from ``folder/figures.json`` and
    ``folder/{nonprivate,dp_client,ditto}/audit.json`` only."""
    folder = Path(folder)
    fig = json.loads((folder / "figures.json").read_text())
    rep = {c: json.loads((folder / c / "audit.json").read_text()) for c in CONFIGS}
    v: dict[str, str] = {}
    npv, dp, ditto = rep["nonprivate"], rep["dp_client"], rep["ditto"]

    loaded = {e.get("images_loaded") for e in fig["reports"].values()}
    v["images_loaded"] = (f"{loaded.pop()} in each" if len(loaded) == 1 else
                          ", ".join(f"{c}: {e.get('images_loaded')}"
                                    for c, e in fig["reports"].items()))
    members = npv["membership"]["loss_threshold"]["members"]
    nonmembers = npv["membership"]["loss_threshold"]["nonmembers"]
    sites = npv["config"]["dataset"]["num_clients"]
    v["train_total"] = f"{members:,}"
    v["train_per_site"] = fmt(members / sites, 1)
    v["test_total"] = f"{nonmembers:,}"
    v["noise_multiplier"] = fmt(dp["epsilon"]["noise_multiplier"], 2)

    # The table of the three reports.
    def cells(fn):
        return [fn(rep[c]) for c in CONFIGS]

    def mia(r, kind, tpr=False):
        m = r["membership"][kind]
        return fmt(m["auc"]) + (f" / {fmt(m['tpr_at_1%_fpr'])}" if tpr else "")

    same_global = ditto["membership"] == npv["membership"]

    def accuracy(r):
        f = r["final"]
        if r["config"]["algorithm"]["name"] == "ditto":
            glob = "global model as FedAvg" if same_global else "global model not reported"
            return (f"{glob}; personal models {fmt(f['test_accuracy'])} pooled, "
                    f"{fmt(f['client_accuracy_mean'])} on their own site's test split "
                    f"(train accuracy {fmt(f['train_accuracy'])})")
        return fmt(f["test_accuracy"])

    def personal(r, key):
        if "personal" not in r:
            return ""
        p = r["personal"]
        return " / ".join(fmt(p[k][key]) for k in ("loss_threshold", "lira_offline"))

    def site_cell(r, key):
        if "sites" in r:
            return " / ".join(fmt(r["sites"][k][key]) for k in ("lira_online", "lira_offline"))
        if key != "auc":
            return ""
        return ("not measurable (see below)" if r["config"]["privacy"]["name"] != "none"
                else "not run")

    def claimed(r):
        e = r["epsilon"]["claimed"]
        return "infinite" if math.isinf(e) else f"{fmt(e, 2)} ({r['config']['rounds']} rounds)"

    def one_round(r):
        o = r["epsilon"].get("one_round")
        return "" if o is None else (f"{fmt(o['theoretical'], 2)} / {fmt(o['epsilon_one_run'], 2)}"
                                     f" ({fmt(o['epsilon_one_run_fdp'], 2)})")

    def whole_run(r):
        w = r["epsilon"].get("whole_run")
        return "" if w is None else (
            f"{fmt(w['theoretical'], 2)} / {fmt(w['epsilon_one_run'], 2)} "
            f"({fmt(w['epsilon_one_run_fdp'], 2)}) / {fmt(w['ceiling_fdp'], 2)}; "
            f"canary AUROC {fmt(w['auroc'])}")

    def attack(r, prefix):
        row = _inversion(r, prefix, "as sent")
        return f"{fmt(row['ssim'])} / {fmt(row['mse'])}"

    pers = ditto["personal"]["loss_threshold"]
    site = npv["sites"]
    w = dp["epsilon"]["whole_run"]
    trials = npv["audit"]["trials"]
    rows = [
        ["final test accuracy (pooled test set)", *cells(accuracy)],
        [f"cosine attack on site {npv['audit']['client']}'s first update, one gradient step "
         f"(median SSIM / MSE, {trials} images)", *cells(lambda r: attack(r, "one gradient"))],
        [f"same, {npv['audit']['local_steps']} local steps (FedAvg delta)",
         *cells(lambda r: attack(r, f"{r['audit']['local_steps']} local steps"))],
        ["labels recovered (iDLG, from the last layer)",
         *cells(lambda r: _pct(min(x["label_accuracy"] for x in r["inversion"]["rows"])))],
        ["membership of an image, global model: loss threshold AUC",
         *cells(lambda r: mia(r, "loss_threshold"))],
        [f"same, offline LiRA ({npv['membership']['shadows']} shadows) AUC / TPR at 1% FPR",
         *cells(lambda r: mia(r, "lira_offline", True))],
        [f"same, online LiRA ({npv['membership']['shadows']} shadows, "
         f"{npv['membership']['shadows'] // 2} IN and {npv['membership']['shadows'] // 2} OUT "
         "per image) AUC / TPR at 1% FPR", *cells(lambda r: mia(r, "lira_online", True))],
        ["membership of an image in its **site's personalised model**: loss threshold / "
         f"offline LiRA AUC ({pers['members']:,} members, {pers['nonmembers']:,} non-members)",
         *cells(lambda r: personal(r, "auc"))],
        ["same, TPR at 1% FPR (loss / LiRA)", *cells(lambda r: personal(r, "tpr_at_1%_fpr"))],
        [f"membership of a **site**, LiRA online / offline AUC ({site['shadows']} shadow "
         f"federations, {site['decisions']:,} decisions)", *cells(lambda r: site_cell(r, "auc"))],
        ["site LiRA TPR at 1% FPR online / offline",
         *cells(lambda r: site_cell(r, "tpr_at_1%_fpr"))],
        ["epsilon claimed", *cells(claimed)],
        ["check of the noise code (one white-box round at sigma "
         f"{fmt(dp['epsilon']['noise_multiplier'], 2)}, not an audit of the run): that round's "
         "epsilon / one-run lower bound (f-DP bound)", *cells(one_round)],
        [f"**canary sites through the whole run** ({w['canary_sites']} of the "
         f"{dp['config']['dataset']['num_clients']} sites, {w['runs']} runs, {w['canaries']} "
         f"canaries): theoretical / one-run bound (f-DP bound) / most {w['canaries']} canaries "
         "can show", *cells(whole_run)],
    ]
    v["reports_table"] = markdown_table(
        ["", "non-private (FedAvg)",
         f"client-level DP, epsilon {fmt(dp['epsilon']['claimed'], 0)}",
         "Ditto (personalised, non-private)"], rows, align="llll")

    # Client-level DP and the server's view of one update.
    inv = {c: [(r["ssim"], r["mse"]) for r in rep[c]["inversion"]["rows"]] for c in CONFIGS}
    sent = _inversion(dp, "one gradient", "as sent")
    v["inversion_dp_vs_nonprivate"] = (
        "identical in the two runs" if inv["dp_client"] == inv["nonprivate"] else
        f"not identical in the two runs (median SSIM {fmt(sent['ssim'])} under DP, "
        f"{fmt(_inversion(npv, 'one gradient', 'as sent')['ssim'])} without)")
    same_sent = all(
        (_inversion(dp, s, "as sent")["ssim"], _inversion(dp, s, "as sent")["mse"])
        == (_inversion(dp, s, "as computed")["ssim"], _inversion(dp, s, "as computed")["mse"])
        for s in ("one gradient", f"{dp['audit']['local_steps']} local steps"))
    v["sent_vs_computed"] = ('"as sent" equals "as computed" to the last digit' if same_sent else
                             '"as sent" still differs from "as computed"')
    cosine = fig["defences"]["cosine + TV, 2NN (Geiping et al.)"]
    dlg = fig["defences"]["DLG, sigmoid LeNet (Zhu et al.)"]
    report_ssim, figure_ssim = sent["ssim"], _row(cosine, "noise", 0.0)["ssim"]["median"]
    v["report_ssim"] = fmt(report_ssim, 2)
    v["figure_ssim"] = fmt(figure_ssim, 2)
    v["report_vs_figure"] = "worse than" if report_ssim < figure_ssim else "no worse than"

    # Image-level membership against the global model (non-private, then DP).
    pair = [npv["membership"], dp["membership"]]
    aucs = [m[k]["auc"] for m in pair for k in ("lira_online", "lira_offline", "loss_threshold")]
    v["mia_range"] = _range(aucs)
    for name, key in (("mia_online", "lira_online"), ("mia_offline", "lira_offline"),
                      ("mia_loss", "loss_threshold")):
        v[name] = " / ".join(fmt(m[key]["auc"]) for m in pair)
    se = _auc_null_se(members, nonmembers)
    v["mia_null_se"] = fmt(se)
    v["mia_verdict"] = ("at chance in both runs" if all(abs(a - 0.5) < 1.96 * se for a in aucs)
                        else "barely above chance")
    far = sum(abs(a - 0.5) >= 1.96 * se for a in aucs)
    v["mia_within"] = ("every AUC is within 1.96 standard errors of 0.5" if far == 0 else
                       f"{far} of {len(aucs)} AUCs are more than 1.96 standard errors from 0.5")
    c = npv["config"]
    v["passes"] = fmt(c["rounds"] * c["clients_per_round"] / c["num_clients"]
                      * c["local_epochs"], 0)
    v["nonprivate_test_accuracy"] = fmt(npv["final"]["test_accuracy"], 2)

    # Site-level membership.
    on = site["lira_online"]
    v["site_auc"] = fmt(on["auc"], 2)
    v["site_tpr"] = _pct(on["tpr_at_1%_fpr"])
    v["site_members"] = f"{on['members']:,}"
    v["site_nonmembers"] = f"{on['nonmembers']:,}"
    v["site_fp_at_0.1"] = fmt(0.001 * on["nonmembers"], 1)

    # The whole-run canary audit and the one-round check.
    o = dp["epsilon"]["one_round"]
    v["canary_sites"] = str(w["canary_sites"])
    v["canary_auroc"] = fmt(w["auroc"])
    v["canary_fdp"] = fmt(w["epsilon_one_run_fdp"], 2)
    v["claimed_epsilon"] = fmt(w["theoretical"], 2)
    v["canary_count"] = str(w["canaries"])
    v["canary_ceiling"] = fmt(w["ceiling_fdp"], 2)
    v["ceiling_vs_claim"] = (
        f"so a claim of {fmt(w['theoretical'], 2)} cannot be tested to its value this way"
        if w["ceiling_fdp"] < w["theoretical"] else
        f"so a claim of {fmt(w['theoretical'], 2)} is within what this many canaries can test")
    v["round_fdp"] = fmt(o["epsilon_one_run_fdp"], 2)
    v["round_theory"] = fmt(o["theoretical"], 2)

    # Personalised models.
    v["ditto_train_accuracy"] = fmt(ditto["final"]["train_accuracy"])
    v["personal_loss_auc"] = fmt(pers["auc"], 2)
    v["personal_lira_auc"] = fmt(ditto["personal"]["lira_offline"]["auc"], 2)
    v["reference_models"] = str(ditto["personal"]["reference_models"])
    v["ditto_global_vs_fedavg"] = (
        "as private as FedAvg's (the same numbers: Ditto's global update is FedAvg's)"
        if same_global else "not identical to FedAvg's in these numbers")

    # The DP federation against this study's previous commit.
    acc, prev = dp["final"]["test_accuracy"], PREVIOUS_DP["test_accuracy"]
    v["dp_test_accuracy"] = fmt(acc)
    v["previous_dp_test_accuracy"] = fmt(prev)
    v["previous_commit"] = PREVIOUS_DP["commit"]
    v["dp_vs_previous"] = "differs from" if fmt(acc) != fmt(prev) else "equals"
    v["noise_multiplier_vs_previous"] = (
        "the epsilon and noise multiplier are unchanged"
        if math.isclose(dp["epsilon"]["noise_multiplier"], PREVIOUS_DP["noise_multiplier"])
        else "the noise multiplier changed too "
             f"({fmt(PREVIOUS_DP['noise_multiplier'], 2)} then)")

    # Figure 1.
    table = []
    for i, (defence, strength) in enumerate([("noise", x) for x in NOISE] +
                                            [("prune", x) for x in PRUNE if x > 0]):
        d, cr = _row(dlg, defence, strength), _row(cosine, defence, strength)
        table.append([_defence_label(defence, strength, i == 1), _sci(d["mse"]["median"]),
                      fmt(d["ssim"]["median"]), _sci(cr["mse"]["median"]),
                      fmt(cr["ssim"]["median"])])
    v["defences_table"] = markdown_table(
        ["defence", "DLG median MSE", "DLG median SSIM", "cosine median MSE",
         "cosine median SSIM"], table, align="lllll")
    all_rows = dlg + cosine
    v["labels_every_trial"] = (
        "Labels were recovered in every trial of every row." if all(
            r["label_accuracy"] == 1.0 for r in all_rows) else
        f"Labels were recovered in {_pct(np.mean([r['label_accuracy'] for r in all_rows]), 1)} "
        "of the trials (mean over rows).")

    # Figure 2: canary sites through whole runs, then the one-round audit.
    runs = fig["runs"]["rows"]
    v["runs_table"] = markdown_table(
        ["noise multiplier", "accountant's epsilon (3 rounds)", "one-run bound, median",
         "f-DP bound, median (95th pct.)", "canary AUROC", "runs with f-DP bound <= theory"],
        [[f"{r['noise_multiplier']:g}" if r["noise_multiplier"] % 1 else
          f"{r['noise_multiplier']:.1f}", fmt(r["theoretical"], 2),
          fmt(r["epsilon_one_run"]["median"], 2),
          f"{fmt(r['epsilon_one_run_fdp']['median'], 2)} "
          f"({fmt(r['epsilon_one_run_fdp']['q95'], 2)})",
          fmt(r["auroc"]["median"], 2),
          f"{round(r['share_at_or_below_theory'] * r['trials'])} of {r['trials']}"]
         for r in runs], align="llllll")
    eps = fig["epsilon"]["rows"]
    v["round_table"] = markdown_table(
        ["noise multiplier", "theoretical epsilon", "one-run bound, median (5-95%)",
         "f-DP bound, median", "canary AUROC", "runs with bound <= theory"],
        [[f"{r['noise_multiplier']:g}" if r["noise_multiplier"] % 1 else
          f"{r['noise_multiplier']:.1f}", fmt(r["theoretical"], 2),
          f"{fmt(r['epsilon_one_run']['median'], 2)} ({fmt(r['epsilon_one_run']['q05'], 2)}-"
          f"{fmt(r['epsilon_one_run']['q95'], 2)})", fmt(r["epsilon_one_run_fdp"]["median"], 2),
          fmt(r["auroc"]["median"], 2),
          f"{round(r['share_at_or_below_theory'] * r['trials'])} of {r['trials']}"]
         for r in eps], align="llllll")
    share_run = {r["noise_multiplier"]: r["epsilon_one_run_fdp"]["median"] / r["theoretical"]
                 for r in runs}
    share_round = {r["noise_multiplier"]: r["epsilon_one_run_fdp"]["median"] / r["theoretical"]
                   for r in eps}
    looser = sum(share_run[s] < share_round[s] for s in share_run)
    v["run_vs_round"] = (
        f"{'looser' if looser == len(share_run) else 'not uniformly looser'} than for one "
        f"idealised round (median f-DP bound as a share of the theoretical epsilon: "
        f"{_range(share_run.values(), 0, 100, '%')} through the run, "
        f"{_range(share_round.values(), 0, 100, '%')} for one round; smaller through the run at "
        f"{looser} of {len(share_run)} noise multipliers)")
    v["round_ceiling"] = fmt(fig["epsilon"]["ceiling_all_correct"], 2)
    tighter = sum(r["epsilon_one_run_fdp"]["median"] > r["epsilon_one_run"]["median"] for r in eps)
    v["fdp_tighter"] = ("is tighter at every noise level, as that paper claims"
                        if tighter == len(eps) else
                        f"is tighter at {tighter} of {len(eps)} noise levels (that paper claims "
                        "every one)")
    above = sum(r[k]["max"] > r["theoretical"] for r in eps
                for k in ("epsilon_one_run", "epsilon_one_run_fdp"))
    n_runs = sum(r["trials"] for r in eps)
    v["sound"] = (f"never above the truth in {n_runs} runs" if above == 0 else
                  f"above the truth in some of {n_runs} runs")
    share = {r["noise_multiplier"]: r["epsilon_one_run"]["median"] / r["theoretical"] for r in eps}
    low = [x for s, x in share.items() if s <= 2]
    v["loose_range"] = _range(low, 0, 100, "%")
    v["loose_at_3"] = _pct(share[3.0])

    # Published numbers beside ours.
    for name, strength in (("dlg_ssim_noise_1e-4", 1e-4), ("dlg_ssim_noise_1e-3", 1e-3),
                           ("dlg_ssim_noise_1e-2", 1e-2)):
        v[name] = fmt(_row(dlg, "noise", strength)["ssim"]["median"], 2)
    v["zhu_prune_threshold"] = _pct(ZHU_PRUNE_THRESHOLD)
    p30 = _row(dlg, "prune", 0.3)
    v["dlg_mse_prune_30"] = _sci(p30["mse"]["median"])
    v["dlg_ssim_prune_30"] = fmt(p30["ssim"]["median"])
    passes = next(r for r in sorted((r for r in dlg if r["defence"] == "prune"),
                                    key=lambda r: r["strength"])
                  if r["mse"]["median"] > MSE_RECOGNISABLE)
    v["dlg_prune_passes"] = _pct(passes["strength"])
    v["dlg_mse_at_passes"] = _sci(passes["mse"]["median"])
    v["dlg_ssim_at_passes"] = fmt(passes["ssim"]["median"], 2)
    v["dlg_ssim_prune_90"] = fmt(_row(dlg, "prune", 0.9)["ssim"]["median"], 2)
    for attack_name, numbers in IDLG_TABLE1.items():
        for data, x in numbers.items():
            v[f"idlg_table1_{attack_name}_{data}"] = f"{x:g}%"
    ours = [r["label_accuracy"] for r in all_rows] + [
        x["label_accuracy"] for r in rep.values() for x in r["inversion"]["rows"]]
    v["ours_label_accuracy"] = (
        "100% in every trial" if min(ours) == 1.0 else f"{_pct(min(ours), 1)} in the worst row")
    v["cosine_ssim_none"] = fmt(figure_ssim)
    v["cosine_ssim_pruned_min"] = fmt(min(r["ssim"]["median"] for r in cosine
                                          if r["defence"] == "prune" and r["strength"] > 0))
    v["cosine_ssim_noise_1e-2"] = fmt(_row(cosine, "noise", 1e-2)["ssim"]["median"], 2)
    return v


if __name__ == "__main__":
    main()
