"""What a run prints while it goes: a progress bar on a terminal, one line per evaluation, a
table at the end.

On a terminal the rounds run in steps of about :data:`TICK_SECONDS` of compute
(:func:`step_rounds`, from the measured speed: the host synchronises once per step, never per
round), and a ``tqdm`` bar shows rounds done, the percentage, elapsed time, the ETA and the
latest metrics; off a terminal (logs, CI, notebooks' captured output) it stays off and each
evaluation's line carries the elapsed time and the ETA instead. Results do not depend on the
steps: round ``r`` always draws from ``fold_in(run_key, r)``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from fedbench.metric_names import METRIC_KEYS

#: Seconds of rounds between two updates of the progress bar.
TICK_SECONDS = 2.0


def step_rounds(remaining: int, rate: float | None, first: int = 10) -> int:
    """Rounds to run before the next update: about :data:`TICK_SECONDS` at ``rate`` rounds per
    second (``first`` while the speed is unknown, e.g. the compiling first call), at least 1
    and at most ``remaining``."""
    if remaining <= 0:
        return 0
    wanted = first if not rate else int(rate * TICK_SECONDS)
    return max(1, min(remaining, wanted))


def clock(seconds: float) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Bar:
    """A run's progress bar (``tqdm``) from round ``start`` to ``rounds``; ``None`` from
    :func:`bar` when the output is not a terminal."""

    def __init__(self, rounds: int, start: int, file=None):
        from tqdm import tqdm

        self.tqdm = tqdm(total=rounds, initial=start, unit="round", file=file or sys.stderr,
                         dynamic_ncols=True, leave=False, smoothing=0.1)

    def advance(self, done: int) -> None:
        self.tqdm.update(done - self.tqdm.n)

    def show(self, metrics: dict[str, Any]) -> None:
        keys = ("test_accuracy", "test_cindex", "train_loss", "epsilon")
        self.tqdm.set_postfix({k.replace("test_", ""): round(float(metrics[k]), 4)
                               for k in keys if metrics.get(k) is not None}, refresh=True)

    def write(self, line: str) -> None:
        self.tqdm.write(line)

    def close(self) -> None:
        self.tqdm.close()


def bar(rounds: int, start: int, stream=None) -> Bar | None:
    """A :class:`Bar` when ``stream`` (default: standard error) is a terminal, else None."""
    stream = stream or sys.stderr
    return Bar(rounds, start, stream) if getattr(stream, "isatty", lambda: False)() else None


class Timer:
    """Elapsed wall time of the rounds run in this process and the ETA of the rest."""

    def __init__(self, start_round: int):
        self.start, self.first = time.perf_counter(), start_round

    def text(self, done: int, rounds: int) -> str:
        elapsed = time.perf_counter() - self.start
        ran = done - self.first
        eta = "" if ran <= 0 else f", ETA {clock(elapsed / ran * (rounds - done))}"
        return f"{100 * done / rounds:.0f}%, elapsed {clock(elapsed)}{eta}"


def _print_progress(metrics: dict[str, Any], rounds: int, rate: float | None,
                    when: str = "", write=None) -> None:
    """One line per evaluation; ``when``: the elapsed time and ETA (:class:`Timer`);
    ``write``: where the line goes (a progress bar's, so that the two do not mix)."""
    speed = f"{rate:8.1f} rounds/s" if rate else "   (compiling)"
    eps = f" | epsilon {metrics['epsilon']:.3f}" if "epsilon" in metrics else ""
    name, short = ("cindex", "C-index") if "test_cindex" in metrics else ("accuracy", "acc")
    # Without privacy.release_metrics the training loss and client metrics are not shown.
    train = f" | train loss {metrics['train_loss']:.4f}" if "train_loss" in metrics else ""
    p10 = metrics.get(f"client_{name}_p10")
    client = f" | client {short} p10 {p10:.4f}" if p10 is not None else ""
    line = (f"round {metrics['round']:>5}/{rounds} | test {short} "
            f"{metrics['test_' + name]:.4f}{train}{client}{eps} | {speed}"
            + (f" | {when}" if when else ""))
    if write is not None:
        write(line)
    else:
        print(line, flush=True)


def _print_table(final: dict[str, Any], timing: dict[str, Any]) -> None:
    rows = [(k, final[k]) for k in METRIC_KEYS + ("epsilon",) if k in final] + [
        ("compile_seconds", timing["compile_seconds"]),
        ("run_seconds", timing["run_seconds"]),
        ("rounds_per_second", timing["rounds_per_second"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 14))
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text:>10}")
    print("-" * (width + 14), flush=True)
