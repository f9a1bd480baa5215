"""What an algorithm is: a few pure functions over a leading client axis, and its settings.

In the spirit of FedJAX's ``FederatedAlgorithm`` and optax's ``GradientTransformation``, an
algorithm is data (an :class:`Algorithm`) holding pure functions over a leading cohort axis
(except ``grad_adjust``, which runs inside one client's local loop):

* ``grad_adjust(grads, params, anchor, context, hp)``: what a client adds to its local objective's
  gradient (FedProx's ``mu (w - w_server)``, SCAFFOLD's ``c - c_i``, FedDyn's terms);
* ``client_state(params)``: one client's entry of the per-client store (a pytree of zeros), or
  ``None``; the simulator keeps ``[num_clients, ...]`` of them across rounds;
* ``server_state(params)``: the algorithm's own server-side state (SCAFFOLD's ``c``), or ``None``;
* ``client_context(server_state, entries)``: what the sampled clients receive besides the
  model (``entries``: their store entries, leading cohort axis);
* ``client_finish(deltas, stats, entries, server_state, valid, hp) -> (uploads,
  new_entries)``: what each client of the cohort sends (``uploads["delta"]`` always; SCAFFOLD adds ``"control"``) and its new store entry;
* ``aggregate(uploads, weights, stats, valid, num_clients) -> aggregates``: how the server
  combines the cohort's uploads (example-weighted mean; FedNova's normalised mean);
* ``server_update(params, opt_state, server_state, aggregates, optimizer, hp)``: the new server
  model (an optax server optimiser on the negated mean delta by default).

Personalised algorithms (:mod:`fedbench.algorithm.personalised`) add optional pieces:

* ``client_start(params, context)``: where a client's local training starts (default: the
  server model; FedPer: the global body with the client's own head);
* ``shared(delta)``: the part of a client's delta that leaves the site, before the update
  transforms (default: all of it; FedPer: the body, the head zeroed);
* ``personal_pass``: a second local pass at each sampled client whose model never leaves the
  site (Ditto's ``v_k``; :class:`PersonalPass`);
* ``client_models(params, store) -> [num_clients, ...] params``: the model each client is
  evaluated with (default ``None``: the global model for everyone);
* ``finetune_steps``: evaluate each client with the global model after that many local SGD
  steps on its own training data (at ``finetune_lr``, default the client learning rate;
  Per-FedAvg: one step at its ``alpha``);
* ``estimator(apply_fn, local_epochs=, batch_size=, loss_fn=) -> GradientEstimator``: the
  gradient of one local step (default: the task loss of a minibatch; pFedMe: its Moreau
  envelope's, :mod:`fedbench.algorithm.pfedme`; a ``contextual`` one also sees the received
  model and the client's context: MOON's contrastive loss, :mod:`fedbench.algorithm.moon`);
* ``client_prepare(params, entry, loss) -> entry``: a per-client step before training, with
  ``loss(p)`` the client's mean training loss of a model ``p`` (IFCA's choice of cluster); it
  also runs for every client before evaluation, so each is scored as if it took part now;
* ``init_models(init, key) -> params``: the server's models from the model's ``init(key)``
  (IFCA's and CFL's ``[K, ...]`` cluster models; default ``init(key)``);
* ``client_clusters(params, server_state, store) -> [num_clients] int``: each client's cluster,
  reported in ``metrics.jsonl`` (``clusters``, and ``cluster_ari`` against known groups).

``releases`` names everything a client sends; under client-level DP every released quantity
must pass through the clip-and-noise mechanism, so only algorithms releasing ``("delta",)``
with an aggregation DP can replace are allowed (:func:`check_client_dp`). Under
``privacy=dp_sample`` an algorithm whose released model depends on computations DP-SGD does not
cover (a custom gradient, a plain-SGD pass that feeds the released model, a data-dependent
choice) says why (``dp_sample``) and is refused (:func:`check_sample_dp`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbench.hparams import get as hparams_get
from fedbench.errors import ConfigError
from fedbench.local import epochs_for_steps, make_local_update, map_over_clients
from fedbench.task import batch_loss_fn

Params = Any


def scores_own_models(algorithm) -> bool:
    """Whether evaluation scores each client with a model of its own rather than the global
    one: personal parameters (``local``), an algorithm's ``client_models`` (Ditto's, APFL's,
    pFedMe's personal models, FedPer's and FedRep's heads, IFCA's and CFL's cluster models) or
    ``finetune_steps`` of local training. Read by evaluation and by the privacy plan (those
    models are neither released nor DP)."""
    return bool(algorithm.personal or algorithm.client_models is not None
                or algorithm.finetune_steps > 0)


def weighted_mean(tree: Params, weights: jax.Array) -> Params:
    """``sum_i w_i * tree_i / sum_i w_i`` over the leading axis (zero if every weight is 0)."""
    total = jnp.sum(weights)
    w = weights.astype(jnp.float32) / jnp.where(total > 0, total, 1)
    return jax.tree.map(lambda d: jnp.tensordot(w, d, axes=1), tree)


def mean_aggregate(uploads, weights, stats, valid, num_clients):
    """FedAvg's aggregation: the example-weighted mean of the deltas (McMahan et al. 2017)."""
    del stats, valid, num_clients
    return {"delta": weighted_mean(uploads["delta"], weights)}


