"""Partitions as replicas: ``sweep.partition_alpha`` / ``sweep.partition_seed``, one program.

Each replica of a partition sweep has its own partition of the same dataset: its own
:class:`~fedbench.dataset.federated.FederatedData`, built exactly as its separate job builds it.
For the round program the replicas' data are zero-padded to common shapes (the largest site's
training and test size, the largest pooled test set) and stacked on the replica axis, so the
replicas map over ``(state, data)`` pairs. Padding changes nothing a client computes: its step
loop runs its own number of steps, its epoch order ranks uniforms drawn per slot
(:func:`fedbench.local.epoch_order`, the same first ``count`` draws at any padded length), and
padded rows are never gathered. Each replica is evaluated on its own unpadded data (its own
:class:`~fedbench.evaluation.Evaluator`, :func:`evaluation_view`), so its metrics are its
separate job's.

The stacked data cost memory once per distinct partition; the run reports it
(``summary.json``'s ``timing.replica_data_mb``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.dataset.federated import FederatedData
from fedbench.errors import ConfigError
from fedbench.evaluation import Evaluator

DATA_KEYS = ("partition_alpha", "partition_seed")


def data_swept(swept: Mapping[str, Any]) -> list[str]:
    """The swept keys that change the data (partitions)."""
    return [k for k in DATA_KEYS if k in swept]


def check_partition_sweep(cfg: Mapping[str, Any], algorithm, key: str) -> None:
    """Partition sweeps need a program whose constants do not depend on the data: synchronous
    federated algorithms without a personal pass or full-batch steps, no ``local_steps`` (its
    epoch count follows the smallest site), no DP (the plan follows the site sizes)."""
    value = (cfg.get("sweep") or {}).get(key)
    checks = [
        (algorithm.kind == "federated", "a synchronous federated algorithm"),
        (algorithm.personal_pass is None, "an algorithm without a personal pass"),
        (not algorithm.full_batch, "an algorithm with minibatch steps (not fedsgd)"),
        (cfg.get("local_steps") is None, "local_steps=null (epochs)"),
        ((cfg.get("privacy") or {}).get("name", "none") == "none", "privacy=none"),
    ]
    for ok, needs in checks:
        if not ok:
            raise ConfigError(f"sweep.{key}", value, f"null, or {needs} (partitions as replicas "
                              "need a program that does not depend on the data)")


def replica_datasets(raw, replica_cfgs: Sequence[Mapping[str, Any]]):
    """``(data, partition_stats)`` of every replica config, each partition built once."""
    from fedbench.dataset.pipeline import build_federated

    built, out = {}, []
    for cfg in replica_cfgs:
        part = cfg["partition"]
        seed = cfg["seed"] if part.get("seed") is None else part["seed"]
        key = json.dumps([part, seed], sort_keys=True, default=str)
        if key not in built:
            built[key] = build_federated(
                raw, part, cfg["num_clients"], seed=seed,
                test_fraction=float(cfg["dataset"].get("test_fraction", 0.2)),
                normalization=cfg["dataset"].get("normalize"))
        out.append(built[key])
    return out


def _pad(a: jax.Array, axis: int, length: int) -> np.ndarray:
    a = np.asarray(a)
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, length - a.shape[axis])
    return np.pad(a, widths)


def stack_padded(datas: Sequence[FederatedData]) -> FederatedData:
    """The replicas' data zero-padded to common shapes and stacked ``[R, ...]``."""
    n = max(d.train_x.shape[1] for d in datas)
    m = max(d.test_x.shape[1] for d in datas)
    t = max(d.pooled_test_x.shape[0] for d in datas)
    lengths = {"train_x": (1, n), "train_y": (1, n), "test_x": (1, m), "test_y": (1, m),
               "pooled_test_x": (0, t), "pooled_test_y": (0, t)}
    fields = {}
    for name in ("train_x", "train_y", "train_counts", "test_x", "test_y", "test_counts",
                 "pooled_test_x", "pooled_test_y"):
        arrays = [getattr(d, name) for d in datas]
        if name in lengths:
            arrays = [_pad(a, *lengths[name]) for a in arrays]
        fields[name] = jnp.asarray(np.stack([np.asarray(a) for a in arrays]))
    first = datas[0]
    return FederatedData(**fields, num_classes=first.num_classes, task=first.task)


def payload_mb(payload: FederatedData) -> float:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(payload)) / 2**20


@dataclasses.dataclass(frozen=True)
class EvaluationView:
    """What a partition replica's run reads in place of the simulator: its own
    :class:`~fedbench.evaluation.Evaluator` over its own data (``evaluate``, ``site_results``)
    and the shared program's ``client_axis`` and ``links`` (its ``summary.json``)."""

    evaluator: Evaluator
    client_axis: str
    links: Any

    def evaluate(self, state, min_client_test: int = 1) -> dict[str, Any]:
        """:meth:`fedbench.evaluation.Evaluator.evaluate` on the replica's data."""
        return self.evaluator.evaluate(state, min_client_test=min_client_test)

    def site_results(self, state) -> dict[str, Any]:
        """:meth:`fedbench.evaluation.Evaluator.site_results` on the replica's data."""
        return self.evaluator.site_results(state)


def evaluation_view(sim, data: FederatedData) -> EvaluationView:
    """``sim``'s evaluation of ``data`` (one replica's own, unpadded): a new evaluator with its
    own compiled programs (:meth:`~fedbench.evaluation.Evaluator.with_data`), so its metrics
    are its separate job's."""
    return EvaluationView(sim.evaluator.with_data(data), sim.client_axis, sim.links)
