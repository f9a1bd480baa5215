"""``audit.json``, ``audit.md`` and a self-contained ``audit.html`` (images as base64 PNG).

The verdict is written for clinical staff: what an observer of one site's updates could
reconstruct, whether the trained model gives away who was in the training data, and which
setting stopped the attacks in this audit. Thresholds: a reconstruction with SSIM >= 0.6 is
called recognisable, <= 0.3 not; a membership attack with AUC <= 0.55 and TPR at 1% FPR <= 2%
is called no better than guessing.

A model whose training diverged (:func:`divergence`: the run's status ``diverged``, or a
non-finite loss or accuracy) gets no verdict on membership (global, personal, site) or on the
audited epsilon bound: attack scores against a broken model say nothing about a working one.
The report says so, why, and what to change (:func:`remedies`); ``audit.json`` records it in
``verdicts_withheld``. The reconstruction verdict stays: it attacks a site's first update at a
freshly initialised model, which training does not touch.

Under differential privacy every verdict states the guarantee it is read against: epsilon,
delta, the protected unit (one hospital under ``dp_client``, one record of one hospital under
``dp_sample``), the neighbouring relation the accountant used (add/remove-one or replace-one),
and which outputs epsilon covers and which it does not (:func:`terms`, :func:`guarantee`).
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
#: ``final`` metrics of a run that must be finite for its model to be audited.
MODEL_HEALTH = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_cindex")
#: The verdicts withheld for a diverged model.
MODEL_VERDICTS = ("membership", "personal", "sites", "epsilon bound")
#: The protected unit in the report's words, by the ``unit`` of ``summary.json``'s privacy block.
UNIT_WORDS = {"client": "one hospital (a client: all of its records together)",
              "example": "one record of one hospital (one training example of one client)"}
#: dp-accounting's neighbouring relations (``neighboring_relation``) in the report's words.
RELATION_SHORT = {"add_or_remove_one": "add/remove-one", "replace_one": "replace-one"}
RELATION_WORDS = {
    ("add_or_remove_one", "client"): "add/remove-one (adding or removing one hospital's data)",
    ("replace_one", "client"): "replace-one (replacing one hospital's data by another's)",
    ("add_or_remove_one", "example"): "add/remove-one (adding or removing one record)",
    ("replace_one", "example"): "replace-one (replacing one record by another)",
}


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


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False  # JSON null (a non-finite number as the run wrote it), or not a number


def divergence(result: dict[str, Any]) -> str | None:
    """Why the audited model diverged (None: it did not): the run's ``status`` is
    ``diverged``, or a :data:`MODEL_HEALTH` metric of its ``final`` evaluation is non-finite."""
    reasons = []
    if result.get("status") == "diverged":
        reasons.append('the run stopped with status "diverged"')
    final = result.get("final") or {}
    bad = [f"{k} {final[k]}" for k in MODEL_HEALTH if k in final and not _finite(final[k])]
    if bad:
        reasons.append("non-finite " + ", ".join(bad))
    return "; ".join(reasons) or None


def remedies(config: dict[str, Any]) -> list[str]:
    """What to change in the federation's ``config`` for its training to converge."""
    out = []
    lr = config.get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        out.append(f"a lower learning rate (lr={lr:g}; try lr={lr / 10:g}; or a lower "
                   "algorithm.server_lr)")
    privacy = config.get("privacy") or {}
    name = privacy.get("name", "none")
    if name != "none":
        out.append(
            f"less noise under privacy={name}: a larger privacy.target_epsilon or a smaller "
            "privacy.noise_multiplier")
        out.append(
            f"a clip bound nearer the update norms (privacy.clip={privacy.get('clip')}; the "
            "noise std is noise_multiplier * clip, so a clip far above the norms adds noise "
            "and no signal, and a clip far below them discards signal; "
            "privacy.adaptive_clip.enabled=true tracks them)" if name == "dp_client" else
            f"a clip bound nearer the per-example gradient norms (privacy.clip="
            f"{privacy.get('clip')})")
    if name == "dp_client":
        out.append("more clients per round (the noise on the mean shrinks as the cohort grows; "
                   f"clients_per_round={config.get('clients_per_round')})")
    epochs = config.get("local_epochs")
    out.append(f"fewer local epochs (local_epochs={epochs})" if isinstance(epochs, int)
               and epochs > 1 else "fewer local steps (local_steps below one epoch)")
    return out


def withheld(result: dict[str, Any]) -> dict[str, Any] | None:
    """``audit.json``'s ``verdicts_withheld``: which verdicts were withheld, why, and what to
    change; None when the model is audited."""
    reason = divergence(result)
    if reason is None:
        return None
    return {"reason": f"training diverged: {reason}", "withheld": list(MODEL_VERDICTS),
            "kept": ["inversion (a site's first update at a freshly initialised model)",
                     "the configured epsilon (a property of the mechanism)"],
            "what_to_change": remedies(result.get("config") or {})}


