"""Re-renders results/suitability/README.md from the two reports experiments/suitability.sh wrote.

    python experiments/collect_suitability.py [--out results/suitability]

``fedbench-suitability`` writes every number of a report into ``<out>/<scenario>/suitability.json``
(and the client-level DP run into ``<scenario>/dp/summary.json``); this script only reads them
(:func:`readme_values`, fedbench/study_readme.py) and writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fedbench.links import PROFILES
from fedbench.study_readme import fmt, markdown_table, render_file

SCENARIOS = {"balanced": "balanced, fibre", "dominant": "dominant hospital, rural 4G"}
#: What site 0 is in each scenario (experiments/suitability.sh).
SITE0 = {"balanced": "site 0", "dominant": "the hospital"}
DIMENSIONS = ["sensitivity", "asymmetry", "communication", "regulatory"]
FLOAT32_BYTES = 4  # the dense upload is float32 (suitability.json: "dense float32")


def _load(folder: Path, scenario: str) -> dict:
    report = json.loads((folder / scenario / "suitability.json").read_text())
    report["dp_summary"] = json.loads((folder / scenario / "dp" / "summary.json").read_text())
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rows(report: dict) -> tuple[dict, dict]:
    """The dense and the compressed communication rows."""
    rows = report["communication"]["rows"]
    dense = next(r for r in rows if "dense" in r["run"])
    return dense, next(r for r in rows if r is not dense)


def _params(report: dict) -> int:
    """Model parameters: the dense upload of all sites in one round / (sites x 4 bytes)."""
    dense, _ = _rows(report)
    return round(dense["bytes_up_per_round"] / (report["num_clients"] * FLOAT32_BYTES))


def _pooled(report: dict) -> dict:
    return next(v for v in report["compare"]["verdicts"] if v["eval_set"] == "pooled")


def _own(report: dict) -> list[dict]:
    """Each site's own-test verdict (FL against that site's own model)."""
    return [v for v in report["compare"]["verdicts"] if v["eval_set"] != "pooled"]


def _interval(v: dict) -> str:
    return (f"{fmt(v['difference'], 3, True)} [{fmt(v['ci_low'], 3, True)}, "
            f"{fmt(v['ci_high'], 3, True)}]")


def _excludes_zero(v: dict) -> bool:
    return v["ci_low"] > 0 or v["ci_high"] < 0


def _verdict_cell(v: dict) -> str:
    word = ("no difference at this number of test examples" if not _excludes_zero(v)
            else "FL better" if v["difference"] > 0 else "local better")
    return f"{fmt(v['fl'])} vs {fmt(v['local'])}, {_interval(v)}: {word}"


def _verdict_sentence(v: dict, local: str) -> str:
    """FL against ``local`` on v's test set, from fedbench-compare's paired bootstrap over the
    test examples (its 95% interval of the difference)."""
    span = (f"95% paired bootstrap interval over the {v['n']} test images "
            f"[{fmt(v['ci_low'], 3, True)}, {fmt(v['ci_high'], 3, True)}]")
    if _excludes_zero(v):
        word = "ahead of" if v["difference"] > 0 else "behind"
        return (f"the federated model is {word} {local} by {fmt(abs(v['difference']))} "
                f"({fmt(v['fl'])} against {fmt(v['local'])}, {span})")
    return (f"there is no difference between the federated model and {local} at this number of "
            f"test examples ({fmt(v['fl'])} against {fmt(v['local'])}, difference "
            f"{fmt(v['difference'], 3, True)}, {span})")


def _dp_cell(report: dict) -> str:
    reg, dp = report["regulatory"], report["dp_summary"]
    head = f"noise multiplier {reg['noise_multiplier']:.2f}"
    if reg["dp_status"] == "diverged":
        return f"{head}; training diverged by round {dp['final']['round']}"
    return f"{head}; {reg['metric']} {fmt(reg['private'])}, cost {fmt(reg['cost'])}"


def _same(values: list[str]) -> str:
    return values[0] if len(set(values)) == 1 else " and ".join(values)


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/suitability/README.md quotes, from
    ``<scenario>/suitability.json`` and ``<scenario>/dp/summary.json`` in ``folder``."""
    r = {s: _load(folder, s) for s in SCENARIOS}
    bal, dom = r["balanced"], r["dominant"]
    v: dict[str, str] = {}

    params = {_params(x) for x in r.values()}
    v["params"] = f"{params.pop():,}" if len(params) == 1 else "/".join(f"{p:,}" for p in params)
    v["render"] = _same([x["render"] for x in r.values()])
    v["noise"] = _same([f"{x['regulatory']['noise_multiplier']:.2f}" for x in r.values()])
    stage = "size asymmetry: partition statistics and Shapley values"
    audit = "data sensitivity: fedbench-audit without DP"
    v["coalitions"] = str(bal["asymmetry"]["contribution"]["coalitions_trained"])
    v["wall_shapley"] = ", ".join(
        f"{x['wall_seconds'][stage]:.0f} s of {x['wall_seconds']['total']:.0f} s for `{s}`"
        for s, x in r.items())
    v["wall_audit"] = f"{bal['wall_seconds'][audit]:.0f} s and {dom['wall_seconds'][audit]:.0f} s"

    # The results table, one column per scenario.
    def col(x: dict) -> list[str]:
        inv = x["sensitivity"]["inversion"]
        auc = x["sensitivity"]["membership_auc"]
        asym = x["asymmetry"]
        dense, comp = _rows(x)
        own = _own(x)
        top = asym["top_shapley_site"]
        top_name = "the hospital" if x is dom and top == 0 else f"site {top}"
        return [
            " / ".join(f"{i['ssim']:.2f}" for i in inv) + ", "
            + "/".join(f"{i['label_accuracy']:.0%}" for i in inv),
            f"{auc['loss_threshold']:.2f}, {auc['lira_offline']:.2f}",
            _pct(asym["largest_share"]),
            f"{_pct(asym['top_shapley_share'])} ({top_name})",
            f"{dense['seconds_per_round']:.2f} / {comp['seconds_per_round']:.2f}",
            f"{dense['bytes_up_per_round'] / 1e6:.3g} / {comp['bytes_up_per_round'] / 1e6:.3g}",
            f"{dense['hours_to_target'] * 3600:.0f} s (round {dense['round_to_target']}) / "
            f"{comp['hours_to_target'] * 3600:.0f} s (round {comp['round_to_target']})",
            _dp_cell(x),
            _verdict_cell(_pooled(x)),
            f"FL better at {sum(_excludes_zero(o) and o['difference'] > 0 for o in own)} of "
            f"{len(own)} sites, local better at "
            f"{sum(_excludes_zero(o) and o['difference'] < 0 for o in own)}",
        ]
    labels = [
        "sensitivity: inversion of one site's update, as sent "
        "(SSIM 1 step / 5 steps; labels recovered)",
        "sensitivity: membership AUC of the global model (loss, offline LiRA)",
        "asymmetry: largest site's share of training data",
        "asymmetry: largest Shapley value's share of the positive value",
        "communication: seconds per round, dense / top-1% + EF",
        "communication: MB uploaded per round (all 8 sites), dense / top-1% + EF",
        "communication: time to the target, dense / top-1% + EF",
        "regulatory: epsilon 8, client-level DP-FedAvg",
        "FL vs best single site, pooled test (95% paired bootstrap interval)",
        "FL vs each site's own model (95% paired bootstrap interval excludes zero)",
    ]
    cols = [col(x) for x in r.values()]
    v["results_table"] = markdown_table(
        ["dimension"] + list(SCENARIOS.values()),
        [[lab] + [c[i] for c in cols] for i, lab in enumerate(labels)], "lll")

    def points(x: dict, dim: str) -> str:
        p = x["directions"][dim]["points"]
        if p == "mixed" and dim == "asymmetry":
            p += f" (the largest site holds {_pct(x['asymmetry']['largest_share'])} of the data)"
        return p
    v["points_table"] = markdown_table(
        ["points", "balanced", "dominant"],
        [[dim] + [points(x, dim) for x in r.values()] for dim in DIMENSIONS], "lll")

    # Asymmetry and the FL-vs-local verdicts.
    best = _pooled(bal)["local_model"]
    v["balanced_pooled"] = _verdict_sentence(
        _pooled(bal), f"the best single site's model ({best}, chosen on validation)")
    v["dominant_pooled"] = _verdict_sentence(_pooled(dom), "the hospital's own model")
    v["hospital_share"] = _pct(dom["asymmetry"]["largest_share"])
    small = [o for o in _own(dom) if o["eval_set"] != "site 0"]
    gain = [o for o in small if _excludes_zero(o) and o["difference"] > 0]
    lose = [o for o in small if _excludes_zero(o) and o["difference"] < 0]
    v["small_gain"] = f"{len(gain)} of the {len(small)}"
    v["small_lose"] = str(len(lose))
    v["small_test"] = _same(sorted({str(o["n"]) for o in small}))
    hosp = next(o for o in _own(dom) if o["eval_set"] == "site 0")
    v["hospital_own"] = _verdict_sentence(hosp, "the hospital's own model")
    v["incentive"] = (
        "That is the incentive problem in numbers: FL helps some small sites, the large one gains "
        "nothing measurable." if gain and not _excludes_zero(hosp) else
        "The incentive problem (the small sites gain, the large one does not) does not show in "
        "these numbers.")
    phi = dom["asymmetry"]["contribution"]["shapley"]
    v["hospital_value"] = _pct(phi[0] / sum(p for p in phi if p > 0))

    # Communication.
    dense = {s: _rows(x)[0] for s, x in r.items()}
    comp = {s: _rows(x)[1] for s, x in r.items()}
    per_site = dense["dominant"]["bytes_up_per_round"] / dom["num_clients"]
    v["kb_per_site"] = f"{per_site / 1e3:.0f} KB"
    rural_up = PROFILES["rural_4g"][1]  # Mbit/s, the setting of the links (fedbench/links.py)
    v["rural_upload"] = f"{per_site * 8 / (rural_up * 1e6):.2f} s"
    v["round_s"] = (f"{dense['dominant']['seconds_per_round']:.1f} s instead of "
                    f"{dense['balanced']['seconds_per_round']:.1f} s")
    slowest = max(x["hours_to_target"] for x in (*dense.values(), *comp.values()))
    v["max_target_s"] = f"{slowest * 3600:.0f} s"
    v["upload_ratio"] = _same([f"{d['bytes_up_per_round'] / c['bytes_up_per_round']:.0f}x"
                               for d, c in zip(dense.values(), comp.values())])
    v["upload_mb_kb"] = (f"{dense['dominant']['bytes_up_per_round'] / 1e6:.2f} MB to "
                         f"{comp['dominant']['bytes_up_per_round'] / 1e3:.0f} KB")
    v["rural_round"] = (f"{dense['dominant']['seconds_per_round']:.2f} s to "
                        f"{comp['dominant']['seconds_per_round']:.2f} s")
    v["target_rounds"] = "; ".join(
        f"{s}: round {comp[s]['round_to_target']} against {dense[s]['round_to_target']} "
        f"({comp[s]['hours_to_target'] * 3600:.0f} s against "
        f"{dense[s]['hours_to_target'] * 3600:.0f} s)" for s in SCENARIOS)

    # Client-level DP.
    reg = dom["regulatory"]
    std = reg["noise_multiplier"] * reg["clip"] / dom["num_clients"]
    v["noise_std"] = f"{std:.2f}"
    v["noise_norm"] = f"{std * math.sqrt(_params(dom)):.0f}"
    status = {s: x["dp_summary"]["status"] for s, x in r.items()}
    if all(st == "diverged" for st in status.values()):
        v["dp_outcome"] = (
            "Training diverged in both scenarios (`dp/summary.json`: status `diverged`, "
            "non-finite metrics by round " + " and ".join(
                f"{x['dp_summary']['final']['round']} ({s})" for s, x in r.items())
            + "), so the cost is \"everything\"")
    else:
        v["dp_outcome"] = "DP training ended " + "; ".join(
            f"`{st}` in {s}" for s, st in status.items())
    against = [d for d in ("regulatory", "sensitivity")
               if all(x["directions"][d]["points"] == "against FL" for x in r.values())]
    v["dp_points"] = (f"the {' and '.join(against)} dimension{'s' if len(against) > 1 else ''} "
                      f"point{'' if len(against) > 1 else 's'} against FL in both scenarios"
                      if against else "neither the regulatory nor the sensitivity dimension "
                      "points against FL in both scenarios")

    # Sensitivity without DP.
    ssim = [i["ssim"] for x in r.values() for i in x["sensitivity"]["inversion"]]
    v["ssim_range"] = f"{min(ssim):.2f}-{max(ssim):.2f}"
    labels_acc = [i["label_accuracy"] for x in r.values() for i in x["sensitivity"]["inversion"]]
    v["labels"] = ("recovers every label" if min(labels_acc) == 1 else
                   f"recovers {min(labels_acc):.0%}-{max(labels_acc):.0%} of the labels")
    auc = [a for x in r.values() for a in x["sensitivity"]["membership_auc"].values()]
    v["auc_range"] = f"{min(auc):.2f}-{max(auc):.2f}"
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/suitability"))
    args = parser.parse_args()
    changed = render_file(args.out)
    print(f"{args.out / 'README.md'}: {'re-rendered' if changed else 'up to date'}")


if __name__ == "__main__":
    main()
