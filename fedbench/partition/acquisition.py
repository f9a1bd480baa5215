"""Scanner shift (``partition=acquisition``): every site images its patients its own way.

The same disease imaged on different equipment with different protocols looks different: this
scenario gives each site a fixed acquisition protocol, applied to all its images (training and
test split alike, before the train-only normalisation), while the labels are split over the
sites IID (``labels: iid``) or with Dirichlet label skew (``labels: dirichlet``, ``alpha``,
``min_size``, ``balance``: the same draw as ``partition=dirichlet``), so feature shift and label
skew combine. ``scanners`` protocols are drawn (``null``: one per site); the sites are cut into
that many groups in site order, as evenly as possible, and a group shares its scanner. Each
site's scanner is its ``client_groups`` entry (clustered algorithms' ``cluster_ari``).

A protocol, in the order applied to ``[n, H, W, C]`` images ``x`` (units: ``m`` and ``s``, the
mean and standard deviation of every pixel of the sites' images pooled):

==============  ==========================================================  ==================
step            transform                                                   protocol parameter
==============  ==========================================================  ==================
resolution      mean over ``f x f`` pixel blocks, each block then filled    ``f`` drawn from
                with its mean (a detector ``f`` times coarser)              ``resolution``
blur            Gaussian filter of std ``sigma`` pixels over height and     ``sigma ~ U(0,
                width (``scipy.ndimage.gaussian_filter``, edges repeated)    blur)``
contrast        ``m + a (x - m)``                                           ``a = exp(contrast
                                                                            * z_1)``
intensity       ``x + b s``                                                 ``b = intensity *
                                                                            z_2``
noise           ``x + n s eps``, ``eps ~ N(0, 1)`` per pixel, the site's    ``n ~ U(0, noise)``
                own draws (``default_rng([seed, 6, site])``, training
                split first)
==============  ==========================================================  ==================

``z ~ N(0, 1)``, ``U`` uniform; every protocol's draws come from ``default_rng([seed, 5])``
with the partition seed (all ``z`` first, then the uniforms, then the factors). A strength of 0
(or ``resolution: [1]``) turns its step off; all off is ``partition=iid`` (or ``dirichlet``).

References:
  X. Li, M. Jiang, X. Zhang, M. Kamp, Q. Dou. "FedBN: Federated Learning on Non-IID Features
  via Local Batch Normalization", ICLR 2021 (feature shift: the same labels imaged by different
  sources, one source per client, Sec. 5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

LABELS = ("iid", "dirichlet")
_KEYS = ("name", "labels", "alpha", "min_size", "balance", "scanners", "intensity", "contrast",
         "blur", "noise", "resolution", "seed", "feature_shift")


def _strength(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg.get(key, 0.0)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0):
        raise ConfigError(f"partition.{key}", value, "a finite number >= 0 (0: off)")
    return float(value)


def check(cfg: Mapping[str, Any], num_clients: int) -> int:
    """Validates the scenario's keys; returns the number of scanners.

    Raises:
      ConfigError: an unknown key, a bad ``labels``, strength, ``resolution`` or ``scanners``.
    """
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ConfigError(f"partition.{unknown[0]}", cfg[unknown[0]],
                          "no such key of partition=acquisition (keys: " + ", ".join(_KEYS[1:-2])
                          + ", seed)")
    if cfg.get("labels", "iid") not in LABELS:
        raise ConfigError("partition.labels", cfg.get("labels"), "one of: " + ", ".join(LABELS))
    for key in ("intensity", "contrast", "blur", "noise"):
        _strength(cfg, key)
    factors = cfg.get("resolution", [1])
    if (not isinstance(factors, Sequence) or isinstance(factors, str) or not factors
            or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors)):
        raise ConfigError("partition.resolution", factors,
                          "a non-empty list of integers >= 1 (block sizes; [1]: full resolution)")
    scanners = cfg.get("scanners")
    if scanners is None:
        return num_clients
    if isinstance(scanners, bool) or not isinstance(scanners, int) or not 1 <= scanners <= num_clients:
        raise ConfigError("partition.scanners", scanners,
                          f"an integer in [1, num_clients={num_clients}], or null (one per site)")
    return scanners


def protocols(cfg: Mapping[str, Any], scanners: int, seed: int) -> list[dict[str, float]]:
    """Each scanner's ``{"resolution", "blur", "contrast", "intensity", "noise"}`` (the table's
    ``f``, ``sigma``, ``a``, ``b``, ``n``), drawn from ``default_rng([seed, 5])``."""
    rng = np.random.default_rng([seed, 5])
    z = rng.standard_normal((scanners, 2))
    u = rng.uniform(size=(scanners, 2))
    factors = list(cfg.get("resolution", [1]))
    pick = rng.integers(len(factors), size=scanners)
    return [{"resolution": int(factors[pick[p]]),
             "blur": _strength(cfg, "blur") * float(u[p, 0]),
             "contrast": math.exp(_strength(cfg, "contrast") * float(z[p, 0])),
             "intensity": _strength(cfg, "intensity") * float(z[p, 1]),
             "noise": _strength(cfg, "noise") * float(u[p, 1])} for p in range(scanners)]


def acquire(x: np.ndarray, protocol: Mapping[str, float], mean: float, std: float,
            rng: np.random.Generator) -> np.ndarray:
    """``[n, H, W, C]`` images through one protocol (the module docstring's table)."""
    out = x.astype(np.float64)
    f = protocol["resolution"]
    if f > 1:
        n, h, w, c = out.shape
        blocks = out.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4), keepdims=True)
        out = np.broadcast_to(blocks, (n, h // f, f, w // f, f, c)).reshape(n, h, w, c)
    if protocol["blur"] > 0:
        from scipy.ndimage import gaussian_filter

        out = gaussian_filter(out, sigma=(0, protocol["blur"], protocol["blur"], 0),
                              mode="nearest")
    out = mean + protocol["contrast"] * (out - mean) + protocol["intensity"] * std
    if protocol["noise"] > 0:
        out = out + protocol["noise"] * std * rng.standard_normal(out.shape)
    return out.astype(np.float32)


def scanner_of_sites(num_clients: int, scanners: int) -> np.ndarray:
    """Site ``c``'s scanner: the sites cut into ``scanners`` groups in order, as evenly as
    possible (the first groups one larger)."""
    sizes = [len(p) for p in np.array_split(np.arange(num_clients), scanners)]
    return np.repeat(np.arange(scanners), sizes)


def apply_acquisition(
    cfg: Mapping[str, Any], train_x: list[np.ndarray], test_x: list[np.ndarray], seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Every site's training and test images through its scanner's protocol.

    Returns:
      ``(train_x, test_x, info)``; ``info``: ``client_groups`` (each site's scanner),
      ``group_sizes`` and ``protocols`` (each scanner's parameters).

    Raises:
      ConfigError: inputs that are not ``[H, W, C]`` images, or a resolution factor that does
        not divide the height and width (``partition.resolution``).
    """
    shape = train_x[0].shape[1:]
    if len(shape) != 3:
        raise ConfigError("partition.name", "acquisition",
                          f"a dataset of [H, W, C] images (this one's inputs are {list(shape)}), "
                          "e.g. digits or mnist5k")
    scanners = check(cfg, len(train_x))
    plan = protocols(cfg, scanners, seed)
    for p in plan:
        if shape[0] % p["resolution"] or shape[1] % p["resolution"]:
            raise ConfigError("partition.resolution", list(cfg.get("resolution")),
                              f"block sizes that divide the images' {shape[0]} x {shape[1]} "
                              "pixels")
    pooled = np.concatenate([*train_x, *test_x]).astype(np.float64)
    mean, std = float(pooled.mean()), float(pooled.std())
    of = scanner_of_sites(len(train_x), scanners)
    out_train, out_test = [], []
    for c, (tr, te) in enumerate(zip(train_x, test_x, strict=True)):
        rng = np.random.default_rng([seed, 6, c])
        out_train.append(acquire(tr, plan[of[c]], mean, std, rng))
        out_test.append(acquire(te, plan[of[c]], mean, std, rng))
    info = {"client_groups": of.tolist(), "group_sizes": np.bincount(of).tolist(),
            "protocols": plan}
    return out_train, out_test, info
