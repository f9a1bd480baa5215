"""benchmarks/gpu_check.sh keeps working on every change (issue 30 item 6): the script a session
with a GPU runs first, dry on the CPU. Each step at its smallest: the device-dependent test
files collected (they import and their parameters build), the suite's W1 with
``client_axis=vmap`` at its quick sizes, and the scale benchmark at its quick sizes; the results
written where ``GPU_CHECK_OUT`` says, in the formats a GPU session commits."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "devices.txt").read_text().startswith("cpu")
    last = (tmp_path / "tests.txt").read_text().strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", last), last  # no collection error
    suite = json.loads((tmp_path / "suite.json").read_text())
    (row,) = suite["rows"]
    assert row["workload"] == "W1" and row["axis"] == "vmap" and row["rounds_per_s"] > 0, row
    assert row["trace_count"] == 1  # one compiled program for every block
    scale = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert scale["backend"] == "cpu" and scale["rounds_per_s"] > 0, scale
