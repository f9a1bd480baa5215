"""Ctrl-C and SIGTERM as a clean stop: a ``KeyboardInterrupt`` in the main code, never inside
a step that must finish (a checkpoint being saved, a results file being written).

:func:`install` sets the handler (``fedbench`` does, :mod:`fedbench.cli`); :func:`protected`
marks a step that must finish: a signal that arrives inside it is raised when it ends. A signal
that arrives inside a garbage-collector callback (JAX has one), where an exception is only
printed as 'ignored' and the code goes on, is delivered again a moment later.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_depth = 0
_pending = False
_forceable = False  # inside a step a second signal may cut (a block of rounds)


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM at round ``round``; ``resume_round``: the round the
    same command continues from (the last checkpoint; ``round`` when one was written at the
    stop), None without checkpoints."""

    def __init__(self, round: int, resume_round: int | None):
        super().__init__(round)
        self.round, self.resume_round = round, resume_round


def _handler(signum, frame):
    global _pending
    if _depth > 0:
        if _pending and _forceable:  # a second Ctrl-C inside a block of rounds: stop now
            _pending = False
            raise KeyboardInterrupt
        _pending = True  # raised when the protected step ends
        return
    if frame is not None and frame.f_code.co_name.endswith("gc_callback"):
        threading.Timer(0.05, signal.raise_signal, (signum,)).start()
        return
    raise KeyboardInterrupt


def install() -> None:
    """Ctrl-C (SIGINT) and SIGTERM (a scheduler's stop) raise ``KeyboardInterrupt``."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


@contextlib.contextmanager
def protected(forceable: bool = False):
    """A step that an interrupt must not cut: one that arrives inside is raised after it.
    ``forceable``: a second signal inside the step raises at once (a block of rounds, which
    may be long; never a file being written)."""
    global _depth, _pending, _forceable
    _depth += 1
    outer, _forceable = _forceable, forceable and _depth == 1
    try:
        yield
    finally:
        _depth -= 1
        _forceable = outer
        if _depth == 0 and _pending:
            _pending = False
            raise KeyboardInterrupt
