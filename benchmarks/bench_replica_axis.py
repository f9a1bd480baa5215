"""Sweeps on the fastest replica axis (issue 30 item 2): one multirun of separate jobs against
one program with the runs as replicas, under ``replica_axis=map`` and ``vmap``.

The workload is the issue's: client-level DP-FedAvg on Synthetic-IID (the privacy-utility
study's config, ``experiments/privacy_utility_client.yaml``: logistic regression, 1,000 clients,
100 a round) for 50 rounds, target epsilon in {1, 2, 4} x seeds {0, 1}. Three variants, each a
fresh ``python -m fedbench`` process with its own empty compilation cache (a first sweep, as a
user meets it), run in turn and repeated ``--repeats`` times (interleaved, so load drifts hit all
three alike):

* ``multirun``: ``fedbench -m privacy.target_epsilon=1,2,4 seed=0,1`` (Hydra's basic launcher:
  six jobs one after another in one process; jobs 2-6 reuse the first one's compiled programs
  through the persistent cache);
* ``map``: ``sweep.target_epsilon=[1,2,4] seeds=2 replica_axis=map`` (one program, the six
  replicas one after another inside it, each bit for bit its separate job);
* ``vmap``: the same with ``replica_axis=vmap`` (the six replicas batched).

Reports wall seconds per variant (median over repeats), the ratios against the multirun, and the
largest difference between the vmap and the map replicas' final metrics (test accuracy and loss,
epsilon).

``--models`` adds what ``replica_axis=auto`` decides from: for each model in :data:`MODELS`, one
program of 6 seeds under ``map`` and under ``vmap`` (interleaved, ``--repeats`` times), and the
rounds' seconds as fedbench times them (``run_seconds``: no start-up, no compilation).
Results: benchmarks/NOTES.md.

    python benchmarks/bench_replica_axis.py [--repeats 2] [--rounds 50] [--models] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = ["--config-dir", "experiments", "--config-name", "privacy_utility_client",
        "privacy.noise_multiplier=null", "+checkpoint_every=0"]
EPSILONS = ["1", "2", "4"]
SEEDS = 2


def run(args: list[str], cache: Path) -> float:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedbench", *args], check=True, capture_output=True,
                   text=True, env=env)
    return time.perf_counter() - start


def variant(name: str, rounds: int, out: Path) -> list[str]:
    common = BASE + [f"rounds={rounds}"]
    if name == "multirun":
        return ["-m", *common, "privacy.target_epsilon=" + ",".join(EPSILONS),
                "seed=" + ",".join(str(s) for s in range(SEEDS)), f"hydra.sweep.dir='{out}'"]
    return [*common, "+sweep.target_epsilon=[" + ",".join(EPSILONS) + "]", f"+seeds={SEEDS}",
            f"+replica_axis={name}", f"hydra.run.dir='{out}'"]


#: Models of the ``--models`` part: name -> overrides (each a CPU workload fedbench ships).
MODELS = {
    "logreg synthetic (610 params)": ["dataset=synthetic", "partition=natural", "model=logreg",
                                      "rounds=50"],
    "2NN digits, default run (55,050 params)": ["rounds=100"],
    "2NN mnist5k (199,210 params)": ["dataset=mnist5k", "model=mlp", "rounds=20"],
    "CNN mnist5k (1,663,370 params)": ["dataset=mnist5k", "model=cnn", "rounds=2"],
}


def model_seconds(overrides: list[str], axis: str, out: Path, cache: Path) -> dict:
    run(["seeds=6", f"replica_axis={axis}", "checkpoint_every=0", *overrides,
         f"hydra.run.dir='{out}'"], cache)
    timing = json.loads((out / "seed=0" / "summary.json").read_text())["timing"]
    return {"run_seconds": timing["run_seconds"], "compile_seconds": timing["compile_seconds"]}


def finals(root: Path) -> dict[str, dict]:
    """Each replica's final metrics, keyed by its directory name."""
    out = {}
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text())
        if "final" in s:
            out[path.parent.name] = {**s["final"], "epsilon": (s.get("privacy") or {}).get(
                "epsilon")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--models", action="store_true", help="also the per-model part")
    parser.add_argument("--skip-sweep", action="store_true", help="only the per-model part")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_replica_axis_"))
    report: dict = {"machine": f"{os.cpu_count()} cores, " + os.uname().machine}
    if args.models or args.skip_sweep:
        per: dict = {m: {"map": [], "vmap": []} for m in MODELS}
        for r in range(args.repeats):
            for m, overrides in MODELS.items():
                for axis in ("map", "vmap"):
                    out = root / f"model_{len(per[m][axis])}_{axis}_{abs(hash(m))}_{r}"
                    per[m][axis].append(model_seconds(overrides, axis, out, root / "cache_models"))
                    print(f"repeat {r} {m} {axis}: {per[m][axis][-1]}", flush=True)
        report["models"] = {
            m: {**v, "map_over_vmap_run_seconds": statistics.median(
                x["run_seconds"] for x in v["map"]) / statistics.median(
                x["run_seconds"] for x in v["vmap"])} for m, v in per.items()}
    if args.skip_sweep:
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return
    names = ["multirun", "map", "vmap"]
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names:
            out = root / f"{n}_{r}"
            times[n].append(run(variant(n, args.rounds, out), root / f"cache_{n}_{r}"))
            print(f"repeat {r} {n}: {times[n][-1]:.1f} s", flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    a, b = finals(root / "map_0"), finals(root / "vmap_0")
    diff = {}
    for key in ("test_accuracy", "test_loss", "epsilon"):
        d = [abs(float(a[k][key]) - float(b[k][key])) for k in a
             if k in b and a[k].get(key) is not None and b[k].get(key) is not None]
        diff[key] = max(d) if d else None
    report.update({
        "rounds": args.rounds, "epsilons": EPSILONS, "seeds": SEEDS, "repeats": args.repeats,
        "seconds": times, "median_seconds": med,
        "map_over_multirun": med["map"] / med["multirun"],
        "vmap_over_multirun": med["vmap"] / med["multirun"],
        "replicas_compared": len(a), "max_abs_diff_vmap_vs_map": diff,
    })
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
