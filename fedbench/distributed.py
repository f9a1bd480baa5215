"""Several hosts, one federation: ``jax.distributed`` and the global ``clients`` mesh.

With ``distributed.enabled=true`` every process (one per GPU, e.g. one Slurm task each through
``hydra/launcher=slurm_multihost``) runs the same ``fedbench`` job: :func:`initialize` calls
``jax.distributed.initialize`` (under Slurm it reads the coordinator, process count and id from
the task's environment; ``distributed.coordinator`` etc. override), after which
``jax.devices()`` lists every process's devices. ``devices=all`` then shards the sampled
clients over all of them (:func:`clients_mesh`: devices ordered by process, then by id, so each
process's devices hold one contiguous block of the cohort); the server state and the data are
replicated, and XLA turns the cohort sums into cross-host reductions, as on one host
(:mod:`fedbench.local`). Only process 0 writes results (:func:`fedbench.atomic.write_with`).

Status: two processes on one machine, joined over gloo (CPU collectives), run the sharded
cohort and reproduce the single-process run (``tests/test_distributed.py``); the plan
(:func:`cohort_blocks`) and the mesh are also tested with forced CPU devices
(``tests/test_devices.py``). No run on several GPU hosts has been made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedbench import atomic
from fedbench.errors import ConfigError


def initialize(cfg: Mapping[str, Any]) -> bool:
    """Joins the job's processes when ``distributed.enabled``; True when there are several.

    ``distributed.coordinator`` (``host:port``), ``.processes`` and ``.process_id``: null lets
    JAX read them from the cluster (Slurm, Open MPI, ...). Call before anything else touches
    JAX's devices; a second call in the same process does nothing.
    """
    group = cfg.get("distributed") or {}
    enabled = group.get("enabled", False)
    if enabled not in (True, False):
        raise ConfigError("distributed.enabled", enabled, "true or false")
    if not enabled:
        return False
    import jax

    if not jax.distributed.is_initialized():
        if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
            # Processes on CPUs reduce across each other through gloo (XLA:CPU's default has
            # no cross-process collectives); GPU and TPU devices are unaffected.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        args = {"coordinator_address": group.get("coordinator"),
                "num_processes": group.get("processes"), "process_id": group.get("process_id")}
        jax.distributed.initialize(**{k: v for k, v in args.items() if v is not None})
    atomic.WRITER = jax.process_index() == 0  # one copy of every result file
    return jax.process_count() > 1


def ordered_devices(devices: Sequence[Any], count: int) -> list[Any]:
    """The first ``count`` of ``devices`` ordered by ``(process_index, id)``."""
    ranked = sorted(devices, key=lambda d: (d.process_index, d.id))
    if not 1 <= count <= len(ranked):
        raise ConfigError("devices", count, f"all or an integer in [1, {len(ranked)}]")
    return ranked[:count]


def clients_mesh(count: int, devices: Sequence[Any] | None = None):
    """A one-axis ``clients`` mesh over ``count`` of ``devices`` (default: every process's,
    ``jax.devices()``), ordered by :func:`ordered_devices`; None for one device."""
    import jax

    if count <= 1:
        return None
    chosen = ordered_devices(jax.devices() if devices is None else devices, count)
    return jax.sharding.Mesh(np.asarray(chosen), ("clients",))


def cohort_blocks(devices: Sequence[Any], cohort: int) -> dict[int, list[tuple[int, int]]]:
    """Which cohort slots each process computes: the cohort padded to a multiple of the device
    count (zero-weight copies) and split evenly in mesh order. ``{process: [(start, stop),
    ...]}``, one range per device of that process; slots ``>= cohort`` are padding."""
    per_device = -(-cohort // len(devices))
    blocks: dict[int, list[tuple[int, int]]] = {}
    for i, device in enumerate(devices):
        blocks.setdefault(device.process_index, []).append(
            (i * per_device, (i + 1) * per_device))
    return blocks
