"""The suitability report: which way each dimension points, in tables and plain words.

:func:`directions` turns the measurements of :func:`fedbench.suitability.suitability` into one
of ``towards FL``, ``against FL`` or ``mixed`` per dimension, by the thresholds the user set
(``suitability.max_cost``, ``max_hours``, ``dominance``) and two fixed ones for leakage (an
as-sent reconstruction with SSIM >= 0.5 or labels recovered >= 90% of the time, or a
membership AUC >= 0.6, counts as a leak). :func:`write_report` writes ``suitability.json``,
``suitability.md`` (+ PNG figures) and a self-contained ``suitability.html`` (figures embedded as
base64, via :func:`fedbench.audit.report._html`), and renders it with headless Chromium
(:mod:`fedbench.audit.render`) when one is installed.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

LEAK_SSIM, LEAK_LABELS, LEAK_AUC = 0.5, 0.9, 0.6


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _dur(hours: float | None) -> str:
    """A duration in readable units ('not reached' for None)."""
    if hours is None:
        return "not reached"
    sec = hours * 3600
    if sec < 120:
        return f"{sec:.0f} s"
    return f"{sec / 60:.1f} min" if sec < 7200 else f"{hours:.1f} h"


def _cost(reg: dict[str, Any]) -> str:
    """The DP cost in words: a signed number, or that DP training diverged."""
    return "diverged" if reg["cost"] is None else f"{reg['cost']:+.4f}"


def directions(r: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Per dimension: (direction, one-sentence reason)."""
    s = r["settings"]
    out = {}
    reg = r["regulatory"]
    cost_ok = reg["cost"] is not None and reg["cost"] <= s["max_cost"]
    sens = r["sensitivity"]
    if "skipped" in sens:
        leak = None
    else:
        leak = any(row["ssim"] >= LEAK_SSIM or row["label_accuracy"] >= LEAK_LABELS
                   for row in sens["inversion"]) or any(
            v >= LEAK_AUC for v in sens["membership_auc"].values())
    if leak is None:
        out["sensitivity"] = ("mixed", "no attack measured on this data; DP at the required "
                              f"epsilon costs {_cost(reg)}")
    elif leak and cost_ok:
        out["sensitivity"] = ("towards FL, with DP", "updates leak without DP, and DP at the "
                              "required epsilon is affordable")
    elif leak:
        out["sensitivity"] = ("against FL", "updates leak without DP, and DP at the required "
                              "epsilon costs more than the sites accept")
    else:
        out["sensitivity"] = ("towards FL", "the attacks recover little from the updates")
    a = r["asymmetry"]
    share, top = a["largest_share"], a.get("top_shapley_share")
    dominant = share >= s["dominance"] or (top is not None and top >= s["dominance"])
    out["asymmetry"] = (("mixed", "one site dominates the data or the value: the others gain, "
                         "it has little to gain") if dominant else
                        ("towards FL", "data and value are spread over the sites"))
    rows = r["communication"]["rows"][:2]
    hours = [x["hours_to_target"] for x in rows if x["hours_to_target"] is not None]
    if not hours:
        out["communication"] = ("against FL", "the target is not reached in the rounds run")
    elif min(hours) <= s["max_hours"]:
        out["communication"] = ("towards FL", f"the target is reached in {_dur(min(hours))} "
                                f"(limit {s['max_hours']:g} h)")
    else:
        out["communication"] = ("against FL", f"the target needs {_dur(min(hours))} "
                                f"(limit {s['max_hours']:g} h)")
    out["regulatory"] = (("towards FL", f"epsilon {s['epsilon']:g} costs {_cost(reg)}, "
                          f"within {s['max_cost']:g}") if cost_ok else
                         ("against FL", f"epsilon {s['epsilon']:g}: DP training diverged")
                         if reg["cost"] is None else
                         ("against FL", f"epsilon {s['epsilon']:g} costs {_cost(reg)}, "
                          f"more than {s['max_cost']:g}"))
    return out


