"""From a :class:`RawDataset` and a partition config to padded :class:`FederatedData`."""

from __future__ import annotations

import os

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench.dataset import RawDataset, impute_median, normalize
from fedbench.dataset.federated import FederatedData, from_client_arrays
from fedbench.dataset.flat import FlatFederatedData, flat_from_client_arrays
from fedbench.errors import ConfigError
from fedbench.partition import heterogeneity_stats, partition
from fedbench.partition.feature_shift import shift_clients, shift_plan
from fedbench.partition.panels import apply_panels
from fedbench.partition.acquisition import apply_acquisition
from fedbench.partition.groups import SCENARIOS, apply_groups


def split_client(
    indices: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffles one client's examples and holds out ``int(test_fraction * n)`` for its test split.

    A client always keeps at least one training example, so a 1-example client has no test split.
    """
    shuffled = rng.permutation(indices)
    n_test = min(int(test_fraction * len(indices)), len(indices) - 1)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])


def build_federated(
    raw: RawDataset,
    partition_cfg: Mapping[str, Any],
    num_clients: int,
    seed: int,
    test_fraction: float = 0.2,
    normalization: str | None = None,
    storage: str = "padded",
    no_flat: str | None = None,
) -> tuple[FederatedData | FlatFederatedData, dict[str, Any]]:
    """Partitions, splits, shifts, imputes and normalises (train statistics only), and pads.

    Each client's raw inputs (train and test split alike) first get its feature shift
    (``partition.feature_shift``, :mod:`fedbench.partition.feature_shift`); missing values
    (NaN) are then filled with medians of the pooled training splits
    (:func:`fedbench.dataset.impute_median`), and inputs are normalised with training
    statistics (:func:`fedbench.dataset.normalize`).

    Args:
      raw: the loaded dataset.
      partition_cfg: the ``partition`` config group (``name`` and its settings).
      num_clients: number of clients.
      seed: seed of the partition and the per-client train/test split.
      test_fraction: share of each client's examples held out as its own test split (ignored for
        ``natural`` partitions of datasets that carry their own split).
      normalization: ``standardize`` or ``none``; ``None`` = the dataset's default.
      storage: ``padded`` (:class:`FederatedData`), ``flat`` (:class:`FlatFederatedData`:
        one array plus offsets, for large federations of unequal clients) or ``auto``
        (``flat`` where the padded layout would take more than :data:`PADDED_SHARE` of the
        physical memory, else ``padded``; pass it only where flat storage serves the run,
        as :func:`fedbench.validation.check_client_storage` does).
      no_flat: why flat storage cannot serve the run (:func:`fedbench.validation.flat_refusal`;
        None: it can), for the refusal of a padded layout that would not fit.

    Returns:
      ``(data, stats)``: the padded federated data and heterogeneity statistics of the training
      splits (see :func:`fedbench.partition.heterogeneity_stats`) plus test split sizes and,
      when any client is shifted, ``feature_shift``: each client's ``{"kind", "value"}``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError("dataset.test_fraction", test_fraction, "in [0, 1)")
    parts = partition(partition_cfg, raw.y, num_clients, seed, raw.natural_client)
    rng = np.random.default_rng([seed, 1])
    train_idx, test_idx = [], []
    for part in parts:
        if len(part) == 0:
            raise ConfigError(
                "partition.name", partition_cfg.get("name"), "a partition that gives every client data"
            )
        if partition_cfg.get("name") == "natural" and raw.natural_is_test is not None:
            train_idx.append(part[~raw.natural_is_test[part]])
            test_idx.append(part[raw.natural_is_test[part]])
        else:
            tr, te = split_client(part, test_fraction, rng)
            train_idx.append(tr)
            test_idx.append(te)
    empty = [c for c, idx in enumerate(train_idx) if len(idx) == 0]
    if empty:
        raise ConfigError(
            "dataset.samples_per_client" if raw.name == "synthetic" else "num_clients",
            "too few" if raw.name == "synthetic" else num_clients,
            f"every client needs at least one training example; clients {empty[:5]} have none "
            "after the train/test split",
        )
    # Per-site feature shift of the raw inputs, then NaN imputation and normalisation, both
    # with statistics of the training splits only.
    shifts = shift_plan(partition_cfg, num_clients, seed)
    train_x, test_x = shift_clients(
        raw.x, [raw.x[i] for i in train_idx], [raw.x[i] for i in test_idx], shifts, seed
    )
    targets = raw.y if raw.target is None else raw.target  # survival: (event, time) rows
    train_t, test_t = [targets[i] for i in train_idx], [targets[i] for i in test_idx]
    groups = None
    if partition_cfg.get("name") in SCENARIOS:  # client groups: rotated images, swapped labels
        train_x, test_x, train_t, test_t, groups = apply_groups(
            partition_cfg, train_x, test_x, train_t, test_t, raw.num_classes, raw.task, seed)
    if partition_cfg.get("name") == "acquisition":  # each site's scanner: its images' protocol
        train_x, test_x, groups = apply_acquisition(partition_cfg, train_x, test_x, seed)
    train_x, (test_x,) = impute_median(train_x, [test_x])
    train_x, (test_x,) = normalize(train_x, [test_x], normalization or raw.normalize)
    train_x, test_x, panels = apply_panels(  # sites' lab panels (fedbench/partition/panels.py)
        partition_cfg, train_x, test_x, seed, (normalization or raw.normalize) == "standardize")
    if storage == "auto":  # flat only where the padded layout would not fit
        storage = "padded" if padded_bytes(train_x, test_x) <= PADDED_SHARE * (
            physical_memory() or float("inf")) else "flat"
    if storage == "padded":
        check_padded_fits(train_x, test_x, no_flat=no_flat)
    build = flat_from_client_arrays if storage == "flat" else from_client_arrays
    data = build(
        train_x, train_t, test_x, test_t, raw.num_classes, task=raw.task,
        client_groups=None if groups is None else groups["client_groups"],
    )
    train_y = train_t if groups is not None else [raw.y[i] for i in train_idx]
    test_y = test_t if groups is not None else [raw.y[i] for i in test_idx]
    stats = heterogeneity_stats(train_y, raw.num_classes)
    if groups is not None:
        stats["groups"] = groups  # client_groups, group_sizes, angles | label_permutations |
        # protocols (acquisition)
    if any(s["kind"] != "none" for s in shifts):
        stats["feature_shift"] = shifts  # per client: {"kind", "value"}
    if partition_cfg.get("name") == "natural" and raw.client_names is not None:
        stats["client_names"] = list(raw.client_names)
    if panels is not None:
        stats["panels"] = panels  # per site the columns it measures; those all sites measure
    stats["test_sizes"] = [int(len(t)) for t in test_y]
    stats["client_storage"] = storage  # what client_storage=auto chose
    return data, stats


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


