"""The simulator's settings and the state that changes between rounds (a pytree)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax

Params = Any
#: How the cohort is mapped: ``auto`` picks per backend (:func:`fedbench.simulator.resolve_client_axis`).
CLIENT_AXES = ("auto", "vmap", "map")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Round-loop settings (the top-level config keys).

    Attributes:
      clients_per_round: clients sampled per round, without replacement.
      local_epochs: passes over each client's data per round.
      batch_size: local minibatch size.
      lr: client SGD learning rate.
      client_axis: ``vmap`` (one batched program: the design for accelerators) or ``map``
        (``lax.map``: one client after another inside the compiled program); ``auto`` picks per
        backend (benchmarks/NOTES.md).
      unroll: local SGD steps per iteration of the local-step loop (each masked).
      eval_chunk: examples per forward pass in evaluation (bounds memory).
      local_steps: if set, every client takes exactly this many minibatch steps per round
        (cycling through fresh epochs of its data), whatever its size, instead of
        ``local_epochs`` epochs (FLamby's ``num_updates``; Ogier du Terrail et al. 2022).
      devices: local devices the sampled-client axis is sharded over (``client_axis=vmap``;
        :func:`fedbench.local.client_mesh`).
      client_chunk: under ``client_axis=map``, ``vmap`` over groups of this many clients
        inside the ``lax.map`` (None or 1: one client at a time).
      cpu_fusions: XLA:CPU's library fusions, ``auto`` | ``xla`` (XLA's own choice) | ``dots``
        (YNNPACK for matrix products only) (:mod:`fedbench.xla_options`).
    """

    clients_per_round: int
    local_epochs: int
    batch_size: int
    lr: float
    client_axis: str = "auto"
    unroll: int = 1
    eval_chunk: int = 1024
    local_steps: int | None = None
    devices: int = 1
    client_chunk: int | None = None
    cpu_fusions: str = "auto"


@flax.struct.dataclass
class ServerState:
    """Everything that changes between rounds.

    ``params`` is the server model (for personal models: a ``[num_clients, ...]`` stack);
    ``round`` counts finished rounds; ``key`` is the run's base key, constant; ``store`` the
    per-client store (``{"algorithm": ..., "transforms": ...}``, leading ``[num_clients]``
    axis); ``server`` the algorithm's own server state (SCAFFOLD's ``c``, FedDyn's ``h``).
    """

    params: Params
    opt_state: Any
    round: jax.Array
    key: jax.Array
    overflow: jax.Array  # Poisson cohorts / batches that overflowed their buffer (must stay 0)
    participation: jax.Array  # [num_clients] int32: rounds each client took part in
    store: Any = None  # per-client store (fedbench.store)
    server: Any = None  # the algorithm's server state
    clock: Any = None  # simulated wall-clock time (units: one local step of a speed-1 site)
    inflight: Any = None  # FedBuff: the clients training right now (fedbench.algorithm.fedbuff)
    clip: Any = None  # DP-FedAvg's current clipping bound under adaptive clipping
    downloads: Any = None  # [num_clients] int32: server-model downloads (every client started)
    bits_up: Any = None  # bits the clients' compressed uploads took (fedbench.compression.traffic)
    dp_steps: Any = None  # [num_clients] int32 under DP-SGD: steps taken in updates that arrived
    dp_noise: Any = None  # DP-FTRL's noise state: every round's draw, [rounds, ...] per parameter
    wraps: Any = None  # privacy=ddp: coordinates of the modular sums that wrapped, all rounds
    hparams: Any = None  # in-program sweeps: this replica's lr, mu, clip, ... (fedbench.hparams)

    @property
    def controls(self):
        """SCAFFOLD's ``(c, [num_clients, ...] c_i)`` (None for other algorithms)."""
        if self.server is None or self.store is None or self.store["algorithm"] is None:
            return None
        return self.server, self.store["algorithm"]