def _dp(eps: dict[str, Any]) -> bool:
    return eps.get("claimed") not in (None, math.inf)


def _unit(eps: dict[str, Any]) -> str:
    """``client`` or ``example``: the report's ``unit`` (absent before any round was run),
    else read from ``protected_unit``."""
    return eps.get("unit") or ("example" if "example" in (eps.get("protected_unit") or "")
                               else "client")


def terms(eps: dict[str, Any]) -> str:
    """The guarantee a verdict is read against, in a few words (``epsilon 8.00, delta 1e-05,
    protecting one hospital, add/remove-one``), or that there is none."""
    if not _dp(eps):
        return "no differential privacy: epsilon is infinite"
    unit = _unit(eps)
    who = "one hospital" if unit == "client" else "one record of one hospital"
    how = RELATION_SHORT.get(eps.get("neighboring_relation"), "neighbouring relation not recorded")
    return (f"epsilon {eps['claimed']:.2f}, delta {eps.get('delta', float('nan')):.3g}, "
            f"protecting {who}, {how}")


def guarantee(eps: dict[str, Any]) -> str:
    """The configured guarantee in full: epsilon, delta, the protected unit, the neighbouring
    relation the accountant used, what epsilon covers and which outputs it does not."""
    if not _dp(eps):
        return "No formal privacy guarantee is configured (epsilon is infinite)."
    unit = _unit(eps)
    relation = eps.get("neighboring_relation")
    how = (f"under the {RELATION_WORDS.get((relation, unit), relation)} neighbouring relation "
           "the accountant used" if relation else "(the neighbouring relation was not recorded)")
    out = (f"The configured privacy guarantee is epsilon = {eps['claimed']:.2f} at delta = "
           f"{eps.get('delta', float('nan')):.3g} (smaller is more private), protecting "
           f"{UNIT_WORDS.get(unit, unit)}, {how}")
    if eps.get("covers"):
        out += f"; epsilon covers {eps['covers']}"
    if eps.get("non_private_outputs"):
        out += ("; it does not cover these outputs of the run: "
                + ", ".join(eps["non_private_outputs"]))
    return out + "."


def verdict(result: dict[str, Any]) -> list[str]:
    """A few plain sentences on what the audit found, each with the guarantee it is read
    against (:func:`terms`, then :func:`guarantee` in full). A diverged model
    (:func:`divergence`) gets no verdict on membership or on the audited epsilon bound, but
    what to change instead (:func:`withheld`)."""
    eps = result["epsilon"]
    within = f" [{terms(eps)}]"
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
            f"{100 * worst['label_accuracy']:.0f}% of attempts{within}.")
    else:
        out.append(
            f"In this audit an observer of this hospital's updates did not rebuild recognisable "
            f"images (best similarity {worst['ssim']:.2f} on a 0-1 scale); this is evidence, not "
            f"proof, that the updates are safe from such attacks{within}.")
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
    held = withheld(result)
    if held is not None:
        out[0] = ("The reconstruction result concerns a site's first update at a freshly "
                  "initialised model, which training does not change: " + out[0][0].lower()
                  + out[0][1:])
        out.insert(0, f"Training diverged ({held['reason'].removeprefix('training diverged: ')}"
                      "): the trained model is broken, so this audit gives no verdict on "
                      "whether it reveals who was in its training data, and no audited bound "
                      "on epsilon. To train a model worth auditing, change: "
                      + "; ".join(held["what_to_change"]) + ".")
        out.append(guarantee(eps) + (" It holds for the released models whatever their "
                                     "accuracy; no audit measured it." if _dp(eps) else ""))
        return out + _notes(eps)
    mem = result.get("membership")
    if mem:
        lira = max((mem[k] for k in ("lira_offline", "lira_online") if k in mem),
                   key=lambda m: m["auc"])
        if lira["auc"] <= 0.55 and lira["tpr_at_1%_fpr"] <= 0.02:
            out.append(f"The trained model does not reveal who was in the training data better "
                       f"than guessing (attack score {lira['auc']:.2f}; 0.5 = guessing)"
                       f"{within}.")
        else:
            out.append(f"The trained model does reveal something about who was in its training "
                       f"data: the strongest attack scores {lira['auc']:.2f} (0.5 = guessing, "
                       f"1 = always right) and identifies {100 * lira['tpr_at_1%_fpr']:.1f}% of "
                       f"patients in the training data while wrongly accusing 1% of the others"
                       f"{within}.")
    own = result.get("personal")
    if own:
        best = max((own[k] for k in ("loss_threshold", "lira_offline")), key=lambda m: m["auc"])
        out.append("Each hospital's own (personalised) model "
                   + ("does not reveal which of its patients it was trained on better than "
                      f"guessing (attack score {best['auc']:.2f})" if best["auc"] <= 0.55 else
                      f"reveals which of its patients it was trained on: attack score "
                      f"{best['auc']:.2f} (0.5 = guessing); share such a model as you would "
                      f"the patients' data") + f"{within}.")
    sites = result.get("sites")
    if sites and "skipped" not in sites:
        best = max(sites["lira_online"]["auc"], sites["lira_offline"]["auc"])
        out.append(f"Whether a given hospital took part at all can be guessed from the trained "
                   f"model with an attack score of {best:.2f} (0.5 = guessing), for an observer "
                   f"who holds data like that hospital's{within}.")
    out.append(guarantee(eps))
    if _dp(eps):
        run = eps.get("whole_run") or {}
        bound = run.get("epsilon_one_run_fdp", (eps.get("one_round") or {}).get("epsilon_one_run"))
        what = ("planting test records (canary hospitals) in whole training runs"
                if "epsilon_one_run_fdp" in run else "one training round")
        if bound is not None and bound <= eps["claimed"]:
            ceiling = run.get("ceiling_fdp")
            out.append(f"An audit by {what} showed epsilon at least {bound:.2f}, consistent with "
                       f"the claim (an audit can only show a lower bound"
                       + (f"; with these {run['canaries']} test records it could show at most "
                          f"{ceiling:.2f}" if ceiling is not None else "") + f"){within}.")
        elif bound is not None:
            out.append(f"An audit by {what} showed epsilon at least {bound:.2f}, MORE than "
                       f"claimed: the claim does not hold and the setup must be checked before "
                       f"use{within}.")
    return out + _notes(eps)


