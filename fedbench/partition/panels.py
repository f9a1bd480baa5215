"""Sites that measure different subsets of the features (``partition.panels``): lab panels.

Each hospital runs its own laboratory panel: a few tests every site measures (the shared
panel), others only some sites do, in their own units. With ``partition.panels`` set, site
``c`` measures a fixed subset of a tabular dataset's columns, in its training and test split
alike; the other columns are missing there.

==============  =================================================================================
key             meaning
==============  =================================================================================
``shared``      number of columns every site measures, drawn uniformly without replacement
``coverage``    probability that a site measures each other column (independently per site
                and column)
``keep``        ``all``: every column, a site's unmeasured ones set to 0 (zero-filled; the
                semi-federated model's per-site encoder never sees them, FedAvg sees zeros);
                ``shared``: only the columns every site measures (the shared-features baseline)
``columns``     null, or per site the list of column indices it measures (replaces the draw)
==============  =================================================================================

The draw uses ``default_rng([seed, 4])`` with the partition's seed: the ``shared`` columns
first, then a ``[num_clients, num_features]`` table of uniforms; a column counts as shared when
every site measures it, drawn so or not. Panels apply after the pipeline's imputation and
normalisation (:func:`fedbench.dataset.pipeline.build_federated`); when the dataset is
standardised, each column is standardised again with the training rows of the sites that
measure it only (a composition of affine maps: as if the raw column had been standardised with
those sites' statistics), so zero-filling is mean imputation with the measuring sites' mean.
Units per site (assay calibrations) come from ``partition.feature_shift``
(:mod:`fedbench.partition.feature_shift`), applied to the raw inputs before all of this.

References:
  P. P. Liang et al., "Think Locally, Act Globally: Federated Learning with Local and Global
  Representations", arXiv:2001.01523, 2020 (local representation layers, a global model on
  top). Y. Liu et al., "Vertical Federated Learning: Concepts, Advances and Challenges", IEEE
  TKDE 2024 (feature-partitioned federations; here every site also holds labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

KEEP = ("all", "shared")
_KEYS = ("shared", "coverage", "keep", "columns")


def _int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def panel_masks(cfg: Mapping[str, Any], num_features: int, num_clients: int,
                seed: int) -> np.ndarray:
    """``[num_clients, num_features]`` bool: which columns each site measures.

    Raises:
      ConfigError: an unknown key, a bad value, or a site that measures no column.
    """
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ConfigError(f"partition.panels.{unknown[0]}", cfg[unknown[0]],
                          "no such key (keys: " + ", ".join(_KEYS) + ")")
    if cfg.get("keep", "all") not in KEEP:
        raise ConfigError("partition.panels.keep", cfg.get("keep"), "one of: " + ", ".join(KEEP))
    columns = cfg.get("columns")
    if columns is not None:
        if (not isinstance(columns, Sequence) or len(columns) != num_clients
                or not all(isinstance(c, Sequence) for c in columns)):
            raise ConfigError("partition.panels.columns", columns,
                              f"null or one list of column indices per site ({num_clients})")
        masks = np.zeros((num_clients, num_features), bool)
        for c, cols in enumerate(columns):
            if not cols or not all(_int(j) and 0 <= j < num_features for j in cols):
                raise ConfigError(f"partition.panels.columns[{c}]", list(cols),
                                  f"a non-empty list of column indices in [0, {num_features})")
            masks[c, list(cols)] = True
        return masks
    shared, coverage = cfg.get("shared", 0), cfg.get("coverage", 0.5)
    if not _int(shared) or not 0 <= shared <= num_features:
        raise ConfigError("partition.panels.shared", shared,
                          f"an integer in [0, {num_features}] (the dataset's columns)")
    if (isinstance(coverage, bool) or not isinstance(coverage, (int, float))
            or not 0.0 <= coverage <= 1.0):
        raise ConfigError("partition.panels.coverage", coverage, "a probability in [0, 1]")
    rng = np.random.default_rng([seed, 4])
    common = rng.choice(num_features, int(shared), replace=False)
    masks = rng.random((num_clients, num_features)) < coverage
    masks[:, common] = True
    empty = np.flatnonzero(~masks.any(axis=1))
    if len(empty):
        raise ConfigError("partition.panels.coverage", coverage,
                          f"a value with which every site measures a column (sites "
                          f"{empty[:5].tolist()} measure none; or set partition.panels.shared)")
    return masks


def apply_panels(partition_cfg: Mapping[str, Any], train_x: list[np.ndarray],
                 test_x: list[np.ndarray], seed: int, standardized: bool
                 ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any] | None]:
    """Each site's panel applied to its (imputed, normalised) inputs; see the module docstring.

    Returns ``(train_x, test_x, stats)``; ``stats`` (None without ``partition.panels``):
    ``columns`` (per site, the column indices it measures, of the dataset's columns),
    ``shared`` (those every site measures) and ``keep``.

    Raises:
      ConfigError: a bad ``partition.panels``, inputs that are not a table, or ``keep=shared``
        with no column every site measures.
    """
    cfg = partition_cfg.get("panels")
    if cfg is None:
        return train_x, test_x, None
    if not isinstance(cfg, Mapping):
        raise ConfigError("partition.panels", cfg, "null or a mapping {shared, coverage, keep, "
                          "columns}")
    if train_x[0].ndim != 2:
        raise ConfigError("partition.panels", dict(cfg), "a tabular dataset (inputs [n, "
                          f"features]; these are {list(train_x[0].shape[1:])})")
    features = train_x[0].shape[1]
    masks = panel_masks(cfg, features, len(train_x), seed)
    shared = np.flatnonzero(masks.all(axis=0))
    keep = cfg.get("keep", "all")
    if keep == "shared" and len(shared) == 0:
        raise ConfigError("partition.panels.keep", keep,
                          "all: no column is measured by every site (set partition.panels.shared)")
    train_x = [np.array(a, np.float32) for a in train_x]
    test_x = [np.array(a, np.float32) for a in test_x]
    for j in range(features):
        sites = np.flatnonzero(masks[:, j])
        if standardized and len(sites):
            values = np.concatenate([train_x[c][:, j] for c in sites]).astype(np.float64)
            mean, std = values.mean(), values.std()
            std = std if std > 1e-8 else 1.0
            for c in sites:
                for a in (train_x[c], test_x[c]):
                    a[:, j] = ((a[:, j] - mean) / std).astype(np.float32)
        for c in np.flatnonzero(~masks[:, j]):
            train_x[c][:, j] = 0.0
            test_x[c][:, j] = 0.0
    if keep == "shared":
        train_x = [a[:, shared] for a in train_x]
        test_x = [a[:, shared] for a in test_x]
    stats = {"columns": [np.flatnonzero(m).tolist() for m in masks],
             "shared": shared.tolist(), "keep": keep}
    return train_x, test_x, stats
