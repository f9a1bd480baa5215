"""Clustered federated learning: IFCA and CFL. The server keeps ``K`` models (``params`` with a
leading ``[K]`` axis); each client trains and is evaluated with the model of its cluster.

* **IFCA** (A. Ghosh, J. Chung, D. Yin, K. Ramchandran, "An Efficient Framework for Clustered
  Federated Learning", NeurIPS 2020, Algorithm 2 with model averaging). The ``K =
  algorithm.clusters`` models start from independent initialisations (model 0 from the run's
  initialisation key, model ``k`` from ``fold_in(key, k)``). A sampled client estimates its
  cluster ``j = argmin_k F_i(theta_k)``, its mean training loss under each model (the ``K``
  models vmapped; ``Algorithm.client_prepare``), trains ``theta_j`` with the round's local
  schedule and sends its delta and ``j``; the server replaces each ``theta_k`` by the
  example-weighted mean of its members' models (``theta_k + mean delta``; no member: unchanged).
  ``K = 1`` is FedAvg (tested). At evaluation every client re-estimates its cluster on its
  training data and is scored with that model.
* **CFL** (F. Sattler, K.-R. Müller, W. Samek, "Clustered Federated Learning: Model-Agnostic
  Distributed Multitask Optimization Under Privacy Constraints", IEEE TNNLS 32(8), 2021,
  Algorithm 3). All clients start in one cluster; a cluster's members train its model and the
  server averages their deltas (example-weighted). After ``algorithm.warmup`` rounds, a cluster
  ``c`` whose round members ``P_c`` (at least ``algorithm.min_size``) satisfy
  ``||mean_{i in P_c} dtheta_i|| < eps1`` and ``max_{i in P_c} ||dtheta_i|| > eps2`` (Eq. 31-32;
  the unweighted mean, as the authors' code) is split in two by the bi-partition minimising the
  largest cosine similarity across it, ``argmin_{c1, c2} max_{i in c1, j in c2} alpha_ij``
  (Eq. 30), i.e. complete-linkage agglomerative clustering of the members down to two clusters
  (as the authors' ``AgglomerativeClustering(linkage="complete")``). Both halves start from the
  parent's model, each updated with its own members' mean delta this round; the half holding
  the member with the largest update keeps the parent's id, the other gets the next free id,
  up to ``algorithm.max_clusters``. The
  paper has every client take part in every round; with ``clients_per_round < num_clients``
  only the round's members are partitioned and the others stay with the parent's id.

The store keeps each client's cluster id (reported in ``metrics.jsonl`` as ``clusters``, and
``cluster_ari`` against known groups). ``privacy=dp_client`` is refused for both (the server
uses each client's raw delta or its cluster choice outside the clip-and-noise mechanism), and
``dp_sample`` for IFCA (its cluster choice evaluates the training loss without DP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, Messages, optimizer_update, positive
from fedbench.errors import ConfigError


def _integer(cfg, key, least, what):
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"algorithm.{key}", value, f"an integer >= {least} ({what})")
    return value


def _take(params, k):
    """Model ``k`` of stacked models (``k``: a scalar, or ``[n]`` ids for ``[n, ...]``)."""
    return jax.tree.map(lambda p: p[k], params)


def _cluster_entry(params):
    del params
    return {"cluster": jnp.zeros((), jnp.int32)}


def _cluster_context(server_state, entries):
    del server_state
    return entries["cluster"]


def _client_models(params, server_state, entries):
    del server_state
    return _take(params, entries["cluster"])


def _client_clusters(params, server_state, entries):
    del params, server_state
    return entries["cluster"]


def cluster_means(deltas, clusters, weights, num_clusters):
    """``[K, ...]``: each cluster's ``weights``-weighted mean delta (zero without members)."""
    onehot = (clusters[:, None] == jnp.arange(num_clusters)[None, :]) * weights[:, None]
    onehot = onehot.astype(jnp.float32)
    total = onehot.sum(0)
    share = onehot / jnp.where(total > 0, total, 1.0)[None, :]
    return jax.tree.map(lambda d: jnp.tensordot(share.T, d, axes=1), deltas)


# -- IFCA ----------------------------------------------------------------------------------------
def _ifca_for(k: int):
    def init_models(init, key):
        models = [init(key)] + [init(jax.random.fold_in(key, j)) for j in range(1, k)]
        return jax.tree.map(lambda *ps: jnp.stack(ps), *models)

    def prepare(params, entry, loss):
        losses = jax.vmap(loss)(params)  # F_i(theta_j) for every j at once
        return {**entry, "cluster": jnp.argmin(losses).astype(jnp.int32)}

    def finish(deltas, stats, entries, server_state, valid, hp):
        del stats, server_state, valid, hp
        return {"delta": deltas, "cluster": entries["cluster"]}, entries

    def aggregate(uploads, weights, stats, valid, num_clients):
        del stats, valid, num_clients
        return {"delta": cluster_means(uploads["delta"], uploads["cluster"], weights, k)}

    def messages(algorithm, sent):  # every client downloads all K models to choose its cluster
        down = jax.tree.map(lambda s: jax.ShapeDtypeStruct((k, *s.shape), s.dtype), sent)
        return Messages(down={"models": down}, up={"delta": sent})

    return dict(init_models=init_models, client_prepare=prepare, client_finish=finish,
                aggregate=aggregate, messages=messages)


