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

Local training (one loop for every algorithm and for DP-SGD) lives in :mod:`fedbench.local`,
evaluation in :mod:`fedbench.evaluation`.

References:
  H. B. McMahan et al., AISTATS 2017, Algorithm 1 (FedAvg, FedSGD); T. Li et al., MLSys 2020
  (FedProx); S. J. Reddi et al., ICLR 2021 (server optimisers).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench import hparams
from fedbench.algorithm import Algorithm
from fedbench.algorithm.base import custom_estimator, make_personal_update
from fedbench.algorithm.base import weighted_mean
from fedbench.algorithm.baselines import centralized_round, local_round
from fedbench.algorithm.fedbuff import fedbuff_round, start_inflight
from fedbench.algorithm.fednova import fednova_mean
from fedbench.compression.downlink import download_bits
from fedbench.compression.traffic import (
    dense_bits, other_up_bits, reports_bits, sent_leaves, upload_bits, zero_bits,
)
from fedbench.dataset.federated import FederatedData
from fedbench.errors import ConfigError
from fedbench.evaluation import Evaluation, cross_entropy
from fedbench.replica_state import Replicas
from fedbench.links import Links, client_seconds
from fedbench.local import (
    ClientStats,
    client_mesh,
    replicated,
    epoch_order,
    epochs_for_steps,
    make_local_update,
    map_over_clients,
)
from fedbench.privacy.mechanism import Mechanism
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


