"""Checkpoints and resume: a run stopped at any point continues where it stopped.

Every ``checkpoint_every`` rounds (``null``, the default: at every evaluation; ``0``: never) and
at the last round, :class:`RunCheckpoints` saves into ``<run dir>/checkpoints/<round>/``

- ``state/``: the simulator's whole :class:`~fedbench.simulator.ServerState` (parameters,
  optimiser state, round, key, overflow count, participation, per-client store, the algorithm's
  server state, clock, FedBuff's clients in flight, the adaptive clip), or the stacked states of
  ``seeds=S``, with orbax's ``StandardSave``;
- ``host/``: the run loop's host-side state as JSON (``JsonSave``): the metrics history so far,
  status, wall and compile seconds spent, and the run's config.

Orbax's ``CheckpointManager`` writes a step into a temporary directory and renames it once it is
complete, so a step directory is whole or absent (a leftover temporary one is removed), and it
keeps the last two (``max_to_keep=2``): an unreadable latest checkpoint is reported with a
:class:`CheckpointWarning`, removed, and the one before it is used.

A run whose directory already holds a checkpoint of the same config (``resume=null``, the
default) continues from it; ``resume=true`` requires one (or fails with a :class:`ConfigError`);
``resume=false`` removes any and starts afresh, as does ``resume=null`` when the checkpoint
belongs to another config (with a warning naming the keys that differ). Round ``r`` draws its
randomness from ``fold_in(run_key, r)`` only (:meth:`fedbench.simulator.Simulator.run`), so
blocks can be cut anywhere: a resumed run's parameters and ``metrics.jsonl`` equal those of an
uninterrupted run bit for bit on CPU (``tests/test_checkpoint.py``).

Nothing here imports JAX or orbax at module level: :func:`check_writable` runs in the command
line's checks, before Hydra writes anything.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbench.errors import ConfigError, FedbenchWarning
from fedbench.sweep import config_differences

#: The run directory's subdirectory holding the checkpoints, one ``<round>/`` each.
CHECKPOINTS = "checkpoints"
#: Checkpoints kept: the latest and the one before it, to fall back to.
MAX_TO_KEEP = 2
#: Version of the host-side JSON layout.
FORMAT = 1


class CheckpointWarning(FedbenchWarning):
    """A checkpoint that cannot be used: unreadable (the one before it is used) or of another
    config (the run starts afresh)."""


def check_writable(path: str | Path, key: str = "out_dir") -> None:
    """Checks that fedbench can create files in the run directory ``path``, before any work.

    An existing directory is tested by creating (and removing) a temporary file in it and in its
    ``checkpoints/`` and ``.hydra/`` subdirectories where they exist; a missing one through its
    nearest existing ancestor, where it would be created. Nothing else is touched.

    Raises:
      ConfigError: naming ``key``, the path and the reason (one line).
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    targets = [existing]
    if existing == path:
        targets += [path / sub for sub in (CHECKPOINTS, ".hydra") if (path / sub).exists()]
    for target in targets:
        reason = None
        if not target.is_dir():
            reason = f"{target} is not a directory"
        else:
            try:
                fd, name = tempfile.mkstemp(dir=target, prefix=".fedbench-write-test-")
                os.close(fd)
                os.unlink(name)
            except OSError as err:
                reason = f"cannot create a file in {target}: {err.strerror or err}"
        if reason:
            raise ConfigError(
                key, str(path),
                f"a directory fedbench can write to ({reason}); nothing was run and the files "
                "already there are left as they are",
            )


def checkpoint_settings(cfg: Mapping[str, Any]) -> tuple[int | None, bool | None]:
    """``(checkpoint_every, resume)`` of the config, checked.

    Raises:
      ConfigError: ``checkpoint_every`` not null or an integer >= 0; ``resume`` not null, true
        or false.
    """
    every = cfg.get("checkpoint_every")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ConfigError(
            "checkpoint_every", every,
            "null (at every evaluation), 0 (never) or an integer >= 1 (every that many rounds)",
        )
    resume = cfg.get("resume")
    if resume is not None and not isinstance(resume, bool):
        raise ConfigError(
            "resume", resume,
            "null (continue from a checkpoint of the same config if there is one), true "
            "(continue, or fail) or false (start afresh)",
        )
    return every, resume


