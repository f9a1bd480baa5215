"""Personalised federated learning: Ditto, FedPer, FedRep, semi-federated models (semifed), and
FedAvg with local fine-tuning.

Each client ends up with a model of its own, and evaluation scores each client with it
(``client_models``; :class:`fedbench.evaluation.Evaluator`).

* **Ditto** (T. Li, S. Hu, A. Beirami, V. Smith, "Ditto: Fair and Robust Federated Learning
  Through Personalization", ICML 2021, Algorithm 1). The global model ``w`` trains exactly as
  FedAvg. Each sampled client ``k`` also runs ``s`` local SGD steps on its personal model
  ``v_k`` with objective ``L_k(v) + lambda/2 ||v - w^t||^2`` (``lambda = algorithm.lam``; ``w^t``
  the global model it received this round), gradient ``grad L_k(v) + lambda (v - w^t)``, with
  the same local schedule as the global pass and its own minibatch order. ``v_k`` never leaves
  the site (not in ``releases``). Initialisation as in the paper's Algorithm 1 (input
  ``{v_k^0}``, set to the initial model ``w^0`` in the authors' code): ``v_k^0 = w^0``. The store
  keeps ``v_k - w^0`` (zeros at first) and the server state keeps ``w^0``, so no client-side
  copy of the initial model is needed before its first round.
* **FedPer** (M. G. Arivazhagan, V. Aggarwal, A. K. Singh, S. Choudhary, "Federated Learning
  with Personalization Layers", arXiv:1912.00818, 2019). Parameters are labelled ``body`` or
  ``head`` (:func:`param_labels`, as ``optax.multi_transform``'s labels: the head is the model's
  last ``Dense`` layer). Each round a sampled client trains body and head starting from (global
  body, its own head), sends only its body delta (the head part of what it sends is zero, before
  any update transform), and keeps its new head; the server averages body deltas (example
  weighted, as FedAvg) and never changes the global head. Heads start as the initial model's
  head: the store keeps ``head_k - head^0`` (zeros at first) and the global head stays
  ``head^0``.
* **FedRep** (L. Collins, H. Hassani, A. Mokhtari, S. Shakkottai, "Exploiting Shared
  Representations for Personalized Federated Learning", ICML 2021, Algorithm 1). The last
  ``algorithm.head_layers`` Dense layers are each client's head ``h_k``, the rest the shared
  body ``phi``. A sampled client first takes ``algorithm.head_steps`` SGD steps on its head with
  the body fixed at the received ``phi^t`` (``h_k <- GRD(f_k(phi^t, h), h, tau_h)``, Alg. 1
  lines 6-8), then the round's local schedule on the body with its new head fixed (lines
  9-11), and sends its body delta; the server averages the body deltas (example-weighted, as
  FedAvg; the paper's line 13 is the uniform mean of the clients' bodies) and never changes the
  global head. Heads are stored as FedPer's (offsets from ``head^0``). ``head_layers=0``: no
  head, FedAvg exactly (tested).
* **semifed** (semi-federated models): FedPer's mechanism for any top-level modules named in
  ``algorithm.local`` (filled from ``model.local``, e.g. ``model=semi``'s per-site input
  ``encoder``): each site trains from the global model with its own local parts, sends its
  delta with the local parts zeroed, and keeps its new local parts (stored as offsets from the
  initial model); the server averages the rest (example weighted, as FedAvg). With no local
  parts it is FedAvg exactly (tested). Personalisation layers at the input rather than the
  output: cf. FedBN (X. Li et al., ICLR 2021: local batch-norm layers for feature shift) and
  LG-FedAvg (P. P. Liang et al., "Think Locally, Act Globally: Federated Learning with Local
  and Global Representations", arXiv:2001.01523, 2020: local representation layers, a global
  head).
* **finetune**: FedAvg training; at evaluation each client scores the global model after
  ``algorithm.steps`` local SGD steps on its own training data (the client learning rate and
  batch size; a fixed key per evaluated round).

Only the parts that leave a site count as traffic (``shared``; FedPer's and FedRep's heads and
semifed's local parts are neither uploaded nor, never changing at the server, downloaded).
Under ``privacy=dp_client`` Ditto and finetune release only FedAvg's delta and are allowed;
FedPer, FedRep and semifed with local parts are refused (the noisy mean would add noise to the
global head or local parts, which every client's own are stored relative to). FedRep is also
refused under ``privacy=dp_sample``: its head pass is plain SGD on the client's data, and the
released body is trained through that head. Under ``privacy=dp_sample`` Ditto's personal pass
uses plain minibatch SGD: ``v_k`` is never released, and only the global model's training is
accounted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, PersonalPass, mean_aggregate, positive
from fedbench.errors import ConfigError

Params = Any


# -- labels: which parameters are the head -------------------------------------------------------
def head_key(params: Mapping[str, Any]) -> str:
    """The top-level name of the model's last ``Dense`` layer (flax names them ``Dense_<i>`` in
    call order), or the last module if none is named so."""
    dense = [k for k in params if k.startswith("Dense_") and k[6:].isdigit()]
    return max(dense, key=lambda k: int(k[6:])) if dense else list(params)[-1]


def param_labels(params: Mapping[str, Any]) -> dict[str, Any]:
    """``"head"`` for every leaf of the last Dense layer, ``"body"`` elsewhere (the label tree
    ``optax.multi_transform`` takes)."""
    head = head_key(params)
    return {k: jax.tree.map(lambda _, k=k: "head" if k == head else "body", v)
            for k, v in params.items()}


def body_only(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` with its head zeroed: the part of a FedPer delta that leaves the site."""
    labels = param_labels(tree)
    return jax.tree.map(lambda label, x: jnp.zeros_like(x) if label == "head" else x,
                        labels, dict(tree))


