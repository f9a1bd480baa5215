"""In-program seeds (``seeds=8``, one compiled program) vs eight separate ``fedbench`` jobs.

    python benchmarks/bench_seeds.py [--seeds 8] [--out benchmarks/results_seeds.json] [overrides]

Both sides run the same eight runs (seed ``s``, partition seed 0) from the command line, so
process start, imports, data preparation and compilation are counted as a sweep pays them;
prints the two wall times and the ratio, and checks that the runs' final accuracies agree.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fedbench(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedbench", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def final_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["final"]["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        together = fedbench([*args.overrides, f"seeds={args.seeds}", "seed=0",
                             f"hydra.run.dir={tmp / 'together'}"])
        separate = 0.0
        for s in range(args.seeds):
            separate += fedbench([*args.overrides, f"seed={s}", "partition.seed=0",
                                  f"hydra.run.dir={tmp / f'alone{s}'}"])
        diffs = [abs(final_accuracy(tmp / "together" / f"seed={s}") - final_accuracy(tmp / f"alone{s}"))
                 for s in range(args.seeds)]
    result = {
        "seeds": args.seeds,
        "overrides": args.overrides,
        "in_program_seconds": round(together, 2),
        "separate_jobs_seconds": round(separate, 2),
        "ratio_separate_over_in_program": round(separate / together, 2),
        "max_final_accuracy_difference": max(diffs),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
