"""Result files written atomically, compile-time accounting, and environment facts."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import jax
import jax.monitoring

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


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file in the same folder, then renames it over ``path``.

    A reader (or a crash) never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrites the whole JSON-lines file atomically (one object per line)."""
    write_atomic(path, "".join(json.dumps(_clean(r)) + "\n" for r in rows))


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("fedbench", "jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn", "hydra-core"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform": devices[0].platform,
    }