def _compare_lines(r: dict[str, Any]) -> list[str]:
    from fedbench.compare_verdicts import verdict_lines

    c = r["compare"]
    return verdict_lines(c["verdicts"], len(c["seeds"]), c["partition_seed"])


def summary_lines(r: dict[str, Any]) -> list[str]:
    """One line per dimension, then the pooled FL-vs-local verdict."""
    out = [f"{dim:<14} {d:<22} {why}" for dim, (d, why) in directions(r).items()]
    pooled = [v for v in r["compare"]["verdicts"] if v["eval_set"] == "pooled"]
    out += [f"{'FL vs local':<14} {v['verdict']:<22} {v['algorithm']} vs best single site "
            f"{v['local_model']} on pooled test: {v['fl']:.4f} vs {v['local']:.4f}" for v in pooled]
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figures(r: dict[str, Any]) -> dict[str, bytes]:
    """PNG figures: site sizes and Shapley values; metric vs hours; metric vs round under DP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    a = r["asymmetry"]
    n = len(a["client_sizes"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    fig.subplots_adjust(wspace=0.35)
    axes[0].bar(range(n), a["client_sizes"], color="#4477aa")
    axes[0].set(xlabel="site", ylabel="training examples", title="site sizes")
    if "contribution" in a:
        axes[1].bar(range(n), a["contribution"]["shapley"], color="#cc6677",
                    yerr=a["contribution"].get("shapley_stderr"))
        axes[1].axhline(0, color="k", lw=0.5)
        axes[1].set(xlabel="site", ylabel=f"Shapley ({r['metric']})", title="Shapley values")
    out["sizes_and_shapley"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for row in r["communication"]["rows"]:
        xs, ys = zip(*row["curve"])
        ax.plot(xs, ys, marker=".", label=row["run"])
    ax.axhline(r["target"], color="k", ls=":", lw=1, label="target")
    ax.set(xlabel="simulated hours", ylabel=r["metric"], title="time to target")
    ax.legend(fontsize=7)
    out["time_to_target"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, curve in r["regulatory"]["curves"].items():
        xs, ys = zip(*curve)
        ax.plot(xs, ys, marker=".", label=name)
    ax.set(xlabel="round", ylabel=r["metric"],
           title=f"epsilon {r['settings']['epsilon']:g} vs no DP")
    ax.legend(fontsize=7)
    out["privacy_cost"] = _png(fig)
    return out


def markdown(r: dict[str, Any]) -> str:
    """The report's text (tables, paragraphs, figure links)."""
    d, s, m = directions(r), r["settings"], r["metric"]
    parts = [f"# Is FL suitable here? {r['num_clients']} sites, {r['rounds']} rounds",
             "Each dimension: what was measured, which way it points, and why. Target "
             f"{m} {r['target']:.4f} ({r['target_rule']}).",
             _table(["dimension", "points", "because"], [[k, v[0], v[1]] for k, v in d.items()])]
    sens = r["sensitivity"]
    parts.append("## Data sensitivity")
    if "skipped" in sens:
        parts.append(sens["skipped"])
        text = "No attack was run on this kind of data, so nothing was measured about leakage."
    else:
        rows = [[f"inversion, {x['scenario']}", f"SSIM {x['ssim']:.3f}, PSNR {x['psnr']:.1f} dB, "
                 f"labels {x['label_accuracy']:.0%}"] for x in sens["inversion"]]
        rows += [[f"membership AUC ({k})", f"{v:.3f}"] for k, v in sens["membership_auc"].items()]
        rows.append([f"{m} lost to DP at epsilon {s['epsilon']:g}", _cost(r["regulatory"])])
        parts.append(_table(["attack without DP (fedbench-audit)", "result"], rows))
        best = max(sens["inversion"], key=lambda x: x["ssim"])
        text = (f"An honest-but-curious server that sees one site's update as sent rebuilds its "
                f"training images with SSIM up to {best['ssim']:.2f} (1 is a perfect copy) and "
                f"recovers {best['label_accuracy']:.0%} of the labels. Guessing who was in the "
                f"training data from the final model works with AUC "
                + ", ".join(f"{v:.2f}" for v in sens["membership_auc"].values())
                + " (0.5 is chance). Full audit: audit/audit.html.")
    parts.append(f"Points {d['sensitivity'][0]}. {text} " + (
        "Client-level DP at the required epsilon made training diverge."
        if r["regulatory"]["cost"] is None else
        f"Client-level DP at the required epsilon costs {_cost(r['regulatory'])} {m}."))
    a = r["asymmetry"]
    parts.append("## Dataset size asymmetry")
    rows = [[a["names"][j], a["client_sizes"][j],
             a["client_sizes"][j] / sum(a["client_sizes"])]
            + ([a["contribution"]["shapley"][j], a["contribution"]["leave_one_out"][j]]
               if "contribution" in a else []) for j in range(len(a["client_sizes"]))]
    head = ["site", "training examples", "share"] + (
        ["Shapley", "leave-one-out drop"] if "contribution" in a else [])
    parts += [_table(head, rows), "![sizes_and_shapley](sizes_and_shapley.png)"]
    c = a.get("contribution")
    text = (f"The largest site ({a['names'][a['largest_site']]}) holds {a['largest_share']:.0%} "
            f"of the training data, {a['size_ratio']:.1f} times the smallest; the sites' label "
            f"mixes differ from the whole by a mean total variation of "
            f"{_f(a['mean_total_variation'], 2)}.")
    if c:
        text += (f" Shapley values ({c['method']}, {c['coalitions_trained']} coalitions, "
                 f"{m} of the pooled test set) add up to {c['v_all'] - c['v_empty']:+.4f}; the "
                 f"top site ({a['names'][a['top_shapley_site']]}) carries "
                 f"{_f(a['top_shapley_share'], 2)} of the positive value.")
    parts.append(f"Points {d['asymmetry'][0]}. {text}")
    parts.append("## Communication infrastructure")
    rows = [[x["run"], ", ".join(f"{n} {k.replace('_', ' ')}"
                                 for k, n in x["sites_per_profile"].items()),
             x["seconds_per_round"], x["bytes_up_per_round"] / 1e6, x["final"],
             x["round_to_target"] if x["round_to_target"] is not None else "not reached",
             _f(x["hours_to_target"], 6), _dur(x["hours_to_target"])]
            for x in r["communication"]["rows"]]
    parts += [_table(["run", "sites per profile", "s / round", "MB up / round", f"final {m}",
                      "round at target", "hours to target", "time to target"], rows),
              "![time_to_target](time_to_target.png)"]
    dense, comp = r["communication"]["rows"][:2]
    parts.append(f"Points {d['communication'][0]}. A round takes "
                 f"{dense['seconds_per_round']:.1f} s with dense updates and "
                 f"{comp['seconds_per_round']:.1f} s compressed, the slowest site setting the "
                 f"pace; "
                 f"reaching {m} {r['target']:.3f} takes {_dur(dense['hours_to_target'])} dense "
                 f"and {_dur(comp['hours_to_target'])} compressed. The "
                 "link rates are nominal, so real hours are longer.")
    g = r["regulatory"]
    parts.append("## Regulatory environment")
    parts += [_table(["", "value"], [
        ["epsilon required (input)", s["epsilon"]],
        ["delta required (input)", "fedbench default" if s["delta"] is None else str(s["delta"])],
        ["delta used", str(g["delta_used"])],
        ["epsilon spent by the DP run (to its last round)", g["epsilon_spent"]],
        ["mechanism", _mechanism_words(g)],
        ["noise multiplier", g["noise_multiplier"]], ["clip", g["clip"]],
        [f"{m}, no DP", g["non_private"]], [f"{m}, DP", g["private"]],
        ["cost", _cost(g)], ["site mean, no DP", g["client_mean_non_private"]],
        ["site mean, DP", g["client_mean_private"]],
        ["DP run", g["dp_status"]],
        ["DP run reaches the target", "yes" if g["private_reaches_target"] else "no"]]),
        "![privacy_cost](privacy_cost.png)",
        f"Points {d['regulatory'][0]}. A guarantee of epsilon {s['epsilon']:g} per site "
        f"({_mechanism_words(g)}, delta {g['delta_used']}) needs noise multiplier "
        f"{_f(g['noise_multiplier'], 2)}{_noise_words(g)}; " + (
            "with it, training diverged (non-finite parameters) with this schedule"
            if g["cost"] is None else
            f"it costs {_cost(g)} {m} on the pooled test set ({_f(g['non_private'])} -> "
            f"{_f(g['private'])})") + f"; the sites accept {s['max_cost']:g}."]
    parts += ["## FL vs local vs pooled (fedbench-compare)", "```\n" + "\n".join(
        _compare_lines(r)) + "\n```", "Each line: the federated model against the best single "
        "site's model (pooled test) and against each site's own model (its test split); the "
        "verdict needs the 95% bootstrap interval of the difference to exclude 0."]
    return "\n\n".join(parts) + "\n"


