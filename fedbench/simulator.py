"""The vectorised round loop: every sampled client trains at once, rounds run inside ``jit``.

One federated round is one pure function::

    sample clients_per_round ids (without replacement, from the round's key)
      -> gather their padded data
      -> local SGD of all of them at once (``jax.vmap`` or ``lax.map`` over the client axis;
         ``lax.scan`` over local steps; padded steps masked)
      -> average the model deltas weighted by example counts
      -> server optimiser (optax) on the negated average.

Rounds run as a ``lax.fori_loop`` whose trip count is an argument, so one compiled program serves
every block length: the host evaluates and logs between blocks, and neither ``rounds`` nor
``eval_every`` triggers a recompilation. Round ``r`` always uses the key
``fold_in(run_key, r)``, so results do not depend on how rounds are cut into blocks.

Local schedule of a client with ``n`` examples: ``local_epochs`` epochs, each a fresh random
order of its ``n`` real examples cut into ``ceil(n / batch_size)`` batches (the last one may be
short; its loss is the mean over its real examples). The step loop is a ``lax.while_loop`` over
the client's own number of steps, so the padding costs no steps under ``lax.map``; under
``jax.vmap`` finished clients are masked until the longest one is done.

References:
  H. B. McMahan et al., AISTATS 2017, Algorithm 1 (FedAvg, FedSGD); T. Li et al., MLSys 2020
  (FedProx); S. J. Reddi et al., ICLR 2021 (server optimisers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbench.algorithm import Algorithm
from fedbench.dataset.federated import FederatedData
from fedbench.errors import ConfigError
from fedbench.privacy.dp_sgd import make_dp_sgd_local_update
from fedbench.privacy.mechanisms import add_gaussian_noise, clip_to_norm, poisson_cohort
from fedbench.task import batch_loss_fn, concordance_index, cox_terms, masked_cross_entropy

Params = Any
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
    """

    clients_per_round: int
    local_epochs: int
    batch_size: int
    lr: float
    client_axis: str = "auto"
    unroll: int = 1
    eval_chunk: int = 1024
    local_steps: int | None = None


@flax.struct.dataclass
class ServerState:
    """Everything that changes between rounds.

    ``params`` is the server model (for ``local``: a ``[num_clients, ...]`` stack of client
    models); ``round`` counts finished rounds; ``key`` is the run's base key, constant.
    """

    params: Params
    opt_state: Any
    round: jax.Array
    key: jax.Array
    overflow: jax.Array  # Poisson cohorts / batches that overflowed their buffer (must stay 0)
    participation: jax.Array  # [num_clients] int32: rounds each client took part in
    controls: Any = None  # SCAFFOLD: (server control c, [num_clients, ...] client controls c_i)
    clock: Any = None  # simulated wall-clock time (units: one local step of a speed-1 site)
    inflight: Any = None  # FedBuff: the clients training right now (see Simulator._fedbuff_round)
    clip: Any = None  # DP-FedAvg's current clipping bound under adaptive clipping


@flax.struct.dataclass
class ClientStats:
    """Per-client diagnostics of one local update."""

    num_steps: jax.Array  # int32: SGD steps actually taken
    loss: jax.Array  # mean minibatch loss over the steps taken
    overflow: jax.Array  # int32: DP-SGD steps whose Poisson batch overflowed its buffer


def resolve_client_axis(axis: str) -> str:
    """``auto``: ``map`` on CPU, ``vmap`` on accelerators (see benchmarks/NOTES.md)."""
    if axis not in CLIENT_AXES:
        raise ConfigError("client_axis", axis, "one of: " + ", ".join(CLIENT_AXES))
    if axis == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return axis


