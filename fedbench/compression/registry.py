"""The registry of compressor pieces: every module of :mod:`fedbench.compression` that exposes a
``PIECE`` (a :class:`~fedbench.compression.piece.Sparsifier` or
:class:`~fedbench.compression.piece.Quantizer`) is registered under ``PIECE.name``, found by
:func:`discover` (run once, when the package is imported). No list of names is kept by hand:
a new compressor is one file ``fedbench/compression/<name>.py`` plus
``conf/compression/<name>.yaml`` (its settings and their defaults). Uplink and downlink pieces
share this registry; a piece's ``downlink`` says whether it may encode the server's model.

The order of :data:`COMPRESSORS` (used in messages) is sparsifiers, then quantisers, each by
name. :func:`register` adds a piece at run time (its defaults given as the mapping its YAML
would hold), e.g. ``docs/examples/compressor.py``; :func:`unregister` removes it again.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbench.compression.piece import Piece

ROLES = ("sparsifier", "quantizer")

#: Every registered piece by name: sparsifiers, then quantisers, each by name.
COMPRESSORS: dict[str, Piece] = {}
#: The defaults of pieces registered at run time (the others' are their YAML files).
RUNTIME_DEFAULTS: dict[str, dict[str, Any]] = {}


def discover() -> dict[str, Piece]:
    """Registers the ``PIECE`` of every module of this package (idempotent)."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        module = importlib.import_module(f"{__package__}.{info.name}")
        piece = getattr(module, "PIECE", None)
        if piece is not None and COMPRESSORS.get(piece.name) is not piece:
            _add(piece)
    return COMPRESSORS


def register(piece: Piece, defaults: Mapping[str, Any]) -> Piece:
    """Adds ``piece`` at run time, with ``defaults``: what ``conf/compression/<name>.yaml`` would
    hold (``name`` and every setting, e.g. ``per_tensor``, ``error_feedback``, ``then``,
    ``downlink``).

    Raises:
      ValueError: a piece of that name is registered already, or ``defaults`` names another.
    """
    if defaults.get("name") != piece.name:
        raise ValueError(f"defaults of {piece.name} must have name: {piece.name}")
    RUNTIME_DEFAULTS[piece.name] = copy.deepcopy(dict(defaults))
    _add(piece)
    return piece


def unregister(name: str) -> None:
    """Removes a piece added by :func:`register`."""
    COMPRESSORS.pop(name)
    RUNTIME_DEFAULTS.pop(name, None)


def _add(piece: Piece) -> None:
    if piece.role not in ROLES:
        raise ValueError(f"compressor {piece.name}: role {piece.role!r} is not one of {ROLES}")
    if piece.name in COMPRESSORS:
        raise ValueError(f"two compressors are named {piece.name}")
    entries = {**COMPRESSORS, piece.name: piece}
    ordered = sorted(entries.values(), key=lambda p: (ROLES.index(p.role), p.name))
    COMPRESSORS.clear()
    COMPRESSORS.update((p.name, p) for p in ordered)


def names(role: str | None = None, **declared: Any) -> tuple[str, ...]:
    """The registered names (of ``role``, with the given declarations, e.g.
    ``names(downlink=True)``), in registry order."""
    return tuple(name for name, piece in COMPRESSORS.items()
                 if (role is None or piece.role == role)
                 and all(getattr(piece, key) == value for key, value in declared.items()))


def lookup(name: str | None, role: str | None = None) -> Piece | None:
    """The piece registered as ``name`` (None for None).

    Raises:
      ValueError: no such piece, or not of ``role``.
    """
    if name is None:
        return None
    piece = COMPRESSORS.get(name)
    if piece is None or (role is not None and piece.role != role):
        raise ValueError(f"{name!r} is not a registered {role or 'compressor'}: "
                         + ", ".join(names(role)))
    return piece
