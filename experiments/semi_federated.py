"""Semi-federated lab panels: per-site input encoders against three baselines.

    python experiments/semi_federated.py [--seeds 5] [--out results/semi_federated]
                                         [--conditions A,B] [--collect]

Scenario ``partition=panels`` (conf/partition/panels.yaml) on ``dataset=breast_cancer``: 4 hospitals
(an iid split of the 569 patients) that each measure 4 shared columns plus each other column
with probability 0.4 (a new draw per seed). Three conditions: ``panels`` (the sites' columns
differ), ``panels+units`` (each site also measures in its own units: an additive assay offset
per site, ``partition.feature_shift.kind=intensity``, strength 1 sd) and ``10 sites+units``
(the same over 10 smaller sites, all 10 per round). Four arms, the
same network (30 -> 32 -> 32 -> 2, ReLU) and schedule (100 rounds, all 4 sites per round, 1
epoch, batch 10, lr 0.05):

- ``semifed``: ``model=semi algorithm=semifed``, each site's own encoder layer (30 -> 32) never
  leaves it; the body and head are FedAvg;
- ``semifed_head``: the same with the head kept at each site too (``model.local=[encoder,head]``);
- ``fedavg_zero``: FedAvg of the whole MLP on the zero-filled table;
- ``fedavg_shared``: FedAvg of the MLP on the columns every site measures
  (``partition.panels.keep=shared``);
- ``local``: each site trains the MLP alone on its zero-filled table.

Writes ``runs.csv`` (one row per condition, arm, seed and site: own-site accuracy, AUC and log
loss, bytes), ``summary.csv`` (mean and sd over seeds of the site-mean metrics) and
``semi_federated.png``. Every number and table that ``<out>/README.md`` quotes is rendered from
``runs.csv`` and ``summary.csv`` by :func:`readme_values` (fedbench/study_readme.py); ``main``
re-renders the README after writing them.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from pathlib import Path

import numpy as np

from fedbench.study_readme import (compare, excludes_zero, fmt, markdown_table, mean_sd,
                                   paired_t, render_file)

REPO = Path(__file__).resolve().parent.parent
BASE = ["dataset=breast_cancer", "partition=panels", "dataset.num_clients=4", "clients_per_round=4",
        "lr=0.05", "rounds=100", "eval_every=100"]
MLP = ["model=mlp", "model.hidden=[32,32]"]
ARMS = {
    "semifed": ["model=semi", "algorithm=semifed"],
    "semifed_head": ["model=semi", "algorithm=semifed", "model.local=[encoder,head]"],
    "fedavg_zero": MLP,
    "fedavg_shared": [*MLP, "partition.panels.keep=shared"],
    "local": [*MLP, "algorithm=local"],
}
UNITS = ["partition.feature_shift.kind=intensity", "partition.feature_shift.strength=1.0"]
CONDITIONS = {
    "panels": [],
    "panels+units": UNITS,
    "10 sites+units": ["dataset.num_clients=10", "clients_per_round=10", *UNITS],
}


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def log_loss(sim, state) -> list[float]:
    """Each site's mean cross-entropy on its own test split, with the model it uses."""
    import jax

    params = sim.evaluated_params(state)
    data = sim.data
    out = []
    for c in range(data.num_clients):
        p = jax.tree.map(lambda a, c=c: a[c], params) if sim.per_client_models else params
        m = int(data.test_counts[c])
        logits = np.asarray(sim.apply_fn(p, data.test_x[c, :m]), np.float64)
        y = np.asarray(data.test_y[c, :m])
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        out.append(float(-logp[np.arange(m), y].mean()))
    return out


