"""Collects the distributed DP study (issue 32 item 4) into results/distributed_dp/.

Run after experiments/distributed_dp.sh (from a clean commit):

    python experiments/collect_distributed_dp.py [--runs multirun/distributed_dp] [--log LOG ...]

Writes ``runs.csv`` (one row per replica: setting, bits, target and spent epsilon, the noise
multiplier of the sum, the test accuracy, bytes per upload and download, wrapped coordinates),
``bytes.csv`` (secure aggregation's bytes per client per round at each bits for the study's
1,000 clients, SecAgg and SecAgg+ with k = 10, from ``fedbench.secagg.costs.closed_form``; the
SecAgg rows are checked against the runs' own counts) and ``accuracy.png`` (accuracy against
bits, per epsilon, central DP and no DP as lines), then re-renders README.md. Needs matplotlib.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from fedbench.study_readme import (
    collected, compare, fmt, markdown_table, mean_sd, read_rows, render_file, write_rows,
)

BITS = (8, 10, 12, 14, 16, 20)
EPSILONS = (1, 4)
SETTINGS = {"ddg": "distributed discrete Gaussian", "sk": "distributed Skellam"}
PLUS_DEGREE = 10  # SecAgg+'s k for 1,000 clients: about log2(1,000)


def _job_rows(job: Path, setting: str, bits: int | None, eps: float | None, wall,
              metric: str = "test_accuracy") -> list[dict]:
    rows = []
    for name in json.loads((job / "summary.json").read_text())["replicas"]:
        summary = json.loads((job / name / "summary.json").read_text())
        cfg, final, privacy = summary["config"], summary["final"], summary["privacy"] or {}
        uploads = cfg["rounds"] * cfg["clients_per_round"]
        rows.append({
            "setting": setting, "bits": "" if bits is None else bits,
            "target_epsilon": "" if eps is None else eps,
            "epsilon": privacy.get("epsilon", ""), "delta": privacy.get("delta", ""),
            "noise_multiplier": privacy.get("noise_multiplier", ""), "seed": int(cfg["seed"]),
            metric: final[metric],
            "bytes_per_upload": final["bytes_up"] / uploads,
            "bytes_per_download": final["bytes_down"] / uploads,
            "modular_wraps": final.get("modular_wraps", ""),
            "scale": (privacy.get("distributed") or {}).get("scale", ""),
            "padded_dim": (privacy.get("distributed") or {}).get("padded_dim", ""),
            "clients": cfg["num_clients"], "rounds": cfg["rounds"], "status": summary["status"],
            "program_wall_seconds": wall,
        })
    return rows


def collect(runs: Path, walls: dict[str, float], epsilons=EPSILONS,
            metric: str = "test_accuracy") -> list[dict]:
    """The rows of every job of the study's script found under ``runs`` (``metric``: the final
    value kept per replica)."""
    jobs = [("nodp", "nodp", None, None)]
    for eps in epsilons:
        jobs.append((f"eps{eps}/central", "central", None, eps))
        jobs += [(f"eps{eps}/{setting}_{bits}", setting, bits, eps)
                 for setting in SETTINGS for bits in BITS]
    rows = []
    for name, setting, bits, eps in jobs:
        if (runs / name / "summary.json").exists():
            rows += _job_rows(runs / name, setting, bits, eps, walls.get(name, ""), metric)
    return rows


def protocol_bytes(clients: int, dim: int) -> list[dict]:
    """SecAgg's and SecAgg+'s bytes per client per round (no dropouts) at each bits."""
    from fedbench.secagg.costs import closed_form

    out = []
    for bits in BITS:
        for protocol, degree in (("secagg", None), ("secagg_plus", PLUS_DEGREE)):
            total = closed_form(clients, dim, bits, degree)["total"]
            out.append({"protocol": protocol, "degree": degree or clients - 1, "bits": bits,
                        "client_up": total["client_up"], "client_down": total["client_down"],
                        "masked_vector": -(-dim * bits // 8)})
    return out


def plot(rows: list[dict], path: Path, epsilons=EPSILONS, metric: str = "test_accuracy",
         ylabel: str = "test accuracy", where: str = "1,000 clients every round") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(epsilons), figsize=(4.4 * len(epsilons), 3.5), sharey=True)
    nodp = [float(r[metric]) for r in rows if r["setting"] == "nodp"]
    for ax, eps in zip(axes, epsilons):
        for i, setting in enumerate(SETTINGS):
            xs, ys, es = [], [], []
            for bits in BITS:
                acc = [float(r[metric]) for r in rows if r["setting"] == setting
                       and str(r["bits"]) == str(bits) and str(r["target_epsilon"]) == str(eps)]
                if acc:
                    xs.append(bits + 0.15 * (i - 0.5))
                    ys.append(statistics.mean(acc))
                    es.append(statistics.stdev(acc) if len(acc) > 1 else 0.0)
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, lw=1, capsize=2, color=f"C{i}",
                        label=SETTINGS[setting])
        central = [float(r[metric]) for r in rows if r["setting"] == "central"
                   and str(r["target_epsilon"]) == str(eps)]
        if central:
            ax.axhline(statistics.mean(central), color="C2", ls="--", lw=0.9,
                       label="central DP (dp_client, q = 1)")
        if nodp:
            ax.axhline(statistics.mean(nodp), color="k", ls=":", lw=0.9, label="no DP")
        ax.set_xticks(BITS)
        ax.set_xlabel("bits per coordinate of the secure sum")
        ax.set_title(f"epsilon {eps}, delta 1e-5, {where}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# README values, from runs.csv and bytes.csv only.


def _matches(r: dict, setting: str, eps, bits) -> bool:
    return (r["setting"] == setting and (eps is None or r["target_epsilon"] == str(eps))
            and (bits is None or r["bits"] == str(bits)))


def by_seed(rows: list[dict], key: str, setting: str, eps=None, bits=None) -> dict[int, float]:
    """``{seed: row[key]}`` of one setting (and epsilon and bits, where given)."""
    return {int(r["seed"]): float(r[key]) for r in rows if _matches(r, setting, eps, bits)}


def single(rows: list[dict], key: str, setting: str, eps=None, bits=None) -> float:
    """``row[key]``, the same in every row of one setting (a program's constant)."""
    vals = {r[key] for r in rows if _matches(r, setting, eps, bits)}
    assert len(vals) == 1, (setting, key, eps, bits, vals)
    return float(vals.pop())


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/distributed_dp/README.md quotes."""
    rows = read_rows(folder / "runs.csv")
    proto = read_rows(folder / "bytes.csv")

    def acc(setting, eps=None, bits=None):
        return by_seed(rows, "test_accuracy", setting, eps, bits)

    def one(setting, key, eps=None, bits=None):
        return single(rows, key, setting, eps, bits)

    v: dict[str, str] = {"runs": str(len(rows)),
                         "seeds": str(len({r["seed"] for r in rows}))}
    v["nodp"] = mean_sd(list(acc("nodp").values()))
    table, ahead = [], []
    for eps in EPSILONS:
        central = acc("central", eps)
        table.append([f"{eps}", "central (dp_client)", "", mean_sd(list(central.values())),
                      fmt(one("central", "noise_multiplier", eps), 2), "", ""])
        for bits in BITS:
            for setting in SETTINGS:
                got = acc(setting, eps, bits)
                wraps = [float(r["modular_wraps"]) for r in rows if r["setting"] == setting
                         and r["target_epsilon"] == str(eps) and r["bits"] == str(bits)]
                diff = compare("a", "b", [got[s] for s in sorted(got)],
                               [central[s] for s in sorted(got)])
                word = ("behind" if " behind " in diff else "ahead" if " ahead of " in diff
                        else "no difference")
                if word == "ahead":
                    ahead.append(f"{SETTINGS[setting]} at {bits} bits and epsilon {eps}: " + compare(
                        "it", "central DP", [got[s] for s in sorted(got)],
                        [central[s] for s in sorted(got)]))
                table.append([f"{eps}", SETTINGS[setting], str(bits),
                              mean_sd(list(got.values())),
                              fmt(one(setting, "noise_multiplier", eps, bits), 2),
                              word, fmt(statistics.mean(wraps), 0)])
    v["comparisons"] = str(len(table) - len(EPSILONS))
    v["ahead"] = "; ".join(ahead) if ahead else "none"
    v["table"] = "\n" + markdown_table(
        ["epsilon", "mechanism", "bits", "test accuracy (mean ± sd)",
         "noise multiplier of the sum", "against central (95% paired t)",
         "wrapped coordinates (all rounds)"], table, "lllrrlr") + "\n"
    # the fewest bits from which on each distributed mechanism is not behind central DP
    for eps in EPSILONS:
        central = acc("central", eps)
        for setting in SETTINGS:
            behind = [" behind " in compare("a", "b", [acc(setting, eps, b)[s] for s in
                                                       sorted(central)],
                                            [central[s] for s in sorted(central)])
                      for b in BITS]
            level = [b for i, b in enumerate(BITS) if not any(behind[i:])]
            v[f"level_{setting}_eps{eps}"] = str(min(level)) if level else "none of the bits run"
        low = BITS[0]
        v[f"low_eps{eps}"] = compare(
            f"the distributed discrete Gaussian at {low} bits", "central DP",
            [acc("ddg", eps, low)[s] for s in sorted(central)],
            [central[s] for s in sorted(central)])
        v[f"z_ratio_12_eps{eps}"] = fmt(one("ddg", "noise_multiplier", eps, 12)
                                        / one("central", "noise_multiplier", eps), 2)
        v[f"z_ratio_16_eps{eps}"] = fmt(one("ddg", "noise_multiplier", eps, 16)
                                        / one("central", "noise_multiplier", eps), 3)
    for eps in EPSILONS:  # the fewest bits from which on no run's sum wrapped
        wrapped = [any(float(r["modular_wraps"]) > 0 for r in rows if r["setting"] in SETTINGS
                       and r["target_epsilon"] == str(eps) and r["bits"] == str(b))
                   for b in BITS]
        clean = [b for i, b in enumerate(BITS) if not any(wrapped[i:])]
        v[f"nowrap_eps{eps}"] = str(min(clean)) if clean else "none of the bits run"
    spent = [float(r["epsilon"]) / float(r["target_epsilon"]) for r in rows
             if r["target_epsilon"]]
    v["eps_spent"] = f"{min(spent):.4f}-{max(spent):.4f}"
    # bytes: measured (the runs) against the closed form, and SecAgg+
    dense = one("nodp", "bytes_per_upload")
    v["dense_bytes"] = fmt(dense, 0)
    btable = []
    for bits in BITS:
        sec = next(p for p in proto if p["protocol"] == "secagg" and p["bits"] == str(bits))
        plus = next(p for p in proto if p["protocol"] == "secagg_plus" and p["bits"] == str(bits))
        measured = one("ddg", "bytes_per_upload", EPSILONS[0], bits)
        assert measured == float(sec["client_up"]), (bits, measured, sec)
        btable.append([str(bits), sec["masked_vector"], sec["client_up"], sec["client_down"],
                       plus["client_up"], plus["client_down"]])
    v["bytes_table"] = "\n" + markdown_table(
        ["bits", "masked vector", "SecAgg up", "SecAgg down (besides the model)",
         f"SecAgg+ (k = {PLUS_DEGREE}) up", "SecAgg+ down"], btable) + "\n"
    sec16 = next(p for p in proto if p["protocol"] == "secagg" and p["bits"] == "16")
    v["secagg_share_16"] = f"{100 * (1 - int(sec16['masked_vector']) / int(sec16['client_up'])):.0f}"
    v["time_total"] = program_minutes(rows)
    return v


def program_minutes(rows: list[dict]) -> str:
    """Minutes of program wall time: one program per setting, bits and epsilon."""
    walls = {(r["setting"], r["bits"], r["target_epsilon"]): float(r["program_wall_seconds"])
             for r in rows if r["program_wall_seconds"]}
    return f"{sum(walls.values()) / 60:.1f}"


def write_arm(study: str, description: str, collect_fn, protocol_bytes_fn, plot_fn) -> None:
    """A study arm's collect: provenance and rows (``collected``), ``runs.csv``, ``bytes.csv``
    (``protocol_bytes_fn(clients, padded_dim)``), the figure (``plot_fn(rows, out)``) and the
    README re-rendered."""
    args, rows = collected(study, description, collect_fn)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "runs.csv", rows)
    padded = {r["padded_dim"] for r in rows if r["padded_dim"] != ""}
    assert len(padded) == 1, padded
    write_rows(args.out / "bytes.csv",
               protocol_bytes_fn(int(rows[0]["clients"]), int(padded.pop())))
    plot_fn(rows, args.out)
    render_file(args.out)


def main() -> None:
    write_arm("distributed_dp", __doc__.splitlines()[0], collect, protocol_bytes,
              lambda rows, out: plot(rows, out / "accuracy.png"))


if __name__ == "__main__":
    main()
