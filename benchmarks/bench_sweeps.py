"""In-program sweeps against separate jobs (#15 item 6): wall time, peak memory, same results.

Runs a study twice, as ``fedbench`` processes: once as separate jobs (one process per value and
seed, as ``fedbench -m`` with the basic launcher would), once as one job with ``sweep.<key>=[..]
seeds=S`` (every run a replica of one compiled program; ``--replica-axis`` map or vmap), and
reports the wall-time ratio, each variant's peak resident memory (the largest child process) and
whether every replica's metrics.jsonl equals its separate job's byte for byte.

    python benchmarks/bench_sweeps.py --study privacy_utility [--rounds 200] [--out DIR]
    python benchmarks/bench_sweeps.py --study lr --rounds 100

Studies: ``privacy_utility`` (experiments/privacy_utility_client.yaml: client-level DP-FedAvg on
Synthetic-IID, 1,000 clients; target epsilon in {0.5, 1, 2, 4, 8, inf} x 3 seeds) and ``lr``
(the default digits experiment, lr in {0.03, 0.1, 0.3} x 3 seeds) and ``noniid`` (the default
digits experiment, Dirichlet alpha in {0.05, 0.1, 0.5, 1, 10} x 3 seeds, partitions as
replicas). Results: benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDIES = {
    "privacy_utility": {
        "base": ["--config-dir", "experiments", "--config-name", "privacy_utility_client",
                 "privacy.noise_multiplier=null"],
        "key": "target_epsilon", "override": "privacy.target_epsilon",
        "values": ["0.5", "1", "2", "4", "8", "inf"],
        "new_keys": True,  # its config has no sweep / replica_axis keys: added with "+"
    },
    "lr": {"base": [], "key": "lr", "override": "lr", "values": ["0.03", "0.1", "0.3"]},
    # partitions as replicas: each alpha its own padded data (fedbench/replica_data.py)
    "noniid": {"base": [], "key": "partition_alpha", "override": "partition.alpha",
               "values": ["0.05", "0.1", "0.5", "1", "10"]},
}


def fedbench(args: list[str], out: Path, plus: str = "") -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedbench.cli", *args, f"hydra.run.dir='{out}'",
                    f"{plus}checkpoint_every=0"], check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def peak_child_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="privacy_utility")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--replica-axis", default="map", choices=["map", "vmap"])
    parser.add_argument("--skip-separate", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    study = STUDIES[args.study]
    common = study["base"] + ([f"rounds={args.rounds}"] if args.rounds else [])
    root = args.out or Path(tempfile.mkdtemp(prefix="bench_sweeps_"))
    report = {"study": args.study, "rounds": args.rounds, "seeds": args.seeds,
              "replica_axis": args.replica_axis}

    # One job, every value and seed a replica of one program (run first: RUSAGE_CHILDREN only
    # grows, so its peak is read before the separate jobs run).
    values = "[" + ",".join(study["values"]) + "]"
    plus = "+" if study.get("new_keys") else ""
    report["in_program_seconds"] = fedbench(
        common + [f"{plus}sweep.{study['key']}={values}", f"{plus}seeds={args.seeds}",
                  f"{plus}replica_axis={args.replica_axis}"], root / "in_program", plus)
    report["in_program_peak_rss_mb"] = peak_child_rss_mb()
    if not args.skip_separate:
        total, same = 0.0, True
        for value in study["values"]:
            for seed in range(args.seeds):
                name = f"{study['key']}={float(value):g},seed={seed}"
                total += fedbench(common + [f"{study['override']}={value}", f"seed={seed}",
                                            "partition.seed=0"], root / "separate" / name, plus)
                mine = (root / "in_program" / name / "metrics.jsonl").read_bytes()
                same &= mine == (root / "separate" / name / "metrics.jsonl").read_bytes()
        report["separate_seconds"] = total
        report["peak_rss_mb_max_of_both"] = peak_child_rss_mb()
        report["speedup"] = total / report["in_program_seconds"]
        report["identical_metrics"] = same
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
