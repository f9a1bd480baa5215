"""``audit.json``, ``audit.md`` and a self-contained ``audit.html`` (images as base64 PNG).

The verdict is written for clinical staff: what an observer of one site's updates could
reconstruct, whether the trained model gives away who was in the training data, and which
setting stopped the attacks in this audit. Thresholds: a reconstruction with SSIM >= 0.6 is
called recognisable, <= 0.3 not; a membership attack with AUC <= 0.55 and TPR at 1% FPR <= 2%
is called no better than guessing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

RECOGNISABLE, UNRECOGNISABLE = 0.6, 0.3


def image_grid_png(rows: list[dict[str, Any]], scenario: str) -> bytes:
    """A PNG: the originals, then each defence's reconstructions, one column per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["scenario"] == scenario]
    originals = mine[0]["images"][1]
    lines = [("original", originals)] + [(r["defence"], r["images"][0]) for r in mine]
    trials = len(originals)
    fig, axes = plt.subplots(len(lines), trials, figsize=(1.3 * trials + 1.2, 1.3 * len(lines)),
                             squeeze=False)
    for i, (label, images) in enumerate(lines):
        for j in range(trials):
            ax = axes[i, j]
            ax.imshow(np.squeeze(images[j]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(scenario, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def verdict(result: dict[str, Any]) -> list[str]:
    """A few plain sentences on what the audit found."""
    inv = result["inversion"]
    sent = [r for r in inv["rows"] if r["defence"] == "as sent"]
    worst = max(sent, key=lambda r: r["ssim"])
    out = []
    if worst["ssim"] >= RECOGNISABLE:
        out.append(
            f"Someone who sees this hospital's model updates (for example the coordinating "
            f"server) can rebuild recognisable copies of individual training images from a "
            f"single update ({worst['scenario']}: similarity {worst['ssim']:.2f} on a 0-1 scale, "
            f"1 = identical), and read off the image's label in "
            f"{100 * worst['label_accuracy']:.0f}% of attempts.")
    else:
        out.append(
            f"In this audit an observer of this hospital's updates did not rebuild recognisable "
            f"images (best similarity {worst['ssim']:.2f} on a 0-1 scale); this is evidence, not "
            f"proof, that the updates are safe from such attacks.")
    stopped = sorted({r["defence"] for r in inv["rows"] if r["defence"] not in
                      ("as sent", "as computed")} - {r["defence"] for r in inv["rows"]
                                                     if r["ssim"] > UNRECOGNISABLE})
    if stopped and worst["ssim"] >= RECOGNISABLE:
        out.append("These settings stopped the reconstruction in this audit: "
                   + ", ".join(stopped) + " (see the table).")
    if inv["sent"]["clip"] is not None:
        out.append("Client-level differential privacy adds its noise to the sum of all "
                   "hospitals' updates, so the coordinating server still sees each hospital's "
                   "update without noise: it protects the published model, not the update.")
    mem = result.get("membership")
    if mem:
        lira = max((mem[k] for k in ("lira_offline", "lira_online") if k in mem),
                   key=lambda m: m["auc"])
        if lira["auc"] <= 0.55 and lira["tpr_at_1%_fpr"] <= 0.02:
            out.append(f"The trained model does not reveal who was in the training data better "
                       f"than guessing (attack score {lira['auc']:.2f}; 0.5 = guessing).")
        else:
            out.append(f"The trained model does reveal something about who was in its training "
                       f"data: the strongest attack scores {lira['auc']:.2f} (0.5 = guessing, "
                       f"1 = always right) and identifies {100 * lira['tpr_at_1%_fpr']:.1f}% of "
                       f"patients in the training data while wrongly accusing 1% of the others.")
    own = result.get("personal")
    if own:
        best = max((own[k] for k in ("loss_threshold", "lira_offline")), key=lambda m: m["auc"])
        out.append(f"Each hospital's own (personalised) model "
                   + ("does not reveal which of its patients it was trained on better than "
                      f"guessing (attack score {best['auc']:.2f})." if best["auc"] <= 0.55 else
                      f"reveals which of its patients it was trained on: attack score "
                      f"{best['auc']:.2f} (0.5 = guessing); share such a model as you would "
                      f"the patients' data."))
    sites = result.get("sites")
    if sites and "skipped" not in sites:
        best = max(sites["lira_online"]["auc"], sites["lira_offline"]["auc"])
        out.append(f"Whether a given hospital took part at all can be guessed from the trained "
                   f"model with an attack score of {best:.2f} (0.5 = guessing), for an observer "
                   f"who holds data like that hospital's.")
    eps = result["epsilon"]
    if eps.get("claimed") in (None, math.inf):
        out.append("No formal privacy guarantee is configured (epsilon is infinite).")
    else:
        run = eps.get("whole_run") or {}
        bound = run.get("epsilon_one_run_fdp", eps.get("one_round", {}).get("epsilon_one_run"))
        what = ("planting test records (canary hospitals) in whole training runs"
                if "epsilon_one_run_fdp" in run else "one training round")
        if bound is None:
            tail = "."
        elif bound <= eps["claimed"]:
            ceiling = run.get("ceiling_fdp")
            tail = (f"; an audit by {what} showed at least {bound:.2f}, consistent with the "
                    f"claim (an audit can only show a lower bound"
                    + (f"; with these {run['canaries']} test records it could show at most "
                       f"{ceiling:.2f}" if ceiling is not None else "") + ").")
        else:
            tail = (f"; an audit by {what} showed at least {bound:.2f}, MORE than claimed: "
                    f"the claim does not hold and the setup must be checked before use.")
        out.append(f"The configured privacy guarantee is epsilon = {eps['claimed']:.2f} "
                   f"(smaller is more private)" + tail)
        if eps.get("noise_note"):  # whether the noise can be regenerated from the run's files
            out.append(eps["noise_note"][0].upper() + eps["noise_note"][1:] + ".")
    return out


def _table(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[r["scenario"], r["defence"], f"{r['mse']:.2e}", f"{r['psnr']:.1f}",
             f"{r['ssim']:.3f}", f"{r['label_accuracy']:.2f}"] for r in rows]


HEAD = ["observed update", "defence", "MSE", "PSNR (dB)", "SSIM", "label acc."]


def _markdown(result: dict[str, Any], figures: dict[str, str]) -> str:
    cfg = result["config"]
    lines = ["# Privacy audit", "", "## Verdict", ""] + [" ".join(verdict(result)), "",
             "## Federation audited", "",
             f"dataset `{cfg['dataset']['name']}`, model `{cfg['model']['name']}`, algorithm "
             f"`{cfg['algorithm']['name']}`, privacy `{(cfg.get('privacy') or {}).get('name')}`, "
             f"compression `{result['inversion']['sent']['compression']}`, {cfg['num_clients']} "
             f"clients, {cfg['rounds']} rounds, seed {cfg['seed']}; final test accuracy "
             f"{result['final'].get('test_accuracy', float('nan')):.4f}.", "",
             f"## Gradient inversion (site {result['inversion']['client']})", "",
             "Medians over trials; SSIM 1 = identical image.", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in _table(result["inversion"]["rows"])]
    lines += [""] + [f"![{name}]({path})" for name, path in figures.items()] + [""]
    if result.get("membership"):
        lines += ["## Membership inference (global model)", "",
                  "| attack | AUC | TPR at 0.1% FPR | TPR at 1% FPR | members | non-members |",
                  "|---|---|---|---|---|---|"]
        for name in ("loss_threshold", "lira_offline", "lira_online"):
            m = result["membership"].get(name)
            if m is None:
                continue
            lines.append(f"| {name} | {m['auc']:.3f} | {m['tpr_at_0.1%_fpr']:.3f} | "
                         f"{m['tpr_at_1%_fpr']:.3f} | {m['members']} | {m['nonmembers']} |")
        lines.append("")
    own = result.get("personal")
    if own:
        lines += ["## Membership inference (each site's personalised model)", "",
                  f"Members: each site's training examples, non-members its test examples, both "
                  f"scored by the site's own model; LiRA's OUT models are the other "
                  f"{own['reference_models']} sites' models.", "",
                  "| attack | AUC | TPR at 0.1% FPR | TPR at 1% FPR | members | non-members |",
                  "|---|---|---|---|---|---|"]
        for name in ("loss_threshold", "lira_offline"):
            m = own[name]
            lines.append(f"| {name} | {m['auc']:.3f} | {m['tpr_at_0.1%_fpr']:.3f} | "
                         f"{m['tpr_at_1%_fpr']:.3f} | {m['members']} | {m['nonmembers']} |")
        lines.append("")
    sites = result.get("sites")
    if sites and "skipped" in sites:
        lines += ["## Site membership", "", f"Not measured: {sites['skipped']}.", ""]
    elif sites:
        lines += ["## Site membership (was this hospital in the federation?)", "",
                  f"LiRA over {sites['shadows']} shadow federations (each site in half of them; "
                  f"each in turn the target): {sites['decisions']} decisions over "
                  f"{sites['sites']} sites.", "",
                  "| attack | AUC | TPR at 0.1% FPR | TPR at 1% FPR | members | non-members |",
                  "|---|---|---|---|---|---|"]
        for name in ("lira_online", "lira_offline"):
            m = sites[name]
            lines.append(f"| {name} | {m['auc']:.3f} | {m['tpr_at_0.1%_fpr']:.3f} | "
                         f"{m['tpr_at_1%_fpr']:.3f} | {m['members']} | {m['nonmembers']} |")
        lines.append("")
    lines += _epsilon_lines(result["epsilon"])
    return "\n".join(lines)


def _epsilon_lines(eps: dict[str, Any]) -> list[str]:
    """Theoretical epsilon beside each empirical lower bound, then everything as JSON."""
    lines = ["## Epsilon", ""]
    audits = [("one white-box round (Gaussian mechanism)", eps.get("one_round")),
              (f"{(eps.get('whole_run') or {}).get('kind', 'gradient')} canary sites through "
               "whole runs", eps.get("whole_run"))]
    audits = [(n, a) for n, a in audits if a and "skipped" not in a]
    if audits:
        lines += ["| audit | theoretical epsilon | lower bound | f-DP lower bound | canaries | "
                  "most they can show (f-DP) | canary AUROC |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {n} | {a['theoretical']:.2f} | {a['epsilon_one_run']:.2f} | "
                  f"{a['epsilon_one_run_fdp']:.2f} | {a['canaries']} | "
                  f"{a.get('ceiling_fdp', float('nan')):.2f} | {a['auroc']:.3f} |"
                  for n, a in audits]
        lines.append("")
    return lines + ["```", json.dumps(eps, indent=2), "```", ""]


def _html(markdown_text: str, images: dict[str, bytes]) -> str:
    """The report as HTML: the markdown's sections, tables and images (base64, embedded)."""
    body = []
    for block in markdown_text.split("\n\n"):
        block = block.strip()
        if block.startswith("# ") or block.startswith("## "):
            level = 1 if block.startswith("# ") else 2
            body.append(f"<h{level}>{html.escape(block.lstrip('# '))}</h{level}>")
        elif block.startswith("|"):
            rows = [r.strip("|").split("|") for r in block.splitlines() if not r.startswith("|-")]
            cells = ["<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}"
                                      f"</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                     for i, row in enumerate(rows)]
            body.append("<table>" + "".join(cells) + "</table>")
        elif block.startswith("!["):
            for line in block.splitlines():
                name = line[2:line.index("]")]
                data = base64.b64encode(images[name]).decode()
                body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif block.startswith("```"):
            body.append(f"<pre>{html.escape(block.strip('`'))}</pre>")
        elif block:
            body.append(f"<p>{html.escape(block)}</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #aaa;padding:2px 6px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_reports(result: dict[str, Any], out_dir: Path) -> None:
    """Writes ``audit.json`` (no images), ``audit.md`` (+ PNGs) and ``audit.html``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scenarios = list(dict.fromkeys(r["scenario"] for r in result["inversion"]["rows"]))
    images, figures = {}, {}
    for i, scenario in enumerate(scenarios):
        name = f"reconstructions_{i}.png"
        images[scenario] = image_grid_png(result["inversion"]["rows"], scenario)
        (out_dir / name).write_bytes(images[scenario])
        figures[scenario] = name
    text = _markdown(result, figures)
    (out_dir / "audit.md").write_text(text)
    (out_dir / "audit.html").write_text(_html(text, images))
    plain = {**result, "verdict": verdict(result), "inversion": {
        **result["inversion"],
        "rows": [{k: v for k, v in r.items() if k != "images"} for r in result["inversion"]["rows"]]}}
    (out_dir / "audit.json").write_text(json.dumps(plain, indent=2, default=float))
