"""A worked example of adding a dataset: patients in a CSV file, one row each, with the hospital
that treated them (``docs/extending/dataset.md``).

A dataset is a loader ``loader(cfg) -> RawDataset``: ``cfg`` is the ``dataset`` config group
(``name`` and the loader's own keys), and the :class:`~fedbench.dataset.RawDataset` holds every
example before partitioning: inputs ``x`` ``[n, ...]`` float32 (NaN for a missing cell: the
pipeline imputes it with training-split medians), labels ``y`` ``[n]`` int32 in
``[0, num_classes)`` and, for data that come with their own sites, ``natural_client`` (each
example's site, so ``partition=natural`` keeps the hospitals as the clients) and
``client_names``. Partitioning, the per-client train/test split, imputation and normalisation
(training statistics only) and padding are fedbench's (``fedbench/dataset/pipeline.py``).

Registered for this process with ``fedbench.dataset.register(NAME, load_patients_csv)``
(:func:`register`); for the ``fedbench`` command the loader goes into ``DATASETS`` in
``fedbench/dataset/__init__.py`` and :data:`DEFAULTS` into ``conf/dataset/patients_csv.yaml``.
``tests/test_docs.py`` writes :func:`write_demo_csv`'s file, registers the loader and trains on
it through :func:`fedbench.run.run_experiment`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.dataset import RawDataset
from fedbench.errors import ConfigError

NAME = "patients_csv"

#: What ``conf/dataset/patients_csv.yaml`` would hold (``num_clients``: the federation size the
#: dataset proposes, which the top-level ``num_clients`` takes by default).
DEFAULTS = {"name": NAME, "path": None, "label": "outcome", "site": "site", "num_clients": 4,
            "test_fraction": 0.2, "normalize": "standardize"}


def load_patients_csv(cfg: Mapping[str, Any]) -> RawDataset:
    """Every row of ``cfg["path"]``: the ``label`` column (any values; classes in sorted order)
    is the target, the ``site`` column (optional; null: none) the hospital, every other column
    a numeric feature (empty cells are missing values).

    Raises:
      ConfigError: a missing file or column, or a non-numeric feature, naming the key.
    """
    import pandas as pd

    path = cfg.get("path")
    if not path or not Path(path).is_file():
        raise ConfigError("dataset.path", path, "a CSV file, one row per patient")
    table = pd.read_csv(path)
    label, site = cfg.get("label", "outcome"), cfg.get("site")
    for key, column in (("label", label), ("site", site)):
        if column is not None and column not in table.columns:
            raise ConfigError(f"dataset.{key}", column, "a column of " + str(path) + ": "
                              + ", ".join(table.columns))
    features = table.drop(columns=[c for c in (label, site) if c is not None])
    numeric = features.apply(pd.to_numeric, errors="coerce")
    bad = [c for c in features if numeric[c].isna().sum() > features[c].isna().sum()]
    if bad:
        raise ConfigError("dataset.path", path, f"numeric feature columns ({bad[0]} is not)")
    classes, y = np.unique(table[label].astype(str), return_inverse=True)
    natural, names = None, None
    if site is not None:
        names, natural = np.unique(table[site].astype(str), return_inverse=True)
    return RawDataset(
        NAME, numeric.to_numpy(np.float32), y.astype(np.int32), len(classes),
        natural_client=None if natural is None else natural.astype(np.int32),
        client_names=None if names is None else names.tolist(),
    )


def register() -> None:
    """``dataset.name=patients_csv`` from now on, in this process."""
    from fedbench.dataset import register as register_dataset

    register_dataset(NAME, load_patients_csv)


def train(csv_path: str | Path, out_dir: str | Path, overrides: tuple[str, ...] = ()):
    """FedAvg over the file's hospitals (``partition=natural``: each site one client, all of
    them every round), as ``fedbench`` would run it with the dataset registered."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.dataset import DATASETS
    from fedbench.paths import CONF_DIR
    from fedbench.run import run_experiment

    if NAME not in DATASETS:
        register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[
            "partition=natural", "model=logreg", "num_clients=4", "clients_per_round=4",
            *overrides]), resolve=True)
    cfg["dataset"] = {**DEFAULTS, "path": str(csv_path)}  # the group, as its YAML file would
    return run_experiment(cfg, out_dir, progress=None)


def write_demo_csv(path: str | Path, seed: int = 0) -> Path:
    """A small file in the expected layout, from scikit-learn's breast-cancer data: its first
    8 features, the diagnosis as ``outcome`` (``benign`` / ``malignant``), 4 hospitals of
    unequal size as ``site``, and 5% of the cells missing."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    rng = np.random.default_rng(seed)
    data = load_breast_cancer(as_frame=True)
    table = data.data.iloc[:, :8].copy()
    table = table.mask(rng.random(table.shape) < 0.05)  # missing cells
    table["outcome"] = np.where(data.target == 1, "benign", "malignant")
    table["site"] = rng.choice(["north", "south", "east", "west"], len(table),
                               p=[0.4, 0.3, 0.2, 0.1])
    path = Path(path)
    pd.DataFrame(table).to_csv(path, index=False)
    return path


if __name__ == "__main__":  # python docs/examples/dataset.py
    csv = write_demo_csv("patients.csv")
    summary = train(csv, "outputs/patients", ["rounds=20"])
    print(summary["partition_stats"]["client_names"], summary["final"]["test_accuracy"])
