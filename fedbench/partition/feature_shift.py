"""Feature skew per site (``partition.feature_shift``): each client's inputs are transformed.

Like images from different scanners or lab values from different assays, every client ``c``
(a site) sees its raw inputs through its own transform, applied to its training *and* test
split before the train-only normalisation (:func:`fedbench.dataset.pipeline.build_federated`).
Units are scale-free: ``mu_f`` and ``sigma_f`` are feature ``f``'s mean and standard deviation
over all examples of the dataset (missing values ignored), so a feature that is constant over
the dataset is left as it is.

================  ==========================================  ============================
kind              transform of site ``c``                      site parameter ``v_c``
================  ==========================================  ============================
``none``          ``x``                                        --
``intensity``     ``x + v_c * sigma_f`` (additive offset)      ``strength * z_c``
``contrast``      ``mu_f + v_c * (x - mu_f)`` (gain about the  ``exp(strength * z_c)``
                  mean: spread scales by ``v_c``, mean kept)
``noise``         ``x + v_c * sigma_f * eps``, ``eps ~ N(0,   ``strength * |z_c|``
                  1)`` per example and feature
================  ==========================================  ============================

``z_c ~ N(0, 1)`` are drawn for all clients at once from ``default_rng([seed, 2])`` with the
partition's seed, so the parameters are a function of the seed (the noise of client ``c`` comes
from ``default_rng([seed, 3, c])``, training split first). With ``partition=prevalence`` a site
may fix its own transform with ``shift: {kind: contrast, value: 1.5}`` (``value`` is ``v_c``),
which replaces the drawn one for that site only.

References:
  Q. Li, Y. Diao, Q. Chen, B. He. "Federated Learning on Non-IID Data Silos: An Experimental
  Study", ICDE 2022 (feature distribution skew: "noise-based feature imbalance", Gaussian noise
  of a different level per client).
  X. Li, M. Jiang, X. Zhang, M. Kamp, Q. Dou. "FedBN: Federated Learning on Non-IID Features
  via Local Batch Normalization", ICLR 2021 (feature shift across scanners and sites).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

SHIFT_KINDS = ("none", "intensity", "contrast", "noise")
_VALUE_RULES = {  # a site override's value: check and what is allowed
    "intensity": (lambda v: True, "a finite number (offset in units of each feature's std)"),
    "contrast": (lambda v: v > 0, "a finite number > 0 (gain about each feature's mean)"),
    "noise": (lambda v: v >= 0, "a finite number >= 0 (noise std in units of each feature's std)"),
}


def _finite(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
    )


def site_value(kind: str, strength: float, z: float) -> float | None:
    """The documented parameter ``v_c`` of a site whose standard normal draw is ``z``."""
    if kind == "intensity":
        return strength * z
    if kind == "contrast":
        return math.exp(strength * z)
    if kind == "noise":
        return strength * abs(z)
    return None


def _override(spec: Any, key: str) -> dict[str, Any]:
    """Validates a site's own ``shift: {kind, value}``."""
    if not isinstance(spec, Mapping) or set(spec) != {"kind", "value"}:
        raise ConfigError(key, spec, "a mapping {kind: intensity|contrast|noise, value: number}")
    kind, value = spec["kind"], spec["value"]
    if kind not in SHIFT_KINDS[1:]:
        raise ConfigError(f"{key}.kind", kind, "one of: " + ", ".join(SHIFT_KINDS[1:]))
    valid, allowed = _VALUE_RULES[kind]
    if not (_finite(value) and valid(value)):
        raise ConfigError(f"{key}.value", value, allowed)
    return {"kind": kind, "value": float(value)}


def shift_plan(partition_cfg: Mapping[str, Any], num_clients: int, seed: int) -> list[dict]:
    """Each client's ``{"kind", "value"}`` from ``partition.feature_shift`` and site overrides.

    Raises:
      ConfigError: unknown kind, a negative or non-finite strength, a bad site override.
    """
    cfg = partition_cfg.get("feature_shift") or {}
    if not isinstance(cfg, Mapping):
        raise ConfigError("partition.feature_shift", cfg, "a mapping {kind, strength}")
    unknown = sorted(set(cfg) - {"kind", "strength"})
    if unknown:
        raise ConfigError(f"partition.feature_shift.{unknown[0]}", cfg[unknown[0]],
                          "no such key (keys: kind, strength)")
    kind = cfg.get("kind", "none")
    if kind not in SHIFT_KINDS:
        raise ConfigError("partition.feature_shift.kind", kind, "one of: " + ", ".join(SHIFT_KINDS))
    strength = cfg.get("strength", 0.5)
    if not (_finite(strength) and strength >= 0):
        raise ConfigError("partition.feature_shift.strength", strength, "a finite number >= 0")
    z = np.random.default_rng([seed, 2]).standard_normal(num_clients)
    plan = [{"kind": kind, "value": site_value(kind, float(strength), float(zc))} for zc in z]
    if partition_cfg.get("name") == "prevalence":
        for i, site in enumerate(partition_cfg.get("sites") or []):
            if isinstance(site, Mapping) and site.get("shift") is not None and i < num_clients:
                plan[i] = _override(site["shift"], f"partition.sites[{i}].shift")
    return plan


def feature_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over all examples (NaNs ignored; all-NaN features: 0, 0)."""
    values = x.astype(np.float64)
    observed = ~np.isnan(values)
    count = np.maximum(observed.sum(axis=0), 1)
    mean = np.where(observed, values, 0.0).sum(axis=0) / count
    var = np.where(observed, (values - mean) ** 2, 0.0).sum(axis=0) / count
    return mean, np.sqrt(var)


def apply_shift(
    x: np.ndarray,
    shift: Mapping[str, Any],
    mean: np.ndarray,
    std: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One site's transform of its ``[n, F...]`` inputs (see the table above); NaN stays NaN."""
    kind, value = shift["kind"], shift["value"]
    if kind == "none":
        return x
    if kind == "intensity":
        out = x + value * std
    elif kind == "contrast":
        out = mean + value * (x - mean)
    else:
        out = x + value * std * rng.standard_normal(x.shape)
    return out.astype(np.float32)


def shift_clients(
    all_x: np.ndarray,
    train_x: Sequence[np.ndarray],
    test_x: Sequence[np.ndarray],
    plan: Sequence[Mapping[str, Any]],
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Applies client ``c``'s transform to its training and test inputs alike.

    Args:
      all_x: every example of the dataset; ``mu_f`` and ``sigma_f`` come from these.
      train_x, test_x: per-client inputs.
      plan: per-client ``{"kind", "value"}`` from :func:`shift_plan`.
      seed: the partition's seed (noise of client ``c``: ``default_rng([seed, 3, c])``).
    """
    if all(s["kind"] == "none" for s in plan):
        return list(train_x), list(test_x)
    mean, std = feature_moments(all_x)
    out_train, out_test = [], []
    for c, (tr, te, shift) in enumerate(zip(train_x, test_x, plan, strict=True)):
        rng = np.random.default_rng([seed, 3, c])
        out_train.append(apply_shift(tr, shift, mean, std, rng))
        out_test.append(apply_shift(te, shift, mean, std, rng))
    return out_train, out_test
