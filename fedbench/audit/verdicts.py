"""The audit report's verdict: plain sentences for clinical staff, each read against its
guarantee (:mod:`fedbench.audit.report` writes them into ``audit.md``, ``audit.html`` and
``audit.json``).

Thresholds: a reconstruction with SSIM >= 0.6 is called recognisable, <= 0.3 not; a membership
attack with AUC <= 0.55 and TPR at 1% FPR <= 2% is called no better than guessing.

A model whose training diverged (:func:`divergence`: the run's status ``diverged``, or a
non-finite loss or accuracy) gets no verdict on membership (global, personal, site) or on the
audited epsilon bound: attack scores against a broken model say nothing about a working one.
The verdict says so, why, and what to change (:func:`remedies`, :func:`withheld`). The
reconstruction verdict stays: it attacks a site's first update at a freshly initialised model,
which training does not touch.

Under differential privacy every verdict states the guarantee it is read against: epsilon,
delta, the protected unit (one hospital under ``dp_client``, one record of one hospital under
``dp_sample``), the neighbouring relation the accountant used (add/remove-one or replace-one),
and which outputs epsilon covers and which it does not (:func:`terms`, :func:`guarantee`).

Epsilon (:func:`epsilon_findings`): only canaries through whole runs of the configured
federation are read against the claim, in the unit it protects (canary sites under
``dp_client``, canary records under ``dp_sample``); without DP their bound is the federation's
empirical epsilon, which a DP claim can be compared with; where no such audit ran, the verdict
says why. The one-round Gaussian bound is a check of the noise code, never evidence for or
against a run's epsilon: the verdict does not mention it.
"""

from __future__ import annotations

import math
from typing import Any

RECOGNISABLE, UNRECOGNISABLE = 0.6, 0.3
#: ``final`` metrics of a run that must be finite for its model to be audited.
MODEL_HEALTH = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_cindex")
#: The verdicts withheld for a diverged model.
MODEL_VERDICTS = ("membership", "personal", "sites", "epsilon bound")
#: The protected unit in the report's words, by the ``unit`` of ``summary.json``'s privacy block.
UNIT_WORDS = {"client": "one hospital (a client: all of its records together)",
              "example": "one record of one hospital (one training example of one client)"}
#: dp-accounting's neighbouring relations (``neighboring_relation``) in the report's words.
RELATION_SHORT = {"add_or_remove_one": "add/remove-one", "replace_one": "replace-one",
                  "zero_out": "zero-out"}
RELATION_WORDS = {
    ("add_or_remove_one", "client"): "add/remove-one (adding or removing one hospital's data)",
    ("replace_one", "client"): "replace-one (replacing one hospital's data by another's)",
    ("add_or_remove_one", "example"): "add/remove-one (adding or removing one record)",
    ("replace_one", "example"): "replace-one (replacing one record by another)",
    ("zero_out", "client"): "zero-out (one hospital's update replaced by zeros, the hospital "
                            "still adding its share of the noise)",
}


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
    distributed = eps.get("mechanism") == "ddp"  # the server sees only the secure sum
    who = ("Someone who sees one hospital's update on its own (under distributed DP not the "
           "coordinating server, which sees only the secure sum of all hospitals' updates)"
           if distributed else
           "Someone who sees this hospital's model updates (for example the coordinating "
           "server)")
    out = []
    if worst["ssim"] >= RECOGNISABLE:
        out.append(
            f"{who} can rebuild recognisable copies of individual training images from a "
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
    if distributed:
        out.append("Distributed differential privacy: each hospital adds its share of the "
                   "noise and the coordinating server sees only the sum of all hospitals' "
                   "updates (secure aggregation, simulated here without real cryptography); a "
                   "single update carries only its own share of the noise, so it is hidden "
                   "from the server by secure aggregation, not by the noise.")
    elif inv["sent"]["clip"] is not None:
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
    return out + epsilon_findings(eps, within) + _notes(eps)


def _planted(run: dict[str, Any]) -> str:
    """How the whole-run audit's canaries were planted and scored, in words."""
    n, runs = run.get("canaries"), run.get("runs")
    per = run.get("canary_records", run.get("canary_sites"))
    per = f"; {per} per run" if per and runs and runs > 1 else ""
    where = (f"in {runs} whole training runs of this configuration" if runs else
             "in whole training runs of this configuration")
    loose = "; black box: scored by the released model's confidence, which gives loose bounds"
    if run.get("unit") == "example":
        return (f"planting {n} test records (canary records, each present or absent at random"
                f"{per}{loose}) {where}")
    if run.get("kind") == "input":
        return (f"planting {n} test hospitals (canary sites that each hold one random test "
                f"record{per}{loose}) {where}")
    return (f"planting {n} test hospitals (canary sites that send a secret update direction"
            f"{per}) {where}")


def epsilon_findings(eps: dict[str, Any], within: str = "") -> list[str]:
    """What canaries through whole runs measured (``eps["whole_run"]``): under DP read against
    the epsilon the audited runs' accountant reports, without DP as this federation's empirical
    epsilon, or why no such audit was run. The one-round bound (``eps["one_round"]``) is a check
    of the noise code, not an audit of this run: it is never read against the claim here."""
    run = eps.get("whole_run")
    if not run:
        return ["No audit measured this run's epsilon (no canaries were run through it)."
                ] if _dp(eps) else []
    if "skipped" in run:
        return [f"No whole-run audit measured epsilon for this run: {run['skipped']}."]
    bound, ceiling = run["epsilon_one_run_fdp"], run.get("ceiling_fdp")
    most = (f"; with these {run['canaries']} canaries it could show at most {ceiling:.2f}"
            if ceiling is not None else "")
    if ceiling is not None and bound >= 0.95 * ceiling:
        most += ", which it reached: more canaries could show more"
    out = []
    if not _dp(eps):
        out.append(
            f"Without differential privacy, an audit by {_planted(run)} showed an empirical "
            f"epsilon of at least {bound:.2f} for this federation (a lower bound for this "
            f"federation without DP, whose true epsilon is unbounded{most}). A DP setting that "
            f"claims epsilon E can be compared with it: a claim below {bound:.2f} rules out "
            f"the leakage this audit measured here without DP; a claim above it does not.")
    else:
        claim = run.get("theoretical")
        claim = eps["claimed"] if claim is None else claim
        own = (f"; the audited runs' accountant reports epsilon {claim:.2f}"
               if abs(claim - eps["claimed"]) > 0.005 else "")
        if bound <= claim:
            out.append(f"An audit by {_planted(run)} showed epsilon at least {bound:.2f}, "
                       f"consistent with the claim (an audit can only show a lower bound"
                       f"{most}{own}){within}.")
        else:
            out.append(f"An audit by {_planted(run)} showed epsilon at least {bound:.2f}, MORE "
                       f"than claimed ({claim:.2f}): the claim does not hold and the setup must "
                       f"be checked before use{within}.")
    if run.get("not_scored"):
        out.append("That audit measured the server model, which epsilon covers; each "
                   "hospital's personalised model is covered neither by epsilon nor by it.")
    return out


def _notes(eps: dict[str, Any]) -> list[str]:
    """Whether the noise can be regenerated from the run's files, and the run's privacy
    warnings (e.g. a delta above one over the protected units)."""
    out = []
    if _dp(eps) and eps.get("noise_note"):
        out.append(eps["noise_note"][0].upper() + eps["noise_note"][1:] + ".")
    return out + [f"Warning: {w}." for w in eps.get("warnings") or ()]