class Simulator(Replicas, Evaluation):
    """Runs an :class:`Algorithm` on :class:`FederatedData` with a flax model.

    Usage::

        sim = Simulator(model, algorithm, data, settings, seed=0)
        state = sim.init()
        state = sim.run(state, 10)      # 10 rounds, one compiled program
        metrics = sim.evaluate(state)

    ``trace_count`` counts how often the round program was traced (a new trace means a new
    compilation); tests assert it stays at one across blocks of different lengths.

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
        self._evaluate = xla_jit(self._evaluate_impl, self.compiler_options)

    # -- the pieces of a round ----------------------------------------------------------------
    def client_update(self, params, x, y, count, key, epochs, context, transform_state, info,
                      client=None, hp=None):
        """One client: local training, then its delta through the update transforms (which see
        ``info`` plus the client's own ``"key"``, e.g. for random compression, and its id
        ``"client"``, e.g. for audit canaries); ``hp``: the run's hyper-parameters (its ``lr``;
        None: the settings').
        Returns ``(delta, sent, stats, transform_state, transform_info)``. Training starts at
        the algorithm's ``client_start`` (FedPer: its own head) and only its ``shared`` part of
        the delta enters the transforms (FedPer: the body)."""
        alg = self.algorithm
        start = params if alg.client_start is None else alg.client_start(params, context)
        delta, stats = self.local_update(start, x, y, count, key, epochs, context, hp)
        info = {**info, "key": jax.random.fold_in(key, 0xC0DEC), "client": client}
        shared = delta if alg.shared is None else alg.shared(delta)
        sent, transform_state, out = self.transform.update(shared, transform_state, info)
        return delta, sent, stats, transform_state, out

    def sample_cohort(self, key: jax.Array, members: jax.Array | None = None
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(ids, valid, overflow)``: ``clients_per_round`` distinct clients, or under
        client-level DP with Poisson sampling each client with probability ``q`` in a buffer.
        ``members``: a sub-federation's ``[num_clients]`` 0/1 mask (the run's
        ``hparams["members"]``): only these sites are sampled."""
        own = None if self.privacy is None else self.privacy.sample_cohort(
            key, self.data.num_clients)  # e.g. a Poisson cohort
        if own is not None:
            return own
        if members is not None:  # uniform among members (Gumbel top-k); fewer: the rest invalid
            scores = jnp.where(members > 0, jax.random.gumbel(key, members.shape), -jnp.inf)
            ids = jax.lax.top_k(scores, self.settings.clients_per_round)[1].astype(jnp.int32)
            return ids, members[ids] > 0, jnp.zeros((), jnp.int32)
        ids = self.sample_clients(key)
        return ids, jnp.ones(ids.shape, bool), jnp.zeros((), jnp.int32)

    def round_info(self, state: ServerState) -> dict[str, Any]:
        """What every client's update transforms see this round: the run's key and what the
        privacy mechanism adds (the clip bound)."""
        own = {} if self.privacy is None else self.privacy.round_info(state)
        return {"run_key": state.key, **own}

    def aggregate(self, state, uploads, weights, stats, valid, infos):
        """The cohort's uploads -> ``(aggregates, updates)``: the privacy mechanism's release
        where it wraps aggregation (DP-FedAvg's noisy mean of the clipped deltas, McMahan et
        al. 2018), else the algorithm's aggregation; ``updates``: the mechanism's own state
        for the next round (``ServerState`` fields, e.g. an adaptive clip)."""
        if self.privacy is not None:
            wrapped = self.privacy.aggregate(state, uploads, infos, valid, self.noise_key(state),
                                             self.algorithm)
            if wrapped is not None:
                return wrapped
        return (self.algorithm.aggregate(uploads, weights, stats, valid,
                                         self.federation_size(state)), {})

    def federation_size(self, state: ServerState):
        """How many sites the run's federation holds: the sub-federation's members
        (``hparams["members"]``, ``fedbench-contribution``'s coalitions) when it has one, else
        every client of the data. Every count an algorithm divides by (SCAFFOLD's and FedDyn's
        ``N``) is this one, so ``members=S`` is the run on a dataset of the sites in S."""
        members = hparams.get(state.hparams, "members", None)
        return self.data.num_clients if members is None else jnp.sum(members)

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
        init = lambda k: self.model.init(k, self.data.example_input())["params"]  # noqa: E731
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
            flight = self.start_inflight(state)
            state = state.replace(inflight=flight,
                                  downloads=state.downloads.at[flight["ids"]].add(1))
        if self.privacy is not None:  # the mechanism's own state (an adaptive clip, step counts)
            state = self.privacy.init_state(state, self.data.num_clients)
        return state

    # -- rounds ------------------------------------------------------------------------------
    def sample_clients(self, key: jax.Array) -> jax.Array:
        """``clients_per_round`` distinct client ids, uniformly at random."""
        return jax.random.choice(
            key, self.data.num_clients, (self.settings.clients_per_round,), replace=False
        )

    def round_base(self, state: ServerState) -> jax.Array:
        """The key every round's randomness derives from: the run key, or under secure noise
        the secret key mixed with the run key (so seeds still differ)."""
        if self.secret_key is None:
            return state.key
        key = jnp.asarray(self.secret_key)
        for word in range(state.key.shape[-1]):
            key = jax.random.fold_in(key, state.key[word])
        return key

    def round_keys(self, state: ServerState) -> tuple[jax.Array, jax.Array]:
        """``(sample_key, clients_key)`` of the round about to run."""
        key = jax.random.fold_in(self.round_base(state), state.round)
        return tuple(jax.random.split(key))

    def noise_key(self, state: ServerState) -> jax.Array:
        """The key of the round's client-level DP noise, independent of sampling and client
        keys: ``fold_in(fold_in(run_key, r), 0x5EED)`` with the simulator's ``noise_salt``
        folded in (:func:`fedbench.privacy.plan.noise_salt`; ``None``: seed and round only)."""
        key = jax.random.fold_in(jax.random.fold_in(self.round_base(state), state.round), 0x5EED)
        salt = hparams.get(state.hparams, "noise_salt", self.noise_salt)  # a replica's own
        return key if salt is None else jax.random.fold_in(key, salt)

    def durations(self, ids: jax.Array, counts: jax.Array, epochs, bits_up=None) -> jax.Array:
        """Simulated time a client needs: its local steps times its site's speed; with
        :attr:`links`, in seconds, plus downloading the model and uploading ``bits_up`` (its
        message's encoded bits; default dense float32) over its site's link
        (:func:`fedbench.links.client_seconds`)."""
        if self.settings.local_steps is not None:
            steps = jnp.full(counts.shape, self.settings.local_steps)
        else:
            steps = (counts + self.batch_size - 1) // self.batch_size * epochs
        up = self.dense_bits if bits_up is None else bits_up
        return client_seconds(self.links, jnp, ids, steps, self.speeds[ids], self.down_bits, up)

    def upload_bits(self, infos) -> jax.Array | None:
        """Each cohort client's uploaded bits (:func:`fedbench.compression.traffic.upload_bits`)."""
        return upload_bits(self, infos)

    def start_inflight(self, state: ServerState):
        """FedBuff's clients in flight at time 0 (:func:`fedbench.algorithm.fedbuff.start_inflight`)."""
        return start_inflight(self, state)

    def straggler_key(self, state: ServerState) -> jax.Array:
        """The key of the round's straggler draw (independent of sampling and training)."""
        return jax.random.fold_in(jax.random.fold_in(self.round_base(state), state.round), 0x57A6)

    def _run_rounds(self, state: ServerState, payload, num_rounds: jax.Array) -> ServerState:
        self.trace_count += 1
        body = ROUNDS[self.algorithm.kind]

        def one(_, s):
            return body(self, s, payload)  # s.hparams: a replica's own lr, mu, clip, noise

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

