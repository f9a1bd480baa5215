"""Same config and seed, same numbers: across processes, and with the numerics recorded.

``metrics.jsonl`` holds no timing, so two runs of one config on CPU must write identical files;
``summary.json`` records the JAX/XLA versions and every setting that changes what XLA computes,
so a difference between two machines can be traced to them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import without_compilation_cache
from fedbench.results import NUMERICS_CONFIG, NUMERICS_ENV, device_info, package_versions

TINY = ["dataset=breast_cancer", "model=logreg", "partition=dirichlet", "algorithm=scaffold",
        "num_clients=4", "clients_per_round=2", "rounds=4", "eval_every=2", "site_speed=0.5",
        "seed=7"]


def test_versions_name_jax_jaxlib_and_the_xla_runtime():
    versions = package_versions()
    for name in ("jax", "jaxlib", "numpy", "optax", "xla_platform_version"):
        assert versions[name] not in ("", "not installed", None), name


def test_device_info_records_the_numerics_flags(monkeypatch):
    import jax

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    info = device_info()
    assert info["env"]["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    assert info["env"]["JAX_ENABLE_X64"] is None
    assert set(info["env"]) == set(NUMERICS_ENV)
    for name in ("JAX_DEFAULT_MATMUL_PRECISION", "JAX_ENABLE_X64", "XLA_FLAGS"):
        assert name in info["env"]
    assert set(info["jax_config"]) == set(NUMERICS_CONFIG)
    assert info["jax_config"]["jax_enable_x64"] is jax.config.jax_enable_x64
    precision = jax.config.jax_default_matmul_precision
    assert info["jax_config"]["jax_default_matmul_precision"] == precision
    assert info["backend"] == jax.default_backend() and info["platform"]
    json.dumps(info)  # plain JSON values only


def _run(tmp_path, name):
    run_dir = tmp_path / name
    # Each process compiles for itself: a cached executable would hide a compiler that is not
    # deterministic across processes.
    env = without_compilation_cache({k: v for k, v in os.environ.items()
                                     if k != "HYDRA_FULL_ERROR"})
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "fedbench", *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics_across_processes(tmp_path):
    first, second = _run(tmp_path, "a"), _run(tmp_path, "b")
    text = (first / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["round"] for r in rows] == [0, 2, 4]
    # Nothing in metrics.jsonl depends on the clock (timing lives in summary.json).
    assert not {"compile_seconds", "run_seconds", "rounds_per_second"} & set(rows[0])
    assert (second / "metrics.jsonl").read_text() == text  # byte for byte

    summaries = [json.loads((d / "summary.json").read_text()) for d in (first, second)]
    assert summaries[0]["final"] == summaries[1]["final"] == rows[-1]
    for summary in summaries:
        assert summary["versions"]["jax"] and summary["versions"]["jaxlib"]
        assert summary["device"]["env"]["JAX_PLATFORMS"] == "cpu"
        assert summary["device"]["env"]["XLA_FLAGS"] == os.environ.get("XLA_FLAGS")
        assert summary["device"]["jax_config"]["jax_enable_x64"] is False
        assert "jax_default_matmul_precision" in summary["device"]["jax_config"]