def write_report(r: dict[str, Any], out: Path, render: bool = True) -> None:
    """``suitability.json``, ``.md`` (+ PNGs), self-contained ``.html``, and ``.png`` if
    Chromium is installed and ``render``."""
    from fedbench.audit.report import _html

    out.mkdir(parents=True, exist_ok=True)
    images = figures(r)
    for name, data in images.items():
        (out / f"{name}.png").write_bytes(data)
    r["directions"] = {k: {"points": v[0], "because": v[1]} for k, v in directions(r).items()}
    text = markdown(r)
    (out / "suitability.md").write_text(text)
    page = _html(text, images).replace("<title>Privacy audit</title>",
                                       "<title>FL suitability</title>")
    (out / "suitability.html").write_text(page)
    r["render"] = render_report(out / "suitability.html") if render else "not asked"
    (out / "suitability.json").write_text(json.dumps(r, indent=2, default=float))


def render_report(html_path: Path) -> str:
    """Chromium screenshot ``suitability.png`` and a check that every image loaded."""
    from fedbench.audit.render import find_chromium, image_load_status, render_png

    if find_chromium() is None:
        msg = "skipped: no Chromium (Debian: apt-get install -y chromium)"
        print(f"fedbench-suitability: render {msg}", flush=True)
        return msg
    status = image_load_status(html_path)
    broken = [x["alt"] for x in status if not x["loaded"]]
    render_png(html_path, html_path.with_suffix(".png"))
    return (f"{len(status) - len(broken)} of {len(status)} images loaded"
            + (f"; broken: {broken}" if broken else ""))


def main(argv: list[str] | None = None) -> int:
    """``python -m fedbench.suitability_report DIR``: rewrite DIR's report from its
    ``suitability.json`` (no training), e.g. after a change to the wording."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fedbench.suitability_report DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    result = json.loads((out / "suitability.json").read_text())
    write_report(result, out, render=result.get("render") != "not asked")
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _mechanism_words(g: dict) -> str:
    """The regulatory run's mechanism in words (older reports have none: DP-FedAvg)."""
    if g.get("mechanism", "dp_client") == "dp_client":
        return "client-level DP-FedAvg, Poisson-sampled sites"
    if g.get("mechanism") == "ddp":
        return ("distributed DP, every site every round: each site adds its share of discrete "
                "noise and the server sees only the secure sum (simulated secure aggregation)")
    return (f"client-level DP-FTRL, every site every round, {g.get('matrix')} "
            "factorisation")


def _noise_words(g: dict) -> str:
    if g.get("mechanism", "dp_client") in ("dp_client", "ddp"):
        return " (noise std that times the clip on each round's summed update)"
    return (f" (one Gaussian mechanism over the whole run: noise std that times the clip "
            f"times the factorisation's sensitivity {_f(g.get('sensitivity'), 2)}, correlated "
            "across rounds)")