# -- Ditto ---------------------------------------------------------------------------------------
def _copy(params):
    return jax.tree.map(jnp.asarray, params)


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _personal_models(w0, offsets):
    """``v_k = w^0 + (v_k - w^0)`` for a leading client axis of offsets."""
    return jax.tree.map(lambda w, o: w + o.astype(w.dtype), w0, offsets)


def _models_with(start):
    """``client_models``: the global model on a leading client axis, each client's kept parts
    put in by ``start(stacked, entries)`` (FedPer's / FedRep's head, semifed's local parts)."""

    def client_models(params, server_state, entries):
        del server_state
        num = jax.tree.leaves(entries)[0].shape[0]
        stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (num,) + p.shape), params)
        return start(stacked, entries)

    return client_models


def _ditto_adjust_for(lam: float):
    def grad_adjust(grads, v, start, w_server, hp=None):
        del start
        return jax.tree.map(lambda g, p, w: g + lam * (p - w), grads, v, w_server)

    return grad_adjust


def _ditto_keep(entries, deltas, starts):
    del starts
    return jax.tree.map(lambda o, d: o + d.astype(o.dtype), entries, deltas)


def _ditto_client_models(params, w0, entries):
    del params
    return _personal_models(w0, entries)


def ditto(cfg: Mapping[str, Any]) -> Algorithm:
    lam = positive(cfg, "lam")
    return Algorithm(
        "ditto", "federated", optax.sgd(1.0), settings={"lam": lam},
        client_state=_zeros, server_state=_copy, client_context=_personal_models,
        personal_pass=PersonalPass(start=lambda params, v, delta: v,
                                   grad_adjust=_ditto_adjust_for(lam), keep=_ditto_keep),
        client_models=_ditto_client_models,
    )


