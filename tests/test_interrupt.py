"""Ctrl-C and SIGTERM end ``fedbench`` with one line saying how to continue, not a traceback
(issue "A newcomer's first hour", item 5), and the command it prints continues the run."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest

RUN = ["dataset=breast_cancer", "model=logreg", "num_clients=4", "clients_per_round=2",
       "rounds=120", "eval_every=2"]


def _start(run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "fedbench", *RUN, *extra,
                             f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_rows(run_dir, rows, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        path = run_dir / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("no metrics written")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_says_how_to_continue_and_that_command_continues(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_rows(run_dir, 3, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    (line,) = [l for l in err.splitlines() if l.startswith("fedbench: interrupted")]
    # "interrupted at round N; the same command resumes from round N": the block under way
    # finished and a checkpoint of round N was written first, so no round is lost
    stopped = int(line.split("interrupted at round ", 1)[1].split(";")[0])
    assert f"the same command resumes from round {stopped}." in line, line
    command = line.split("To continue: ", 1)[1]
    args = shlex.split(command)
    assert args[0] == "fedbench" and f"hydra.run.dir={run_dir}" in args
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["round"] == stopped - stopped % 2  # every evaluation up to the stop
    if sig != signal.SIGINT:
        return
    done = subprocess.run([sys.executable, "-m", "fedbench", *args[1:]], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming from round {stopped} " in done.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final"]["round"] == 120
