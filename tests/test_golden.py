"""Golden runs: the round's results do not move unless a change means them to.

Each case is a small config run end to end; its ``metrics.jsonl`` was recorded before the round
was reshaped into algorithm modules (issue: round architecture) and is replayed here: every
metric at every evaluation must match within a relative 1e-5 on CPU. A change that alters
results on purpose regenerates the affected files in the same commit and says why:

    FEDBENCH_REGENERATE_GOLDEN=1 pytest tests/test_golden.py

The files live in ``tests/golden/<case>.jsonl`` (for ``seeds=2``: one file per seed).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from conftest import compose

from fedbench.run import run_experiment

GOLDEN = Path(__file__).resolve().parent / "golden"
REGENERATE = os.environ.get("FEDBENCH_REGENERATE_GOLDEN") == "1"
RTOL = 1e-5
ATOL = 1e-7  # metrics that are exactly 0 (e.g. bytes at round 0)

BASE = ["dataset=digits", "partition=iid", "num_clients=8", "clients_per_round=4", "rounds=4",
        "eval_every=2", "model=mlp", "model.hidden=[16]", "batch_size=16", "local_epochs=2",
        "lr=0.1"]
DP_CLIENT = ["privacy=dp_client", "privacy.target_epsilon=null", "privacy.noise_multiplier=0.3",
             "privacy.clip=0.5"]
CASES = {
    "fedsgd": ["algorithm=fedsgd"],
    "fedavg": ["algorithm=fedavg"],
    "fedprox": ["algorithm=fedprox", "algorithm.mu=0.5"],
    "fedadam": ["algorithm=fedadam", "algorithm.server_lr=0.03"],
    "fedyogi": ["algorithm=fedyogi", "algorithm.server_lr=0.03"],
    "fedadagrad": ["algorithm=fedadagrad", "algorithm.server_lr=0.03"],
    "scaffold": ["algorithm=scaffold"],
    "fednova": ["algorithm=fednova", "stragglers.fraction=0.5", "stragglers.policy=partial"],
    "fedbuff": ["algorithm=fedbuff", "algorithm.buffer_size=2", "algorithm.concurrency=4",
                "site_speed=0.5"],
    "centralized": ["algorithm=centralized"],
    "local": ["algorithm=local"],
    "dp_client_fixed": [*DP_CLIENT, "privacy.sampling=fixed", "privacy.accountant=rdp"],
    "dp_client_poisson": DP_CLIENT,
    "dp_client_adaptive": [*DP_CLIENT, "privacy.sampling=fixed", "privacy.accountant=rdp",
                           "privacy.adaptive_clip.enabled=true"],
    "dp_sample": ["privacy=dp_sample", "privacy.target_epsilon=null",
                  "privacy.noise_multiplier=1.0", "local_epochs=1"],
    "stragglers_drop": ["stragglers.fraction=0.5", "stragglers.policy=drop"],
    "stragglers_partial": ["algorithm=fedprox", "stragglers.fraction=0.5",
                           "stragglers.policy=partial"],
    "seeds2": ["seeds=2"],
    "tcga_brca": ["dataset=tcga_brca", "rounds=2", "local_steps=10", "eval_every=1"],
}


def _overrides(case: str) -> list[str]:
    extra = CASES[case]
    base = [] if any(o.startswith("dataset=") for o in extra) else BASE
    return [*base, *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)
    return a == b


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_metrics_replay(case, tmp_path):
    summary = run_experiment(compose(_overrides(case)), tmp_path, progress=None)
    runs = ([(f"{case}.seed={s}", tmp_path / f"seed={s}") for s in summary["seeds"]]
            if "seeds" in summary else [(case, tmp_path)])
    for name, run_dir in runs:
        got = _records(run_dir / "metrics.jsonl")
        golden = GOLDEN / f"{name}.jsonl"
        if REGENERATE:
            GOLDEN.mkdir(exist_ok=True)
            golden.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in got))
            continue
        want = _records(golden)
        assert [r["round"] for r in got] == [r["round"] for r in want], name
        for g, w in zip(got, want):
            assert set(g) == set(w), (name, g["round"], set(g) ^ set(w))
            bad = {k: (g[k], w[k]) for k in w if not _close(g[k], w[k])}
            assert not bad, f"{name} round {w['round']}: (got, golden) {bad}"
