"""The one atomic writer of result files (JSON, JSON lines), and JSON-safe values.

Every file a run or a sweep leaves (``metrics.jsonl``, ``summary.json``, ``error.json``,
checkpoint metadata) is written to a temporary file in the same folder and renamed over the
target, so a reader or a crash never sees half a file. Nothing here imports JAX (the sweep code
uses it before JAX starts).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


#: Keys whose infinite value is a result, written as the string ``"inf"`` (``fedbench-collect``
#: reads it back as a float): the epsilon of a run without noise.
INFINITE_AS_STRING = ("epsilon",)


#: False in every process but the first of a multi-process job (:mod:`fedbench.distributed`).
WRITER = True

def json_ready(value: Any, key: str | None = None) -> Any:
    """JSON has no NaN/inf: write them as null, except an infinite value of a key in
    :data:`INFINITE_AS_STRING`, written as ``"inf"`` so that tables keep it."""
    if isinstance(value, float) and not math.isfinite(value):
        if key in INFINITE_AS_STRING and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return None
    if isinstance(value, dict):
        return {str(k): json_ready(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_with(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then renamed over it.

    A reader (or a crash) never sees a half-written file; on failure the temporary file goes.
    In a job of several processes (:mod:`fedbench.distributed`) only process 0 writes.
    """
    if not WRITER:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` atomically (:func:`write_with`), flushed to disk before the rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    write_with(path, write)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(json_ready(obj), indent=2, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrites the whole JSON-lines file atomically (one object per line)."""
    write_atomic(path, "".join(json.dumps(json_ready(r)) + "\n" for r in rows))
