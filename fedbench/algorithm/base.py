"""What an algorithm is: a few pure functions over a leading client axis, and its settings.

In the spirit of FedJAX's ``FederatedAlgorithm`` and optax's ``GradientTransformation``, an
algorithm is data (an :class:`Algorithm`) holding pure functions over a leading cohort axis
(except ``grad_adjust``, which runs inside one client's local loop):

* ``grad_adjust(grads, params, anchor, context)``: what a client adds to its local objective's
  gradient (FedProx's ``mu (w - w_server)``, SCAFFOLD's ``c - c_i``, FedDyn's terms);
* ``client_state(params)``: one client's entry of the per-client store (a pytree of zeros), or
  ``None``; the simulator keeps ``[num_clients, ...]`` of them across rounds;
* ``server_state(params)``: the algorithm's own server-side state (SCAFFOLD's ``c``), or ``None``;
* ``client_context(server_state, entries)``: what the sampled clients receive besides the
  model (``entries``: their store entries, leading cohort axis);
* ``client_finish(deltas, stats, entries, server_state, valid, lr) -> (uploads,
  new_entries)``: what each client of the cohort sends (``uploads["delta"]`` always; SCAFFOLD adds ``"control"``) and its new store entry;
* ``aggregate(uploads, weights, stats, valid, num_clients) -> aggregates``: how the server
  combines the cohort's uploads (example-weighted mean; FedNova's normalised mean);
* ``server_update(params, opt_state, server_state, aggregates, optimizer)``: the new server
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
  steps on its own training data.

``releases`` names everything a client sends; under client-level DP every released quantity
must pass through the clip-and-noise mechanism, so only algorithms releasing ``("delta",)``
with an aggregation DP can replace are allowed (:func:`check_client_dp`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedbench.errors import ConfigError

Params = Any


def weighted_mean(tree: Params, weights: jax.Array) -> Params:
    """``sum_i w_i * tree_i / sum_i w_i`` over the leading axis (zero if every weight is 0)."""
    total = jnp.sum(weights)
    w = weights.astype(jnp.float32) / jnp.where(total > 0, total, 1)
    return jax.tree.map(lambda d: jnp.tensordot(w, d, axes=1), tree)


def mean_aggregate(uploads, weights, stats, valid, num_clients):
    """FedAvg's aggregation: the example-weighted mean of the deltas (McMahan et al. 2017)."""
    del stats, valid, num_clients
    return {"delta": weighted_mean(uploads["delta"], weights)}


def optimizer_update(params, opt_state, server_state, aggregates, optimizer):
    """The server optimiser on the pseudo-gradient ``-mean delta`` (Reddi et al. 2021, Alg. 1)."""
    pseudo_grad = jax.tree.map(jnp.negative, aggregates["delta"])
    updates, opt_state = optimizer.update(pseudo_grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, server_state


def send_delta(deltas, stats, entries, server_state, valid, lr):
    """Each client sends its model delta and keeps its store entry as it was."""
    del stats, server_state, valid, lr
    return {"delta": deltas}, entries


class PersonalPass(NamedTuple):
    """A second local pass at each sampled client whose model never leaves the site.

    ``start(params, context) -> params``: where it starts (the client's personal model);
    ``grad_adjust(grads, params, start, params_server)``: its objective's extra gradient (the
    last argument is the server model the client received); ``keep(entries, deltas) ->
    entries``: the cohort's new store entries from the pass's deltas (``trained - start``).
    It runs the same local schedule as the global pass, with its own minibatch order.
    """

    start: Callable[[Params, Any], Params]
    grad_adjust: Callable[[Params, Params, Params, Params], Params]
    keep: Callable[[Any, Params], Any]


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
      client_start, shared, personal_pass, client_models, finetune_steps: personalisation
        (see the module docstring; :mod:`fedbench.algorithm.personalised`).
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

    # Read-only descriptions kept for reports and the reference loop (nothing in the round
    # tests them).
    @property
    def prox_mu(self) -> float:
        return float(self.settings.get("mu", 0.0)) if self.name == "fedprox" else 0.0

    @property
    def scaffold(self) -> bool:
        return self.name == "scaffold"

    @property
    def normalized(self) -> bool:
        return self.name == "fednova"


def check_client_dp(algorithm: Algorithm) -> None:
    """Every message a client sends must be privatised under ``privacy=dp_client``.

    Raises:
      ConfigError: naming ``algorithm.name`` and why the combination is refused.
    """
    if algorithm.kind != "federated":
        return  # only synchronous rounds take DP-FedAvg; build_privacy reports the others
    if algorithm.dp_client is not None or algorithm.releases != ("delta",):
        raise ConfigError(
            "algorithm.name", algorithm.name,
            f"an algorithm whose clients release only their model delta with privacy=dp_client "
            f"({algorithm.name} releases {', '.join(algorithm.releases)}: "
            f"{algorithm.dp_client or 'not covered by the accounted mechanism'})",
        )


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
