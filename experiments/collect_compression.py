"""Collects the compression study into results/compression/ (CSV + PNG) and renders its README.

Run after experiments/compression.sh:

    python experiments/collect_compression.py [--runs multirun/compression] \
        [--out results/compression]

Each configuration ran as one job with ``seeds=3`` in ``<runs>/<config>/``; the job writes one
run directory per seed, ``<runs>/<config>/seed=<s>/`` with its own ``metrics.jsonl`` (one row per
evaluation) and ``summary.json`` (its own config, ``seeds: 1``), and lists them in
``<runs>/<config>/summary.json`` (``replicas``). This reads every seed's ``metrics.jsonl`` and
writes one row per configuration, seed and evaluation (``compression.csv``), and a figure of
test accuracy against cumulative uplink bytes (log x) and against simulated seconds on the
mixed hospital links, the mean over seeds, one line per configuration (``compression.png``).
``compression_ratio`` is dense float32 bytes over the bytes sent; fedbench reports it only for
compressed runs, so the dense run's is written as 1 (its upload is the dense float32 model).
Needs matplotlib (``pip install -e ".[analysis]"``).

When ``--out`` holds a ``README.md`` (results/compression/ does), it is re-rendered afterwards
(:func:`fedbench.study_readme.render_file`): every number and table it quotes comes from
:func:`readme_values`, which reads only the files written here.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np

from fedbench.provenance import ProvenanceError, write_study_provenance
from fedbench.study_readme import (excludes_zero, fmt, markdown_table, mean_sd, paired_t,
                                   render_file)

FIELDS = [
    "config", "seed", "round", "bytes_up", "simulated_seconds", "test_accuracy",
    "client_accuracy_mean", "compression_ratio", "bytes_down",
]
#: run_times.csv: per configuration, the wall seconds of its fedbench command (from the log of
#: experiments/compression.sh, "== name: N s"), compile and run seconds (its summary.json), and
#: the UTC date its summary.json was written
TIME_FIELDS = ["config", "wall_seconds", "compile_seconds", "run_seconds", "finished_utc"]

#: plotting (and table) order, and each configuration's label
CONFIGS = {
    "dense": "dense FedAvg",
    "topk_10pct": "top-k 10%",
    "topk_10pct_ef": "top-k 10% + EF",
    "topk_1pct": "top-k 1%",
    "topk_1pct_ef": "top-k 1% + EF",
    "topk_0.1pct": "top-k 0.1%",
    "topk_0.1pct_ef": "top-k 0.1% + EF",
    "quantize_8bit": "quantize 8-bit",
    "quantize_2bit": "quantize 2-bit",
    "qsgd": "QSGD (s=16, bucket 512)",
    "ef_signsgd": "EF-SignSGD",
}


def replicas(job: Path) -> list[Path]:
    """The per-seed run directories of a ``seeds=S`` job (or the job itself for ``seeds=1``)."""
    summary = json.loads((job / "summary.json").read_text())
    if "replicas" in summary:
        return [job / name for name in summary["replicas"]]
    return [job]


def runs_of(runs: Path) -> list[Path]:
    """Every seed's run directory under ``runs`` (the configurations' replicas)."""
    return [run for job in sorted(p for p in runs.iterdir() if (p / "summary.json").exists())
            for run in replicas(job)]


def collect(runs: Path) -> list[dict]:
    rows = []
    for job in sorted(p for p in runs.iterdir() if (p / "summary.json").exists()):
        for run in replicas(job):
            seed = json.loads((run / "summary.json").read_text())["config"]["seed"]
            for line in (run / "metrics.jsonl").read_text().splitlines():
                m = json.loads(line)
                ratio = m.get("compression_ratio")
                if ratio is None and job.name == "dense" and m["bytes_up"]:
                    ratio = 1.0
                rows.append({
                    "config": job.name,
                    "seed": seed,
                    "round": m["round"],
                    "bytes_up": m["bytes_up"],
                    "simulated_seconds": m["simulated_seconds"],
                    "test_accuracy": m["test_accuracy"],
                    "client_accuracy_mean": m["client_accuracy_mean"],
                    "compression_ratio": ratio,
                    "bytes_down": m.get("bytes_down"),
                })
    order = {name: i for i, name in enumerate(CONFIGS)}
    rows.sort(key=lambda r: (order.get(r["config"], len(order)), r["config"], r["seed"],
                             r["round"]))
    return rows


def setup(runs: Path) -> dict:
    """The partition and links every run used (setup.json), from each seed's summary.json;
    refuses runs that differ (every configuration must share seed 0's partition and links)."""
    found: dict[str, list[str]] = {}
    for job in sorted(p for p in runs.iterdir() if (p / "summary.json").exists()):
        for run in replicas(job):
            summary = json.loads((run / "summary.json").read_text())
            stats, config = summary["partition_stats"], summary["config"]
            key = json.dumps({
                "clients": len(stats["client_sizes"]),
                "train_examples": sum(stats["client_sizes"]),
                "test_examples": sum(stats["test_sizes"]),
                "train_size_min": stats["size_min"],
                "train_size_max": stats["size_max"],
                "sites_per_profile": summary["links"]["sites_per_profile"],
                "step_seconds": summary["links"]["step_seconds"],
                "clients_per_round": config["clients_per_round"],
                "local_epochs": config["local_epochs"],
                "batch_size": config["batch_size"],
                "rounds": config["rounds"],
            }, sort_keys=True)
            found.setdefault(key, []).append(str(run))
    if len(found) != 1:
        raise SystemExit(f"{runs}: runs with different partitions, links or settings: "
                         + "; ".join(f"{v[0]} (and {len(v) - 1} more): {k}"
                                     for k, v in found.items()))
    return json.loads(next(iter(found)))


def log_seconds(log: Path) -> dict[str, int]:
    """``{name: seconds}`` from the "== name: N s" lines experiments/compression.sh prints (the
    last one per name)."""
    import re

    return {m["name"]: int(m["s"]) for m in re.finditer(
        r"^== (?P<name>\S+): (?P<s>\d+) s$", Path(log).read_text(), re.M)}


def run_times(runs: Path, log: Path | None) -> list[dict]:
    """run_times.csv rows, one per configuration (see TIME_FIELDS)."""
    import datetime

    wall = log_seconds(log) if log else {}
    order = {name: i for i, name in enumerate(CONFIGS)}
    jobs = sorted((p for p in runs.iterdir() if (p / "summary.json").exists()),
                  key=lambda p: (order.get(p.name, len(order)), p.name))
    out = []
    for job in jobs:
        timing = json.loads((job / "summary.json").read_text()).get("timing", {})
        finished = datetime.datetime.fromtimestamp((job / "summary.json").stat().st_mtime,
                                                   datetime.timezone.utc)
        out.append({"config": job.name, "wall_seconds": wall.get(job.name),
                    "compile_seconds": timing.get("compile_seconds"),
                    "run_seconds": timing.get("run_seconds"),
                    "finished_utc": finished.strftime("%Y-%m-%d")})
    return out


def over_seeds(rows: list[dict]) -> dict[str, list[dict]]:
    """Per configuration and evaluation round: the mean over seeds of the plotted columns."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["round"]), []).append(r)
    curves: dict[str, list[dict]] = {}
    for (config, rnd), group in sorted(groups.items(), key=lambda kv: kv[0][1]):
        curves.setdefault(config, []).append({
            "round": rnd,
            "seeds": len(group),
            **{k: statistics.mean(g[k] for g in group)
               for k in ("bytes_up", "simulated_seconds", "test_accuracy")},
        })
    return curves


def final_table(rows: list[dict]) -> list[dict]:
    """Per configuration at its last round: accuracy mean and sd over seeds, uplink MB, ratio,
    simulated hours (means over seeds)."""
    last: dict[str, list[dict]] = {}
    for r in rows:
        best = last.get(r["config"])
        if best is None or r["round"] > best[0]["round"]:
            last[r["config"]] = [r]
        elif r["round"] == best[0]["round"]:
            best.append(r)
    table = []
    for config, group in last.items():
        acc = [g["test_accuracy"] for g in group]
        table.append({
            "config": config,
            "round": group[0]["round"],
            "seeds": len(group),
            "acc_mean": statistics.mean(acc),
            "acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "client_acc_mean": statistics.mean(g["client_accuracy_mean"] for g in group),
            "uplink_mb": statistics.mean(g["bytes_up"] for g in group) / 1e6,
            "ratio": statistics.mean(g["compression_ratio"] for g in group),
            "hours": statistics.mean(g["simulated_seconds"] for g in group) / 3600,
        })
    return table


#: colour and line style per configuration: black for dense, one colour per top-k fraction
#: (solid with error feedback, dashed without), one per quantiser
STYLES = {
    "dense": ("k", "-"),
    "topk_10pct": ("C0", "--"), "topk_10pct_ef": ("C0", "-"),
    "topk_1pct": ("C1", "--"), "topk_1pct_ef": ("C1", "-"),
    "topk_0.1pct": ("C2", "--"), "topk_0.1pct_ef": ("C2", "-"),
    "quantize_8bit": ("C3", "-"), "quantize_2bit": ("C4", "-"),
    "qsgd": ("C5", "-"), "ef_signsgd": ("C6", "-"),
}


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    names = [c for c in CONFIGS if c in curves] + sorted(set(curves) - set(CONFIGS))
    for i, name in enumerate(names):
        points = curves[name]
        color, ls = STYLES.get(name, (f"C{(7 + i) % 10}", ":"))
        style = dict(color=color, ls=ls, marker=".", markersize=4,
                     lw=2.0 if name == "dense" else 1.3, label=CONFIGS.get(name, name))
        up = [(p["bytes_up"], p["test_accuracy"]) for p in points if p["bytes_up"] > 0]
        axes[0].plot([b / 1e6 for b, _ in up], [a for _, a in up], **style)
        axes[1].plot([p["simulated_seconds"] for p in points],
                     [p["test_accuracy"] for p in points], **style)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("cumulative uplink MB, all clients (log scale)")
    axes[1].set_xlabel("simulated seconds (35 sites hospital_dsl 20/5 Mbit/s, 15 rural_4g 10/2)")
    axes[0].set_ylabel("test accuracy (pooled test set)")
    axes[0].set_ylim(0.5, 0.97)  # round 0 (0.07) and the first evaluations of 0.1% top-k are below
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle("Uplink compression, FedAvg 2NN on MNIST (mnist5k), 50 clients, Dirichlet(0.5), "
                 "10 per round, 200 rounds; mean over 3 seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# The README's values (results/compression/README.md), from the committed compression.csv only.

#: the accuracy every "to 90%" column and sentence refers to
TARGET = 0.90
#: QSGD with Elias coding, s = sqrt(n): at most 2.8 n + 32 bits per bucket of n entries
#: (Alistarh et al., "QSGD", NeurIPS 2017, Sec. 3.2), a published bound, not measured here
QSGD_ELIAS_BITS_PER_ENTRY = 2.8
#: settings the README's prose names (experiments/compression.sh; the rural_4g profile's rates
#: from fedbench/links.py); setup.json, written from the runs, is checked against them
ROUNDS = 200
CLIENTS_PER_ROUND = 10
RURAL_DOWN_MBIT, RURAL_UP_MBIT, RURAL_RTT_S = 10.0, 2.0, 0.060


def _load(folder: Path) -> dict[str, dict[int, dict[int, dict]]]:
    """``{config: {round: {seed: row}}}`` of ``folder/compression.csv`` (numbers parsed)."""
    data: dict[str, dict[int, dict[int, dict]]] = {}
    with open(Path(folder) / "compression.csv", newline="") as f:
        for row in csv.DictReader(f):
            parsed = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()
                      if k != "config"}
            data.setdefault(row["config"], {}).setdefault(int(parsed["round"]), {})[
                int(parsed["seed"])] = parsed
    return data


class _Study:
    """Per-seed arrays from compression.csv, seeds in a fixed order (they pair across configs:
    seed s of every configuration shares the partition, links, initialisation and sampling)."""

    def __init__(self, folder: Path):
        self.data = _load(folder)
        self.configs = ([c for c in CONFIGS if c in self.data]
                        + sorted(set(self.data) - set(CONFIGS)))
        seeds = {tuple(sorted(seeds)) for rounds in self.data.values() for seeds in rounds.values()}
        if len(seeds) != 1:
            raise ValueError(f"compression.csv: configurations and rounds with different seeds "
                             f"{seeds}")
        self.seeds = list(next(iter(seeds)))
        self.last = max(self.data["dense"])
        if self.last != ROUNDS:  # the README's prose names rounds 100 and 200
            raise ValueError(f"compression.csv: last round {self.last}, the README expects "
                             f"{ROUNDS}")

    def per_seed(self, config: str, column: str = "test_accuracy", rnd: int | None = None
                 ) -> np.ndarray:
        rows = self.data[config][self.last if rnd is None else rnd]
        return np.array([rows[s][column] for s in self.seeds], float)

    def mean(self, config: str, column: str = "test_accuracy", rnd: int | None = None) -> float:
        return float(self.per_seed(config, column, rnd).mean())

    def points(self, config: str, rnd: int | None = None) -> np.ndarray:
        return 100 * self.per_seed(config, "test_accuracy", rnd)

    def to_target_mean(self, config: str) -> tuple[int, float, float] | None:
        """(round, uplink MB, simulated seconds) at the first evaluation whose mean accuracy over
        seeds reaches TARGET (bytes and seconds: means over seeds), or None."""
        for rnd in sorted(self.data[config]):
            if self.mean(config, rnd=rnd) >= TARGET:
                return (rnd, self.mean(config, "bytes_up", rnd) / 1e6,
                        self.mean(config, "simulated_seconds", rnd))
        return None

    def to_target_seeds(self, config: str, column: str) -> np.ndarray | None:
        """Per seed, ``column`` (round or simulated_seconds) at the seed's first evaluation
        reaching TARGET; None when a seed never does."""
        out = []
        for s in self.seeds:
            hits = [r for r in sorted(self.data[config])
                    if self.data[config][r][s]["test_accuracy"] >= TARGET]
            if not hits:
                return None
            out.append(self.data[config][hits[0]][s][column])
        return np.array(out, float)


def _span(interval: tuple[float, float, float], digits: int = 2) -> str:
    _, low, high = interval
    return f"[{fmt(low, digits, True)}, {fmt(high, digits, True)}]"


def _cmp(name_a: str, name_b: str, a: np.ndarray, b: np.ndarray, unit: str = "points",
         digits: int = 2, higher: str = "ahead of", lower: str = "behind") -> str:
    """compare() with the unit after the difference ("behind dense by 0.61 points (...)")."""
    from fedbench.study_readme import compare

    text = compare(name_a, name_b, a, b, digits=digits, higher=higher, lower=lower)
    mean = float(np.mean(np.asarray(a, float) - np.asarray(b, float)))
    by = f" by {fmt(abs(mean), digits)}"
    return text.replace(f"{by} (", f"{by} {unit} (", 1)


def _change(later: np.ndarray, earlier: np.ndarray) -> str:
    """Gain of one configuration between two rounds, paired over seeds."""
    interval = paired_t(later, earlier)
    mean = interval[0]
    span = f"95% paired t interval {_span(interval)}, {len(later)} seeds"
    if excludes_zero(interval):
        return f"{'gains' if mean > 0 else 'loses'} {fmt(abs(mean), 2)} points ({span})"
    return f"changes by {fmt(mean, 2, True)} points, no difference at this number of seeds ({span})"


def _results(st: _Study) -> dict[str, str]:
    v: dict[str, str] = {}
    dense = st.points("dense")
    label = lambda c: CONFIGS.get(c, c).replace("s=16", "s = 16")  # noqa: E731

    # the final table
    rows = []
    for c in st.configs:
        acc = st.per_seed(c)
        if c == "dense":
            vs = "—"
        else:
            interval = paired_t(st.points(c), dense)
            vs = f"{fmt(interval[0], 2, True)} {_span(interval)}"
        hit = st.to_target_mean(c)
        rows.append([
            label(c), mean_sd(acc), vs, f"{st.mean(c, 'bytes_up') / 1e6:,.1f}",
            fmt(st.mean(c, "compression_ratio"), 1), fmt(st.mean(c, "simulated_seconds") / 3600),
            "not reached" if hit is None else f"{hit[0]} / {hit[1]:,.1f} / {hit[2]:.0f}",
        ])
    v["final_table"] = markdown_table(
        ["configuration", "test accuracy", "vs dense, points [95% paired t interval]",
         "uplink MB (total)", "compression ratio", "simulated hours",
         "round / uplink MB / seconds to 90%"], rows, "lrrrrrl")

    gaps = {c: 100 * abs(st.mean(c, "client_accuracy_mean") - st.mean(c)) for c in st.configs}
    worst = max(gaps, key=gaps.get)
    v["client_gap_max"] = fmt(gaps[worst], 2)
    v["client_gap_config"] = label(worst)

    # error feedback with top-k
    v["ef1_vs_dense"] = _cmp("top-k 1% + EF", "dense", st.points("topk_1pct_ef"), dense)
    v["ef1_vs_noef"] = _cmp("top-k 1% + EF", "top-k 1% without EF", st.points("topk_1pct_ef"),
                            st.points("topk_1pct"))
    v["ef1_acc"] = mean_sd(st.per_seed("topk_1pct_ef"))
    v["noef1_acc"] = mean_sd(st.per_seed("topk_1pct"))
    v["dense_acc"] = mean_sd(st.per_seed("dense"))
    v["ratio_1pct"] = fmt(st.mean("topk_1pct", "compression_ratio"), 1)
    gains = {f: st.points(f"topk_{f}pct_ef") - st.points(f"topk_{f}pct")
             for f in ("10", "1", "0.1")}
    v["ef_gains"] = ", ".join(
        f"{fmt(paired_t(g, 0 * g)[0], 2, True)} points at {f}% (95% paired t interval "
        f"{_span(paired_t(g, 0 * g))})" for f, g in gains.items())
    v["ef_gain_growth"] = (
        _cmp("the gain at 1%", "the gain at 10%", gains["1"], gains["10"], higher="larger than",
             lower="smaller than") + "; "
        + _cmp("the gain at 0.1%", "the gain at 1%", gains["0.1"], gains["1"],
               higher="larger than", lower="smaller than"))

    # where we differ: 0.1% with EF, and progress between rounds 100 and 200
    half = st.last // 2
    v["ef01_vs_dense"] = _cmp("top-k 0.1% + EF", "dense", st.points("topk_0.1pct_ef"), dense)
    v["ef01_gain_half"] = _change(st.points("topk_0.1pct_ef"), st.points("topk_0.1pct_ef", half))
    v["dense_gain_half"] = _change(dense, st.points("dense", half))
    gap01 = {r: st.points("dense", r) - st.points("topk_0.1pct_ef", r) for r in (half, st.last)}
    v["gap01_half"] = fmt(gap01[half].mean(), 2)
    v["gap01_last"] = fmt(gap01[st.last].mean(), 2)
    v["gap01_change"] = _cmp(f"the gap at round {st.last}", f"the gap at round {half}",
                             gap01[st.last], gap01[half], higher="wider than",
                             lower="narrower than")
    gap1 = {r: st.points("topk_1pct_ef", r) - st.points("topk_1pct", r) for r in (half, st.last)}
    v["gap1_half"] = fmt(gap1[half].mean(), 2)
    v["gap1_last"] = fmt(gap1[st.last].mean(), 2)
    v["gap1_change"] = _cmp(f"the gap at round {st.last}", f"the gap at round {half}",
                            gap1[st.last], gap1[half], higher="wider than", lower="narrower than")

    # QSGD, EF-SignSGD, 2-bit quantisation against dense
    v["qsgd_vs_dense"] = _cmp("QSGD", "dense", st.points("qsgd"), dense)
    v["qsgd_acc"] = mean_sd(st.per_seed("qsgd"))
    v["qsgd_ratio"] = fmt(st.mean("qsgd", "compression_ratio"), 1)
    v["elias_bits"] = fmt(QSGD_ELIAS_BITS_PER_ENTRY, 1)
    v["elias_ratio"] = fmt(32 / QSGD_ELIAS_BITS_PER_ENTRY, 1)
    v["signsgd_vs_dense"] = _cmp("EF-SignSGD", "dense", st.points("ef_signsgd"), dense)
    v["signsgd_acc"] = mean_sd(st.per_seed("ef_signsgd"))
    v["signsgd_ratio"] = fmt(st.mean("ef_signsgd", "compression_ratio"), 1)
    v["q2_vs_dense"] = _cmp("2-bit quantisation", "dense", st.points("quantize_2bit"), dense)
    v["q2_acc"] = mean_sd(st.per_seed("quantize_2bit"))
    v["q2_max_dev"] = fmt(max(abs(st.mean("quantize_2bit", rnd=r) - st.mean("dense", rnd=r))
                              for r in st.data["dense"]) * 100, 2)

    # bytes against seconds
    model_bytes = st.mean("dense", "bytes_up") / (st.last * CLIENTS_PER_ROUND)
    downs = {row["bytes_down"] for rounds in st.data.values() for row in rounds[st.last].values()}
    if len(downs) != 1:
        raise ValueError(f"compression.csv: runs with different bytes_down {sorted(downs)}")
    v["bytes_down_mb"] = f"{downs.pop() / 1e6:,.1f}"
    dense_round = st.mean("dense", "simulated_seconds") / st.last
    v["model_bytes"] = f"{model_bytes:,.0f}"
    v["model_params"] = f"{model_bytes / 4:,.0f}"
    v["dense_round_s"] = fmt(dense_round, 2)
    v["upload_mbit"] = fmt(model_bytes * 8 / 1e6, 2)
    v["upload_s"] = fmt(model_bytes * 8 / 1e6 / RURAL_UP_MBIT, 2)
    v["download_s"] = fmt(model_bytes * 8 / 1e6 / RURAL_DOWN_MBIT, 2)
    v["rtt_s"] = fmt(2 * RURAL_RTT_S, 2)
    v["sparse_round_s"] = fmt(st.mean("topk_0.1pct", "simulated_seconds") / st.last, 2)
    v["ratio_01"] = f"{st.mean('topk_0.1pct', 'compression_ratio'):.0f}"
    v["time_cut_01"] = fmt(st.mean("dense", "simulated_seconds")
                           / st.mean("topk_0.1pct", "simulated_seconds"), 2)
    v["ratio_10"] = fmt(st.mean("topk_10pct", "compression_ratio"), 1)
    v["time_cut_10"] = fmt(st.mean("dense", "simulated_seconds")
                           / st.mean("topk_10pct", "simulated_seconds"), 2)

    # seconds and rounds to 90%
    hits = {c: st.to_target_mean(c) for c in st.configs}
    reached = sorted((h[2], c) for c, h in hits.items() if h is not None)
    v["fastest_s90"] = " and ".join(f"{label(c)} ({s:.0f} s)" for s, c in reached[:2])
    v["dense_s90"] = f"{hits['dense'][2]:.0f}"
    secs = {c: st.to_target_seeds(c, "simulated_seconds") for c in st.configs}
    v["s90_vs_dense"] = "; ".join(
        _cmp(label(c), "dense", secs[c], secs["dense"], unit="s", digits=0, higher="slower than",
             lower="faster than") for s, c in reached[:2])
    v["s90_pair"] = _cmp(label(reached[0][1]), label(reached[1][1]), secs[reached[0][1]],
                         secs[reached[1][1]], unit="s", digits=0, higher="slower than",
                         lower="faster than")
    good = [c for c in st.configs if st.mean(c) >= 0.94 and c != "dense"]
    fewest = min(good, key=lambda c: st.mean(c, "bytes_up"))
    v["fewest_bytes_094"] = label(fewest)
    v["fewest_r90"] = str(hits[fewest][0])
    v["fewest_s90"] = f"{hits[fewest][2]:.0f}"
    v["dense_r90"] = str(hits["dense"][0])
    v["fewest_s90_vs_dense"] = _cmp(
        label(fewest), "dense", secs[fewest], secs["dense"], unit="s", digits=0,
        higher="slower than", lower="faster than")
    v["fewest_r90_vs_dense"] = _cmp(
        label(fewest), "dense", st.to_target_seeds(fewest, "round"),
        st.to_target_seeds("dense", "round"), unit="rounds", digits=0, higher="later than",
        lower="earlier than")
    return v


def _setup(folder: Path) -> dict[str, str]:
    """The partition and links of setup.json."""
    su = json.loads((Path(folder) / "setup.json").read_text())
    if (su["rounds"], su["clients_per_round"]) != (ROUNDS, CLIENTS_PER_ROUND):
        raise ValueError(f"setup.json: rounds {su['rounds']}, clients per round "
                         f"{su['clients_per_round']}; the README expects {ROUNDS}, "
                         f"{CLIENTS_PER_ROUND}")
    sites = su["sites_per_profile"]
    total = sum(sites.values())
    no_rural = (math.comb(total - sites.get("rural_4g", 0), su["clients_per_round"])
                / math.comb(total, su["clients_per_round"]))
    steps = math.ceil(su["train_size_max"] / su["batch_size"]) * su["local_epochs"]
    return {
        "train_size_min": str(su["train_size_min"]),
        "train_size_max": str(su["train_size_max"]),
        "test_examples": f"{su['test_examples']:,}",
        "train_examples": f"{su['train_examples']:,}",
        "sites_dsl": str(sites.get("hospital_dsl", 0)),
        "sites_rural": str(sites.get("rural_4g", 0)),
        "p_rural": f"{100 * (1 - no_rural):.0f}%",
        "compute_s": fmt(steps * su["step_seconds"], 2),
    }


def _runs(folder: Path) -> dict[str, str]:
    """Provenance (PROVENANCE.json) and run times (run_times.csv)."""
    prov = json.loads((Path(folder) / "PROVENANCE.json").read_text())
    with open(Path(folder) / "run_times.csv", newline="") as f:
        times = list(csv.DictReader(f))
    if any(t["wall_seconds"] in ("", None) for t in times):
        raise ValueError("run_times.csv has no wall seconds: collect with --log")
    dates = sorted({t["finished_utc"] for t in times})
    wall = [float(t["wall_seconds"]) for t in times]
    compile_s = [float(t["compile_seconds"]) for t in times]
    label = lambda c: CONFIGS.get(c, c).replace("s=16", "s = 16")  # noqa: E731
    table = markdown_table(
        ["configuration", "wall seconds (log)", "compile seconds", "run seconds"],
        [[label(t["config"]), f"{float(t['wall_seconds']):.0f}",
          f"{float(t['compile_seconds']):.1f}", f"{float(t['run_seconds']):.1f}"]
         for t in times])
    if prov.get("exploration"):
        state = ("NOT from one clean commit (collected with --allow-dirty, for exploration: "
                 + "; ".join(prov.get("problems", [])[:3]) + ")")
    else:
        state = "one clean commit, every run"
    commit = prov["commit"] if isinstance(prov["commit"], str) else ", ".join(prov["commit"])
    return {
        "commit": commit[:12] if isinstance(prov["commit"], str) else commit,
        "provenance_state": state,
        "run_dates": dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}",
        "run_times_table": table,
        "wall_total_min": f"{sum(wall) / 60:.0f}",
        "wall_min": f"{min(wall):.0f}",
        "wall_max": f"{max(wall):.0f}",
        "compile_range": f"{min(compile_s):.0f}-{max(compile_s):.0f}",
    }


def readme_values(folder: Path) -> dict[str, str]:
    """Every table and number results/compression/README.md quotes, from ``folder``'s committed
    files: compression.csv, setup.json, run_times.csv and PROVENANCE.json (never the runs)."""
    folder = Path(folder)
    return {**_results(_Study(folder)), **_setup(folder), **_runs(folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("multirun/compression"))
    parser.add_argument("--out", type=Path, default=Path("results/compression"))
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs that are not from one clean commit (exploration; "
                             "PROVENANCE.json says so)")
    parser.add_argument("--log", type=Path, default=None,
                        help="the output of experiments/compression.sh (its '== name: N s' "
                             "lines give run_times.csv's wall seconds); needed when --out holds "
                             "the README, which quotes them")
    args = parser.parse_args()
    readme = args.out / "README.md"
    if readme.exists() and args.log is None:
        raise SystemExit(f"{readme} quotes each configuration's wall time: pass --log with the "
                         "output of experiments/compression.sh (or --out elsewhere)")
    if not args.runs.is_dir() or not any((p / "summary.json").exists()
                                         for p in args.runs.iterdir()):
        raise SystemExit(f"no runs under {args.runs}: run experiments/compression.sh first")
    # Results only from one clean commit (fedbench/provenance.py): checked before any write, on
    # every seed's run (a seeds=3 job's own summary.json only lists its replicas and records no
    # provenance, so study_provenance(args.runs, ...), which reads every summary.json, would
    # refuse it).
    try:
        write_study_provenance(args.out, [run / "summary.json" for run in runs_of(args.runs)],
                               args.allow_dirty)
    except ProvenanceError as err:
        raise SystemExit(f"{args.runs}: {err}") from None
    rows = collect(args.runs)
    times = run_times(args.runs, args.log)
    missing = [t["config"] for t in times if t["wall_seconds"] is None]
    if args.log is not None and missing:
        raise SystemExit(f"{args.log}: no '== name: N s' line for {', '.join(missing)}")
    setup_json = setup(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "compression.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(args.out / "run_times.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TIME_FIELDS)
        writer.writeheader()
        writer.writerows(times)
    (args.out / "setup.json").write_text(json.dumps(setup_json, indent=1, sort_keys=True) + "\n")
    plot(over_seeds(rows), args.out / "compression.png")
    print(f"{'config':16} round seeds  test_acc (mean ± sd)  client_acc  uplink_MB   ratio"
          "  sim_hours")
    for t in final_table(rows):
        print(f"{t['config']:16} {t['round']:5} {t['seeds']:5}"
              f"  {t['acc_mean']:.4f} ± {t['acc_sd']:.4f}"
              f"       {t['client_acc_mean']:.4f}  {t['uplink_mb']:9.2f} {t['ratio']:7.1f}"
              f"  {t['hours']:9.3f}")
    if readme.exists():
        changed = render_file(args.out)
        print(f"{readme}: {'re-rendered' if changed else 'up to date'}")


if __name__ == "__main__":
    main()