def epochs_for_steps(local_steps: int, min_count: int, batch_size: int) -> int:
    """Epochs of shuffled order needed so the smallest client can take ``local_steps`` steps."""
    return math.ceil(local_steps / math.ceil(max(min_count, 1) / batch_size))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, ``[B, K], [B] -> [B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def epoch_order(key: jax.Array, count: jax.Array, length: int) -> jax.Array:
    """A uniformly random order of the first ``count`` of ``length`` slots, padding last.

    Sorting i.i.d. uniforms gives a uniform permutation; padded slots get ``+inf`` so they sort
    after every real example. ``[length]`` int32.
    """
    u = jax.random.uniform(key, (length,))
    u = jnp.where(jnp.arange(length) < count, u, jnp.inf)
    return jnp.argsort(u).astype(jnp.int32)


def make_local_update(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    *,
    lr: float,
    local_epochs: int,
    batch_size: int,
    prox_mu: float = 0.0,
    unroll: int = 1,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
    local_steps: int | None = None,
) -> Callable[..., tuple[Params, ClientStats]]:
    """Builds ``local_update(server_params, x, y, count, key[, epochs]) -> (delta, stats)``.

    ``x``: ``[N, F...]`` padded inputs, ``y``: ``[N]``, ``count``: the client's real size,
    ``epochs``: optional per-client number of epochs (``<= local_epochs``; default
    ``local_epochs``), ``correction``: optional pytree added to every gradient (SCAFFOLD's
    ``c - c_i``, Karimireddy et al. 2020, Algorithm 1 line 10). The local objective is the mean cross-entropy of a minibatch plus, for
    FedProx, ``prox_mu / 2 * ||w - server_params||^2`` (Li et al. 2020, Eq. 2).

    The step loop is a ``lax.while_loop`` over the client's own ``epochs * ceil(count /
    batch_size)`` steps: under ``lax.map`` a small client costs only its own steps; under
    ``jax.vmap`` the batch runs until the longest client is done with finished clients masked.
    ``unroll`` steps run per loop iteration (each masked), which cuts per-iteration overhead.

    ``loss_fn(outputs, targets, valid)`` is the task's minibatch loss (:mod:`fedbench.task`).
    With ``local_steps`` every client takes exactly that many steps (``epochs`` is then
    ignored), cycling through fresh epochs; ``local_epochs`` must then be at least
    :func:`epochs_for_steps` of the smallest client.
    """

    def batch_loss(params, xb, yb, valid):
        return loss_fn(apply_fn(params, xb), yb, valid)

    grad_fn = jax.value_and_grad(batch_loss)

    def local_update(server_params, x, y, count, key, epochs=None, correction=None):
        length = x.shape[0]
        steps_per_epoch = (count + batch_size - 1) // batch_size  # this client's own
        if local_steps is not None:
            total = jnp.asarray(local_steps, jnp.int32)
        else:
            total = steps_per_epoch * (local_epochs if epochs is None else epochs)
        # Orders of every epoch, padded so a slice past the end stays in bounds.
        padded = math.ceil(length / batch_size) * batch_size
        orders = jax.vmap(lambda e: epoch_order(jax.random.fold_in(key, e), count, length))(
            jnp.arange(local_epochs)
        )
        orders = jnp.pad(orders, ((0, 0), (0, padded - length)))

        def step(carry):
            params, s, loss_sum = carry
            active = s < total
            epoch = s // jnp.maximum(steps_per_epoch, 1)
            start = (s % jnp.maximum(steps_per_epoch, 1)) * batch_size
            idx = jax.lax.dynamic_slice(orders[epoch], (start,), (batch_size,))
            valid = start + jnp.arange(batch_size) < count
            loss, grads = grad_fn(params, x[idx], y[idx], valid)
            if prox_mu:
                grads = jax.tree.map(
                    lambda g, p, p0: g + prox_mu * (p - p0), grads, params, server_params
                )
            if correction is not None:  # SCAFFOLD: g - c_i + c
                grads = jax.tree.map(jnp.add, grads, correction)
            params = jax.tree.map(lambda p, g: jnp.where(active, p - lr * g, p), params, grads)
            return params, s + active, loss_sum + jnp.where(active, loss, 0.0)

        def body(carry):
            for _ in range(unroll):  # `unroll` masked steps per loop iteration
                carry = step(carry)
            return carry

        carry = (server_params, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))
        params, taken, loss_sum = jax.lax.while_loop(lambda c: c[1] < total, body, carry)
        delta = jax.tree.map(jnp.subtract, params, server_params)
        return delta, ClientStats(taken, loss_sum / jnp.maximum(taken, 1), jnp.zeros((), jnp.int32))

    return local_update


def map_over_clients(fn: Callable, client_axis: str, in_axes: tuple) -> Callable:
    """Maps ``fn`` over the leading client axis with ``jax.vmap`` or sequential ``lax.map``.

    ``in_axes`` marks per-client arguments with 0 and shared ones with ``None``.
    """
    if client_axis == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def mapped(*args):
        shared = [a if ax is None else None for a, ax in zip(args, in_axes)]
        per_client = [a if ax == 0 else None for a, ax in zip(args, in_axes)]

        def one(xs):
            full = [s if ax is None else x for s, x, ax in zip(shared, xs, in_axes)]
            return fn(*full)

        return jax.lax.map(one, per_client)

    return mapped


def weighted_mean(tree: Params, weights: jax.Array) -> Params:
    """``sum_i w_i * tree_i / sum_i w_i`` over the leading axis."""
    total = jnp.sum(weights)
    w = weights.astype(jnp.float32) / jnp.where(total > 0, total, 1)  # no update if all dropped
    return jax.tree.map(lambda d: jnp.tensordot(w, d, axes=1), tree)


def fednova_mean(deltas: Params, weights: jax.Array, steps: jax.Array) -> Params:
    """FedNova's normalised average (Wang et al. 2020, Eq. 6-7, local SGD).

    With ``p_i = n_i / sum n`` and ``tau_i`` local steps: ``tau_eff * sum_i p_i delta_i / tau_i``,
    ``tau_eff = sum_i p_i tau_i``. Equal ``tau_i`` give FedAvg's weighted mean.
    """
    total = jnp.sum(weights)
    p = weights.astype(jnp.float32) / jnp.where(total > 0, total, 1)
    tau = steps.astype(jnp.float32)
    tau_eff = jnp.sum(p * tau)
    scale = p / jnp.maximum(tau, 1.0)
    return jax.tree.map(lambda d: tau_eff * jnp.tensordot(scale, d, axes=1), deltas)