def run_one(overrides: list[str]) -> tuple[dict, dict]:
    from fedbench.compression.traffic import traffic
    from fedbench.run import build_simulator

    cfg = compose(overrides)
    built = build_simulator(cfg)
    sim = built.sim
    state = sim.run(sim.init(), cfg["rounds"])
    sites = sim.site_results(state)
    sites["loss"] = log_loss(sim, state)
    bytes_up = (traffic(state, sim.dense_bits // 8, 1)["bytes_up"]
                if built.algorithm.kind == "federated" else 0)
    sites["bytes_up"] = bytes_up
    return sites, built.partition_stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "results" / "semi_federated"))
    parser.add_argument("--conditions", default=None,
                        help="comma-separated conditions to run (default: all); the other "
                             "conditions' rows of <out>/runs.csv are kept")
    parser.add_argument("--collect", action="store_true",
                        help="only rewrite summary.csv and the PNG from <out>/runs.csv")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.collect:
        write_summary(read_runs(out / "runs.csv"), out)
        render_readme(out)
        return
    rows, start = [], time.time()
    run = list(CONDITIONS) if args.conditions is None else args.conditions.split(",")
    if args.conditions is not None and (out / "runs.csv").exists():  # keep the others' rows
        rows = [r for r in read_runs(out / "runs.csv") if r["condition"] not in run]
    for condition in run:
        extra = CONDITIONS[condition]
        for seed in range(args.seeds):
            for arm, arm_overrides in ARMS.items():
                sites, stats = run_one([*BASE, *arm_overrides, *extra, f"seed={seed}"])
                for k, n in enumerate(sites["test_sizes"]):
                    rows.append({
                        "condition": condition, "arm": arm, "seed": seed, "site": k,
                        "n_test": n, "columns": len(stats["panels"]["columns"][k]),
                        "shared_columns": len(stats["panels"]["shared"]),
                        "accuracy": round(sites["own"][k], 4),
                        "auc": round(sites["auc"]["own"][k], 4),
                        "loss": round(sites["loss"][k], 4), "bytes_up": sites["bytes_up"],
                    })
                print(f"{condition:13s} seed {seed} {arm:14s} acc "
                      f"{np.mean(sites['own']):.4f} loss {np.mean(sites['loss']):.4f} "
                      f"bytes {sites['bytes_up']}  ({time.time() - start:.0f} s)", flush=True)
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_summary(rows, out)
    render_readme(out)
    print(f"total {time.time() - start:.0f} s")


def render_readme(out: Path) -> None:
    """Re-renders ``<out>/README.md`` from the files just written (when it exists)."""
    if (out / "README.md").exists():
        print(f"{out / 'README.md'}: {'re-rendered' if render_file(out) else 'up to date'}")


