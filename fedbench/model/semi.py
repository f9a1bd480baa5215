"""A semi-federated model: a per-site input encoder, a federated embedding MLP, a head.

``model=semi`` (``conf/model/semi.yaml``) is an MLP in three named top-level modules::

    x [B, F] -> encoder (Dense + ReLU per width) -> body (Dense + ReLU per width) -> head (Dense)

``model.local`` names the modules that never leave a site (``encoder``, ``body``, ``head``);
``algorithm=semifed`` (:func:`fedbench.algorithm.personalised.semifed`) keeps them in the
per-client store, one copy per site, and federates the rest. With ``local: [encoder]`` each
hospital maps its own lab panel (its own columns, units and missingness; a column a site does
not measure is 0 there, :mod:`fedbench.partition.panels`, so it never moves that site's
encoder) into an embedding whose meaning the federated body and head share. With
``local: [encoder, head]`` the head is each site's too (FedPer's head on top). With
``local: []`` it is an MLP with hidden widths ``encoder + body``, trained as FedAvg.

References:
  P. P. Liang et al., "Think Locally, Act Globally: Federated Learning with Local and Global
  Representations", arXiv:2001.01523, 2020 (LG-FedAvg: local representation layers, global
  layers on top). M. G. Arivazhagan et al., "Federated Learning with Personalization Layers",
  arXiv:1912.00818, 2019 (FedPer: a local head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from fedbench.errors import ConfigError

PARTS = ("encoder", "body", "head")


class Stack(nn.Module):
    """Dense + ReLU layers of the given widths (``Dense_0``, ``Dense_1``, ...)."""

    widths: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.widths:
            x = nn.relu(nn.Dense(width)(x))
        return x


class SemiFederated(nn.Module):
    """``encoder`` -> ``body`` -> ``head``; top-level parameter names are those three (no
    ``body`` when it has no layers)."""

    num_classes: int
    encoder: Sequence[int] = (32,)
    body: Sequence[int] = (32,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = Stack(tuple(self.encoder), name="encoder")(x)
        if self.body:
            x = Stack(tuple(self.body), name="body")(x)
        return nn.Dense(self.num_classes, name="head")(x)


def _widths(cfg: Mapping[str, Any], key: str, minimum: int) -> tuple[int, ...]:
    value = cfg.get(key)
    if (not isinstance(value, Sequence) or isinstance(value, str) or len(value) < minimum
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)):
        raise ConfigError(f"model.{key}", value,
                          f"a list of at least {minimum} positive layer widths")
    return tuple(value)


def build_semi(cfg: Mapping[str, Any], num_classes: int) -> SemiFederated:
    """The model of ``conf/model/semi.yaml`` after checking its widths and ``model.local``.

    Raises:
      ConfigError: naming ``model.encoder``, ``model.body`` or ``model.local``.
    """
    encoder, body = _widths(cfg, "encoder", 1), _widths(cfg, "body", 0)
    parts = [p for p in PARTS if p != "body" or body]
    local = cfg.get("local")
    if (not isinstance(local, Sequence) or isinstance(local, str)
            or not all(p in parts for p in local) or len(set(local)) != len(local)):
        raise ConfigError("model.local", local,
                          "a list of distinct modules kept at each site, of: " + ", ".join(parts))
    return SemiFederated(num_classes, encoder, body)


def check_local(model_cfg: Mapping[str, Any], algorithm) -> None:
    """A model with local parts needs an algorithm that keeps them at the sites.

    ``algorithm=semifed`` keeps ``model.local``; ``local`` and ``centralized`` send nothing.

    Raises:
      ConfigError: naming ``model.local`` for any other algorithm, or ``algorithm.local`` when
        it differs from ``model.local``.
    """
    local = list(model_cfg.get("local") or [])
    if algorithm.kind in ("local", "centralized"):
        return
    if algorithm.name != "semifed":
        if local:
            raise ConfigError("model.local", local,
                              f"[] with algorithm={algorithm.name} (only algorithm=semifed keeps "
                              "model parts at each site; local and centralized send nothing)")
        return
    if local and list(algorithm.settings["local"]) != local:
        raise ConfigError("algorithm.local", list(algorithm.settings["local"]),
                          f"model.local ({local}) or leave it unset")
