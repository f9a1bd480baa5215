"""Progress while a run goes (fedbench/progress.py): on a terminal a bar updated every couple of
seconds, the rounds run in steps under it; off a terminal one line per evaluation with the
elapsed time and the ETA. Splitting the rounds into steps must not change a single number: the
metrics file of a run under the bar equals, byte for byte, the same run printed plainly."""

from __future__ import annotations

import io

import pytest

import fedbench.progress as progress
import fedbench.run
from conftest import compose
from fedbench.run import run_experiment

TINY = ["rounds=30", "eval_every=15", "dataset=breast_cancer", "num_clients=5",
        "clients_per_round=5", "model=logreg"]


@pytest.mark.parametrize("remaining, rate, expected", [
    (100, None, 10), (5, None, 5), (100, 3.0, 6), (100, 0.1, 1), (100, 1000.0, 100), (0, 1.0, 0),
])
def test_steps_last_about_two_seconds(remaining, rate, expected):
    assert progress.TICK_SECONDS == 2.0
    assert progress.step_rounds(remaining, rate) == expected


def test_clock():
    assert [progress.clock(s) for s in (0, 59.6, 61, 3725)] == ["0:00", "1:00", "1:01", "1:02:05"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_on_a_terminal_and_eta_lines_elsewhere_change_no_number(tmp_path, monkeypatch,
                                                                      capsys):
    terminal = _Terminal()
    real = progress.bar
    monkeypatch.setattr(progress, "TICK_SECONDS", 0.01)  # many steps: 1 round each, mostly
    monkeypatch.setattr(fedbench.run, "bar", lambda rounds, start: real(rounds, start, terminal))
    run_experiment(compose(TINY), tmp_path / "bar")
    shown = terminal.getvalue()
    assert "30/30" in shown and "100%" in shown and "round/s" in shown
    assert "accuracy=" in shown  # the latest metrics beside the bar
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("round    15/30") and "50%, elapsed" in line and "ETA" in line
               for line in lines), lines

    monkeypatch.setattr(fedbench.run, "bar", lambda rounds, start: None)  # not a terminal
    run_experiment(compose(TINY), tmp_path / "plain")
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("round    30/30") and "100%, elapsed" in line for line in lines)
    assert ((tmp_path / "bar" / "metrics.jsonl").read_bytes()
            == (tmp_path / "plain" / "metrics.jsonl").read_bytes())