def scaffold_controls(controls, ids, valid, deltas, steps, lr: float, num_clients: int):
    """SCAFFOLD's option II control-variate update (Karimireddy et al. 2020, Alg. 1 l. 12-17).

    ``c_i+ = c_i - c + (x - y_i) / (K_i * lr)``, so ``dc_i = -c - delta_i / (K_i * lr)``; the
    store gets ``c_i += dc_i`` for the clients that reported, and the server
    ``c += sum_i dc_i / num_clients``.
    """
    server_c, client_c = controls
    factor = jnp.where(valid & (steps > 0), 1.0 / (jnp.maximum(steps, 1) * lr), 0.0)
    use = valid & (steps > 0)

    def dc(c, d):
        shape = (-1,) + (1,) * (d.ndim - 1)
        return jnp.where(use.reshape(shape), -c[None] - d * factor.reshape(shape), 0.0)

    dcs = jax.tree.map(dc, server_c, deltas)
    client_c = jax.tree.map(lambda store, d: store.at[ids].add(d), client_c, dcs)
    server_c = jax.tree.map(lambda c, d: c + d.sum(0) / num_clients, server_c, dcs)
    return server_c, client_c


@dataclasses.dataclass(frozen=True)
class Stragglers:
    """Systems heterogeneity of Li et al. 2020 (FedProx), Sec. 5.2.

    Attributes:
      fraction: share of each round's sampled clients that are stragglers
        (``round(fraction * clients_per_round)`` of them).
      policy: ``drop``: their updates are discarded (FedAvg's behaviour in the paper);
        ``partial``: each runs a uniformly random number of epochs in ``1 .. E-1`` and its
        update is kept (FedProx's).
    """

    fraction: float = 0.0
    policy: str = "drop"


def straggler_plan(
    key: jax.Array, cohort: int, local_epochs: int, stragglers: Stragglers | None
) -> tuple[jax.Array, jax.Array]:
    """Per-slot ``(epochs [cohort] int32, keep [cohort] bool)`` of one round.

    The key depends only on the run key and the round, so every algorithm run with the same seed
    sees the same stragglers.
    """
    full = jnp.full((cohort,), local_epochs, jnp.int32)
    if stragglers is None or stragglers.fraction == 0:
        return full, jnp.ones((cohort,), bool)
    choose_key, epochs_key = jax.random.split(key)
    count = int(round(stragglers.fraction * cohort))
    chosen = jax.random.permutation(choose_key, cohort)[:count]
    is_straggler = jnp.zeros((cohort,), bool).at[chosen].set(True)
    if stragglers.policy == "drop":
        return full, ~is_straggler
    partial = jax.random.randint(epochs_key, (cohort,), 1, max(local_epochs, 2))
    return jnp.where(is_straggler, partial, full).astype(jnp.int32), jnp.ones((cohort,), bool)


@dataclasses.dataclass(frozen=True)
class ClientDP:
    """Client-level DP-FedAvg settings (see :mod:`fedbench.privacy.mechanisms`).

    Attributes:
      clip: L2 bound on each client's model delta.
      noise_multiplier: noise std / clip.
      sampling: ``poisson`` (each client with probability ``rate``) or ``fixed``
        (``clients_per_round`` without replacement).
      rate: sampling probability ``q``.
      expected_cohort: the fixed denominator (``q * num_clients``; ``clients_per_round``).
      buffer: slots for a Poisson cohort (overflow is counted and reported as an error).
      adaptive: adaptive clipping (Andrew et al. 2021): ``clip`` is only the initial value.
      target_quantile, clip_lr: the quantile gamma the clip tracks and its learning rate eta_C.
      count_stddev: std sigma_b of the noise on the count of unclipped clients.
      delta_noise_multiplier: noise multiplier on the deltas' sum when adaptive; together with
        the count query it composes to ``noise_multiplier`` (Andrew et al. 2021, Thm. 1).
    """

    clip: float
    noise_multiplier: float
    sampling: str
    rate: float
    expected_cohort: float
    buffer: int
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float = 0.0
    delta_noise_multiplier: float = 0.0


@dataclasses.dataclass(frozen=True)
class SampleDP:
    """Record-level DP-SGD inside every client (see :mod:`fedbench.privacy.dp_sgd`).

    Attributes:
      clip: L2 bound on each example's gradient.
      noise_multiplier: noise std / clip, per local step.
      buffer: slots for a Poisson batch (overflow is counted and reported as an error).
    """

    clip: float
    noise_multiplier: float
    buffer: int


def dp_client_mean(
    deltas: Params, valid: jax.Array, dp: ClientDP, key: jax.Array, clip: jax.Array | None = None
) -> tuple[Params, jax.Array | None]:
    """Clip each client delta, sum the valid ones, add Gaussian noise, divide by the expected
    cohort size (McMahan et al. 2018, Algorithm 1, fixed-denominator estimator).

    Fixed clipping: noise std ``noise_multiplier * clip``; returns ``(mean, None)``.
    Adaptive clipping (Andrew et al. 2021, Algorithm 1): ``clip`` is the current bound; the sum
    gets noise std ``delta_noise_multiplier * clip``; the share of clients whose delta was within
    the bound, ``(sum_i (1[||delta_i|| <= clip] - 1/2) + N(0, count_stddev^2)) / expected_cohort
    + 1/2`` (centred bits: sensitivity 1/2), moves
    the bound geometrically towards the ``target_quantile`` of the norms:
    ``clip * exp(-clip_lr * (share - target_quantile))``. Returns ``(mean, new_clip)``.
    """
    bound = dp.clip if clip is None else clip
    clipped, norms = jax.vmap(clip_to_norm, in_axes=(0, None))(deltas, bound)
    weights = valid.astype(jnp.float32)
    total = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), clipped)
    delta_key, count_key = jax.random.split(key)
    z = dp.delta_noise_multiplier if dp.adaptive else dp.noise_multiplier
    # z = 0 means no noise even with clip = inf (0 * inf would be NaN).
    stddev = z * bound if z > 0 else 0.0
    noisy = add_gaussian_noise(total, stddev, delta_key if dp.adaptive else key)
    mean = jax.tree.map(lambda t: t / dp.expected_cohort, noisy)
    if not dp.adaptive:
        return mean, None
    # Centred bits (b_i - 1/2): one client moves the sum by at most 1/2 (sensitivity 1/2).
    centred = jnp.sum(jnp.where(valid, jnp.where(norms <= bound, 0.5, -0.5), 0.0))
    centred = centred + dp.count_stddev * jax.random.normal(count_key, ())
    share = centred / dp.expected_cohort + 0.5
    return mean, bound * jnp.exp(-dp.clip_lr * (share - dp.target_quantile))


