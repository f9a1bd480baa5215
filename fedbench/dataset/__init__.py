"""Datasets that need no download, and the path from raw arrays to :class:`FederatedData`.

A loader returns a :class:`RawDataset`: all examples with their labels, and for datasets that
come with their own clients (``natural``), which client and which split each example belongs to.
A partitioner (:mod:`fedbench.partition`) then assigns examples to clients, each client's examples
are split into train and test, inputs are normalised with statistics of the training examples
only, and :func:`fedbench.dataset.federated.from_client_arrays` pads them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedbench.dataset.federated import FederatedData, from_client_arrays
from fedbench.dataset.synthetic import generate_synthetic, generate_synthetic_vectorised
from fedbench.errors import ConfigError

__all__ = [
    "DATASETS",
    "FederatedData",
    "RawDataset",
    "load_dataset",
    "register",
    "from_client_arrays",
    "generate_synthetic",
    "impute_median",
    "normalize",
]


@dataclasses.dataclass
class RawDataset:
    """All examples of a dataset before partitioning.

    Attributes:
      x: ``[n, F...]`` float32 inputs.
      y: ``[n]`` int32 labels in ``[0, num_classes)``.
      num_classes: number of classes.
      natural_client: ``[n]`` client id of each example, for datasets with their own clients.
      natural_is_test: ``[n]`` whether the example is in its client's own test split.
      normalize: default normalisation (``standardize``, ``none``).
      task: ``classification`` or ``survival`` (see :mod:`fedbench.task`).
      target: what the model is trained on when it is not ``y``: for ``survival``, ``[n, 2]``
        float32 ``(event, time)``; ``y`` then holds the event indicator, used by partitioners
        and statistics.
      client_names: names of the natural clients (e.g. hospitals or regions), by client id.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    natural_client: np.ndarray | None = None
    natural_is_test: np.ndarray | None = None
    normalize: str = "standardize"
    task: str = "classification"
    target: np.ndarray | None = None
    client_names: list[str] | None = None


def _digits(cfg: Mapping[str, Any]) -> RawDataset:
    """scikit-learn's 8x8 handwritten digits (UCI; 1,797 images, 10 classes), as ``[8, 8, 1]``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[..., None]
    return RawDataset("digits", x, bunch.target.astype(np.int32), 10)


def _breast_cancer(cfg: Mapping[str, Any]) -> RawDataset:
    """scikit-learn's Wisconsin diagnostic breast cancer (569 patients, 30 features, binary)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return RawDataset(
        "breast_cancer", bunch.data.astype(np.float32), bunch.target.astype(np.int32), 2
    )


def _synthetic(cfg: Mapping[str, Any]) -> RawDataset:
    """Synthetic(alpha, beta) of Li et al. 2020; see :func:`generate_synthetic`."""
    alpha = float(cfg.get("alpha", 0.0))
    beta = float(cfg.get("beta", 0.0))
    for key, value in (("alpha", alpha), ("beta", beta)):
        if value < 0:
            raise ConfigError(f"dataset.{key}", value, ">= 0 (a standard deviation)")
    for key in ("num_clients", "dimension", "num_classes", "samples_per_client"):
        value = cfg.get(key)
        if value is not None and int(value) < 1:
            raise ConfigError(f"dataset.{key}", value, "a positive integer or null (as in the paper)")
    if cfg.get("num_classes") is not None and int(cfg["num_classes"]) < 2:
        raise ConfigError("dataset.num_classes", cfg["num_classes"], ">= 2")
    options = dict(
        iid=bool(cfg.get("iid", False)),
        num_clients=cfg.get("num_clients"),
        dimension=cfg.get("dimension"),
        num_classes=cfg.get("num_classes"),
        samples_per_client=cfg.get("samples_per_client"),
        seed=int(cfg.get("seed", 0)),
        sizes=_synthetic_sizes(cfg),
    )
    num_classes = 10 if cfg.get("num_classes") is None else int(cfg["num_classes"])
    generator = cfg.get("generator") or "per_client"
    if generator not in ("per_client", "vectorised"):
        raise ConfigError("dataset.generator", generator, "null (per_client) or vectorised")
    if generator == "vectorised":  # all clients at once: a different sample, seconds at 100k
        x, y, clients, is_test = generate_synthetic_vectorised(alpha, beta, **options)
        return RawDataset("synthetic", x, y, num_classes, natural_client=clients,
                          natural_is_test=is_test, normalize="none")
    train_x, train_y, test_x, test_y = generate_synthetic(alpha, beta, **options)
    xs, ys, clients, is_test = [], [], [], []
    for c, (trx, tr_y, tex, te_y) in enumerate(zip(train_x, train_y, test_x, test_y)):
        xs += [trx, tex]
        ys += [tr_y, te_y]
        clients.append(np.full(len(trx) + len(tex), c))
        is_test += [np.zeros(len(trx), bool), np.ones(len(tex), bool)]
    return RawDataset(
        "synthetic",
        np.concatenate(xs),
        np.concatenate(ys).astype(np.int32),
        num_classes,
        natural_client=np.concatenate(clients).astype(np.int32),
        natural_is_test=np.concatenate(is_test),
        normalize="none",
    )


