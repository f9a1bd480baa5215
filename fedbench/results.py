"""Result files written atomically, compile-time accounting, and environment facts."""

from __future__ import annotations

import importlib.metadata
import math
import os
import sys
from collections.abc import Mapping
import threading
from pathlib import Path
from typing import Any

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np

from fedbench.metric_names import MODEL_METRICS
from fedbench.provenance import source
from fedbench.atomic import (  # noqa: F401  (re-exported: the one atomic writer)
    INFINITE_AS_STRING,
    json_ready,
    write_atomic,
    write_json,
    write_jsonl,
)

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileCounter:
    """Process-wide totals of JAX tracing + lowering + XLA compilation (seconds, count).

    Read :meth:`snapshot` before and after a piece of work; the difference is the compilation
    it caused. ``compiles`` counts XLA backend compilations, so a block of rounds that adds none
    did not recompile.
    """

    _lock = threading.Lock()
    seconds = 0.0
    compiles = 0
    _registered = False

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if cls._registered:
                return

            def listener(event: str, duration: float, **_: Any) -> None:
                if event in _COMPILE_EVENTS:
                    cls.seconds += duration
                    if event == _COMPILE_EVENTS[-1]:
                        cls.compiles += 1

            jax.monitoring.register_event_duration_secs_listener(listener)
            cls._registered = True

    @classmethod
    def snapshot(cls) -> tuple[float, int]:
        cls.install()
        return cls.seconds, cls.compiles



#: Environment variables that change what JAX/XLA computes (precision, dtypes, fusion,
#: platform, randomness), recorded in ``summary.json`` so two runs can be compared.
NUMERICS_ENV = (
    "XLA_FLAGS",
    "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION",
    "JAX_DEFAULT_PRNG_IMPL",
    "JAX_THREEFRY_PARTITIONABLE",
    "JAX_PLATFORMS",
    "JAX_DISABLE_JIT",
    "CUDA_VISIBLE_DEVICES",
)
#: ``jax.config`` options the results depend on (the values in effect, whatever set them).
NUMERICS_CONFIG = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
    "jax_platforms",
    "jax_disable_jit",
    "jax_debug_nans",
    "jax_enable_checks",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages a run's numbers depend on, and of the XLA runtime in use.

    ``xla_platform_version`` is the backend's own version string (e.g. the CUDA/cuDNN build on
    GPU; ``cpu`` on CPU, where jaxlib's version fixes XLA).
    """
    out = {}
    for name in ("fedbench", "jax", "jaxlib", "jax-cuda12-plugin", "flax", "optax", "numpy",
                 "scipy", "scikit-learn", "dp-accounting", "hydra-core", "omegaconf"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        out["xla_platform_version"] = str(jax.devices()[0].client.platform_version)
    except Exception:  # noqa: BLE001 - a backend that does not say
        out["xla_platform_version"] = "unknown"
    return out


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a ``jax.config`` value (enums by their value)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))


def device_info() -> dict[str, Any]:
    """The JAX device and the numerics settings in effect.

    ``jax_config``: the :data:`NUMERICS_CONFIG` options as JAX sees them; ``env``: each of
    :data:`NUMERICS_ENV` (``null`` when unset).
    """
    devices = jax.devices()
    config = {}
    for name in NUMERICS_CONFIG:
        try:
            config[name] = _plain(getattr(jax.config, name))
        except AttributeError:
            config[name] = None  # not an option of this JAX version
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform": devices[0].platform,
        "jax_config": config,
        "env": {name: os.environ.get(name) for name in NUMERICS_ENV},
    }


# -- a run's summary.json ---------------------------------------------------------------------
def run_summary(status, final, config, timing, partition_stats, sim, state,
                 privacy) -> dict[str, Any]:
    """The contents of a run's ``summary.json``.

    Under ``privacy.release_metrics=false`` ``final`` is already without the private metrics
    and ``partition_stats`` and ``sites`` are ``null``; the ``privacy`` block says what epsilon
    covers and lists the outputs it does not (:meth:`fedbench.privacy.plan.PrivacyPlan.disclosure`).
    """
    released = privacy is None or privacy.release_metrics
    summary = {
        "status": status,
        "final": final,
        "config": config,
        "timing": timing,
        "partition_stats": partition_stats if released else None,
        "sites": sim.site_results(state) if status == "completed" and released else None,
        "privacy": (privacy.report(int(state.round), np.asarray(state.participation),
                                   None if state.clip is None else float(state.clip),
                                   steps=dp_steps(state))
                    if privacy is not None else None),
        "client_axis": sim.client_axis,
        "links": None if sim.links is None else sim.links.summary(),
        "versions": package_versions(),
        "provenance": source(),  # the commit and any uncommitted change (fedbench/provenance.py)
        "device": device_info(),
        "python": sys.version.split()[0],
    }
    if privacy is not None:
        summary["privacy"].update(privacy.disclosure(summary))
    return summary


def finite(state) -> bool:
    return all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(state.params))


def loss_finite(metrics: Mapping[str, Any]) -> bool:
    """The training loss is finite (the pooled test loss where privacy.release_metrics=false
    leaves the training loss out)."""
    loss = metrics.get("train_loss", metrics.get("test_loss", 0.0))
    return loss is not None and math.isfinite(loss)


def dp_steps(state) -> np.ndarray | None:
    """DP-SGD steps each client took (``dp_sample``), for the accountant; else ``None``."""
    return None if state.dp_steps is None else np.asarray(state.dp_steps)


def without_model_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with every :data:`MODEL_METRICS` entry NaN: those of non-finite parameters."""
    return {k: float("nan") if k in MODEL_METRICS else v for k, v in metrics.items()}