def ifca(cfg: Mapping[str, Any]) -> Algorithm:
    k = _integer(cfg, "clusters", 1, "K, the number of cluster models")
    return Algorithm(
        "ifca", "federated", optax.sgd(1.0), settings={"clusters": k},
        client_state=_cluster_entry, client_context=_cluster_context, client_start=_take,
        client_models=_client_models, client_clusters=_client_clusters, **_ifca_for(k),
        dp_client="each client also reveals its cluster, chosen by its training loss, and the "
                  "per-cluster means are not what the clip-and-noise mechanism covers",
        dp_sample="its cluster choice evaluates every client's training loss without DP",
    )


# -- CFL -----------------------------------------------------------------------------------------
def bipartition(similarity: jax.Array, members: jax.Array, anchor: jax.Array) -> jax.Array:
    """The bi-partition of ``members`` by complete-linkage agglomerative clustering on the
    distance ``-similarity`` (Sattler et al. Eq. 30): ``[n]`` bool, True for the part not
    holding member ``anchor`` (False outside ``members``). Needs >= 2 members."""
    n = similarity.shape[0]
    pair = members[:, None] & members[None, :] & ~jnp.eye(n, dtype=bool)
    dist = jnp.where(pair, -similarity, jnp.inf)

    def merge(_, carry):
        dist, label, alive = carry
        go = alive.sum() > 2
        flat = jnp.argmin(dist)
        i, j = jnp.minimum(flat // n, flat % n), jnp.maximum(flat // n, flat % n)
        row = jnp.maximum(dist[i], dist[j])  # complete linkage: the farthest pair
        row = row.at[i].set(jnp.inf).at[j].set(jnp.inf)
        merged = dist.at[i, :].set(row).at[:, i].set(row).at[j, :].set(jnp.inf).at[:, j].set(
            jnp.inf)
        return (jnp.where(go, merged, dist), jnp.where(go & (label == j), i, label),
                jnp.where(go, alive.at[j].set(False), alive))

    _, label, _ = jax.lax.fori_loop(0, max(n - 2, 0), merge, (dist, jnp.arange(n), members))
    return members & (label != label[anchor])


def _flat(deltas):
    return jnp.concatenate([d.reshape(d.shape[0], -1).astype(jnp.float32)
                            for d in jax.tree.leaves(deltas)], axis=1)


def _cfl_for(k_max: int, eps1: float, eps2: float, warmup: int, min_size: int):
    def init_models(init, key):
        return jax.tree.map(lambda p: jnp.broadcast_to(p, (k_max,) + p.shape), init(key))

    def server_state(params):
        del params
        return {"clusters": jnp.ones((), jnp.int32), "round": jnp.zeros((), jnp.int32)}

    def finish(deltas, stats, entries, server, valid, hp):
        del stats, hp
        old = entries["cluster"]
        flat = _flat(deltas)
        norms = jnp.linalg.norm(flat, axis=1)
        unit = flat / jnp.where(norms > 0, norms, 1.0)[:, None]
        similarity = unit @ unit.T  # alpha_ij, cosine similarity of the updates
        new, source, count = old, jnp.arange(k_max), server["clusters"]
        for c in range(k_max):
            members = valid & (old == c)
            size = members.sum()
            mean = jnp.where(members[:, None], flat, 0.0).sum(0) / jnp.maximum(size, 1)
            split = ((size >= min_size) & (jnp.linalg.norm(mean) < eps1)
                     & (jnp.max(jnp.where(members, norms, 0.0)) > eps2)
                     & (server["round"] >= warmup) & (count < k_max))
            anchor = jnp.argmax(jnp.where(members, norms, -1.0))  # keeps the parent's id
            side = bipartition(similarity, members, anchor)
            new = jnp.where(split & side, count, new)
            source = source.at[count].set(jnp.where(split, c, source[jnp.minimum(count,
                                                                                  k_max - 1)]),
                                          mode="drop")
            count = count + split.astype(jnp.int32)
        uploads = {"delta": deltas, "cluster": new, "source": source, "clusters": count}
        return uploads, {**entries, "cluster": new}

    def aggregate(uploads, weights, stats, valid, num_clients):
        del stats, valid, num_clients
        return {"delta": cluster_means(uploads["delta"], uploads["cluster"], weights, k_max),
                "source": uploads["source"], "clusters": uploads["clusters"]}

    def server_update(params, opt_state, server, aggregates, optimizer, hp=None):
        parents = _take(params, aggregates["source"])  # a new cluster starts at its parent's
        params, opt_state, _ = optimizer_update(parents, opt_state, None, aggregates, optimizer,
                                                hp)
        return params, opt_state, {"clusters": aggregates["clusters"],
                                   "round": server["round"] + 1}

    return dict(init_models=init_models, server_state=server_state, client_finish=finish,
                aggregate=aggregate, server_update=server_update)


def cfl(cfg: Mapping[str, Any]) -> Algorithm:
    eps1, eps2 = positive(cfg, "eps1"), positive(cfg, "eps2")
    k_max = _integer(cfg, "max_clusters", 1, "the most clusters")
    warmup = _integer(cfg, "warmup", 0, "rounds before any split")
    min_size = _integer(cfg, "min_size", 2, "members a cluster needs in a round to split")
    return Algorithm(
        "cfl", "federated", optax.sgd(1.0),
        settings={"eps1": eps1, "eps2": eps2, "max_clusters": k_max, "warmup": warmup,
                  "min_size": min_size},
        client_state=_cluster_entry, client_context=_cluster_context, client_start=_take,
        client_models=_client_models, client_clusters=_client_clusters,
        **_cfl_for(k_max, eps1, eps2, warmup, min_size),
        dp_client="the server compares the clients' raw deltas (cosine similarities) to split "
                  "clusters, outside the clip-and-noise mechanism",
    )