# -- parts kept at each site: FedPer's head, a semi-federated model's local modules ------------
def _local_parts(keys_of):
    """FedPer's mechanism for any top-level modules ``keys_of(params)`` kept at each site (a list
    of module names: whole modules; or ``{module: leaf names}``: only those leaves of each, as
    SiloBN's running statistics).

    A client's store entry holds ``{name: part_k - part^0}`` for each local part (zeros at
    first); it trains from the global model with its own parts (``start``), sends the delta with
    its local parts zeroed (``shared``), keeps its new parts; the server averages the deltas and
    never changes a local part (``aggregate`` zeroes them again)."""

    def selection(params) -> dict[str, tuple[str, ...] | None]:
        chosen = keys_of(params)
        return dict(chosen) if isinstance(chosen, Mapping) else {k: None for k in chosen}

    def part(module, leaves):  # a module's local leaves (all of them: None)
        return module if leaves is None else {n: module[n] for n in leaves}

    def zeros(params):
        return {k: jax.tree.map(jnp.zeros_like, part(params[k], leaves))
                for k, leaves in selection(params).items()}

    def start(params, offsets):  # global model, own parts (``offsets`` may carry a client axis)
        return {**params, **{k: {**params[k], **jax.tree.map(
            lambda p, o: p + o.astype(p.dtype), part(params[k], tuple(o)), o)}
            for k, o in offsets.items()}}

    def shared(tree):  # what leaves the site: the local parts zeroed
        chosen = selection(tree)
        return {k: ({**v, **jax.tree.map(jnp.zeros_like, part(v, chosen[k]))}
                    if k in chosen else v) for k, v in tree.items()}

    def finish(deltas, stats, entries, server_state, valid, hp):
        del stats, server_state, valid, hp
        new = {k: jax.tree.map(lambda o, d: o + d.astype(o.dtype), e, part(deltas[k], tuple(e)))
               for k, e in entries.items()}
        return {"delta": shared(deltas)}, new

    def aggregate(uploads, weights, stats, valid, num_clients):
        mean = mean_aggregate(uploads, weights, stats, valid, num_clients)
        return {**mean, "delta": shared(mean["delta"])}  # local parts never reach the server

    client_models = _models_with(start)

    return {"client_state": zeros, "client_context": lambda server, entries: entries,
            "client_start": start, "shared": shared, "client_finish": finish,
            "aggregate": aggregate, "client_models": client_models,
            # Under a client-level mechanism: its noisy mean, local parts zeroed again.
            "dp_aggregate": lambda private: {**private, "delta": shared(private["delta"])}}


_HEAD_DP = ("its clients' {} stored relative to the global {}, which the noisy mean would "
            "perturb; clipping and noise of the federated part alone are not implemented")


# -- FedPer --------------------------------------------------------------------------------------
def fedper(cfg: Mapping[str, Any]) -> Algorithm:
    del cfg
    return Algorithm(
        "fedper", "federated", optax.sgd(1.0), settings={},
        **_local_parts(lambda params: [head_key(params)]),
        dp_client=_HEAD_DP.format("heads are", "head"),
    )


# -- semi-federated models: model.local kept at each site ----------------------------------------
def local_names(params: Mapping[str, Any], names) -> list[str]:
    """``names`` after checking each is a top-level module of ``params``.

    Raises:
      ConfigError: naming ``model.local`` and the model's modules.
    """
    missing = [n for n in names if n not in params]
    if missing:
        raise ConfigError("model.local", list(names),
                          "names of the model's top-level modules: " + ", ".join(params))
    return list(names)


def semifed(cfg: Mapping[str, Any]) -> Algorithm:
    """FedAvg of everything but the model's local parts (``algorithm.local``, filled from
    ``model.local``), which each site keeps as FedPer keeps its head: a per-site input encoder
    into a federated embedding (the lab-panel scenario, :mod:`fedbench.partition.panels`)."""
    names = cfg.get("local")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names) \
            or len(set(names)) != len(names):
        raise ConfigError("algorithm.local", names,
                          "a list of distinct module names kept at each site (model.local)")
    names = list(names)
    parts = _local_parts(lambda params: local_names(params, names))
    if not names:
        parts["client_models"] = None  # nothing local: everyone uses the global model
    return Algorithm(
        "semifed", "federated", optax.sgd(1.0), settings={"local": names}, **parts,
        dp_client=_HEAD_DP.format("local parts are", "model's") if names else None,
    )