def read_runs(path: Path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in ("condition", "arm"):
                r[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    return rows


def write_summary(rows: list[dict], out: Path) -> None:
    summary = summarise(rows)
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot(summary, out / "semi_federated.png")


def summarise(rows: list[dict]) -> list[dict]:
    """Per condition and arm: mean and sd over seeds of the site-mean accuracy, AUC and loss,
    of the worst site's accuracy, and the bytes uploaded."""
    out = []
    for condition in CONDITIONS:
        for arm in ARMS:
            picked = [r for r in rows if r["condition"] == condition and r["arm"] == arm]
            seeds = sorted({r["seed"] for r in picked})
            per_seed = {m: [statistics.mean(r[m] for r in picked if r["seed"] == s) for s in seeds]
                        for m in ("accuracy", "auc", "loss")}
            per_seed["worst_accuracy"] = [min(r["accuracy"] for r in picked if r["seed"] == s)
                                          for s in seeds]
            row = {"condition": condition, "arm": arm, "seeds": len(seeds)}
            for m, v in per_seed.items():
                row[f"{m}_mean"] = round(statistics.mean(v), 4)
                row[f"{m}_sd"] = round(statistics.stdev(v), 4) if len(v) > 1 else float("nan")
            row["bytes_up_mean"] = round(statistics.mean(
                next(r["bytes_up"] for r in picked if r["seed"] == s) for s in seeds))
            out.append(row)
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / len(ARMS)
    for ax, metric, label in ((axes[0], "accuracy", "own-site test accuracy (site mean)"),
                              (axes[1], "loss", "own-site test log loss (site mean)")):
        for i, arm in enumerate(ARMS):
            vals = [r for r in summary if r["arm"] == arm]
            xs = np.arange(len(vals)) + (i - (len(ARMS) - 1) / 2) * width
            ax.bar(xs, [r[f"{metric}_mean"] for r in vals], width,
                   yerr=[r[f"{metric}_sd"] for r in vals], label=arm, capsize=3)
        ax.set_xticks(np.arange(len(CONDITIONS)), list(CONDITIONS))
        ax.set_ylabel(label)
        if metric == "accuracy":
            ax.set_ylim(0.8, 1.0)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle("breast_cancer lab panels: own-site test metrics (mean, sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# results/semi_federated/README.md: every number it quotes, from runs.csv and summary.csv.

OTHERS = [a for a in ARMS if a != "semifed"]
ROUNDS = int(next(o for o in BASE if o.startswith("rounds=")).split("=")[1])
BYTES_PER_PARAMETER = 4  # float32 uploads (the simulator's dense_bits of 32)


def _sites(condition: str) -> int:
    """Sites per round of ``condition`` (every site in every round), from its overrides."""
    found = [o for o in BASE + CONDITIONS[condition] if o.startswith("clients_per_round=")]
    return int(found[-1].split("=")[1])


def per_seed(rows: list[dict]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Per condition and arm, over seeds in order: site-mean accuracy and log loss, and the
    worst site's accuracy (the quantities ``summarise`` averages)."""
    out = {}
    for condition in CONDITIONS:
        for arm in ARMS:
            picked = [r for r in rows if r["condition"] == condition and r["arm"] == arm]
            seeds = sorted({r["seed"] for r in picked})
            by = {s: [r for r in picked if r["seed"] == s] for s in seeds}
            out[condition, arm] = {
                "seeds": seeds,
                "accuracy": [statistics.mean(r["accuracy"] for r in by[s]) for s in seeds],
                "auc": [statistics.mean(r["auc"] for r in by[s]) for s in seeds],
                "loss": [statistics.mean(r["loss"] for r in by[s]) for s in seeds],
                "worst": [min(r["accuracy"] for r in by[s]) for s in seeds],
                "bytes_up": [by[s][0]["bytes_up"] for s in seeds]}
    return out


def _key(condition: str) -> str:
    """``condition`` as a README value name (``10 sites+units`` -> ``10_sites_units``)."""
    return "_".join("".join(ch if ch.isalnum() else " " for ch in condition).split())


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _signed_sd(d: np.ndarray, digits: int = 3) -> str:
    return f"{fmt(float(d.mean()), digits, True)} ± {fmt(float(d.std(ddof=1)), digits)}"


def _interval(a, b, digits: int = 3) -> str:
    _, low, high = paired_t(a, b)
    return f"[{fmt(low, digits, True)}, {fmt(high, digits, True)}]"


def _seeds_needed(a, b, level: float = 0.95, most: int = 1000) -> int | None:
    """The fewest seeds at which a paired t interval with the observed mean difference and sd
    would exclude zero (a rough planning count; None when the mean difference is 0)."""
    import scipy.stats

    d = np.asarray(a, float) - np.asarray(b, float)
    mean, sd = abs(float(d.mean())), float(d.std(ddof=1))
    if mean == 0:
        return None
    for n in range(2, most + 1):
        if scipy.stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n) < mean:
            return n
    return None


def readme_values(folder: Path) -> dict[str, str]:
    """Every number and table ``folder/README.md`` quotes, from ``folder/runs.csv`` and
    ``folder/summary.csv`` only. Rankings: paired t intervals over seeds (same seed, same split
    and panel draw), a direction only where the 95% interval excludes zero."""
    folder = Path(folder)
    rows = read_runs(folder / "runs.csv")
    with open(folder / "summary.csv") as f:
        summary = {(r["condition"], r["arm"]): r for r in csv.DictReader(f)}
    seeds = per_seed(rows)
    conds = list(CONDITIONS)
    four = [c for c in conds if _sites(c) == 4]
    ten = [c for c in conds if _sites(c) == 10]
    v: dict[str, str] = {}
    code = {a: f"`{a}`" for a in ARMS}

    # The scenario, from the panel draws.
    site_rows = [r for r in rows if r["arm"] == "semifed"]
    cols = [r["columns"] for r in site_rows]
    shared = [r["shared_columns"] for r in site_rows]
    own = [r["columns"] - r["shared_columns"] for r in site_rows]
    v["columns_range"] = f"{min(cols)}-{max(cols)}"
    v["columns_mean"] = fmt(statistics.mean(cols), 0)
    v["shared_range"] = f"{min(shared)}-{max(shared)}"
    v["own_columns_range"] = f"{min(own)}-{max(own)}"

    def n_test(cs):
        sizes = sorted({r["n_test"] for r in rows if r["condition"] in cs})
        return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"

    v["n_test_4"], v["n_test_10"] = n_test(four), n_test(ten)
    smallest = min(r["n_test"] for r in rows if r["condition"] in ten)
    v["one_patient_points"] = fmt(100 / smallest, 0)

    # The results table: from runs.csv at full precision (summary.csv holds the same numbers
    # rounded to 4 decimals, checked here, so the table does not round twice).
    table = []
    for c in conds:
        for i, arm in enumerate(ARMS):
            ps, r = seeds[c, arm], summary[c, arm]
            for key, col in (("accuracy", "accuracy"), ("auc", "auc"), ("loss", "loss"),
                             ("worst", "worst_accuracy")):
                for stat, fn in (("mean", statistics.mean), ("sd", statistics.stdev)):
                    if abs(fn(ps[key]) - float(r[f"{col}_{stat}"])) > 6e-5:
                        raise ValueError(f"summary.csv disagrees with runs.csv: {c}, {arm}, "
                                         f"{col}_{stat}")
            mb = statistics.mean(ps["bytes_up"]) / 1e6
            table.append([c if i == 0 else "", arm, mean_sd(ps["accuracy"]),
                          fmt(statistics.mean(ps["auc"])), mean_sd(ps["loss"]),
                          fmt(statistics.mean(ps["worst"])), fmt(mb, 2) if mb else "0"])
    v["results_table"] = markdown_table(
        ["condition", "arm", "accuracy", "AUC", "log loss", "worst site acc.", "MB up"], table,
        align="llrrrrr")

    # Paired differences, semifed minus each other arm, from runs.csv.
    diff_rows = []
    for c in conds:
        base = seeds[c, "semifed"]
        for arm in OTHERS:
            other = seeds[c, arm]
            assert other["seeds"] == base["seeds"], (c, arm)
            da = np.subtract(base["accuracy"], other["accuracy"])
            dl = np.subtract(base["loss"], other["loss"])
            diff_rows.append([c, arm, _signed_sd(da),
                              _interval(base["accuracy"], other["accuracy"]),
                              _signed_sd(dl), _interval(base["loss"], other["loss"]),
                              f"{int((dl < 0).sum())}/{len(dl)}"])
    v["paired_table"] = markdown_table(
        ["condition", "vs", "accuracy", "95% interval", "log loss", "95% interval",
         "seeds where semifed has the lower loss"], diff_rows, align="llrrrrr")
    v["seeds"] = str(len(seeds[conds[0], "semifed"]["seeds"]))

    def acc(c, a, b):
        return compare(code[a], code[b], seeds[c, a]["accuracy"], seeds[c, b]["accuracy"],
                       higher="is ahead of", lower="is behind")

    def loss(c, a, b):
        return compare(code[a], code[b], seeds[c, a]["loss"], seeds[c, b]["loss"],
                       higher="has a higher log loss than", lower="has a lower log loss than")

    def worst(c, a, b):
        return compare(code[a], code[b], seeds[c, a]["worst"], seeds[c, b]["worst"],
                       higher="has a better worst site than",
                       lower="has a worse worst site than")

    def excl(c, a, b, m):
        return excludes_zero(paired_t(seeds[c, a][m], seeds[c, b][m]))

    # 1. FedAvg on the shared columns only.
    rest = [a for a in ARMS if a != "fedavg_shared"]

    def shared_worse(c, arm, m):
        mean, low, high = paired_t(seeds[c, "fedavg_shared"][m], seeds[c, arm][m])
        return high < 0 if m == "accuracy" else low > 0

    behind_all = [c for c in conds
                  if all(shared_worse(c, a, m) for a in rest for m in ("accuracy", "loss"))]
    v["shared_headline"] = (
        "is behind every other arm in every condition" if behind_all == conds else
        f"is behind every other arm in {_join([f'`{c}`' for c in behind_all])}" if behind_all
        else "is not established as behind the other arms in any condition")
    details = []
    for c in (c for c in conds if c not in behind_all):
        parts = []
        for m, word in (("accuracy", "accuracy"), ("loss", "log loss")):
            found = [a for a in rest if excl(c, "fedavg_shared", a, m)]
            worse = [f"{code[a]}'s" for a in found if shared_worse(c, a, m)]
            better = [f"{code[a]}'s" for a in found if not shared_worse(c, a, m)]
            if not worse and not better:
                parts.append(f"its {word} shows no difference from any arm at this number of "
                             "seeds")
                continue
            text = (f"its {word} is worse than {_join(worse)}" if worse else
                    f"its {word} is better than {_join(better)}")
            if worse and better:
                text += f" and better than {_join(better)}"
            if len(worse) + len(better) < len(rest):
                text += " (no difference from the others at this number of seeds)"
            parts.append(text)
        details.append(f"in `{c}` {_join(parts)}")
    lead = ("In those conditions every 95% paired t interval over seeds, accuracy and log loss "
            "against each of the four other arms, excludes zero" if behind_all else
            "No condition has every interval against the other arms excluding zero")
    v["shared_detail"] = lead + ("; " + "; ".join(details) if details else "")
    for c in conds:
        v[f"shared_vs_semifed_{_key(c)}"] = (f"{acc(c, 'semifed', 'fedavg_shared')}; "
                                       f"{loss(c, 'semifed', 'fedavg_shared')}")
    ratios = [statistics.mean(seeds[c, "fedavg_shared"]["loss"])
              / statistics.mean(seeds[c, "semifed"]["loss"]) for c in conds]
    low, high = f"{min(ratios):.1f}", f"{max(ratios):.1f}"
    v["shared_loss_ratio"] = low if low == high else f"{low}-{high}"
    pairs = [(a, b) for i, a in enumerate(rest) for b in rest[i + 1:]]
    tests = [(c, a, b, m) for c in conds for a, b in pairs for m in ("accuracy", "loss", "worst")]
    n_excl = sum(excl(*t) for t in tests)
    v["others_excluding"] = (
        f"None of the {len(tests)} paired comparisons among the other four arms" if n_excl == 0
        else f"{n_excl} of the {len(tests)} paired comparisons among the other four arms")
    v["others_excluding_verb"] = "excludes zero" if n_excl == 0 else "exclude zero"
    v["only_shared_differs"] = (
        "The only differences established at this number of seeds involve `fedavg_shared`, "
        "which loses columns; smaller sites (the 10-site condition) move the means but not "
        "beyond the seed-to-seed noise (3. above)" if n_excl == 0 else
        f"Besides `fedavg_shared`, which loses columns, {n_excl} of {len(tests)} comparisons "
        "between the other arms exclude zero (1. above)")

    # 2. Traffic and cost of the per-site encoders.
    params = {}
    for arm in ("semifed", "semifed_head", "fedavg_zero"):
        per = {b / (BYTES_PER_PARAMETER * ROUNDS * _sites(c))
               for c in conds for b in seeds[c, arm]["bytes_up"]}
        assert len(per) == 1 and float(next(iter(per))).is_integer(), (arm, per)
        params[arm] = int(next(iter(per)))
    v["semifed_params"] = str(params["semifed"])
    v["mlp_params"] = str(params["fedavg_zero"])
    v["encoder_params"] = str(params["fedavg_zero"] - params["semifed"])
    traffic = [statistics.mean(seeds[c, "semifed"]["bytes_up"])
               / statistics.mean(seeds[c, "fedavg_zero"]["bytes_up"]) for c in conds]
    v["traffic_share"] = f"{100 * statistics.mean(traffic):.0f}%"
    small = [(c, a) for c in four for a in ("fedavg_zero", "local")]
    v["small_acc_max"] = fmt(100 * max(abs(float(np.mean(np.subtract(
        seeds[c, "semifed"]["accuracy"], seeds[c, a]["accuracy"])))) for c, a in small), 1)
    v["small_loss_max"] = fmt(max(abs(float(np.mean(np.subtract(
        seeds[c, "semifed"]["loss"], seeds[c, a]["loss"])))) for c, a in small))
    n_small = sum(excl(c, "semifed", a, m) for c, a in small for m in ("accuracy", "loss"))
    v["small_verdict"] = (
        "every one of these 95% paired t intervals includes zero (no difference at this number "
        "of seeds)" if n_small == 0 else
        f"{n_small} of these {2 * len(small)} 95% paired t intervals exclude zero")
    v["encoder_cost"] = ("with no difference in accuracy or log loss measurable at 4 sites"
                         if n_small == 0 else "and at 4 sites some differences are measurable")

    # 3. Ten small sites with per-site units.
    c10 = ten[0]
    def mean_diff(a, m):
        return float(np.mean(np.subtract(seeds[c10, "semifed"][m], seeds[c10, a][m])))

    favours = all(mean_diff(a, "accuracy") > 0 and mean_diff(a, "loss") < 0
                  for a in ("fedavg_zero", "local"))
    established = [excl(c10, "semifed", a, m) for a in ("fedavg_zero", "local")
                   for m in ("accuracy", "loss", "worst")]
    v["ten_headline"] = (
        ("the mean differences favour `semifed`, " if favours else
         "the mean differences point in no single direction, ")
        + ("but none is established" if not any(established) else
           f"and {sum(established)} of {len(established)} are established"))
    for a in ("fedavg_zero", "local"):
        dl = np.subtract(seeds[c10, "semifed"]["loss"], seeds[c10, a]["loss"])
        v[f"ten_vs_{a}"] = (f"{acc(c10, 'semifed', a)}; in log loss, {loss(c10, 'semifed', a)};"
                            f" `semifed` has the lower loss in {int((dl < 0).sum())}/{len(dl)} "
                            "seeds")
        v[f"ten_worst_vs_{a}"] = worst(c10, "semifed", a)
    v["ten_worst_means"] = ", ".join(
        f"{code[a]} {fmt(float(np.mean(seeds[c10, a]['worst'])))}"
        for a in ("semifed", "semifed_head", "fedavg_zero", "local"))
    v["ten_verdict"] = ("a trend, not a result" if not any(established) else
                        "partly established (see the intervals)")
    needed = [_seeds_needed(seeds[c10, "semifed"]["accuracy"], seeds[c10, a]["accuracy"])
              for a in ("fedavg_zero", "local")]
    v["seeds_needed"] = ("-".join(str(n) for n in sorted(set(needed)))
                         if all(n is not None for n in needed) else "more than 1000")

    # 4. A local head on top.
    head = [(c, m) for c in conds for m in ("accuracy", "loss")]
    n_head = sum(excl(c, "semifed_head", "semifed", m) for c, m in head)
    v["head_verdict"] = (
        "makes no difference measurable at this number of seeds" if n_head == 0 else
        f"makes a measurable difference in {n_head} of {len(head)} comparisons")
    v["head_detail"] = (
        f"`semifed_head` against `semifed`: every accuracy and log-loss interval includes zero "
        f"in all {len(conds)} conditions" if n_head == 0 else
        "; ".join(f"`{c}`: {acc(c, 'semifed_head', 'semifed')}" for c in conds))

    # Caveats.
    local_accuracy = statistics.mean(seeds[four[0], "local"]["accuracy"])
    v["local_panels_accuracy"] = f"{100 * local_accuracy:.0f}%"
    v["local_vs_semifed_panels"] = acc(four[0], "local", "semifed")
    return v


if __name__ == "__main__":
    main()
