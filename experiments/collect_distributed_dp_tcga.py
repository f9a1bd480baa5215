"""Collects the Fed-TCGA-BRCA arm of the distributed DP study (issue 32 item 4) into
results/distributed_dp_tcga/.

Run after experiments/distributed_dp_tcga.sh (from a clean commit):

    python experiments/collect_distributed_dp_tcga.py [--runs multirun/distributed_dp_tcga] [--log LOG ...]

Writes ``runs.csv`` (one row per replica, as the Synthetic arm's ``collect_distributed_dp.py``
with the pooled test C-index in place of accuracy), ``bytes.csv`` (SecAgg's bytes per site per
round for the 6 regions at each bits, from ``fedbench.secagg.costs.closed_form``, checked against
the runs' own counts) and ``cindex.png``, then re-renders README.md. Needs matplotlib.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from collect_distributed_dp import (  # noqa: E402
    BITS, SETTINGS, by_seed, collect as collect_arm, plot, program_minutes, single, write_arm,
)

from fedbench.study_readme import compare, fmt, markdown_table, mean_sd, read_rows  # noqa: E402

EPSILONS = (4, 16)
METRIC = "test_cindex"


def collect(runs: Path, walls: dict[str, float]) -> list[dict]:
    return collect_arm(runs, walls, EPSILONS, METRIC)


def protocol_bytes(clients: int, dim: int) -> list[dict]:
    """SecAgg's bytes per site per round (no dropouts) at each bits."""
    from fedbench.secagg.costs import closed_form

    out = []
    for bits in BITS:
        total = closed_form(clients, dim, bits)["total"]
        out.append({"bits": bits, "client_up": total["client_up"],
                    "client_down": total["client_down"], "masked_vector": -(-dim * bits // 8)})
    return out


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/distributed_dp_tcga/README.md quotes."""
    rows = read_rows(folder / "runs.csv")
    proto = read_rows(folder / "bytes.csv")

    def score(setting, eps=None, bits=None):
        return by_seed(rows, METRIC, setting, eps, bits)

    def one(setting, key, eps=None, bits=None):
        return single(rows, key, setting, eps, bits)

    def paired(a, b):
        return [a[s] for s in sorted(a)], [b[s] for s in sorted(a)]

    nodp = score("nodp")
    v: dict[str, str] = {"runs": str(len(rows)), "seeds": str(len({r["seed"] for r in rows})),
                         "nodp": mean_sd(list(nodp.values()))}
    table = []
    for eps in EPSILONS:
        central = score("central", eps)
        v[f"central_vs_nodp_eps{eps}"] = compare("central DP", "no DP", *paired(central, nodp))
        table.append([f"{eps}", "central (dp_client)", "", mean_sd(list(central.values())),
                      fmt(one("central", "noise_multiplier", eps), 2), "", ""])
        levels = {}
        for bits in BITS:
            for setting in SETTINGS:
                got = score(setting, eps, bits)
                diff = compare("a", "b", *paired(got, central))
                word = ("behind" if " behind " in diff else "ahead" if " ahead of " in diff
                        else "no difference")
                levels.setdefault(setting, []).append(word == "behind")
                wraps = [float(r["modular_wraps"]) for r in rows if r["setting"] == setting
                         and r["target_epsilon"] == str(eps) and r["bits"] == str(bits)]
                table.append([f"{eps}", SETTINGS[setting], str(bits),
                              mean_sd(list(got.values())),
                              fmt(one(setting, "noise_multiplier", eps, bits), 2), word,
                              fmt(statistics.mean(wraps), 0)])
        for setting, behind in levels.items():
            level = [b for i, b in enumerate(BITS) if not any(behind[i:])]
            v[f"level_{setting}_eps{eps}"] = str(min(level)) if level else "none of the bits run"
        v[f"low_eps{eps}"] = compare(f"the distributed discrete Gaussian at {BITS[0]} bits",
                                     "central DP", *paired(score("ddg", eps, BITS[0]), central))
    v["table"] = "\n" + markdown_table(
        ["epsilon", "mechanism", "bits", "pooled test C-index (mean ± sd)",
         "noise multiplier of the sum", "against central (95% paired t)",
         "wrapped coordinates (all rounds)"], table, "lllrrlr") + "\n"
    spent = [float(r["epsilon"]) / float(r["target_epsilon"]) for r in rows
             if r["target_epsilon"]]
    v["eps_spent"] = f"{min(spent):.4f}-{max(spent):.4f}"
    v["dense_bytes"] = fmt(one("nodp", "bytes_per_upload"), 0)
    v["params"] = str(int(one("nodp", "bytes_per_upload")) // 4)  # dense float32 entries
    v["padded"] = str(int(one("ddg", "padded_dim", EPSILONS[0], BITS[0])))
    btable = []
    for p in proto:
        measured = one("ddg", "bytes_per_upload", EPSILONS[0], int(p["bits"]))
        assert measured == float(p["client_up"]), (p, measured)
        share = 100 * int(p["masked_vector"]) / int(p["client_up"])
        btable.append([p["bits"], p["masked_vector"], p["client_up"], p["client_down"],
                       f"{share:.0f}%"])
    v["bytes_table"] = "\n" + markdown_table(
        ["bits", "masked vector", "SecAgg up (all four messages)",
         "SecAgg down (besides the model)", "masked vector's share of the upload"],
        btable) + "\n"
    v["time_total"] = program_minutes(rows)
    return v


def main() -> None:
    write_arm("distributed_dp_tcga", __doc__.splitlines()[0], collect, protocol_bytes,
              lambda rows, out: plot(rows, out / "cindex.png", EPSILONS, METRIC,
                                     "pooled test C-index", "6 regions every round"))


if __name__ == "__main__":
    main()
