"""Several runs' states stacked on a leading replica axis, run as one compiled program: functions
over explicit arguments (a run's ``init_from_key``, its round loop ``run_rounds``), which the
:class:`~fedbench.simulator.Simulator`'s ``init_replicas`` / ``run_replicas`` / ``replica``
call with its own; the run-level driver is :mod:`fedbench.replicas`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedbench import hparams
from fedbench.errors import ConfigError
from fedbench.state import ServerState
from fedbench.xla_options import jit as xla_jit

REPLICA_AXES = ("vmap", "map")


def init_replicas(init_from_key: Callable[[jax.Array], ServerState], seeds,
                  values=None) -> ServerState:
    """States of several independent runs stacked on a leading replica axis: replica ``i`` is
    exactly ``init_from_key(PRNGKey(seeds[i]))`` and, with ``values`` (one mapping per replica,
    :func:`fedbench.replicas.run_values`), its own values in ``hparams``."""
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
    states = jax.vmap(init_from_key)(keys)
    return states if not values else states.replace(hparams=hparams.stack(values))


def check_replica_axis(axis: str) -> None:
    """``vmap`` or ``map``, else a ConfigError naming ``replica_axis``."""
    if axis not in REPLICA_AXES:
        raise ConfigError("replica_axis", axis, "vmap, map or auto")


def replica_program(run_rounds: Callable, axis: str, stacked: bool,
                    compiler_options: dict[str, str]):
    """The compiled program ``(states, data, n) -> states`` running ``run_rounds(state, data,
    n)`` for every replica: ``vmap`` (batched over the replica axis: the accelerator's way) or
    ``map`` (``lax.map``: one replica after another, each exactly the program of a single run,
    so its results are a separate run's bit for bit). ``stacked``: ``data`` holds the
    replicas' own data ``[R, ...]`` (partitions as replicas, :mod:`fedbench.replica_data`);
    else one shared payload."""
    check_replica_axis(axis)
    one = lambda s, data, n: run_rounds(s, data, n)  # noqa: E731
    if axis == "vmap":
        many = jax.vmap(one, in_axes=(0, 0 if stacked else None, None))
    elif stacked:
        many = lambda s, data, n: jax.lax.map(lambda r: one(*r, n), (s, data))  # noqa: E731
    else:
        many = lambda s, data, n: jax.lax.map(lambda r: one(r, data, n), s)  # noqa: E731
    return xla_jit(many, compiler_options)


def replica(states: ServerState, i: int) -> ServerState:
    """Replica ``i`` of stacked states, as a state of a single run."""
    return jax.tree.map(lambda leaf: leaf[i], states)
