"""Several runs' states stacked on a leading replica axis, run as one compiled program (the
:class:`~fedbench.simulator.Simulator`'s ``init_replicas`` / ``run_replicas`` / ``replica``;
the run-level driver is :mod:`fedbench.replicas`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedbench import hparams
from fedbench.errors import ConfigError
from fedbench.state import ServerState
from fedbench.xla_options import jit as xla_jit


class Replicas:
    """Mixed into the simulator: needs ``_init_from_key``, ``_run_rounds`` and ``_payload``."""

    def init_replicas(self, seeds, values=None) -> ServerState:
        """States of several independent runs stacked on a leading replica axis: replica ``i``
        is exactly :meth:`init` with ``seeds[i]`` (same data, sites and settings) and, with
        ``values`` (one mapping per replica, :func:`fedbench.replicas.run_values`), its own values
        in ``hparams``."""
        keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
        states = jax.vmap(self._init_from_key)(keys)
        return states if not values else states.replace(hparams=hparams.stack(values))

    def run_replicas(self, states: ServerState, num_rounds: int, axis: str = "vmap",
                     payload=None) -> ServerState:
        """:meth:`run` for every replica of :meth:`init_replicas` in one compiled program:
        ``vmap`` (batched over the replica axis: the accelerator's way) or ``map``
        (``lax.map``: one replica after another, each exactly the program of a single run, so
        its results are a separate run's bit for bit). ``payload``: the replicas' own data
        stacked ``[R, ...]`` (partitions as replicas, :mod:`fedbench.replica_data`); default:
        the simulator's data, shared."""
        if axis not in ("vmap", "map"):
            raise ConfigError("replica_axis", axis, "vmap, map or auto")
        stacked = payload is not None
        if getattr(self, "_many_axis", None) != (axis, stacked):
            one = lambda s, data, n: self._run_rounds(s, data, n)  # noqa: E731
            if axis == "vmap":
                many = jax.vmap(one, in_axes=(0, 0 if stacked else None, None))
            elif stacked:
                many = lambda s, data, n: jax.lax.map(lambda r: one(*r, n), (s, data))  # noqa: E731
            else:
                many = lambda s, data, n: jax.lax.map(lambda r: one(r, data, n), s)  # noqa: E731
            self._run_many, self._many_axis = xla_jit(many, self.compiler_options), (axis, stacked)
        return self._run_many(states, self._payload() if payload is None else payload,
                              jnp.int32(num_rounds))

    @staticmethod
    def replica(states: ServerState, i: int) -> ServerState:
        """Replica ``i`` of stacked states, as a state of a single run."""
        return jax.tree.map(lambda leaf: leaf[i], states)