# -- FedRep --------------------------------------------------------------------------------------
def head_keys(params: Mapping[str, Any], layers: int) -> list[str]:
    """The top-level names of the model's last ``layers`` Dense layers (all modules in order
    if none is named ``Dense_<i>``)."""
    dense = sorted((k for k in params if k.startswith("Dense_") and k[6:].isdigit()),
                   key=lambda k: int(k[6:])) or list(params)
    if layers > len(dense):
        raise ConfigError("algorithm.head_layers", layers,
                          f"at most {len(dense)} (the model's Dense layers: {', '.join(dense)})")
    return dense[len(dense) - layers:]


def _fedrep_for(layers: int, head_steps: int) -> dict[str, Any]:
    """FedRep's pieces for a head of the last ``layers`` Dense layers."""

    def heads(params):  # the head offsets: one client's store entry
        return {k: jax.tree.map(jnp.zeros_like, params[k]) for k in head_keys(params, layers)}

    def with_heads(params, offsets, delta=None):  # global body, own head (client axis ok)
        del delta
        return {**params, **{k: jax.tree.map(lambda h, o: h + o.astype(h.dtype), params[k], o)
                             for k, o in offsets.items()}}

    def only(part):  # grads of one part: the other part's zeroed (held fixed)
        def grad_adjust(grads, params, anchor, context, hp=None):
            del params, anchor, context, hp
            head = set(head_keys(grads, layers))
            return {k: g if (k in head) == (part == "head") else jax.tree.map(jnp.zeros_like, g)
                    for k, g in grads.items()}

        return grad_adjust

    def keep(entries, deltas, starts):
        del starts
        return {k: jax.tree.map(lambda o, d: o + d.astype(o.dtype), e, deltas[k])
                for k, e in entries.items()}

    def shared(tree):  # the head's delta is zero (its grads are); it is not sent either
        head = set(head_keys(tree, layers))
        return {k: jax.tree.map(jnp.zeros_like, v) if k in head else v for k, v in tree.items()}

    client_models = _models_with(with_heads)

    return {"client_state": heads, "client_context": lambda server, entries: entries,
            "client_start": with_heads, "grad_adjust": only("body"), "shared": shared,
            "personal_pass": PersonalPass(start=with_heads, grad_adjust=only("head"), keep=keep,
                                          steps=head_steps, first=True),
            "client_models": client_models if layers else None}  # no head: the global model


def fedrep(cfg: Mapping[str, Any]) -> Algorithm:
    layers, steps = cfg.get("head_layers"), cfg.get("head_steps")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ConfigError("algorithm.head_layers", layers,
                          "an integer >= 0 (last Dense layers kept at each site)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("algorithm.head_steps", steps, "an integer >= 1 (head SGD steps)")
    return Algorithm(
        "fedrep", "federated", optax.sgd(1.0),
        settings={"head_layers": layers, "head_steps": steps}, **_fedrep_for(layers, steps),
        dp_client="its clients' heads are stored relative to the global head, which the noisy "
                  "mean would perturb; clipping and noise of the body alone are not implemented",
        dp_sample="its head pass is plain SGD on the client's data, and the released body is "
                  "trained through that head",
    )


# -- FedAvg + local fine-tuning at evaluation ----------------------------------------------------
def finetune(cfg: Mapping[str, Any]) -> Algorithm:
    steps = cfg.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("algorithm.steps", steps, "an integer >= 1 (local steps at evaluation)")
    return Algorithm("finetune", "federated", optax.sgd(1.0), settings={"steps": steps},
                     finetune_steps=steps)
