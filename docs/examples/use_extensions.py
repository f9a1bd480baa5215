"""Using the worked algorithm, compressor and privacy mechanism from Python, before they are
part of the package (``docs/extending/algorithm.md``, ``compressor.md``,
``privacy-mechanism.md``; each guide shows its section of this file).

* FedExP (``fedexp.py``) runs in a :class:`~fedbench.simulator.Simulator` built by hand: the
  algorithm registry (``fedbench.algorithm.BUILDERS``) reads each algorithm's defaults from its
  ``conf/algorithm/<name>.yaml``, so :func:`fedbench.run.run_experiment` runs an algorithm only
  once it is in the package.
* TernGrad (``compressor.py``) and ``dp_full`` (``dp_full.py``) have run-time registries
  (``fedbench.compression.registry.register``, ``fedbench.privacy.mechanism.register``), so
  they run through :func:`~fedbench.run.run_experiment` like any built-in piece.

``tests/test_docs.py`` runs the three functions on tiny federations.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load_example(name: str):
    """``docs/examples/<name>.py`` as a module (the folder is not a package; your own module
    would simply be imported)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config ``fedbench <overrides>`` runs, as plain dicts and lists."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)),
                                      resolve=True)


# --8<-- [start:algorithm]
def train_fedexp(rounds: int = 3, eps: float = 1e-3) -> dict[str, Any]:
    """FedExP on breast_cancer over 4 IID sites, every site every round; the final metrics."""
    from fedbench.dataset import load_dataset
    from fedbench.dataset.pipeline import build_federated
    from fedbench.model import build_model
    from fedbench.simulator import Settings, Simulator

    fedexp = load_example("fedexp")
    raw = load_dataset({"name": "breast_cancer"})
    data, _ = build_federated(raw, {"name": "iid"}, num_clients=4, seed=0)
    model = build_model({"name": "logreg"}, data.feature_shape, data.num_classes, data.task)
    settings = Settings(clients_per_round=4, local_epochs=1, batch_size=10, lr=0.1)
    sim = Simulator(model, fedexp.fedexp({"eps": eps}), data, settings, seed=0)
    state = sim.run(sim.init(), rounds)  # one compiled program for all rounds
    return sim.evaluate(state)
# --8<-- [end:algorithm]


# --8<-- [start:compressor]
def train_terngrad(out_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """FedAvg with TernGrad-compressed uploads; the run's summary."""
    from fedbench.compression import registry
    from fedbench.run import run_experiment

    terngrad = load_example("compressor")
    if "terngrad" not in registry.COMPRESSORS:
        terngrad.register()  # registry.register(PIECE, DEFAULTS)
    cfg = config(overrides)
    cfg["compression"] = dict(terngrad.DEFAULTS)  # what conf/compression/terngrad.yaml holds
    return run_experiment(cfg, out_dir, progress=None)
# --8<-- [end:compressor]


# --8<-- [start:mechanism]
def train_dp_full(out_dir: str | Path, overrides: Sequence[str] = (),
                  noise_multiplier: float = 1.0, clip: float = 1.0) -> dict[str, Any]:
    """Client-level DP with every site in every round (no sampling); the run's summary."""
    from fedbench.privacy.mechanism import register
    from fedbench.run import run_experiment

    register("dp_full", load_example("dp_full"))
    cfg = config(overrides)
    cfg["clients_per_round"] = cfg["num_clients"]  # dp_full refuses a partial cohort
    cfg["privacy"] = {"name": "dp_full", "clip": clip, "noise_multiplier": noise_multiplier,
                      "target_epsilon": None, "delta": 1e-5, "accountant": "pld"}
    return run_experiment(cfg, out_dir, progress=None)
# --8<-- [end:mechanism]
