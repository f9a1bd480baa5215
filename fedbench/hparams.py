"""Scalar hyper-parameters carried as data, so replicas of one compiled program can differ.

For an in-program sweep (:mod:`fedbench.replicas`) the state carries a run's client learning
rate, FedProx's ``mu``, FedDyn's ``alpha``, the server rate and the DP clip and noise:
``ServerState.hparams`` is a mapping of name -> float32 scalar (one value per replica under
``jax.vmap``; ``None`` in a plain ``Simulator`` built in a test). The round passes the mapping
explicitly to every piece that uses such a number (``hp``: the local update, ``grad_adjust``,
``client_finish``, ``server_update`` and the server optimiser's ``update(..., hparams=hp)``, the
DP mechanisms), and each asks :func:`get` for its number with its constant as the default::

    lr = hparams.get(hp, "lr", lr)     # the replica's lr inside a sweep, else the constant

Which keys a sweep may set is declared beside each piece (``Algorithm.hyperparameters``); a
replica given the same value computes the same numbers as its separate job
(``tests/test_combinations.py``, ``tests/test_sweep_replicas.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
