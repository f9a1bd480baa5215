"""FedBN: the normalisation layers stay at each site; SiloBN: only their statistics do.

X. Li, M. Jiang, X. Zhang, M. Kamp, Q. Dou, "FedBN: Federated Learning on Non-IID Features via
Local Batch Normalization", ICLR 2021, Algorithm 1: FedAvg of every parameter except the
normalisation layers', which each site keeps and trains locally, so each site normalises its
features by its own learned scale and shift (feature shift: the same content imaged by
different scanners, :mod:`fedbench.partition.acquisition`). The server never receives them.

The paper's layers are BatchNorm (``model.norm=batch``, :class:`fedbench.model.BatchNorm`),
whose running statistics are local too: they are entries of the layer's parameters, so the
local part is each BatchNorm layer's scale, bias, running mean and running variance. GroupNorm
and LayerNorm (``model.norm=group|layer``) are per-example layers without statistics; their local
part is the scale and bias (every top-level module named ``GroupNorm_*``, ``LayerNorm_*`` or
``BatchNorm_*``). Each site is
evaluated with the global model and its own normalisation layers; a site never sampled with the
initial ones. Built on FedPer's mechanism for local parts
(:func:`fedbench.algorithm.personalised._local_parts`).

SiloBN (M. Andreux, J. Ogier du Terrail, C. Beguier, E. W. Tramel, "Siloed Federated Learning
for Multi-Centric Histopathology Datasets", MICCAI DART 2020): only BatchNorm's running mean and
variance stay at each site; its scale and bias are averaged with the rest of the model
(``algorithm=silobn``, ``model.norm=batch``). Each site is evaluated with the global model and
its own statistics.

Under ``privacy=dp_client`` both are refused as FedPer is (the local parts are stored relative to
the global ones, which the noisy mean would perturb); ``dp_sample`` is allowed: every update,
local layers included, is DP-SGD's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from fedbench.algorithm.base import Algorithm
from fedbench.algorithm.personalised import _HEAD_DP, _local_parts
from fedbench.errors import ConfigError

NORM_PREFIXES = ("GroupNorm_", "LayerNorm_", "BatchNorm_")


def norm_layers(params: Mapping[str, Any]) -> list[str]:
    """The model's top-level normalisation modules.

    Raises:
      ConfigError: naming ``model.norm`` when the model has none.
    """
    names = [k for k in params if k.startswith(NORM_PREFIXES)]
    if not names:
        raise ConfigError("model.norm", "none",
                          "batch, group or layer with algorithm=fedbn (a model with normalisation "
                          "layers: model=mlp or model=cnn); this model's modules: "
                          + ", ".join(params))
    return names


def running_statistics(params: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each BatchNorm layer's running ``mean`` and ``var`` (SiloBN's local part).

    Raises:
      ConfigError: naming ``model.norm`` when the model has no BatchNorm layer.
    """
    names = [k for k in params if k.startswith("BatchNorm_")]
    if not names:
        raise ConfigError("model.norm", "not batch",
                          "batch with algorithm=silobn (a model with BatchNorm layers: "
                          "model=mlp or model=cnn, model.norm=batch)")
    return {k: ("mean", "var") for k in names}


def silobn(cfg: Mapping[str, Any]) -> Algorithm:
    del cfg
    return Algorithm(
        "silobn", "federated", optax.sgd(1.0), settings={},
        **_local_parts(running_statistics),
        dp_client=_HEAD_DP.format("BatchNorm statistics are", "ones"),
    )


def fedbn(cfg: Mapping[str, Any]) -> Algorithm:
    del cfg
    return Algorithm(
        "fedbn", "federated", optax.sgd(1.0), settings={},
        **_local_parts(norm_layers),
        dp_client=_HEAD_DP.format("normalisation layers are", "ones"),
    )