class RunCheckpoints:
    """The checkpoints of one run directory (see the module docstring).

    Usage in a run loop::

        checkpoints = RunCheckpoints(out_dir, cfg)         # checks settings and the directory
        restored = checkpoints.restore(sim.init())         # None, or (state, host)
        while round < rounds:
            stop = checkpoints.next_stop(round, rounds, eval_every)
            ...run to stop, evaluate at evaluation rounds...
            if checkpoints.due(stop, rounds, status != "completed"):
                checkpoints.save(stop, state, {"history": ..., ...})

    Args:
      run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
      cfg: the run's config (stored with every checkpoint and compared on resume; ``resume``,
        ``checkpoint_every``, ``tracking`` and ``sweep_name`` do not count,
        :data:`fedbench.sweep.IGNORED_CONFIG_KEYS`).

    Raises:
      ConfigError: bad ``checkpoint_every`` or ``resume``; a run directory fedbench cannot
        write to (:func:`check_writable`).
    """

    def __init__(self, run_dir: str | Path, cfg: Mapping[str, Any]):
        self.every, self.resume = checkpoint_settings(cfg)
        check_writable(run_dir)
        self.directory = Path(run_dir).absolute() / CHECKPOINTS
        self.config = dict(cfg)
        self._manager = None

    # -- schedule ----------------------------------------------------------------------------
    def next_stop(self, done: int, rounds: int, eval_every: int) -> int:
        """The round the next compiled block ends at: the next evaluation (every ``eval_every``
        rounds and the last), or the next checkpoint if it comes first."""
        stop = min(rounds, (done // eval_every + 1) * eval_every)
        if self.every:
            stop = min(stop, (done // self.every + 1) * self.every)
        return stop

    def due(self, done: int, rounds: int, evaluated: bool, finished: bool = False) -> bool:
        """Whether to save after round ``done``: per ``checkpoint_every`` (``null``: after an
        evaluation), and always at the end (last round, or ``finished`` early)."""
        if self.every == 0:
            return False
        if done >= rounds or finished:
            return True
        return evaluated if self.every is None else done % self.every == 0

    # -- orbax -------------------------------------------------------------------------------
    def _open(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=MAX_TO_KEEP,
                    create=True,
                    cleanup_tmp_directories=True,  # a step a crash left half-written
                    enable_async_checkpointing=False,
                ),
                item_names=("state", "host"),
            )
        return self._manager

    def _steps(self) -> list[int]:
        """Finished checkpoints' rounds, oldest first (temporary directories are not steps)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir()
                      if p.is_dir() and p.name.isdigit())

    def _remove_all(self) -> None:
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def save(self, done: int, state: Any, host: Mapping[str, Any]) -> None:
        """Saves ``state`` (a pytree of arrays) and ``host`` (JSON) as the checkpoint of round
        ``done`` (skipped when one of that round or later exists, e.g. a run resumed at its
        end)."""
        import orbax.checkpoint as ocp

        manager = self._open()
        latest = manager.latest_step()
        if latest is not None and latest >= done:
            return
        host = {"format": FORMAT, "round": done, "config": self.config, **host}
        manager.save(
            done,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    host=ocp.args.JsonSave(host)),
            force=True,
        )

    def restore(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
        """The state and host-side state to continue from, or ``None`` to start afresh.

        Args:
          target: the initial state (:meth:`Simulator.init` or ``init_replicas``): the structure,
            shapes and dtypes the saved state is restored into.

        Raises:
          ConfigError: ``resume=true`` and no readable checkpoint of this config.
        """
        import orbax.checkpoint as ocp

        steps = self._steps()
        if self.resume is False:
            if steps:
                self._remove_all()
            return None
        if not steps:
            if self.resume:
                raise ConfigError("resume", True, f"a run directory holding a checkpoint; "
                                  f"{self.directory} holds none")
            return None
        manager = self._open()
        unreadable: list[tuple[int, str]] = []
        restored = None
        for step in reversed(steps):
            try:
                host = manager.restore(
                    step, args=ocp.args.Composite(host=ocp.args.JsonRestore())).host
                if host.get("format") != FORMAT or host.get("round") != step:
                    raise ValueError(f"host state of format {host.get('format')}, round "
                                     f"{host.get('round')}")
            except Exception as err:  # noqa: BLE001 - any damage: fall back to the one before
                unreadable.append((step, _reason(err)))
                continue
            changed = config_differences(host.get("config", {}), self.config)
            if changed:
                self._another_config(changed)  # raises (resume=true) or removes them all
                return None
            try:
                state = manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
                self._check_rounds(state, step)
            except Exception as err:  # noqa: BLE001
                unreadable.append((step, _reason(err)))
                continue
            restored = (state, host)
            break
        for step, reason in unreadable:
            warnings.warn(
                f"fedbench: the checkpoint of round {step} in {self.directory} is unreadable "
                f"({reason}); removed, "
                + (f"continuing from round {restored[1]['round']}" if restored
                   else "no earlier one is readable"),
                CheckpointWarning, stacklevel=2,
            )
            shutil.rmtree(self.directory / str(step), ignore_errors=True)
        if unreadable:
            manager.reload()
        if restored is None:
            if self.resume:
                raise ConfigError("resume", True, f"a readable checkpoint; none in "
                                  f"{self.directory} is (start afresh with resume=false)")
            self._remove_all()
        return restored

    def _another_config(self, changed: list[str]) -> None:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        if self.resume:
            raise ConfigError(
                "resume", True,
                f"a checkpoint of this run's config; the one in {self.directory} differs in "
                f"{shown} (resume=false starts afresh and replaces it)",
            )
        warnings.warn(
            f"fedbench: {self.directory} holds a checkpoint of another config (it differs in "
            f"{shown}); starting afresh and replacing it",
            CheckpointWarning, stacklevel=3,
        )
        self._remove_all()

    @staticmethod
    def _check_rounds(state: Any, step: int) -> None:
        import numpy as np

        rounds = np.asarray(state.round)
        if not np.all(rounds == step):
            raise ValueError(f"state at round {rounds.tolist()}, expected {step}")


def _reason(err: BaseException) -> str:
    """An exception on one short line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:300]