def optimizer_update(params, opt_state, server_state, aggregates, optimizer, hp=None):
    """The server optimiser on the pseudo-gradient ``-mean delta`` (Reddi et al. 2021, Alg. 1);
    ``hp``, the run's hyper-parameters, reaches every transform that takes it (:func:`server_step`
    reads ``server_lr``)."""
    pseudo_grad = jax.tree.map(jnp.negative, aggregates["delta"])
    updates, opt_state = optax.with_extra_args_support(optimizer).update(
        pseudo_grad, opt_state, params, hparams=hp)
    return optax.apply_updates(params, updates), opt_state, server_state


def send_delta(deltas, stats, entries, server_state, valid, hp):
    """Each client sends its model delta and keeps its store entry as it was."""
    del stats, server_state, valid, hp
    return {"delta": deltas}, entries


class Messages(NamedTuple):
    """What one client exchanges with the server in a round, declared by its algorithm.

    ``down`` and ``up`` map a message's name to the parameter shapes it carries (a pytree of
    ``jax.ShapeDtypeStruct``; parts that never leave a site are absent). The first ``down``
    message is the server model(s), the one a downlink compressor encodes; ``up["delta"]`` is
    the model delta, the one an uplink compressor encodes; every other message travels dense.
    Traffic (``bytes_up``, ``bytes_down``, the link clock) counts exactly these.
    """

    down: Mapping[str, Any]
    up: Mapping[str, Any]


def default_messages(algorithm: "Algorithm", sent: Any) -> Messages:
    """Each client downloads the model and uploads its delta, plus one model-sized tensor each
    way per other release (SCAFFOLD's control variates ``c`` down and ``dc_i`` up). ``sent``:
    the model's shapes less the parts that stay at the site."""
    extra = {name: sent for name in algorithm.releases if name != "delta"}
    return Messages(down={"model": sent, **extra}, up={"delta": sent, **extra})


