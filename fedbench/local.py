"""Local training: the one SGD loop every client runs, and mapping it over the client axis.

A client's local update is ``local_update(server_params, x, y, count, key, epochs, context,
hp) -> (delta, stats)``: SGD from the server model for the client's own number of steps, with
``hp`` the run's hyper-parameters the round passes in (its ``lr``, a sweep replica's own:
:mod:`fedbench.hparams`), and

* a **gradient estimator** that says what one step's gradient is: the task loss of a minibatch
  cut from a fresh random order of the client's examples (:func:`minibatch_estimator`), or
  DP-SGD's Poisson-sampled, per-example-clipped, noised gradient
  (:func:`fedbench.privacy.dp_sgd.dp_sgd_estimator`);
* an algorithm's **gradient adjustment** ``grad_adjust(grads, params, anchor, context, hp)``: what
  the algorithm adds to the local objective's gradient (FedProx's proximal term, SCAFFOLD's
  control-variate correction, FedDyn's linear and quadratic terms), with ``context`` the
  per-client data the algorithm handed to this client (e.g. from the per-client store).

Local schedule of a client with ``n`` examples: ``local_epochs`` epochs of ``ceil(n /
batch_size)`` steps (or exactly ``local_steps`` steps, FLamby's schedule). The step loop is a
``lax.while_loop`` over the client's own number of steps, so padding costs no steps under
``lax.map``; under ``jax.vmap`` finished clients are masked until the longest one is done.

References:
  H. B. McMahan et al., AISTATS 2017, Algorithm 1 (ClientUpdate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from fedbench import hparams
from fedbench.task import masked_cross_entropy

Params = Any
GradAdjust = Callable[[Params, Params, Params, Any], Params]


@flax.struct.dataclass
class ClientStats:
    """Per-client diagnostics of one local update."""

    num_steps: jax.Array  # int32: SGD steps actually taken
    loss: jax.Array  # mean minibatch loss over the steps taken
    overflow: jax.Array  # int32: DP-SGD steps whose Poisson batch overflowed its buffer


class GradientEstimator(NamedTuple):
    """How one local step's gradient is computed (a pair of pure functions).

    ``prepare(x, count, key) -> aux`` runs once per local update (e.g. the epochs' orders);
    ``grad(params, x, y, count, key, aux, step, lr, hp) -> (loss, grads, overflow)`` runs per
    step (``lr``: the step size the loop applies next, for estimators that write a projected step
    as a gradient, APFL's mixing weight; ``hp``: the run's hyper-parameters, DP-SGD's clip and
    noise). With ``contextual`` it also takes ``anchor=`` (the model the client received) and
    ``context=`` (what its algorithm handed it: MOON's previous local model). With ``stateful``
    it returns a fourth value, entries of ``params`` the step sets rather than descends
    (BatchNorm's running statistics, :func:`batchnorm_estimator`).
    ``steps(count, epochs) -> int`` is the client's number of steps for ``epochs`` epochs.
    """

    prepare: Callable[..., Any]
    grad: Callable[..., tuple[jax.Array, Params, jax.Array]]
    steps: Callable[[jax.Array, Any], jax.Array]
    contextual: bool = False
    stateful: bool = False


def epochs_for_steps(local_steps: int, min_count: int, batch_size: int) -> int:
    """Epochs of shuffled order needed so the smallest client can take ``local_steps`` steps."""
    return math.ceil(local_steps / math.ceil(max(min_count, 1) / batch_size))


#: Slots whose index fits beside a uniform's 23 random bits in one uint32 sort key.
PACKED_SLOTS = 512


def epoch_order(key: jax.Array, count: jax.Array, length: int) -> jax.Array:
    """A uniformly random order of the first ``count`` of ``length`` slots, padding last.

    Sorting i.i.d. uniforms gives a uniform permutation; padded slots get ``+inf`` so they sort
    after every real example. ``[length]`` int32: the stable argsort of
    ``where(arange(length) < count, jax.random.uniform(key, (length,)), inf)``.

    Computed without that two-operand sort (a comparator sort on XLA:CPU, 5-8x slower than a
    sort of one uint32 array; ``benchmarks/NOTES.md``, W5) when ``count <= 512``: a uniform is
    ``m / 2^23`` with ``m`` the top 23 of its 32 random bits, so the key ``m << 9 | slot``
    orders real slots by uniform and then by slot, as the stable argsort does, and the padding
    (key ``2^32 - 1``, not below any real key) fills the places from ``count`` on in slot
    order. The same order bit for bit; a client of more than 512 examples takes the argsort.
    """
    bits = jax.random.bits(key, (length,), jnp.uint32) >> 9  # the uniforms' 23 mantissa bits
    slot = jnp.arange(length, dtype=jnp.int32)

    def packed():
        keys = jnp.where(slot < count, bits << 9 | (slot.astype(jnp.uint32) & (PACKED_SLOTS - 1)),
                         jnp.uint32(0xFFFFFFFF))
        decoded = (jax.lax.sort(keys) & (PACKED_SLOTS - 1)).astype(jnp.int32)
        return jnp.where(slot < count, decoded, slot)

    def argsort():
        u = jax.random.uniform(key, (length,))
        return jnp.argsort(jnp.where(slot < count, u, jnp.inf), stable=True).astype(jnp.int32)

    if length <= PACKED_SLOTS:
        return packed()
    return jax.lax.cond(count <= PACKED_SLOTS, packed, argsort)


def minibatch_estimator(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    *,
    local_epochs: int,
    batch_size: int,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
) -> GradientEstimator:
    """Plain minibatch SGD: each epoch a fresh uniform order of the client's ``count`` examples
    cut into ``ceil(count / batch_size)`` batches (the last one may be short; its loss is the
    mean over its real examples). ``local_epochs`` orders are drawn up front (``fold_in(key,
    e)``); step ``s`` uses epoch ``s // steps_per_epoch``. ``loss_fn(outputs, targets, valid)``
    is the task's minibatch loss (:mod:`fedbench.task`)."""

    def batch_loss(params, xb, yb, valid):
        return loss_fn(apply_fn(params, xb), yb, valid)

    grad_fn = jax.value_and_grad(batch_loss)

    def steps(count, epochs):
        return (count + batch_size - 1) // batch_size * epochs

    def prepare(x, count, key):
        length = x.shape[0]
        padded = math.ceil(length / batch_size) * batch_size  # a slice past the end stays in bounds
        orders = jax.vmap(lambda e: epoch_order(jax.random.fold_in(key, e), count, length))(
            jnp.arange(local_epochs)
        )
        return jnp.pad(orders, ((0, 0), (0, padded - length)))

    def grad(params, x, y, count, key, orders, s, lr=None, hp=None):
        del key, lr, hp
        idx, valid = minibatch_at(orders, s, count, batch_size)
        loss, grads = grad_fn(params, x[idx], y[idx], valid)
        return loss, grads, jnp.zeros((), jnp.int32)

    return GradientEstimator(prepare, grad, steps)


def batchnorm_estimator(
    train_apply: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, Params]],
    *,
    local_epochs: int,
    batch_size: int,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
) -> GradientEstimator:
    """:func:`minibatch_estimator`'s schedule and loss with the model in training mode:
    ``train_apply(params, x, valid) -> (outputs, running statistics)`` normalises with the
    batch's statistics over its ``valid`` examples (:class:`fedbench.model.BatchNorm`), and the
    step then sets the running statistics it returns (``stateful``)."""
    base = minibatch_estimator(train_apply, local_epochs=local_epochs, batch_size=batch_size,
                               loss_fn=loss_fn)

    def grad(params, x, y, count, key, orders, s, lr=None, hp=None):
        del key, lr, hp
        idx, valid = minibatch_at(orders, s, count, batch_size)

        def loss(p):
            out, stats = train_apply(p, x[idx], valid)
            return loss_fn(out, y[idx], valid), stats

        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, grads, jnp.zeros((), jnp.int32), stats

    return GradientEstimator(base.prepare, grad, base.steps, stateful=True)


def with_entries(params: Params, entries: Mapping[str, Mapping[str, jax.Array]]) -> Params:
    """``params`` with the leaves ``entries[module][name]`` replaced (top-level modules)."""
    return {k: ({**v, **entries[k]} if k in entries else v) for k, v in params.items()}


def minibatch_at(orders: jax.Array, s: jax.Array, count: jax.Array, batch_size: int
                 ) -> tuple[jax.Array, jax.Array]:
    """``(indices [B], valid [B])`` of step ``s``'s minibatch in :func:`minibatch_estimator`'s
    schedule (``orders``: its ``prepare``'s epochs of shuffled order; the last batch of an epoch
    may be short, its padding slots not ``valid``)."""
    steps_per_epoch = jnp.maximum((count + batch_size - 1) // batch_size, 1)
    epoch = s // steps_per_epoch
    start = (s % steps_per_epoch) * batch_size
    idx = jax.lax.dynamic_slice(orders[epoch], (start,), (batch_size,))
    return idx, start + jnp.arange(batch_size) < count


def make_local_update(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    *,
    lr: float,
    local_epochs: int,
    batch_size: int,
    unroll: int = 1,
    loss_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] = masked_cross_entropy,
    local_steps: int | None = None,
    grad_adjust: GradAdjust | None = None,
    estimator: GradientEstimator | None = None,
) -> Callable[..., tuple[Params, ClientStats]]:
    """Builds ``local_update(server_params, x, y, count, key[, epochs, context, hp]) -> (delta,
    stats)``.

    ``hp`` (the argument of ``local_update``) holds this call's hyper-parameters, passed in by
    the round: ``hp["lr"]`` is its step size (a run's or a sweep replica's own); without it the
    ``lr`` given here.

    ``x``: ``[N, F...]`` padded inputs, ``y``: ``[N]`` (or ``[N, 2]`` survival targets),
    ``count``: the client's real size, ``epochs``: optional per-client number of epochs
    (``<= local_epochs``; default ``local_epochs``), ``context``: what the algorithm handed this
    client, passed to ``grad_adjust(grads, params, server_params, context, hp)``, which returns the
    gradient of the algorithm's local objective (default: the estimator's gradient as is).

    The estimator defaults to :func:`minibatch_estimator` with ``loss_fn``. With
    ``local_steps`` every client takes exactly that many steps (``epochs`` is then ignored),
    cycling through fresh epochs; ``local_epochs`` must then be at least
    :func:`epochs_for_steps` of the smallest client. ``unroll`` steps run per loop iteration
    (all but the first masked: the loop condition stops the first), which cuts per-iteration
    overhead.
    """
    build_lr = lr
    if estimator is None:
        estimator = minibatch_estimator(
            apply_fn, local_epochs=local_epochs, batch_size=batch_size, loss_fn=loss_fn
        )

    def local_update(server_params, x, y, count, key, epochs=None, context=None, hp=None):
        rate = hparams.get(hp, "lr", build_lr)
        if local_steps is not None:
            total = jnp.asarray(local_steps, jnp.int32)
        else:
            total = estimator.steps(count, local_epochs if epochs is None else epochs)
        aux = estimator.prepare(x, count, key)
        extra = {"anchor": server_params, "context": context} if estimator.contextual else {}

        def step(carry, masked):
            params, s, loss_sum, overflow = carry
            loss, grads, over, *state = estimator.grad(params, x, y, count, key, aux, s, rate,
                                                       hp, **extra)
            if grad_adjust is not None:
                grads = grad_adjust(grads, params, server_params, context, hp)
            stepped = jax.tree.map(lambda p, g: p - rate * g, params, grads)
            if state:  # entries the step sets (BatchNorm's running statistics)
                stepped = with_entries(stepped, state[0])
            if not masked:  # the loop's condition already stopped here (vmap: JAX selects)
                return stepped, s + 1, loss_sum + loss, overflow + over
            active = s < total
            params = jax.tree.map(lambda p, n: jnp.where(active, n, p), params, stepped)
            return (params, s + active, loss_sum + jnp.where(active, loss, 0.0),
                    overflow + jnp.where(active, over, 0))

        def body(carry):
            # `unroll` steps per loop iteration: every one but the first may run past the
            # client's last step, so those are masked; the first never is (the loop condition).
            for i in range(unroll):
                carry = step(carry, masked=i > 0)
            return carry

        zero = jnp.zeros((), jnp.int32)
        carry = (server_params, zero, jnp.zeros((), jnp.float32), zero)
        params, taken, loss_sum, overflow = jax.lax.while_loop(
            lambda c: c[1] < total, body, carry
        )
        delta = jax.tree.map(jnp.subtract, params, server_params)
        return delta, ClientStats(taken, loss_sum / jnp.maximum(taken, 1), overflow)

    return local_update


def client_mesh(devices: int):
    """A one-axis mesh ``clients`` over ``devices`` devices, every process's in a multi-host
    job (:func:`fedbench.distributed.clients_mesh`); None for one."""
    from fedbench.distributed import clients_mesh

    return clients_mesh(devices)


def replicated(mesh):
    """Every device of ``mesh`` holds the whole array (the server state, the data)."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _padded(args: tuple, in_axes: tuple, multiple: int, shape: Callable) -> tuple[list, int]:
    """The per-client arguments padded to a multiple of ``multiple`` clients with copies of the
    last client (whose outputs the caller drops: zero weight), each then passed through
    ``shape``; shared arguments unchanged. Returns ``(args, cohort size before padding)``."""
    per_client = [a for a, ax in zip(args, in_axes) if ax == 0]
    size = jax.tree.leaves(per_client)[0].shape[0]
    pad = -size % multiple

    def one(a):
        return shape(jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a)

    return [a if ax is None else jax.tree.map(one, a) for a, ax in zip(args, in_axes)], size


def _sharded(mapped: Callable, in_axes: tuple, mesh) -> Callable:
    """``mapped`` (a vmap over the cohort) with the cohort sharded over ``mesh``'s devices:
    padded to a multiple of the device count (:func:`_padded`) and constrained to
    ``P("clients")``, so XLA's SPMD partitioner splits the batched program and turns the
    cohort sums that follow into cross-device reductions."""
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("clients"))

    def run(*args):
        args, size = _padded(args, in_axes, mesh.devices.size,
                             lambda a: jax.lax.with_sharding_constraint(a, spec))
        return jax.tree.map(lambda out: out[:size], mapped(*args))

    return run


def _chunked(fn: Callable, in_axes: tuple, chunk: int) -> Callable:
    """``lax.map`` over groups of ``chunk`` clients, ``vmap`` within a group: each local step
    of a group is one larger batched product (small clients), memory bounded by the group;
    the cohort padded to a multiple of ``chunk`` (:func:`_padded`)."""
    batched = jax.vmap(fn, in_axes=in_axes)

    def run(*args):
        grouped, size = _padded(args, in_axes, chunk,
                                lambda a: a.reshape((-1, chunk) + a.shape[1:]))

        def one(xs):
            return batched(*[a if ax is None else x for a, x, ax in zip(args, xs, in_axes)])

        out = jax.lax.map(one, [None if ax is None else g
                                for g, ax in zip(grouped, in_axes)])
        return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:size], out)

    return run


def map_over_clients(fn: Callable, client_axis: str, in_axes: tuple, mesh=None,
                     chunk: int | None = None) -> Callable:
    """Maps ``fn`` over the leading client axis with ``jax.vmap`` or sequential ``lax.map``.

    ``in_axes`` marks per-client arguments with 0 and shared ones with ``None``. ``mesh``
    (:func:`client_mesh`, ``vmap`` only): the cohort sharded over its devices. ``chunk``
    (``map`` only): ``vmap`` over groups of that many clients inside the ``lax.map``.
    """
    if client_axis == "vmap":
        mapped = jax.vmap(fn, in_axes=in_axes)
        return mapped if mesh is None else _sharded(mapped, in_axes, mesh)
    if chunk is not None and chunk > 1:
        return _chunked(fn, in_axes, chunk)

    def mapped(*args):
        shared = [a if ax is None else None for a, ax in zip(args, in_axes)]
        per_client = [a if ax == 0 else None for a, ax in zip(args, in_axes)]

        def one(xs):
            full = [s if ax is None else x for s, x, ax in zip(shared, xs, in_axes)]
            return fn(*full)

        return jax.lax.map(one, per_client)

    return mapped
