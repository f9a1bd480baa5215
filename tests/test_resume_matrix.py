"""Every algorithm: checkpoint and resume bit-exact (the combination matrix, generated from
``BUILDERS``: a newly registered algorithm joins with no test edit).

Independent expectation: the uninterrupted run. A run of ``ROUNDS`` rounds (evaluated after
every round, checkpointed every ``CUT``) is compared with a run resumed, through a second
:func:`~fedbench.run.run_experiment` with ``resume=true`` (a new simulator, its programs traced
anew), from the run directory as it stood right after round ``CUT``: its checkpoint and its
``metrics.jsonl``, exactly what a process killed at that moment leaves on disk. The resumed run
must end bit for bit where the uninterrupted one ends:

* every leaf of the final :class:`~fedbench.simulator.ServerState` (parameters, optimiser and
  server state, round, key, per-client store, clock, clients in flight, ...): same tree, same
  dtypes, same bits;
* the ``metrics.jsonl`` written, byte for byte, and ``summary.json``'s final metrics.

A mismatch names every differing leaf and its largest difference. An algorithm that cannot
resume bit for bit goes into ``KNOWN`` with its cause (a strict xfail: it fails once fixed).

The snapshot is taken inside the uninterrupted run (its progress callback after round ``CUT``,
which comes after that round's metrics and checkpoint are written) rather than by a third,
interrupted run: what is on disk is the same, and it saves one compilation per algorithm.
Anything a run keeps only in memory (not in its checkpoint) makes the resumed run differ.

Cost: compilation dominates (22 algorithms). Runs keep their compiled programs on disk
(``compilation_cache``, fedbench/compile_cache.py; the test session's cache, tests/conftest.py),
so the resumed run loads the executables the uninterrupted run compiled instead of compiling
them again. The cache is keyed by the lowered program and the compile options, so a resumed run
whose program differed in any way would compile its own; a hit is the executable a separate
process would compile from the same program. A resumed run then takes about a second instead of
a compilation (the file: about 1.5 to 2 minutes on an idle 2-core CPU, against about 4 without
the cache).
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import compose

from fedbench.algorithm import BUILDERS
from fedbench.checkpoint import CHECKPOINTS
from fedbench.run import run_experiment

ALGORITHMS = tuple(BUILDERS)
ROUNDS, CUT = 4, 2
#: As tests/test_combinations.py's TINY, with an evaluation after every round and checkpoints.
TINY = ["dataset=breast_cancer", "partition=iid", "num_clients=6", "clients_per_round=3",
        f"rounds={ROUNDS}", "eval_every=1", "model=mlp", "model.hidden=[8]", "batch_size=32",
        f"checkpoint_every={CUT}", "partition.seed=0"]
#: Per-algorithm settings that keep a tiny run meaningful (tests/test_combinations.py's EXTRA).
EXTRA = {"fedbuff": ["algorithm.buffer_size=2", "algorithm.concurrency=3"],
         "ifca": ["algorithm.clusters=2"], "cfl": [], "fedbn": ["model.norm=layer"],
         "silobn": ["model.norm=batch"]}
#: Algorithms known not to resume bit for bit: name -> the cause (strict xfail).
KNOWN: dict[str, str] = {}


def _params():
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN[name]))
            if name in KNOWN else name for name in ALGORITHMS]


def _final_state(box: dict):
    def on_finish(sim, state):
        box["state"] = state
    return on_finish


def _host(leaf) -> np.ndarray:
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)  # a typed key: its raw bits
    return np.asarray(jax.device_get(leaf))


def _leaves(state) -> tuple[list[tuple[str, np.ndarray]], object]:
    """``(path, array)`` for every leaf of ``state``, and its tree structure."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(state)
    return [(jax.tree_util.keystr(path), _host(leaf)) for path, leaf in pairs], treedef


def _differences(want, got) -> list[str]:
    """Every leaf that is not bit for bit the same, with the largest difference."""
    out = []
    for (path, a), (_, b) in zip(*(_leaves(want)[0], _leaves(got)[0])):
        if a.dtype != b.dtype or a.shape != b.shape:
            out.append(f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}")
        elif a.tobytes() != b.tobytes():
            if np.issubdtype(a.dtype, np.number):
                gap = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
                out.append(f"{path}: max |diff| {gap:.3g}")
            else:
                out.append(f"{path}: differs")
    return out


@pytest.mark.parametrize("name", _params())
def test_resumed_run_equals_the_uninterrupted_run(name, tmp_path, capsys):
    cfg = compose(TINY + [f"algorithm={name}"] + EXTRA.get(name, []))
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"

    def snapshot_at_cut(metrics, rounds, rate):  # called after the round's files are written
        if metrics["round"] == CUT:
            shutil.copytree(whole, resumed)

    want: dict = {}
    first = run_experiment(cfg, whole, progress=snapshot_at_cut, on_finish=_final_state(want))
    assert first["status"] == "completed"
    assert sorted(p.name for p in (resumed / CHECKPOINTS).iterdir()) == [str(CUT)]
    assert not (resumed / "summary.json").exists()
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == CUT + 1  # rounds 0..CUT

    capsys.readouterr()
    got: dict = {}
    again = run_experiment({**cfg, "resume": True}, resumed, progress=lambda *_: None,
                           on_finish=_final_state(got))
    assert f"fedbench: resuming from round {CUT}" in capsys.readouterr().out
    assert again["status"] == "completed"

    assert int(got["state"].round) == int(want["state"].round) == ROUNDS
    assert _leaves(got["state"])[1] == _leaves(want["state"])[1]  # same tree, same Nones
    differ = _differences(want["state"], got["state"])
    assert not differ, f"{name}: final state leaves not bit for bit equal:\n" + "\n".join(differ)
    assert (resumed / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    final = [json.dumps(json.loads((run / "summary.json").read_text())["final"], sort_keys=True)
             for run in (whole, resumed)]
    assert final[1] == final[0]  # compared as text: a NaN metric equals itself
