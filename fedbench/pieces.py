"""The record a round is built from: every piece and constant it uses, and nothing else.

The simulator builds one :class:`RoundPieces` when it traces its round program
(:meth:`fedbench.simulator.Simulator.pieces`) and hands it to the round function of the
algorithm's kind (:func:`fedbench.round.federated_round`, FedBuff's, the baselines'). The round
makes no call back into the simulator: it has no settings object to read a number from (the
client ``lr`` it falls back to is a field, used only where the state carries none), no data
(passed to the round as an argument) and no model; what it may use is listed here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedbench import hparams
from fedbench.algorithm.fedbuff import start_inflight
from fedbench.compression.traffic import upload_bits
from fedbench.links import client_seconds
from fedbench.state import ServerState


#: Federations of more clients draw a round's cohort with :func:`distinct_uniform`: about 1.5
#: ms at 100,000 clients against 52 ms for ``jax.random.choice(replace=False)``, which permutes
#: the whole population with two stable two-operand sorts (``benchmarks/NOTES.md``, W5).
TOP_K_SAMPLING_ABOVE = 2**15


def distinct_uniform(key: jax.Array, n: int, k: int) -> jax.Array:
    """``k`` distinct ids of ``range(n)``, a uniformly random set in a uniformly random order:
    the ``k`` largest of ``n`` i.i.d. random scores (``lax.top_k``). The scores are 30 random
    bits each, mapped to positive normal float32s by their bit pattern (monotone and
    one-to-one, so no two distinct draws compare equal; equal draws, about
    ``n^2 / 2^31`` pairs a call, go to the lower id). ``[k]`` int32."""
    bits = jax.random.bits(key, (n,), jnp.uint32) >> 2
    scores = jax.lax.bitcast_convert_type(bits + jnp.uint32(0x00800000), jnp.float32)
    return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class RoundPieces:
    """Everything a round function may use (built by the simulator; see the module docstring).

    Attributes:
      algorithm, privacy: the algorithm and the privacy mechanism (None: no DP).
      local_update, personal_local_update, transform: a client's training, its personal pass
        (None without one), its update transforms (clip, compressor).
      apply_fn: the model's forward pass (IFCA's choice of cluster).
      store_template: one client's store entry; shapes: the parameters' shapes.
      stragglers, independent_stragglers: who drops out, and whether per client independently.
      local_epochs, batch_size, local_steps: the local schedule.
      num_clients, clients_per_round: the federation and its cohort.
      lr: the client learning rate where the state's ``hparams`` carry none.
      client_axis, client_chunk, mesh: how the cohort is mapped.
      downlink, down_bits, dense_bits, other_up_bits, counts_bits: traffic.
      links, speeds: the clock.
      noise_salt, secret_key: DP noise keys.
      centralized_size: examples per round of the centralized baseline.
    """

    algorithm: Any
    privacy: Any
    local_update: Callable
    personal_local_update: Callable | None
    transform: Any
    apply_fn: Callable
    store_template: Any
    shapes: Any
    stragglers: Any
    independent_stragglers: bool
    local_epochs: int
    batch_size: int
    local_steps: int | None
    num_clients: int
    clients_per_round: int
    lr: float
    client_axis: str
    client_chunk: int | None
    mesh: Any
    downlink: Any
    down_bits: int
    dense_bits: int
    other_up_bits: int
    counts_bits: bool
    links: Any
    speeds: Any
    noise_salt: int | None
    secret_key: Any
    centralized_size: int | None

    def param_shapes(self):
        """The model's parameter shapes (``jax.ShapeDtypeStruct``s)."""
        return self.shapes

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

    def sample_cohort(self, key: jax.Array, members: jax.Array | None = None,
                      round: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(ids, valid, overflow)``: ``clients_per_round`` distinct clients, or under
        client-level DP with Poisson sampling each client with probability ``q`` in a buffer,
        or the privacy mechanism's scheduled cohort of round ``round`` (DP-FTRL's cyclic
        groups). ``members``: a sub-federation's ``[num_clients]`` 0/1 mask (the run's
        ``hparams["members"]``): only these sites are sampled."""
        own = None if self.privacy is None else self.privacy.sample_cohort(
            key, self.num_clients, round)  # e.g. a Poisson cohort
        if own is not None:
            return own
        if members is not None:  # uniform among members (Gumbel top-k); fewer: the rest invalid
            scores = jnp.where(members > 0, jax.random.gumbel(key, members.shape), -jnp.inf)
            ids = jax.lax.top_k(scores, self.clients_per_round)[1].astype(jnp.int32)
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
        return self.num_clients if members is None else jnp.sum(members)

    def sample_clients(self, key: jax.Array) -> jax.Array:
        """``clients_per_round`` distinct client ids, uniformly at random: above
        :data:`TOP_K_SAMPLING_ABOVE` clients without DP by :func:`distinct_uniform`, else by
        ``jax.random.choice`` (whose cohorts every committed result was run with; a DP run's
        sampling stays the one its accounting was checked with, whatever the tie rates)."""
        if self.num_clients > TOP_K_SAMPLING_ABOVE and self.privacy is None:
            return distinct_uniform(key, self.num_clients, self.clients_per_round)
        return jax.random.choice(
            key, self.num_clients, (self.clients_per_round,), replace=False
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
        if self.local_steps is not None:
            steps = jnp.full(counts.shape, self.local_steps)
        else:
            steps = (counts + self.batch_size - 1) // self.batch_size * epochs
        up = self.dense_bits if bits_up is None else bits_up
        return client_seconds(self.links, jnp, ids, steps, self.speeds[ids], self.down_bits, up)

    def upload_bits(self, infos) -> jax.Array | None:
        """Each cohort client's uploaded bits (:func:`fedbench.compression.traffic.upload_bits`)."""
        return upload_bits(self, infos)

    def start_inflight(self, state: ServerState, data):
        """FedBuff's clients in flight at time 0 (:func:`fedbench.algorithm.fedbuff.start_inflight`)."""
        return start_inflight(self, state, data)

    def straggler_key(self, state: ServerState) -> jax.Array:
        """The key of the round's straggler draw (independent of sampling and training)."""
        return jax.random.fold_in(jax.random.fold_in(self.round_base(state), state.round), 0x57A6)
