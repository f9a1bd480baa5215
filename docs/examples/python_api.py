"""Build and run experiments from Python, then read their results (``docs/python-api.md``).

``fedbench`` on the command line is Hydra composing ``conf/`` and calling
:func:`fedbench.run.run_experiment`; from Python the same two steps are :func:`config` (Hydra's
compose API over the package's own config directory, :data:`fedbench.paths.CONF_DIR`) and
``run_experiment(cfg, out_dir)``. The run directory then holds ``metrics.jsonl`` (one row per
evaluation) and ``summary.json`` (status, final metrics, timing, the resolved config), and
:func:`fedbench.collect.collect` gathers many run directories into one pandas table.

``tests/test_docs.py`` runs :func:`sweep` on a tiny federation and :func:`step_by_step`.
Run this file to train the default experiment into ``outputs/python_api``::

    python docs/examples/python_api.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench.paths import CONF_DIR
from fedbench.run import build_simulator, run_experiment


# --8<-- [start:config]
def config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config that ``fedbench <overrides>`` runs, resolved to plain dicts and lists."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)
# --8<-- [end:config]


# --8<-- [start:read]
def read_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A finished run's evaluations (``metrics.jsonl``) and its ``summary.json``."""
    run_dir = Path(run_dir)
    with open(run_dir / "metrics.jsonl") as lines:
        metrics = [json.loads(line) for line in lines]
    return metrics, json.loads((run_dir / "summary.json").read_text())
# --8<-- [end:read]


# --8<-- [start:sweep]
def sweep(root: str | Path, key: str, values: Sequence[Any], overrides: Sequence[str] = ()):
    """One run per value of ``key`` (e.g. ``partition.alpha``) under ``root``, then the results
    as one table, as ``fedbench -m key=v1,v2,...`` and ``fedbench-collect`` would give.

    Returns ``(table, means)``: every evaluation of every run (:func:`fedbench.collect.collect`)
    and the final test accuracy per value (:func:`fedbench.collect.summarize`).
    """
    from fedbench.collect import collect, summarize

    root = Path(root)
    for value in values:
        cfg = config([*overrides, f"{key}={value}"])
        run_experiment(cfg, root / f"{key}={value}", progress=None)  # None: print nothing
    table = collect(root)
    return table, summarize(table, by=[key], metrics=["test_accuracy"])
# --8<-- [end:sweep]


# --8<-- [start:pieces]
def step_by_step(overrides: Sequence[str] = (), rounds: int = 5) -> dict[str, Any]:
    """The pieces without the run loop or any file: build the simulator, train ``rounds``
    rounds as one compiled block, evaluate the state."""
    built = build_simulator(config(overrides))
    state = built.sim.init()
    state = built.sim.run(state, rounds)
    return built.sim.evaluate(state)
# --8<-- [end:pieces]


if __name__ == "__main__":
    out = Path("outputs/python_api")
    summary = run_experiment(config(sys.argv[1:]), out)  # prints progress, as fedbench does
    metrics, _ = read_run(out)
    print(f"{summary['status']}: test accuracy {metrics[-1]['test_accuracy']:.4f} after "
          f"{metrics[-1]['round']} rounds, {summary['timing']['run_seconds']:.1f} s of training")
