"""The simulator: state, compiled blocks of rounds, and the pieces a round is built from.

One federated round is one pure function (:func:`fedbench.round.federated_round`)::

    sample the cohort -> gather its padded data and per-client store entries
      -> local SGD of all of them at once (``jax.vmap`` or ``lax.map`` over the client axis;
         padded steps masked), each delta through the update transforms
      -> aggregate (example-weighted mean, FedNova's, or DP's noisy mean)
      -> server update (an optax server optimiser, plus the algorithm's own state)
      -> scatter the store; clock and participation.

The algorithm supplies the pieces (:mod:`fedbench.algorithm`); this module wires them to the
data, the privacy mechanism and the client axis. FedBuff and the baselines keep their own round
functions (:mod:`fedbench.algorithm.fedbuff`, :mod:`fedbench.algorithm.baselines`).

Rounds run as a ``lax.fori_loop`` whose trip count is an argument, so one compiled program serves
every block length: the host evaluates and logs between blocks, and neither ``rounds`` nor
``eval_every`` triggers a recompilation. Round ``r`` always uses the key
``fold_in(run_key, r)``, so results do not depend on how rounds are cut into blocks.

Local training (one loop for every algorithm and for DP-SGD) lives in :mod:`fedbench.local`;
evaluation is an :class:`~fedbench.evaluation.Evaluator` built from explicit values
(:attr:`Simulator.evaluator`, its public methods forwarded), replicas are functions of
:mod:`fedbench.replica_state` given the simulator's ``_init_from_key`` and ``_run_rounds``.

References:
  H. B. McMahan et al., AISTATS 2017, Algorithm 1 (FedAvg, FedSGD); T. Li et al., MLSys 2020
  (FedProx); S. J. Reddi et al., ICLR 2021 (server optimisers).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench import hparams, replica_state
from fedbench.algorithm import Algorithm
from fedbench.algorithm.base import check_batch_norm, custom_estimator, make_personal_update
from fedbench.algorithm.base import weighted_mean
from fedbench.algorithm.baselines import centralized_round, local_round
from fedbench.algorithm.fedbuff import fedbuff_round
from fedbench.algorithm.fednova import fednova_mean
from fedbench.compression.downlink import download_bits
from fedbench.compression.traffic import (
    dense_bits, other_up_bits, reports_bits, sent_leaves, zero_bits,
)
from fedbench.dataset.federated import FederatedData
from fedbench.errors import ConfigError
from fedbench.evaluation import Evaluator, cross_entropy
from fedbench.links import Links
from fedbench.model import train_apply
from fedbench.local import (
    ClientStats,
    batchnorm_estimator,
    client_mesh,
    replicated,
    epoch_order,
    epochs_for_steps,
    make_local_update,
    map_over_clients,
)
from fedbench.privacy.mechanism import Mechanism
from fedbench.pieces import RoundPieces
from fedbench.round import federated_round
from fedbench.state import CLIENT_AXES, ServerState, Settings
from fedbench.store import init_store
from fedbench.stragglers import Stragglers, straggler_plan
from fedbench.task import batch_loss_fn
from fedbench.transforms import UpdateTransform, chain, identity, on_leaves
from fedbench.xla_options import compiler_options, jit as xla_jit

__all__ = [  # re-exported: the simulator's vocabulary in one import
    "CLIENT_AXES", "ClientStats", "ServerState", "Settings",
    "Simulator", "Stragglers", "cross_entropy", "epoch_order",
    "epochs_for_steps", "fednova_mean", "make_local_update", "map_over_clients",
    "resolve_client_axis", "straggler_plan", "weighted_mean",
]

Params = Any
ROUNDS = {  # the round function of each kind of algorithm
    "federated": federated_round,
    "async": fedbuff_round,
    "centralized": centralized_round,
    "local": local_round,
}


def resolve_client_axis(axis: str) -> str:
    """``auto``: ``map`` on CPU, ``vmap`` on accelerators (see benchmarks/NOTES.md)."""
    if axis not in CLIENT_AXES:
        raise ConfigError("client_axis", axis, "one of: " + ", ".join(CLIENT_AXES))
    if axis == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return axis


class Simulator:
    """Runs an :class:`Algorithm` on :class:`FederatedData` with a flax model.

    Usage::

        sim = Simulator(model, algorithm, data, settings, seed=0)
        state = sim.init()
        state = sim.run(state, 10)      # 10 rounds, one compiled program
        metrics = sim.evaluate(state)

    ``trace_count`` counts how often the round program was traced (a new trace means a new
    compilation); tests assert it stays at one across blocks of different lengths.

    ``evaluator``: the run's :class:`~fedbench.evaluation.Evaluator` (its ``evaluate``,
    ``evaluated_params``, ``per_client_models``, ``cluster_metrics``, ``site_results``,
    ``known_groups`` and ``client_groups`` are reachable on the simulator under their names).

    ``noise_salt``: a 32-bit integer folded into every DP noise key, client-level and DP-SGD's
    (never into sampling, minibatch or straggler keys); ``fedbench.run`` passes the hash of the
    run's config (:func:`fedbench.privacy.plan.noise_salt`) unless ``privacy.shared_noise``.
    ``None``: the noise depends on the seed and the round only.
    """

    def __init__(
        self,
        model,
        algorithm: Algorithm,
        data: FederatedData,
        settings: Settings,
        seed: int,
        privacy: Mechanism | None = None,
        stragglers: Stragglers | None = None,
        transforms: tuple[UpdateTransform, ...] = (),
        store_dtype: Any = None,
        noise_salt: int | None = None,
        links: Links | None = None,
        downlink=None,
        secret_key=None,
    ):
        # The privacy mechanism (fedbench.privacy.mechanism) refuses an algorithm it cannot
        # privatise and fixes what depends on the run (e.g. the share of updates that arrive).
        if privacy is not None:
            privacy = privacy.bind(algorithm, settings, stragglers)
        # A Poisson cohort's stragglers are drawn independently (fedbench.stragglers).
        self.independent_stragglers = privacy is not None and privacy.independent_stragglers
        self.privacy = privacy
        self.stragglers = stragglers
        self.noise_salt = noise_salt
        # privacy.noise=secure: every round's randomness (cohorts, client keys: DP-SGD's samples
        # and noise, the server's noise, stragglers) from this key, drawn from the operating
        # system's entropy (fedbench.privacy.release.secret_key) and held only here: never in
        # the state, a checkpoint or a file (a constant of the compiled program).
        self.secret_key = None if secret_key is None else np.asarray(secret_key, np.uint32)
        self.links = links  # hospital links: the clock in seconds (fedbench.links)
        self.downlink = downlink  # the model's compressor (fedbench.compression.downlink)
        self.model = model
        self.algorithm = algorithm
        self.data = data
        self.settings = settings
        self.seed = seed
        self.store_dtype = store_dtype
        self.client_axis = resolve_client_axis(settings.client_axis)
        self.mesh = client_mesh(settings.devices)  # the cohort sharded over devices (vmap)
        self.trace_count = 0
        apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
        self.apply_fn = apply_fn
        epochs = 1 if algorithm.full_batch else settings.local_epochs
        batch = data.max_train if algorithm.full_batch else settings.batch_size
        self.local_epochs, self.batch_size = epochs, batch
        order_epochs = epochs
        if settings.local_steps is not None:
            smallest = int(np.min(np.asarray(data.train_counts)))
            if algorithm.kind == "centralized":
                smallest = max(1, round(int(np.sum(np.asarray(data.train_counts)))
                                        * settings.clients_per_round / data.num_clients))
            order_epochs = epochs_for_steps(settings.local_steps, smallest, batch)
        estimator = custom_estimator(self, order_epochs, batch)  # the algorithm's, or None
        private = (None if privacy is None  # same loop and schedule, e.g. DP-SGD's gradients
                   else privacy.estimator(apply_fn, batch, batch_loss_fn(data.task), noise_salt))
        if getattr(model, "norm", None) == "batch":  # training mode: the batch's statistics
            check_batch_norm(algorithm, estimator, private)
            estimator = batchnorm_estimator(
                functools.partial(train_apply, model), local_epochs=order_epochs,
                batch_size=batch, loss_fn=batch_loss_fn(data.task))
        estimator = estimator if private is None else private
        self.local_update = make_local_update(
            apply_fn,
            lr=settings.lr,
            local_epochs=order_epochs,
            batch_size=batch,
            unroll=settings.unroll,
            loss_fn=batch_loss_fn(data.task),
            local_steps=settings.local_steps,
            grad_adjust=algorithm.grad_adjust,
            estimator=estimator,
        )
        # A second local pass whose model never leaves the site (Ditto's v_k): same schedule,
        # plain minibatch gradients, the algorithm's personal objective (personal_update).
        self.personal_local_update = make_personal_update(self, order_epochs, batch)
        # What leaves a site: the mechanism's transforms first (the clip), then any other.
        clip = () if privacy is None else privacy.transforms()
        self.transform = chain(*clip, *transforms) if clip or transforms else identity()
        if algorithm.shared is not None:  # the transforms see only what leaves the site
            self.transform = on_leaves(self.transform, sent_leaves(self.param_shapes(), algorithm))
        self.store_template = self._make_store_template()
        # Transforms that report each message's encoded size (compressors): the state counts them.
        self.counts_bits = algorithm.kind == "federated" and reports_bits(self)
        if algorithm.kind == "centralized":
            pooled_x, pooled_y = data.pooled_train()
            self.pooled_x, self.pooled_y = jnp.asarray(pooled_x), jnp.asarray(pooled_y)
            # Same number of examples per round as clients_per_round average clients.
            self.centralized_size = max(
                1, round(len(pooled_y) * settings.clients_per_round / data.num_clients)
            )
        # Per-site speed (seconds per local step), fixed for the run: lognormal(0, site_speed).
        sigma = getattr(algorithm, "site_speed", 0.0)
        rng = np.random.default_rng([seed, 0x5BEED])
        self.speeds = jnp.asarray(rng.lognormal(0.0, sigma, data.num_clients), jnp.float32)
        # Dense float32 size of what a client receives (the model and e.g. SCAFFOLD's control
        # variate) and of what it sends uncompressed (one model-sized tensor per release).
        self.dense_bits = dense_bits(self.param_shapes(), algorithm)  # only what leaves a site
        self.other_up_bits = other_up_bits(self.param_shapes(), algorithm)
        self.down_bits = download_bits(self)
        # XLA:CPU's library fusions (fedbench/xla_options.py, `cpu_fusions`), per program.
        self.compiler_options = compiler_options(settings.cpu_fusions, model)
        self._run = xla_jit(self._run_rounds, self.compiler_options)
        self._replica_program, self._replica_key = None, None  # (axis, stacked) it was built for
        self.evaluator = Evaluator(  # values, not the simulator (fedbench.evaluation)
            apply_fn, algorithm, data, lr=settings.lr, batch_size=settings.batch_size,
            eval_chunk=settings.eval_chunk, compiler_options=self.compiler_options)

    # -- the pieces of a round ----------------------------------------------------------------
    @property
    def pieces(self) -> RoundPieces:
        """The record the round is built from (:class:`fedbench.pieces.RoundPieces`): built
        from the simulator's current pieces each time it is asked for, once per trace."""
        s = self.settings
        return RoundPieces(
            algorithm=self.algorithm, privacy=self.privacy, local_update=self.local_update,
            personal_local_update=self.personal_local_update, transform=self.transform,
            apply_fn=self.apply_fn, store_template=self.store_template,
            shapes=self.param_shapes(), stragglers=self.stragglers,
            independent_stragglers=self.independent_stragglers,
            local_epochs=self.local_epochs, batch_size=self.batch_size,
            local_steps=s.local_steps, num_clients=self.data.num_clients,
            clients_per_round=s.clients_per_round, lr=s.lr, client_axis=self.client_axis,
            client_chunk=s.client_chunk, mesh=self.mesh, downlink=self.downlink,
            down_bits=self.down_bits, dense_bits=self.dense_bits,
            other_up_bits=self.other_up_bits, counts_bits=self.counts_bits, links=self.links,
            speeds=self.speeds, noise_salt=self.noise_salt, secret_key=self.secret_key,
            centralized_size=getattr(self, "centralized_size", None),
        )

    def param_shapes(self):
        """The model's parameter shapes (``jax.ShapeDtypeStruct``s), from shapes alone: no data
        array may be touched here, or a call under ``jit`` would bake it in as a constant."""
        x = self.data.example_input()
        example = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return jax.eval_shape(self.model.init, jax.random.PRNGKey(0), example)["params"]

    def _make_store_template(self) -> dict[str, Any]:
        """One client's store entry in its computation dtype (zeros of the model's shapes);
        built once, outside any trace (:attr:`store_template`)."""
        params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.param_shapes())
        alg = self.algorithm.client_state
        return {"algorithm": alg(params) if alg is not None else None,
                "transforms": self.transform.init(params)}

    # -- state -------------------------------------------------------------------------------
    def init(self, seed: int | None = None, values=None) -> ServerState:
        """Initial parameters from ``PRNGKey(seed)`` (default: the simulator's seed); every
        local model starts from the same. ``values``: the run's ``hparams``
        (:func:`fedbench.replicas.run_values`; None: constants in the trace)."""
        state = self._init_from_key(jax.random.PRNGKey(self.seed if seed is None else seed))
        return state if not values else state.replace(hparams=hparams.stack([values], 0))

    def _init_from_key(self, key: jax.Array) -> ServerState:
        init_key, run_key = jax.random.split(key)
        # One compiled program, not flax's init op by op (dozens of tiny compilations for a
        # new model's shapes); the same parameters bit for bit (initialisers are elementwise).
        model_init = jax.jit(self.model.init)
        init = lambda k: model_init(k, self.data.example_input())["params"]  # noqa: E731
        models = self.algorithm.init_models  # e.g. IFCA's K cluster models
        params = init(init_key) if models is None else models(init, init_key)
        if self.algorithm.personal:
            params = jax.tree.map(
                lambda p: jnp.broadcast_to(p, (self.data.num_clients,) + p.shape), params
            )
        opt_state = self.algorithm.server_optimizer.init(params)
        zero = jnp.zeros((), jnp.int32)
        participation = jnp.zeros((self.data.num_clients,), jnp.int32)
        server_state = self.algorithm.server_state
        store = init_store(self.store_template, self.data.num_clients, self.store_dtype)
        state = ServerState(
            params, opt_state, zero, run_key, zero, participation, store=store,
            server=server_state(params) if server_state is not None else None,
            clock=jnp.zeros((), jnp.float32) if self.algorithm.kind in ("federated", "async")
            else None,
        )
        state = state.replace(downloads=jnp.zeros((self.data.num_clients,), jnp.int32))
        if self.counts_bits:
            state = state.replace(bits_up=zero_bits())
        if self.algorithm.kind == "async":
            flight = self.start_inflight(state, self.data)
            state = state.replace(inflight=flight,
                                  downloads=state.downloads.at[flight["ids"]].add(1))
        if self.privacy is not None:  # the mechanism's own state (an adaptive clip, step counts)
            state = self.privacy.init_state(state, self.data.num_clients)
        return state

    # -- rounds ------------------------------------------------------------------------------
    def _run_rounds(self, state: ServerState, payload, num_rounds: jax.Array) -> ServerState:
        self.trace_count += 1
        body = ROUNDS[self.algorithm.kind]

        pieces = self.pieces  # the round sees these, never the simulator

        def one(_, s):
            return body(pieces, s, payload)  # s.hparams: a replica's own lr, mu, clip, noise

        return jax.lax.fori_loop(0, num_rounds, one, state)

    def _payload(self):
        if self.algorithm.kind == "centralized":
            return (self.pooled_x, self.pooled_y)
        return self.data

    def run(self, state: ServerState, num_rounds: int) -> ServerState:
        """Runs ``num_rounds`` rounds in one call of the compiled round loop. With a device
        mesh the state and data are replicated over it first, as the program returns them, so
        every block after the first finds the same input shardings (no recompilation)."""
        payload = self._payload()
        if self.mesh is not None:
            state, payload = jax.device_put((state, payload), replicated(self.mesh))
        return self._run(state, payload, jnp.int32(num_rounds))

    # -- replicas (fedbench.replica_state) ---------------------------------------------------
    def init_replicas(self, seeds, values=None) -> ServerState:
        """States of several independent runs stacked on a leading replica axis: replica ``i``
        is exactly :meth:`init` with ``seeds[i]`` (same data, sites and settings) and, with
        ``values`` (one mapping per replica, :func:`fedbench.replicas.run_values`), its own values
        in ``hparams``."""
        return replica_state.init_replicas(self._init_from_key, seeds, values)

    def run_replicas(self, states: ServerState, num_rounds: int, axis: str = "vmap",
                     payload=None) -> ServerState:
        """:meth:`run` for every replica of :meth:`init_replicas` in one compiled program:
        ``vmap`` (batched over the replica axis: the accelerator's way) or ``map``
        (``lax.map``: one replica after another, each exactly the program of a single run, so
        its results are a separate run's bit for bit). ``payload``: the replicas' own data
        stacked ``[R, ...]`` (partitions as replicas, :mod:`fedbench.replica_data`); default:
        the simulator's data, shared. The program is kept for the last ``(axis, stacked)``."""
        replica_state.check_replica_axis(axis)
        key = (axis, payload is not None)
        if self._replica_key != key:
            self._replica_program = replica_state.replica_program(
                self._run_rounds, axis, key[1], self.compiler_options)
            self._replica_key = key
        return self._replica_program(states, self._payload() if payload is None else payload,
                                     jnp.int32(num_rounds))

    replica = staticmethod(replica_state.replica)

    # -- evaluation (fedbench.evaluation.Evaluator) ------------------------------------------
    @property
    def client_groups(self):
        """Each client's known group (``cluster_ari``), overriding the data's; may be set after
        construction (:attr:`fedbench.evaluation.Evaluator.client_groups`)."""
        return self.evaluator.client_groups

    @client_groups.setter
    def client_groups(self, groups) -> None:
        self.evaluator.client_groups = groups


# The round's methods stay reachable on the simulator under their names (tools and tests call
# them); each is the method of the current record (:attr:`Simulator.pieces`).
for _name in ("client_update", "sample_cohort", "round_info", "aggregate", "federation_size",
              "sample_clients", "round_base", "round_keys", "noise_key", "durations",
              "upload_bits", "start_inflight", "straggler_key"):
    setattr(Simulator, _name, property(lambda self, _name=_name: getattr(self.pieces, _name)))

# Evaluation's public methods and properties, likewise: those of the simulator's evaluator
# (e.g. ``sim.evaluate(state, min_client_test=...)`` is ``sim.evaluator.evaluate``).
for _name in ("evaluate", "evaluated_params", "per_client_models", "cluster_metrics",
              "site_results", "known_groups"):
    setattr(Simulator, _name, property(lambda self, _name=_name: getattr(self.evaluator, _name),
                                       doc=f":meth:`fedbench.evaluation.Evaluator.{_name}`."))