def _notes(eps: dict[str, Any]) -> list[str]:
    """Whether the noise can be regenerated from the run's files, and the run's privacy
    warnings (e.g. a delta above one over the protected units)."""
    out = []
    if _dp(eps) and eps.get("noise_note"):
        out.append(eps["noise_note"][0].upper() + eps["noise_note"][1:] + ".")
    return out + [f"Warning: {w}." for w in eps.get("warnings") or ()]


def _table(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[r["scenario"], r["defence"], f"{r['mse']:.2e}", f"{r['psnr']:.1f}",
             f"{r['ssim']:.3f}", f"{r['label_accuracy']:.2f}"] for r in rows]


HEAD = ["observed update", "defence", "MSE", "PSNR (dB)", "SSIM", "label acc."]


def _markdown(result: dict[str, Any], figures: dict[str, str]) -> str:
    cfg = result["config"]
    held = withheld(result)
    outcome = (f"final test accuracy {result['final'].get('test_accuracy', float('nan')):.4f}"
               if held is None else held["reason"])
    lines = ["# Privacy audit", "", "## Verdict", ""] + [" ".join(verdict(result)), "",
             "## Federation audited", "",
             f"dataset `{cfg['dataset']['name']}`, model `{cfg['model']['name']}`, algorithm "
             f"`{cfg['algorithm']['name']}`, privacy `{(cfg.get('privacy') or {}).get('name')}`, "
             f"compression `{result['inversion']['sent']['compression']}`, {cfg['num_clients']} "
             f"clients, {cfg['rounds']} rounds, seed {cfg['seed']}; {outcome}.", "",
             f"## Gradient inversion (site {result['inversion']['client']})", "",
             "Medians over trials; SSIM 1 = identical image.", "",
             "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in _table(result["inversion"]["rows"])]
    lines += [""] + [f"![{name}]({path})" for name, path in figures.items()] + [""]
    if held is not None:
        lines += ["## Verdicts withheld", "",
                  f"{held['reason'][0].upper()}{held['reason'][1:]}: no verdict on "
                  + ", ".join(held["withheld"]) + " is given for this model, and its attack "
                  "scores are not shown. What to change: " + "; ".join(held["what_to_change"])
                  + ".", ""]
        return "\n".join(lines + _epsilon_lines(result["epsilon"], bounds=False))
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


def _epsilon_lines(eps: dict[str, Any], bounds: bool = True) -> list[str]:
    """Theoretical epsilon beside each empirical lower bound (``bounds``), then everything as
    JSON."""
    lines = ["## Epsilon", ""]
    audits = [("one white-box round (Gaussian mechanism)", eps.get("one_round")),
              (f"{(eps.get('whole_run') or {}).get('kind', 'gradient')} canary sites through "
               "whole runs", eps.get("whole_run"))]
    audits = [(n, a) for n, a in audits if bounds and a and "skipped" not in a]
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
    rows = [{k: v for k, v in r.items() if k != "images"} for r in result["inversion"]["rows"]]
    plain = {**result, "verdict": verdict(result), "verdicts_withheld": withheld(result),
             "inversion": {**result["inversion"], "rows": rows}}
    (out_dir / "audit.json").write_text(json.dumps(plain, indent=2, default=float))
