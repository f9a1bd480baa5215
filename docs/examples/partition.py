"""A worked example of adding a partition: NIID-Bench's label-quantity skew ``#C=k``
(``docs/extending/partition.md``).

Q. Li, Y. Diao, Q. Chen, B. He, "Federated Learning on Non-IID Data Silos: An Experimental
Study", ICDE 2022, Sec. IV-A: every client holds examples of exactly ``k`` labels. Client ``i``
is given label ``i mod K`` and ``k - 1`` other labels drawn uniformly without repetition; each
label's examples are then split into equal parts (in random order) among the clients holding it.
A label no client holds is left out (none is when ``num_clients >= K``).

A partitioner is ``partitioner(labels, num_clients, rng, cfg) -> list of index arrays``: it sees
only the labels, so it applies to any dataset; ``rng`` is a NumPy generator seeded with the
partition seed (``partition.seed``, else ``seed``) and ``cfg`` the ``partition`` config group.
Each client's examples are then split into train and test, shifted, imputed and normalised by
fedbench (``fedbench/dataset/pipeline.py``), as for the built-in partitions.

Registered for this process with ``fedbench.partition.register(NAME, label_quantity)``
(:func:`register`); for the ``fedbench`` command the function goes into
``fedbench/partition/__init__.py`` (its name in ``PARTITIONS`` and a branch in ``partition``)
and :data:`DEFAULTS` into ``conf/partition/label_quantity.yaml``. ``tests/test_docs.py`` checks
the definition on digits and trains on it through :func:`fedbench.run.run_experiment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

NAME = "label_quantity"

#: What ``conf/partition/label_quantity.yaml`` would hold (``feature_shift`` and ``seed``: the
#: keys every partition takes).
DEFAULTS = {"name": NAME, "labels_per_client": 2,
            "feature_shift": {"kind": "none", "strength": 0.5}, "seed": None}


def label_quantity(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
                   cfg: Mapping[str, Any]) -> list[np.ndarray]:
    """``#C=k`` with ``k = cfg["labels_per_client"]`` (see the module docstring).

    Raises:
      ConfigError: ``k`` is not an integer in ``[1, number of labels]``.
    """
    classes = np.unique(labels)
    k = cfg.get("labels_per_client", DEFAULTS["labels_per_client"])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(classes):
        raise ConfigError("partition.labels_per_client", k,
                          f"an integer from 1 to {len(classes)} (the dataset's labels)")
    held = []
    for client in range(num_clients):
        first = classes[client % len(classes)]
        others = rng.choice(classes[classes != first], k - 1, replace=False)
        held.append({int(first), *map(int, others)})
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in classes:
        owners = [c for c in range(num_clients) if int(label) in held[c]]
        examples = rng.permutation(np.flatnonzero(labels == label))
        for owner, chunk in zip(owners, np.array_split(examples, max(len(owners), 1))):
            parts[owner].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def register() -> None:
    """``partition.name=label_quantity`` from now on, in this process."""
    from fedbench.partition import register as register_partition

    register_partition(NAME, label_quantity)


def train(out_dir: str | Path, overrides: Sequence[str] = (), labels_per_client: int = 2):
    """FedAvg on digits split over 10 clients of ``labels_per_client`` labels each."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.partition import REGISTERED
    from fedbench.paths import CONF_DIR
    from fedbench.run import run_experiment

    if NAME not in REGISTERED:
        register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=[
            "num_clients=10", *overrides]), resolve=True)
    cfg["partition"] = {**DEFAULTS, "labels_per_client": labels_per_client}
    return run_experiment(cfg, out_dir, progress=None)


if __name__ == "__main__":  # python docs/examples/partition.py
    summary = train("outputs/label_quantity", ["rounds=50"], labels_per_client=2)
    print(summary["partition_stats"]["label_histograms"], summary["final"]["test_accuracy"])