class PersonalPass(NamedTuple):
    """A second local pass at each sampled client whose model never leaves the site.

    ``start(params, context, delta) -> params``: where it starts (the client's personal model;
    ``params`` is the server model the client received, ``delta`` its main pass's delta, None
    for a pass that runs ``first``); ``grad_adjust(grads, params, start, params_server)``: its
    objective's extra gradient (None: none); ``keep(entries, deltas, starts) -> entries``: the
    cohort's new store entries from the pass's deltas (``trained - start``) and starts.

    By default it runs after the main pass with the main pass's local schedule and learning
    rate and its own minibatch order. ``steps``: exactly that many steps instead; ``lr``: its
    own learning rate; ``first``: it runs before the main pass, whose context is rebuilt from
    the new entries (FedRep's head); ``estimator``: its own gradient estimator (a builder as
    ``Algorithm.estimator``); ``same_order``: the main pass's minibatches (APFL's ``xi_t``).
    """

    start: Callable[[Params, Any, Any], Params]
    grad_adjust: Callable[[Params, Params, Params, Params], Params] | None
    keep: Callable[[Any, Params, Params], Any]
    steps: int | None = None
    lr: float | None = None
    first: bool = False
    estimator: Callable | None = None
    same_order: bool = False


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """An algorithm: its settings and the pure functions the round is built from.

    Attributes:
      name: the config name (``conf/algorithm/<name>.yaml``).
      kind: ``federated`` (the synchronous round), ``async`` (FedBuff's round), ``centralized``
        (pooled data, one learner) or ``local`` (no communication; a model per client).
      server_optimizer: optax transformation on the pseudo-gradient.
      settings: the algorithm's hyper-parameters as configured (reports, reference loops).
      full_batch: one full-batch gradient step per client per round (FedSGD).
      buffer_size, concurrency: FedBuff's K and number of clients in flight.
      site_speed: sigma of each site's lognormal seconds per local step (simulated clock).
      personal: ``params`` carry a leading ``[num_clients]`` axis, one model per client, and
        evaluation scores each client with its own.
      releases: what each client sends the server.
      dp_client: why client-level DP cannot privatise this algorithm's releases (None: it can).
      client_start, shared, personal_pass, client_models, finetune_steps, finetune_lr:
        personalisation
        (see the module docstring; :mod:`fedbench.algorithm.personalised`).
      estimator, client_prepare, init_models, client_clusters: a custom local gradient, a
        per-client choice before training, several server models, reported clusters.
      dp_sample: why sample-level DP (DP-SGD) cannot cover this algorithm (None: it can).
      dp_aggregate: how an algorithm with its own ``aggregate`` aggregates under a client-level
        mechanism: a function of the mechanism's ``{"delta": noisy mean of the clipped deltas}``
        (post-processing only). ``None`` with an own ``aggregate``: refused under
        ``privacy=dp_client`` (the mechanism would silently replace it).
      messages: ``messages(algorithm, sent_shapes) -> Messages``: what a client downloads and
        uploads per round (:class:`Messages`; default :func:`default_messages`; IFCA: its K
        models down).
      hyperparameters: the ``algorithm.<key>`` scalars an in-program sweep may vary
        (``sweep.<key>``), each read from the run's ``hparams`` where the algorithm uses it.
    """

    name: str
    kind: str
    server_optimizer: optax.GradientTransformation
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    full_batch: bool = False
    buffer_size: int = 0
    concurrency: int = 0
    site_speed: float = 0.0
    personal: bool = False
    grad_adjust: Callable | None = None
    client_state: Callable[[Params], Any] | None = None
    server_state: Callable[[Params], Any] | None = None
    client_context: Callable[[Any, Any], Any] | None = None
    client_finish: Callable = send_delta
    aggregate: Callable = mean_aggregate
    server_update: Callable = optimizer_update
    releases: tuple[str, ...] = ("delta",)
    dp_client: str | None = None
    client_start: Callable[[Params, Any], Params] | None = None
    shared: Callable[[Params], Params] | None = None
    personal_pass: PersonalPass | None = None
    client_models: Callable[[Params, Any], Params] | None = None
    finetune_steps: int = 0
    finetune_lr: float | None = None
    estimator: Callable | None = None
    dp_sample: str | None = None
    client_prepare: Callable[[Params, Any, Callable], Any] | None = None
    init_models: Callable[[Callable, Any], Params] | None = None
    client_clusters: Callable[[Params, Any, Any], Any] | None = None
    dp_aggregate: Callable[[dict], dict] | None = None
    hyperparameters: tuple[str, ...] = ()
    messages: Callable[["Algorithm", Any], Messages] = default_messages


