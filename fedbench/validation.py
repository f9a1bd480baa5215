"""Checks of the top-level settings, before any data is loaded or anything compiled.

Each function raises :class:`~fedbench.errors.ConfigError` naming the key, the value and what is
allowed. :func:`fedbench.checked.check_config` calls them, with the group builders' checks, in
the run's single validation pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fedbench.errors import ConfigError
from fedbench.privacy.mechanism import mechanism_class
from fedbench.state import CLIENT_AXES, Settings
from fedbench.stragglers import Stragglers
from fedbench.xla_options import check as check_cpu_fusions


def _integer(cfg: Mapping[str, Any], key: str, minimum: int, what: str | None = None) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, what or f"an integer >= {minimum}")
    return value


def _positive_float(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(key, value, "a finite number > 0")
    return float(value)


def validate(cfg: Mapping[str, Any]) -> Settings:
    """Checks the top-level keys and returns the simulator :class:`Settings`.

    The rest of the config is checked beside it by :func:`fedbench.checked.check_config`.

    Raises:
      ConfigError: naming the key, the value and what is allowed.
    """
    num_clients = _integer(cfg, "num_clients", 1)
    _integer(
        cfg,
        "clients_per_round",
        1,
        f"an integer in [1, num_clients={num_clients}]",
    )
    if cfg["clients_per_round"] > num_clients:
        raise ConfigError(
            "clients_per_round",
            cfg["clients_per_round"],
            f"<= num_clients={num_clients} (clients are sampled without replacement)",
        )
    _integer(cfg, "rounds", 1)
    _integer(cfg, "eval_every", 1)
    _integer(cfg, "local_epochs", 1)
    _integer(cfg, "batch_size", 1)
    _integer(cfg, "seed", 0, "a non-negative integer")
    _integer(cfg, "unroll", 1)
    lr = _positive_float(cfg, "lr")
    local_steps = cfg.get("local_steps")
    if local_steps is not None:
        local_steps = _integer(cfg, "local_steps", 1, "null (local_epochs epochs) or an integer >= 1")
    axis = cfg.get("client_axis", "auto")
    if axis not in CLIENT_AXES:
        raise ConfigError("client_axis", axis, "one of: " + ", ".join(CLIENT_AXES))
    devices = cfg.get("devices", 1)
    if devices == "all":
        devices = jax.device_count()
    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= jax.device_count():
        raise ConfigError("devices", devices,
                          f"all or an integer in [1, {jax.device_count()}] (the local devices)")
    if devices > 1 and axis != "vmap":
        raise ConfigError("devices", devices, "1 unless client_axis=vmap (the cohort is sharded "
                          "over devices as one batched program)")
    chunk = cfg.get("client_chunk")
    if chunk == "auto":
        # Groups were never faster on CPU (W1, W3: benchmarks/NOTES.md, "Small clients in
        # groups"), and under vmap (GPU/TPU) the whole cohort is one batch already.
        chunk = None
    elif chunk is not None:
        chunk = _integer(cfg, "client_chunk", 1, "null, auto or an integer >= 1")
    return Settings(
        cpu_fusions=check_cpu_fusions(cfg.get("cpu_fusions", "auto")),
        devices=devices,
        client_chunk=chunk,
        clients_per_round=cfg["clients_per_round"],
        local_epochs=cfg["local_epochs"],
        batch_size=cfg["batch_size"],
        lr=lr,
        client_axis=axis,
        unroll=cfg["unroll"],
        local_steps=local_steps,
    )


CLIENT_STORAGES = ("padded", "flat", "auto")


def check_client_storage(cfg: Mapping[str, Any], algorithm, task: str) -> str:
    """``client_storage``: ``padded`` (every client padded to the largest,
    :mod:`fedbench.dataset.federated`), ``flat`` (one array plus offsets, only the sampled
    clients gathered, :mod:`fedbench.dataset.flat`) or ``auto`` (padded, unless the padded
    layout would not fit in memory and flat storage serves the run:
    :func:`fedbench.dataset.pipeline.build_federated` decides from the data's shape). Flat
    storage serves the global-model path (:func:`flat_refusal`); ``flat`` for anything else is
    refused here, before any work, and ``auto`` stays ``padded``.
    """
    storage = cfg.get("client_storage", "padded")
    if storage not in CLIENT_STORAGES:
        raise ConfigError("client_storage", storage, "one of: " + ", ".join(CLIENT_STORAGES))
    if storage == "padded":
        return storage
    why = flat_refusal(cfg, algorithm, task)
    if why is not None and storage == "auto":
        return "padded"
    if why is not None:
        raise ConfigError("client_storage", storage, f"padded for {why}")
    return storage


def flat_refusal(cfg: Mapping[str, Any], algorithm, task: str) -> str | None:
    """Why flat storage cannot serve this run (None: it can). It serves the global-model
    path: a federated or asynchronous algorithm without per-client models on a classification
    task, without partitions as replicas."""
    if algorithm.kind not in ("federated", "async", "centralized"):
        return f"algorithm {algorithm.kind!r} (it trains on every client each round)"
    if (algorithm.personal or algorithm.client_models is not None
            or algorithm.finetune_steps > 0 or algorithm.client_prepare is not None
            or algorithm.personal_pass is not None):
        return "per-client models or a per-client pass (personalised and clustered algorithms)"
    if task != "classification":
        return f"task {task!r} (flat evaluation covers classification)"
    if any((cfg.get("sweep") or {}).get(k) is not None
           for k in ("partition_alpha", "partition_seed")):
        return "partitions as replicas (sweep.partition_alpha / partition_seed pad each replica)"
    return None


def _store_dtype(cfg: Mapping[str, Any]):
    """``client_store_dtype``: the dtype of the per-client store's floating entries."""
    name = cfg.get("client_store_dtype", "float32")
    if name not in ("float32", "bfloat16"):
        raise ConfigError("client_store_dtype", name, "one of: float32, bfloat16")
    return None if name == "float32" else jnp.bfloat16


def build_stragglers(
    cfg: Mapping[str, Any] | None, settings: Settings, kind: str
) -> Stragglers | None:
    """Validates the ``stragglers`` settings (Li et al. 2020, Sec. 5.2).

    Raises:
      ConfigError: fraction outside [0, 1], unknown policy, ``partial`` with one local epoch,
        stragglers on the centralized/local baselines.
    """
    if not cfg:
        return None
    fraction = cfg.get("fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError("stragglers.fraction", fraction, "a number in [0, 1]")
    policy = cfg.get("policy", "drop")
    if policy not in ("drop", "partial"):
        raise ConfigError("stragglers.policy", policy, "one of: drop, partial")
    if fraction == 0:
        return None
    if kind != "federated":
        raise ConfigError(
            "stragglers.fraction", fraction,
            "0 for centralized, local and fedbuff (stragglers apply to synchronous rounds; "
            "fedbuff models slow sites with site_speed)",
        )
    if policy == "partial" and settings.local_epochs < 2:
        raise ConfigError(
            "stragglers.policy", policy,
            f"drop when local_epochs={settings.local_epochs} (partial stragglers run 1..E-1 epochs)",
        )
    return Stragglers(float(fraction), policy)


def _check_task_and_schedule(cfg: Mapping[str, Any], settings: Settings, algorithm, task: str) -> None:
    """Combinations the simulator would otherwise get silently wrong.

    Raises:
      ConfigError: DP-SGD on a survival task (the Cox partial likelihood couples the examples
        of a batch, so per-example clipping bounds nothing); ``local_steps`` with FedSGD's full
        batch, partial stragglers (which set epochs) or DP-SGD (accounted per epoch).
    """
    mechanism = mechanism_class((cfg.get("privacy") or {}).get("name", "none"))
    if mechanism is not None:  # what the privacy mechanism cannot account for
        mechanism.check_run(cfg, settings, task)
    if settings.local_steps is None:
        return
    if algorithm.full_batch:
        raise ConfigError("local_steps", settings.local_steps, "null for fedsgd (one full-batch step)")
    if (cfg.get("stragglers") or {}).get("policy") == "partial" and (cfg.get("stragglers") or {}).get("fraction", 0):
        raise ConfigError("local_steps", settings.local_steps, "null with partial stragglers (they run fewer epochs)")