#: The share of physical memory the padded layout may take (:func:`check_padded_fits`).
PADDED_SHARE = 0.5


def padded_bytes(train_x, test_x) -> int:
    """Bytes of the padded layout's inputs: ``num_clients x (largest train + largest test)``
    float32 examples."""
    example = int(np.prod(np.shape(train_x[0])[1:])) * 4  # float32 features of one example
    return len(train_x) * (max(len(x) for x in train_x) + max(len(x) for x in test_x)) * example


def check_padded_fits(train_x, test_x, share: float = PADDED_SHARE,
                      no_flat: str | None = None) -> None:
    """Padded storage holds ``num_clients x largest client`` examples (train and test): refused
    in one line naming ``client_storage=flat`` when that would take more than ``share`` of
    the physical memory (100,000 clients padded to the largest of them: tens of GiB), instead
    of NumPy's allocation error after the set-up.

    Raises:
      ConfigError: naming ``client_storage``, the size needed and the memory there is.
    """
    memory = physical_memory()
    if memory is None:
        return
    needed = padded_bytes(train_x, test_x)
    if needed > share * memory:
        size = (f"padding {len(train_x)} clients to the largest needs {needed / 2**30:.1f} GiB, "
                f"more than half of this machine's {memory / 2**30:.1f} GiB")
        if no_flat is not None:  # flat storage would fit, but cannot serve this run
            raise ConfigError("client_storage", "padded", f"a smaller federation or a larger "
                              f"machine: {size}, and client_storage=flat is refused for {no_flat}")
        raise ConfigError("client_storage", "padded",
                          f"flat for this federation (client_storage=flat): {size}")
