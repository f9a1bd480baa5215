"""Scalar hyper-parameters carried as data, so replicas of one compiled program can differ.

A run's client learning rate, FedProx's ``mu`` and the DP noise multiplier
and clip are Python numbers baked into the round's trace as constants. For an in-program sweep
(:mod:`fedbench.sweep_replicas`) the state carries them instead: ``ServerState.hparams`` is a
mapping of name -> float32 scalar (``None`` in a plain run), one value per replica under
``jax.vmap``. The round runs inside :func:`scope` with the state's mapping, and each place that
uses such a number asks :func:`value` for it with its constant as the default::

    lr = hparams.value("lr", lr)     # the replica's lr inside a sweep, else the constant

Outside a scope, or for a name the mapping does not hold, :func:`value` returns the constant,
so a plain run traces exactly as before; a replica given the same value computes the same
numbers (``tests/test_sweep_replicas.py`` checks bit-identity against separate runs).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

#: What the state may carry: the client ``lr``, the server optimiser's ``server_lr`` (FedAvgM,
#: FedAdam/Yogi/Adagrad, FedBuff), FedProx's ``mu``, FedDyn's ``alpha``, the DP
#: ``clip`` and the DP noise's standard deviation ``noise_std`` (``noise_multiplier * clip``, computed on the host
#: in float64 exactly as a plain run's constant is, so the float32 values agree bit for bit).
#: ``noise_salt``: the replica's own :func:`fedbench.privacy.release.noise_salt` (uint32).
NAMES = ("lr", "server_lr", "mu", "alpha", "clip", "noise_std", "noise_salt")

_CURRENT: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "fedbench_hparams", default=None)


@contextlib.contextmanager
def scope(values: Mapping[str, Any] | None) -> Iterator[None]:
    """Within the block, :func:`value` answers from ``values`` (``None``: the constants)."""
    token = _CURRENT.set(values)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def value(name: str, default):
    """The current replica's ``name`` (a traced scalar) if the scope holds it, else ``default``."""
    current = _CURRENT.get()
    if current is None or name not in current:
        return default
    return current[name]


def get(values: Mapping[str, Any] | None, name: str, default):
    """``values[name]`` (a run's ``ServerState.hparams``, passed explicitly) if it holds
    ``name``, else ``default`` (the constant of a run that carries none)."""
    if values is None or name not in values:
        return default
    return values[name]


def stack(values: list[Mapping[str, Any]], index: int | None = None) -> dict[str, Any]:
    """One ``hparams`` mapping per run -> arrays with a leading replica axis (``index``: that
    run's values alone, no axis); ``noise_salt`` as uint32, the rest float32."""
    import jax.numpy as jnp

    out = {k: jnp.asarray([v[k] for v in values],
                          jnp.uint32 if k == "noise_salt" else jnp.float32) for k in values[0]}
    return out if index is None else {k: v[index] for k, v in out.items()}
