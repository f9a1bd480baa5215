"""A worked example of adding a model: a residual MLP for tabular data
(``docs/extending/model.md``).

Y. Gorishniy, I. Rubachev, V. Khrulkov, A. Babenko, "Revisiting Deep Learning Models for Tabular
Data", NeurIPS 2021, Sec. 3.2 ("ResNet"): a linear map to ``width``, then ``blocks`` residual
blocks ``x + Linear(ReLU(Linear(Norm(x))))`` (inner width ``hidden_factor * width``), then
``ReLU(Norm(x))`` and a linear head. The paper's BatchNorm is LayerNorm here and dropout is left
out: a fedbench model is a pure function of its parameters (no batch statistics or other mutable
collections, no randomness in the forward pass), so clients' parameters can be stacked and
averaged.

A model is a builder ``builder(cfg, feature_shape, num_classes, task) -> flax.linen.Module``:
``cfg`` is the ``model`` config group, the module maps ``[B, *feature_shape]`` inputs to
``[B, num_classes]`` logits (``num_classes`` is 1 for survival data: one log-risk per patient).
The loss, the local SGD, evaluation and what is sent are fedbench's.

Registered for this process with ``fedbench.model.register(NAME, build_resmlp)``
(:func:`register`); for the ``fedbench`` command the module goes into ``fedbench/model/``
(its name in ``MODELS`` and a branch in ``build_model``) and :data:`DEFAULTS` into
``conf/model/resmlp.yaml``. ``tests/test_docs.py`` checks the forward pass and trains it through
:func:`fedbench.run.run_experiment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from fedbench.errors import ConfigError

NAME = "resmlp"

#: What ``conf/model/resmlp.yaml`` would hold.
DEFAULTS = {"name": NAME, "width": 64, "blocks": 2, "hidden_factor": 2}


class ResMLP(nn.Module):
    """Gorishniy et al.'s tabular ResNet (LayerNorm, no dropout; see the module docstring)."""

    num_classes: int
    width: int = 64
    blocks: int = 2
    hidden_factor: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, F...] -> [B, num_classes]
        x = nn.Dense(self.width)(x.reshape(x.shape[0], -1))
        for _ in range(self.blocks):
            h = nn.Dense(self.hidden_factor * self.width)(nn.LayerNorm()(x))
            x = x + nn.Dense(self.width)(nn.relu(h))
        return nn.Dense(self.num_classes)(nn.relu(nn.LayerNorm()(x)))


def build_resmlp(cfg: Mapping[str, Any], feature_shape: tuple[int, ...], num_classes: int,
                 task: str) -> ResMLP:
    """``model=resmlp``: checks ``width``, ``blocks`` and ``hidden_factor`` (positive integers,
    ``blocks`` may be 0)."""
    del feature_shape, task  # any input shape (flattened), classification or survival
    settings = {**DEFAULTS, **cfg}
    for key, least in (("width", 1), ("blocks", 0), ("hidden_factor", 1)):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"model.{key}", value, f"an integer >= {least}")
    return ResMLP(num_classes, settings["width"], settings["blocks"], settings["hidden_factor"])


def register() -> None:
    """``model.name=resmlp`` from now on, in this process."""
    from fedbench.model import register as register_model

    register_model(NAME, build_resmlp)


def train(out_dir: str | Path, overrides: Sequence[str] = (), **settings: Any):
    """FedAvg with the ResMLP on breast_cancer over 4 sites (``settings``: ``width``, ...)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.model import REGISTERED
    from fedbench.paths import CONF_DIR
    from fedbench.run import run_experiment

    if NAME not in REGISTERED:
        register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[
            "dataset=breast_cancer", "num_clients=4", "clients_per_round=4", *overrides]),
            resolve=True)
    cfg["model"] = {**DEFAULTS, **settings}
    return run_experiment(cfg, out_dir, progress=None)


if __name__ == "__main__":  # python docs/examples/model.py
    summary = train("outputs/resmlp", ["rounds=50"], width=32)
    print(summary["final"]["test_accuracy"], summary["final"]["client_accuracy_min"])