def server_step(server_lr: float) -> optax.GradientTransformationExtraArgs:
    """The server optimiser's last step: ``-server_lr`` times the direction, the rate read from
    the run's hyper-parameters passed to ``update`` (``hparams=``, their ``server_lr``; a
    replica's own in an in-program sweep) with the constant as default. Equals
    ``optax.scale(-server_lr)`` bit for bit (a sign flip is exact)."""

    def update(updates, state, params=None, *, hparams=None, **extra_args):
        del params, extra_args
        rate = hparams_get(hparams, "server_lr", server_lr)
        return jax.tree.map(lambda u: u * -rate, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def check_client_dp(algorithm: Algorithm, mechanism: str = "dp_client") -> None:
    """Every message a client sends must be privatised under a client-level mechanism that
    clips each update (``privacy=dp_client``; ``mechanism``: the one asking, named in the
    refusal).

    Raises:
      ConfigError: naming ``algorithm.name`` and why the combination is refused.
    """
    if algorithm.kind != "federated":
        return  # only synchronous rounds take DP-FedAvg; build_privacy reports the others
    if algorithm.dp_client is None and algorithm.releases == ("delta",) and (
            algorithm.aggregate is not mean_aggregate and algorithm.dp_aggregate is None):
        raise ConfigError(
            "algorithm.name", algorithm.name,
            f"an algorithm that aggregates with the example-weighted mean or declares how it "
            f"aggregates under a mechanism (dp_aggregate) with privacy={mechanism} ("
            f"{algorithm.name} has its own aggregate, which the mechanism's noisy mean would "
            f"replace)",
        )
    if algorithm.dp_client is not None or algorithm.releases != ("delta",):
        raise ConfigError(
            "algorithm.name", algorithm.name,
            f"an algorithm whose clients release only their model delta with privacy={mechanism} "
            f"({algorithm.name} releases {', '.join(algorithm.releases)}: "
            f"{algorithm.dp_client or 'not covered by the accounted mechanism'})",
        )


def check_sample_dp(algorithm: Algorithm) -> None:
    """Under ``privacy=dp_sample`` everything that shapes the released model must be DP-SGD.

    Raises:
      ConfigError: naming ``algorithm.name`` and why the combination is refused.
    """
    if algorithm.kind == "federated" and algorithm.dp_sample is not None:
        raise ConfigError(
            "algorithm.name", algorithm.name,
            f"an algorithm whose released model only DP-SGD's gradients shape with "
            f"privacy=dp_sample ({algorithm.name}: {algorithm.dp_sample})",
        )


def check_batch_norm(algorithm: "Algorithm", estimator, private) -> None:
    """``model.norm=batch`` trains only in the default local loop, whose steps run the model in
    training mode (:func:`fedbench.local.batchnorm_estimator`); anything that trains with the
    model in evaluation mode is refused.

    Raises:
      ConfigError: naming ``model.norm`` and the piece that cannot take BatchNorm.
    """
    name = algorithm.name
    why = None
    if private is not None:
        why = ("privacy=dp_sample: BatchNorm's batch statistics mix the records of a batch, so a "
               "record's clipped gradient is not its own")
    elif estimator is not None:
        why = f"algorithm={name}: its own local gradient runs the model in evaluation mode"
    elif algorithm.personal_pass is not None:
        why = f"algorithm={name}: its personal pass trains in evaluation mode"
    elif algorithm.finetune_steps:
        why = f"algorithm={name}: its fine-tuning before evaluation trains in evaluation mode"
    if why is not None:
        raise ConfigError("model.norm", "batch", f"group or layer with {why}")


def custom_estimator(sim, local_epochs: int, batch_size: int):
    """The algorithm's own gradient estimator for the simulator's main pass, or None."""
    build = sim.algorithm.estimator
    return None if build is None else build(
        sim.apply_fn, local_epochs=local_epochs, batch_size=batch_size,
        loss_fn=batch_loss_fn(sim.data.task))


def make_personal_update(sim, local_epochs: int, batch_size: int):
    """The local update of the algorithm's :class:`PersonalPass` (None without one):
    ``make_local_update`` with the pass's schedule, learning rate, objective and estimator."""
    personal, settings = sim.algorithm.personal_pass, sim.settings
    if personal is None:
        return None
    local_steps, loss_fn = settings.local_steps, batch_loss_fn(sim.data.task)
    if personal.steps is not None:
        local_steps = personal.steps
        smallest = int(np.min(np.asarray(sim.data.train_counts)))  # host-side, a shape constant
        local_epochs = epochs_for_steps(local_steps, smallest, batch_size)
    lr = settings.lr if personal.lr is None else personal.lr
    estimator = None if personal.estimator is None else personal.estimator(
        sim.apply_fn, local_epochs=local_epochs, batch_size=batch_size, loss_fn=loss_fn)
    return make_local_update(
        sim.apply_fn, lr=lr, local_epochs=local_epochs, batch_size=batch_size,
        unroll=settings.unroll, loss_fn=loss_fn, local_steps=local_steps,
        grad_adjust=personal.grad_adjust, estimator=estimator)


def personal_update(sim, params, x, y, counts, keys, epochs, context, entries, deltas=None,
                    hp=None):
    """The cohort's store entries after the algorithm's :class:`PersonalPass` (Ditto's ``v_k``):
    each client trains from ``start(params, context, delta)`` (``deltas``: the main pass's, None
    before it) on its own data with its own minibatch order (``fold_in(key, 0xD1770)``;
    ``same_order``: the main pass's); nothing of it is sent. Its step size is the pass's own
    ``lr`` if it has one (pFedMe's personal rate), else ``hp["lr"]``, the run's client rate."""
    personal = sim.algorithm.personal_pass
    if personal.lr is not None:
        hp = {**(hp or {}), "lr": personal.lr}

    def one(x, y, count, key, epochs, context, delta):
        start = personal.start(params, context, delta)
        key = key if personal.same_order else jax.random.fold_in(key, 0xD1770)
        delta, _ = sim.personal_local_update(start, x, y, count, key, epochs, params, hp)
        return delta, start

    axes = (0,) * 6 + (None if deltas is None else 0,)
    out, starts = map_over_clients(one, sim.client_axis, axes)(x, y, counts, keys, epochs,
                                                               context, deltas)
    return personal.keep(entries, out, starts)


def prepare_clients(prepare, apply_fn, params, x, y, counts, entries, loss_fn, axis):
    """``prepare`` (an algorithm's ``client_prepare``) of every client of a cohort (leading axis
    of ``x``, ``y``, ``counts`` and ``entries``), each with ``loss(p)``: its mean training loss
    of model ``p`` under ``apply_fn``; ``axis``: how the clients are mapped (``map``/``vmap``)."""

    def one(x, y, count, entry):
        valid = jnp.arange(x.shape[0]) < count
        return prepare(params, entry, lambda p: loss_fn(apply_fn(p, x), y, valid))

    return map_over_clients(one, axis, (0, 0, 0, 0))(x, y, counts, entries)


def positive(cfg: Mapping[str, Any], key: str) -> float:
    """``cfg[key]`` as a float > 0, or a ConfigError naming ``algorithm.<key>``."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"algorithm.{key}", value, "a number > 0")
    return float(value)


def unit(cfg: Mapping[str, Any], key: str) -> float:
    """``cfg[key]`` as a float in [0, 1), or a ConfigError naming ``algorithm.<key>``."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"algorithm.{key}", value, "in [0, 1)")
    return float(value)


def non_negative(cfg: Mapping[str, Any], key: str, what: str = "") -> float:
    """``cfg[key]`` as a float >= 0, or a ConfigError naming ``algorithm.<key>``."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"algorithm.{key}", value, f">= 0{what}")
    return float(value)