class Simulator:
    """Runs an :class:`Algorithm` on :class:`FederatedData` with a flax model.

    Usage::

        sim = Simulator(model, algorithm, data, settings, seed=0)
        state = sim.init()
        state = sim.run(state, 10)      # 10 rounds, one compiled program
        metrics = sim.evaluate(state)

    ``trace_count`` counts how often the round program was traced (a new trace means a new
    compilation); tests assert it stays at one across blocks of different lengths.
    """

    def __init__(
        self,
        model,
        algorithm: Algorithm,
        data: FederatedData,
        settings: Settings,
        seed: int,
        privacy: ClientDP | SampleDP | None = None,
        stragglers: Stragglers | None = None,
    ):
        self.privacy = privacy
        self.stragglers = stragglers
        self.model = model
        self.algorithm = algorithm
        self.data = data
        self.settings = settings
        self.seed = seed
        self.client_axis = resolve_client_axis(settings.client_axis)
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
        self.local_update = make_local_update(
            apply_fn,
            lr=settings.lr,
            local_epochs=order_epochs,
            batch_size=batch,
            prox_mu=algorithm.prox_mu,
            unroll=settings.unroll,
            loss_fn=batch_loss_fn(data.task),
            local_steps=settings.local_steps,
        )
        if isinstance(privacy, SampleDP):  # same schedule, DP-SGD steps
            self.local_update = make_dp_sgd_local_update(
                apply_fn,
                lr=settings.lr,
                local_epochs=epochs,
                batch_size=batch,
                clip=privacy.clip,
                noise_multiplier=privacy.noise_multiplier,
                buffer=privacy.buffer,
                prox_mu=algorithm.prox_mu,
            )
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
        self._run = jax.jit(self._run_rounds)
        self._evaluate = jax.jit(self._evaluate_impl)

    # -- state -------------------------------------------------------------------------------
    def init(self, seed: int | None = None) -> ServerState:
        """Initial parameters from ``PRNGKey(seed)`` (default: the simulator's seed); every
        local model starts from the same."""
        return self._init_from_key(jax.random.PRNGKey(self.seed if seed is None else seed))

    def init_replicas(self, seeds) -> ServerState:
        """States of several independent runs stacked on a leading replica axis: replica ``i``
        is exactly :meth:`init` with ``seeds[i]`` (same data, sites and settings)."""
        keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])
        return jax.vmap(self._init_from_key)(keys)

    def run_replicas(self, states: ServerState, num_rounds: int) -> ServerState:
        """:meth:`run` for every replica of :meth:`init_replicas` at once, in one compiled
        program (``jax.vmap`` over the replica axis, e.g. seeds)."""
        if not hasattr(self, "_run_many"):
            self._run_many = jax.jit(jax.vmap(self._run_rounds, in_axes=(0, None, None)))
        return self._run_many(states, self._payload(), jnp.int32(num_rounds))

    @staticmethod
    def replica(states: ServerState, i: int) -> ServerState:
        """Replica ``i`` of stacked states, as a state of a single run."""
        return jax.tree.map(lambda leaf: leaf[i], states)

    def _init_from_key(self, key: jax.Array) -> ServerState:
        init_key, run_key = jax.random.split(key)
        params = self.model.init(init_key, self.data.train_x[0, :1])["params"]
        if self.algorithm.kind == "local":
            params = jax.tree.map(
                lambda p: jnp.broadcast_to(p, (self.data.num_clients,) + p.shape), params
            )
        opt_state = self.algorithm.server_optimizer.init(params)
        zero = jnp.zeros((), jnp.int32)
        participation = jnp.zeros((self.data.num_clients,), jnp.int32)
        controls = None
        if self.algorithm.scaffold:
            controls = (
                jax.tree.map(jnp.zeros_like, params),
                jax.tree.map(
                    lambda p: jnp.zeros((self.data.num_clients,) + p.shape, p.dtype), params
                ),
            )
        timed = self.algorithm.kind in ("federated", "async")
        state = ServerState(
            params, opt_state, zero, run_key, zero, participation, controls,
            clock=jnp.zeros((), jnp.float32) if timed else None,
        )
        if self.algorithm.kind == "async":
            state = state.replace(inflight=self._start_inflight(state))
        if isinstance(self.privacy, ClientDP) and self.privacy.adaptive:
            state = state.replace(clip=jnp.asarray(self.privacy.clip, jnp.float32))
        return state

    # -- rounds ------------------------------------------------------------------------------
    def sample_clients(self, key: jax.Array) -> jax.Array:
        """``clients_per_round`` distinct client ids, uniformly at random."""
        return jax.random.choice(
            key, self.data.num_clients, (self.settings.clients_per_round,), replace=False
        )

    def round_keys(self, state: ServerState) -> tuple[jax.Array, jax.Array]:
        """``(sample_key, clients_key)`` of the round about to run."""
        key = jax.random.fold_in(state.key, state.round)
        return tuple(jax.random.split(key))

    def noise_key(self, state: ServerState) -> jax.Array:
        """The key of the round's DP noise, independent of sampling and client keys."""
        return jax.random.fold_in(jax.random.fold_in(state.key, state.round), 0x5EED)

    def durations(self, ids: jax.Array, counts: jax.Array, epochs) -> jax.Array:
        """Simulated time a client needs: its local steps times its site's seconds per step."""
        if self.settings.local_steps is not None:
            steps = jnp.full(counts.shape, self.settings.local_steps)
        else:
            steps = (counts + self.batch_size - 1) // self.batch_size * epochs
        return steps.astype(jnp.float32) * self.speeds[ids]

    # -- asynchronous FedBuff -----------------------------------------------------------------
    def _start_inflight(self, state: ServerState):
        """At time 0, ``concurrency`` clients start from the initial model (version 0)."""
        m = self.algorithm.concurrency
        sample_key, clients_key = self.round_keys(state)
        ids = jax.random.choice(sample_key, self.data.num_clients, (m,), replace=False)
        counts = self.data.train_counts[ids]
        full = jnp.full((m,), self.local_epochs, jnp.int32)
        return {
            "ids": ids.astype(jnp.int32),
            "keys": jax.random.split(clients_key, m),
            "params": jax.tree.map(lambda p: jnp.broadcast_to(p, (m,) + p.shape), state.params),
            "version": jnp.zeros((m,), jnp.int32),
            "finish": self.durations(ids, counts, full),
            "staleness_sum": jnp.zeros((), jnp.float32),
            "staleness_max": jnp.zeros((), jnp.int32),
        }

    def _fedbuff_round(self, state: ServerState, data: FederatedData) -> ServerState:
        """One FedBuff server update (Nguyen et al. 2022, Algorithm 1).

        The ``buffer_size`` in-flight clients that finish first (in simulated time) deliver
        deltas computed from the model version each started with; the server applies
        ``sum_i n_i s(tau_i) delta_i / sum_i n_i`` with staleness weight
        ``s(tau) = 1 / sqrt(1 + tau)`` through its optimiser, the clock moves to the last of
        those finish times, and as many new clients (not already in flight) start from the new
        model. ``round`` counts server updates.
        """
        flight = state.inflight
        k, m = self.algorithm.buffer_size, self.algorithm.concurrency
        done = jnp.argsort(flight["finish"])[:k]
        ids = flight["ids"][done]
        counts = data.train_counts[ids]
        start = jax.tree.map(lambda p: p[done], flight["params"])
        update = map_over_clients(self.local_update, self.client_axis, (0, 0, 0, 0, 0))
        deltas, _ = update(start, data.train_x[ids], data.train_y[ids], counts,
                           flight["keys"][done])
        staleness = state.round - flight["version"][done]
        weights = counts.astype(jnp.float32) / jnp.sum(counts)
        weights = weights / jnp.sqrt(1.0 + staleness.astype(jnp.float32))
        mean_delta = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), deltas)
        updates, opt_state = self.algorithm.server_optimizer.update(
            jax.tree.map(jnp.negative, mean_delta), state.opt_state, state.params
        )
        params = optax.apply_updates(state.params, updates)
        clock = flight["finish"][done].max()
        version = state.round + 1
        # New clients for the freed slots, keyed like a synchronous round with this version.
        sample_key, clients_key = jax.random.split(jax.random.fold_in(state.key, version))
        if k == m:  # every slot is free: the same draw as a synchronous round
            new_ids = jax.random.choice(sample_key, data.num_clients, (k,), replace=False)
        else:  # uniformly among clients not still in flight (Gumbel top-k)
            busy = jnp.zeros((data.num_clients,), bool).at[flight["ids"]].set(True)
            busy = busy.at[ids].set(False)
            scores = jnp.where(busy, -jnp.inf, jax.random.gumbel(sample_key, (data.num_clients,)))
            new_ids = jax.lax.top_k(scores, k)[1]
        new_ids = new_ids.astype(jnp.int32)
        full = jnp.full((k,), self.local_epochs, jnp.int32)
        flight = {
            "ids": flight["ids"].at[done].set(new_ids),
            "keys": flight["keys"].at[done].set(jax.random.split(clients_key, k)),
            "params": jax.tree.map(
                lambda store, p: store.at[done].set(jnp.broadcast_to(p, (k,) + p.shape)),
                flight["params"], params,
            ),
            "version": flight["version"].at[done].set(version),
            "finish": flight["finish"].at[done].set(
                clock + self.durations(new_ids, data.train_counts[new_ids], full)
            ),
            "staleness_sum": flight["staleness_sum"] + staleness.sum(),
            "staleness_max": jnp.maximum(flight["staleness_max"], staleness.max()),
        }
        participation = state.participation.at[ids].add(1)
        return state.replace(
            params=params, opt_state=opt_state, round=version, clock=clock,
            inflight=flight, participation=participation,
        )

    def straggler_key(self, state: ServerState) -> jax.Array:
        """The key of the round's straggler draw (independent of sampling and training)."""
        return jax.random.fold_in(jax.random.fold_in(state.key, state.round), 0x57A6)

    def _federated_round(self, state: ServerState, data: FederatedData) -> ServerState:
        sample_key, clients_key = self.round_keys(state)
        dp = self.privacy if isinstance(self.privacy, ClientDP) else None
        overflow = state.overflow
        new_clip = state.clip
        if dp is not None and dp.sampling == "poisson":
            ids, valid, count = poisson_cohort(sample_key, data.num_clients, dp.rate, dp.buffer)
            overflow = overflow + (count > dp.buffer)
        else:
            ids = self.sample_clients(sample_key)
            valid = jnp.ones(ids.shape, bool)
        counts = data.train_counts[ids]
        keys = jax.random.split(clients_key, ids.shape[0])
        epochs, keep = straggler_plan(
            self.straggler_key(state), ids.shape[0], self.local_epochs, self.stragglers
        )
        valid = valid & keep
        controls = state.controls
        correction = None
        if controls is not None:  # SCAFFOLD: each client corrects its gradients by c - c_i
            server_c, client_c = controls
            correction = jax.tree.map(lambda c, ci: c[None] - ci[ids], server_c, client_c)
        update = map_over_clients(
            self.local_update, self.client_axis, (None, 0, 0, 0, 0, 0, None if correction is None else 0)
        )
        deltas, stats = update(
            state.params, data.train_x[ids], data.train_y[ids], counts, keys, epochs, correction
        )
        overflow = overflow + jnp.sum(jnp.where(valid, stats.overflow, 0))
        participation = state.participation.at[ids].add(valid.astype(jnp.int32))
        weights = jnp.where(valid, counts, 0)
        if dp is not None:
            mean_delta, new_clip = dp_client_mean(
                deltas, valid, dp, self.noise_key(state), state.clip
            )
        elif self.algorithm.normalized:
            mean_delta = fednova_mean(deltas, weights, stats.num_steps)
        else:
            mean_delta = weighted_mean(deltas, weights)
        durations = self.durations(ids, counts, epochs)
        clock = state.clock + jnp.max(jnp.where(valid, durations, 0.0))
        if controls is not None:
            controls = scaffold_controls(
                controls, ids, valid, deltas, stats.num_steps, self.settings.lr,
                data.num_clients,
            )
        pseudo_grad = jax.tree.map(jnp.negative, mean_delta)
        updates, opt_state = self.algorithm.server_optimizer.update(
            pseudo_grad, state.opt_state, state.params
        )
        params = optax.apply_updates(state.params, updates)
        return state.replace(
            params=params,
            opt_state=opt_state,
            round=state.round + 1,
            overflow=overflow,
            participation=participation,
            controls=controls,
            clock=clock,
            clip=new_clip,
        )

    def _centralized_round(self, state: ServerState, pooled) -> ServerState:
        sample_key, clients_key = self.round_keys(state)
        pooled_x, pooled_y = pooled
        idx = jax.random.permutation(sample_key, pooled_y.shape[0])[: self.centralized_size]
        delta, _ = self.local_update(
            state.params, pooled_x[idx], pooled_y[idx], jnp.int32(self.centralized_size), clients_key
        )
        params = jax.tree.map(jnp.add, state.params, delta)
        return state.replace(params=params, round=state.round + 1)

    def _local_round(self, state: ServerState, data: FederatedData) -> ServerState:
        _, clients_key = self.round_keys(state)
        keys = jax.random.split(clients_key, data.num_clients)
        update = map_over_clients(self.local_update, self.client_axis, (0, 0, 0, 0, 0))
        deltas, _ = update(state.params, data.train_x, data.train_y, data.train_counts, keys)
        params = jax.tree.map(jnp.add, state.params, deltas)
        return state.replace(params=params, round=state.round + 1)

    def _run_rounds(self, state: ServerState, payload, num_rounds: jax.Array) -> ServerState:
        self.trace_count += 1
        kind = self.algorithm.kind
        body = {
            "federated": self._federated_round,
            "centralized": self._centralized_round,
            "local": self._local_round,
            "async": self._fedbuff_round,
        }[kind]
        return jax.lax.fori_loop(0, num_rounds, lambda _, s: body(s, payload), state)

    def _payload(self):
        if self.algorithm.kind == "centralized":
            return (self.pooled_x, self.pooled_y)
        return self.data

    def run(self, state: ServerState, num_rounds: int) -> ServerState:
        """Runs ``num_rounds`` rounds in one call of the compiled round loop."""
        return self._run(state, self._payload(), jnp.int32(num_rounds))

    # -- evaluation --------------------------------------------------------------------------
    def _sums(self, params, x, y, count):
        """Sum of losses and of correct predictions over the first ``count`` rows, chunked."""
        chunk = min(self.settings.eval_chunk, x.shape[0])
        pad = -x.shape[0] % chunk
        xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        ys = jnp.pad(y, (0, pad))
        valid = jnp.arange(xs.shape[0]) < count
        shape = (-1, chunk)

        def one(args):
            xb, yb, vb = args
            logits = self.apply_fn(params, xb)
            loss = jnp.where(vb, cross_entropy(logits, yb), 0.0).sum()
            correct = jnp.where(vb, jnp.argmax(logits, -1) == yb, False).sum()
            return loss, correct

        losses, corrects = jax.lax.map(
            one,
            (xs.reshape(shape + xs.shape[1:]), ys.reshape(shape), valid.reshape(shape)),
        )
        return losses.sum(), corrects.sum()

    def _outputs(self, params, x):
        """Model outputs on ``x`` in chunks of ``eval_chunk`` rows (bounds memory)."""
        chunk = min(self.settings.eval_chunk, x.shape[0])
        pad = -x.shape[0] % chunk
        xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        out = jax.lax.map(lambda xb: self.apply_fn(params, xb), xs.reshape((-1, chunk) + x.shape[1:]))
        return out.reshape((-1,) + out.shape[2:])[: x.shape[0]]

    def _survival_impl(self, params, data: FederatedData):
        """Cox partial-likelihood sums (risk set = each client's own training set) and the
        log-risk scores of every test split and of the pooled test set."""
        per_client = self.algorithm.kind == "local"
        p_axis = 0 if per_client else None
        n = data.train_x.shape[1]

        def client_loss(p, x, y, count):
            scores = self._outputs(p, x)[:, 0]
            return cox_terms(scores, y, jnp.arange(n) < count).sum()

        losses = map_over_clients(client_loss, "map", (p_axis, 0, 0, 0))(
            params, data.train_x, data.train_y, data.train_counts
        )
        test_scores = map_over_clients(lambda p, x: self._outputs(p, x)[:, 0], "map", (p_axis, 0))(
            params, data.test_x
        )
        pooled = map_over_clients(
            lambda p: self._outputs(p, data.pooled_test_x)[:, 0], "map", (p_axis,)
        )
        pooled_scores = pooled(params) if per_client else self._outputs(params, data.pooled_test_x)[:, 0]
        return {"train_loss": losses.sum() / data.train_counts.sum(), "test_scores": test_scores,
                "pooled_scores": pooled_scores}

    def _evaluate_impl(self, params, data: FederatedData):
        if data.task == "survival":
            return self._survival_impl(params, data)
        per_client = self.algorithm.kind == "local"
        p_axis = 0 if per_client else None

        def client_sums(p, x, y, n):
            return self._sums(p, x, y, n)

        clients = map_over_clients(client_sums, "map", (p_axis, 0, 0, 0))
        train_loss, train_correct = clients(params, data.train_x, data.train_y, data.train_counts)
        test_loss, test_correct = clients(params, data.test_x, data.test_y, data.test_counts)
        pooled_n = data.pooled_test_y.shape[0]
        if per_client:
            pooled = map_over_clients(
                lambda p: self._sums(p, data.pooled_test_x, data.pooled_test_y, pooled_n),
                "map",
                (0,),
            )
            pooled_loss, pooled_correct = pooled(params)
            pooled_loss, pooled_correct = pooled_loss.mean(), pooled_correct.mean()
        else:
            pooled_loss, pooled_correct = self._sums(
                params, data.pooled_test_x, data.pooled_test_y, pooled_n
            )
        n_train = data.train_counts.sum()
        return {
            "train_loss": train_loss.sum() / n_train,
            "train_accuracy": train_correct.sum() / n_train,
            "test_loss": pooled_loss / pooled_n,
            "test_accuracy": pooled_correct / pooled_n,
            "client_test_correct": test_correct,
        }

    def _survival_metrics(self, raw) -> dict[str, float]:
        """Host-side C-indices (Harrell) from the scores of :meth:`_survival_impl`."""
        data = self.data
        per_client = self.algorithm.kind == "local"
        pooled_y = np.asarray(data.pooled_test_y)
        pooled_scores = np.asarray(raw["pooled_scores"])
        if per_client:  # mean over the client models, as for accuracy
            pooled_c = float(np.nanmean([concordance_index(pooled_y[:, 1], s, pooled_y[:, 0])
                                          for s in pooled_scores]))
        else:
            pooled_c = concordance_index(pooled_y[:, 1], pooled_scores, pooled_y[:, 0])
        test_y, counts = np.asarray(data.test_y), np.asarray(data.test_counts)
        scores = np.asarray(raw["test_scores"])
        own = np.array([
            concordance_index(test_y[c, :m, 1], scores[c, :m], test_y[c, :m, 0]) if m else np.nan
            for c, m in enumerate(counts)
        ])
        own = own[np.isfinite(own)]
        # Test loss: the Cox loss of the pooled test set as one risk set (for local: model mean).
        rows = pooled_scores if per_client else pooled_scores[None]
        valid = jnp.ones(pooled_y.shape[0], bool)
        test_loss = float(np.mean([cox_terms(jnp.asarray(r), jnp.asarray(pooled_y), valid).mean()
                                   for r in rows]))
        return {
            "train_loss": float(raw["train_loss"]),
            "test_loss": test_loss,
            "test_cindex": pooled_c,
            "client_cindex_mean": float(own.mean()) if own.size else float("nan"),
            "client_cindex_p10": float(np.percentile(own, 10)) if own.size else float("nan"),
        }

    def _site_outputs_impl(self, params, data: FederatedData):
        """Outputs of the model(s) on every site's test split and on the pooled test set; for
        ``local`` a leading axis over the site models."""
        def one(p):
            per_site = jax.lax.map(lambda x: self._outputs(p, x), data.test_x)
            return per_site, self._outputs(p, data.pooled_test_x)

        if self.algorithm.kind == "local":
            return jax.lax.map(one, params)
        return one(params)

    def _metric(self, outputs: np.ndarray, y: np.ndarray, metric: str | None = None) -> float:
        """Accuracy, ROC AUC (``metric="auc"``, binary tasks: area under the ROC curve of the
        class-1 logit margin) or for survival Harrell's C-index; NaN where undefined (no
        examples, or a test split holding one class only)."""
        if len(y) == 0:
            return float("nan")
        if self.data.task == "survival":
            return concordance_index(y[:, 1], outputs[:, 0], y[:, 0])
        if metric == "auc":
            if len(np.unique(y)) < 2:
                return float("nan")
            from sklearn.metrics import roc_auc_score

            return float(roc_auc_score(y, outputs[:, 1] - outputs[:, 0]))
        return float(np.mean(np.argmax(outputs, -1) == y))

    def site_results(self, state: ServerState) -> dict[str, Any]:
        """Per-site results: the question of Pati et al. 2022 (FeTS) -- is the federated model
        at least as good on each institution's data as that institution's own model?

        Returns ``metric`` (``accuracy`` or ``cindex``), ``test_sizes``, ``own`` (for each site,
        the metric on its own test split of the model that site uses: the global model, or for
        ``local`` its own model) and ``pooled`` (the pooled test set; for ``local`` the mean over
        site models). For ``local`` also ``matrix[k][j]``: site ``k``'s model on site ``j``'s
        test split, and ``pooled_by_model``. Binary classification adds ``auc``: the same
        entries with ROC AUC in place of accuracy.
        """
        if not hasattr(self, "_site_outputs"):
            self._site_outputs = jax.jit(self._site_outputs_impl)
        per_site, pooled = jax.device_get(self._site_outputs(state.params, self.data))
        per_site, pooled = np.asarray(per_site), np.asarray(pooled)
        counts = np.asarray(self.data.test_counts)
        test_y, pooled_y = np.asarray(self.data.test_y), np.asarray(self.data.pooled_test_y)

        def table(metric):
            def row(site_out):
                return [self._metric(site_out[j, :m], test_y[j, :m], metric)
                        for j, m in enumerate(counts)]

            if self.algorithm.kind != "local":
                return {"own": row(per_site), "pooled": self._metric(pooled, pooled_y, metric)}
            matrix = [row(per_site[k]) for k in range(per_site.shape[0])]
            by_model = [self._metric(pooled[k], pooled_y, metric) for k in range(pooled.shape[0])]
            return {"own": [matrix[k][k] for k in range(len(matrix))],
                    "pooled": float(np.nanmean(by_model)), "matrix": matrix,
                    "pooled_by_model": by_model}

        result = {
            "metric": "cindex" if self.data.task == "survival" else "accuracy",
            "test_sizes": counts.tolist(),
            "train_sizes": np.asarray(self.data.train_counts).tolist(),
            **table(None),
        }
        if self.data.task == "classification" and self.data.num_classes == 2:
            result["auc"] = table("auc")  # same layout, ROC AUC
        return result

    def evaluate(self, state: ServerState, min_client_test: int = 1) -> dict[str, Any]:
        """Metrics of the current model(s).

        ``test_*`` are on the pooled test set (for ``local``: the mean over client models);
        ``train_*`` over all clients' training data, weighted by example counts;
        ``client_accuracy_mean`` / ``client_accuracy_p10``: mean over clients with a non-empty
        test split, and 10th percentile over clients with at least ``min_client_test`` test
        examples, of the accuracy on their own test split; ``client_accuracy_p10_skipped``: the
        clients with a test split left out of the percentile. Survival data report
        ``test_cindex`` and ``client_cindex_*`` (Harrell's C-index) instead of accuracies.
        """
        raw = jax.device_get(self._evaluate(state.params, self.data))
        extra = {}
        if state.clip is not None:
            extra["clip"] = float(state.clip)
        if state.clock is not None:
            extra["simulated_time"] = float(state.clock)
        if state.inflight is not None:
            updates = max(int(state.round), 1)
            k = self.algorithm.buffer_size
            extra["staleness_mean"] = float(state.inflight["staleness_sum"]) / (updates * k)
            extra["staleness_max"] = int(state.inflight["staleness_max"])
        if self.data.task == "survival":
            return {"round": int(state.round), **extra, **self._survival_metrics(raw)}
        counts = np.asarray(self.data.test_counts)
        has_test = counts > 0
        client_acc = np.asarray(raw["client_test_correct"])[has_test] / counts[has_test]
        large = client_acc[counts[has_test] >= min_client_test]
        return {
            "round": int(state.round),
            **extra,
            "train_loss": float(raw["train_loss"]),
            "train_accuracy": float(raw["train_accuracy"]),
            "test_loss": float(raw["test_loss"]),
            "test_accuracy": float(raw["test_accuracy"]),
            "client_accuracy_mean": float(client_acc.mean()) if client_acc.size else float("nan"),
            "client_accuracy_p10": float(np.percentile(large, 10)) if large.size else float("nan"),
            "client_accuracy_p10_skipped": int(client_acc.size - large.size),
        }