def _synthetic_sizes(cfg: Mapping[str, Any]) -> tuple[float, float, int] | None:
    """``dataset.size_mean`` / ``size_sigma`` / ``size_offset``: client sizes
    ``int(lognormal(mean, sigma)) + offset`` (all null: the paper's 4, 2, 50)."""
    keys = ("size_mean", "size_sigma", "size_offset")
    if all(cfg.get(k) is None for k in keys):
        return None
    mean, sigma, offset = (cfg.get(k) if cfg.get(k) is not None else v
                           for k, v in zip(keys, (4.0, 2.0, 50)))
    for key, value, ok in (("size_mean", mean, isinstance(mean, (int, float))),
                           ("size_sigma", sigma, isinstance(sigma, (int, float)) and sigma >= 0),
                           ("size_offset", offset, isinstance(offset, int) and offset >= 1)):
        if isinstance(value, bool) or not ok:
            raise ConfigError(f"dataset.{key}", value, {
                "size_mean": "a number (the log-size's mean)",
                "size_sigma": "a number >= 0 (the log-size's standard deviation)",
                "size_offset": "an integer >= 1 (every client's minimum size)"}[key])
    return float(mean), float(sigma), int(offset)


def _tcga_brca(cfg: Mapping[str, Any]) -> RawDataset:
    """Fed-TCGA-BRCA survival data (FLamby); see :mod:`fedbench.dataset.tcga`."""
    from fedbench.dataset.tcga import load_tcga_brca

    return load_tcga_brca(cfg)


def _opt(cfg: Mapping[str, Any]) -> RawDataset:
    """OPT trial, preterm birth at 4 clinics; see :mod:`fedbench.dataset.clinical`."""
    from fedbench.dataset.clinical import load_opt

    return load_opt(cfg)


def _indo_rct(cfg: Mapping[str, Any]) -> RawDataset:
    """Indomethacin trial, post-ERCP pancreatitis at 4 hospitals; see :mod:`.clinical`."""
    from fedbench.dataset.clinical import load_indo_rct

    return load_indo_rct(cfg)


def _real_images(loader: str) -> Callable[[Mapping[str, Any]], RawDataset]:
    """``fedbench.dataset.tfds.<loader>``, imported on first use (that module imports this one)."""

    def load(cfg: Mapping[str, Any]) -> RawDataset:
        from fedbench.dataset import tfds

        return getattr(tfds, loader)(cfg)

    load.__doc__ = f"See :func:`fedbench.dataset.tfds.{loader}`."
    return load


DATASETS: dict[str, Callable[[Mapping[str, Any]], RawDataset]] = {
    "digits": _digits,
    "breast_cancer": _breast_cancer,
    "synthetic": _synthetic,
    # Real images (fedbench/dataset/tfds.py): the offline MNIST subset, and TFDS datasets, all
    # read by one loader from ``dataset.tfds_name``; ``tfds`` takes any TFDS name.
    "mnist5k": _real_images("load_mnist5k"),
    "mnist": _real_images("load_tfds"),
    "fashion_mnist": _real_images("load_tfds"),
    "emnist": _real_images("load_tfds"),
    "cifar10": _real_images("load_tfds"),
    "tfds": _real_images("load_tfds"),
    "tcga_brca": _tcga_brca,
    "opt": _opt,
    "indo_rct": _indo_rct,
}


def register(name: str, loader: Callable[[Mapping[str, Any]], RawDataset]) -> None:
    """Adds ``loader`` as ``dataset.name=<name>`` for this process (a dataset defined outside
    ``fedbench/dataset``; ``docs/extending/dataset.md``). ``loader(cfg)`` receives the
    ``dataset`` config group and returns a :class:`RawDataset`.

    Raises:
      ValueError: ``name`` is taken (a built-in dataset or one registered before).
    """
    if name in DATASETS:
        raise ValueError(f"a dataset named {name!r} exists already")
    DATASETS[name] = loader


def load_dataset(cfg: Mapping[str, Any]) -> RawDataset:
    """Loads the dataset named by ``cfg["name"]``.

    Raises:
      ConfigError: for an unknown name or bad generator settings.
    """
    name = cfg.get("name")
    if name not in DATASETS:
        raise ConfigError("dataset.name", name, "one of: " + ", ".join(sorted(DATASETS)))
    return DATASETS[name](cfg)


def normalize(
    train_x: list[np.ndarray], other_x: list[list[np.ndarray]], method: str
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Normalises inputs with statistics of the training examples only.

    Args:
      train_x: per-client training inputs; the statistics come from these alone.
      other_x: further lists of per-client arrays (the test splits) to transform the same way.
      method: ``standardize`` (per-feature mean 0, std 1; constant features are only centred)
        or ``none``.
    """
    if method == "none":
        return train_x, other_x
    if method != "standardize":
        raise ConfigError("dataset.normalize", method, "one of: standardize, none")
    pooled = np.concatenate(train_x).astype(np.float64)
    mean = pooled.mean(axis=0)
    std = pooled.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)

    def f(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    return [f(a) for a in train_x], [[f(a) for a in group] for group in other_x]


def impute_median(
    train_x: list[np.ndarray], other_x: list[list[np.ndarray]]
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Fills NaNs with each feature's median over the pooled training examples only.

    The statistic sees the training splits alone, so a test example's values never reach a
    training feature (for a 0/1 column the median is its majority value). A feature with no
    observed training value is filled with 0. Arrays without NaNs are returned unchanged.

    Args:
      train_x: per-client training inputs; the medians come from these alone.
      other_x: further lists of per-client arrays (the test splits) filled with the same medians.
    """
    if not any(np.isnan(a).any() for a in train_x + [a for group in other_x for a in group]):
        return train_x, other_x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": filled with 0 below
        median = np.nanmedian(np.concatenate(train_x).astype(np.float64), axis=0)
    median = np.nan_to_num(median, nan=0.0)

    def f(a: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(a), median, a).astype(np.float32)

    return [f(a) for a in train_x], [[f(a) for a in group] for group in other_x]
