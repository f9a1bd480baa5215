"""Canary sites inserted through a whole DP-FedAvg run: a lower bound on the run's epsilon.

G. Andrew, P. Kairouz, S. Oh, A. Oprea, H. B. McMahan, V. Suriyakumar. "One-shot Empirical
Privacy Estimation for Federated Learning", ICLR 2024, Sec. 3: canary clients whose update,
whenever they are sampled, is a fixed random direction, scored after training by how much of
that direction the final model carries. Here the canaries are scored with Steinke, Nasr and
Jagielski's one-run bound (NeurIPS 2023), so each canary is included with probability 1/2:

* the last ``m`` sites of the population are canary sites (their data is ignored);
* canary ``i`` draws a unit direction ``u_i`` over all parameters and an inclusion bit from the
  run's key; whenever it is sampled it sends ``clip * u_i`` if included and a zero update if not.
  Under DP-FedAvg's fixed-denominator estimator (McMahan et al. 2018) a zero update releases
  exactly what the site's absence would, so an excluded canary is a removed client (the
  add/remove adjacency the accountant uses; under fixed-size cohorts it is a replaced one);
* the score of canary ``i`` is ``<w_T - w_0, u_i>``, the final model's movement along ``u_i``.

The canary transform comes after DP's clip (``clip * u_i`` has norm exactly the bound) and
before any compressor. Canaries from several independent runs (replicas of one program, each
with its own key) are pooled: each canary touches only its own run, so the runs together are
one mechanism that is still (epsilon, delta)-DP with respect to every canary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.errors import ConfigError
from fedbench.transforms import UpdateTransform

DIRECTION, INCLUSION = 0xCA4A, 0xCA4B


def direction(run_key: jax.Array, slot: jax.Array, like: Any) -> Any:
    """Canary ``slot``'s unit direction: Gaussian over every leaf of ``like``, L2 norm 1."""
    leaves, tree = jax.tree.flatten(like)
    keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(run_key, DIRECTION), slot),
                            len(leaves))
    draws = [jax.random.normal(k, leaf.shape, jnp.float32) for k, leaf in zip(keys, leaves)]
    norm = jnp.sqrt(sum(jnp.sum(d * d) for d in draws))
    return jax.tree.unflatten(tree, [(d / norm).astype(leaf.dtype)
                                     for d, leaf in zip(draws, leaves)])


def included(run_key: jax.Array, slot: jax.Array) -> jax.Array:
    """Whether canary ``slot`` takes part in this run (probability 1/2)."""
    return jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(run_key, INCLUSION), slot))


def canary_transform(num_clients: int, num_canaries: int) -> UpdateTransform:
    """Replaces the message of each of the last ``num_canaries`` sites with its canary (reads
    ``info["client"]``, ``info["run_key"]`` and ``info["clip"]``)."""
    first = num_clients - num_canaries

    def update(delta, state, info):
        slot = info["client"] - first
        is_canary = slot >= 0
        scale = jnp.where(included(info["run_key"], slot), info["clip"], 0.0)
        canary = jax.tree.map(lambda u: scale * u, direction(info["run_key"], slot, delta))
        sent = jax.tree.map(lambda c, d: jnp.where(is_canary, c, d), canary, delta)
        return sent, state, {}

    return UpdateTransform(lambda params: (), update)


def check_canaries(cfg: Mapping[str, Any], num_canaries: Any) -> None:
    """Canaries audit client-level DP-FedAvg with a fixed clip and one global model."""
    privacy = cfg.get("privacy") or {}
    if privacy.get("name") != "dp_client":
        raise ConfigError("privacy.name", privacy.get("name", "none"),
                          "dp_client for canaries through a run (they audit client-level DP)")
    if (privacy.get("adaptive_clip") or {}).get("enabled"):
        raise ConfigError("privacy.adaptive_clip.enabled", True,
                          "off for canaries through a run (an absent canary and a zero update "
                          "differ in the clipped count)")
    n = cfg["num_clients"]
    if isinstance(num_canaries, bool) or not isinstance(num_canaries, int) or not (
            2 <= num_canaries < n):
        raise ConfigError("audit.epsilon.run.sites", num_canaries,
                          f"an integer in [2, num_clients - 1 = {n - 1}]")


def canary_scores(cfg: Mapping[str, Any], num_canaries: int, seeds: Sequence[int],
                  axis: str = "map", values: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Runs ``cfg`` once per seed (replicas of one program) with its last ``num_canaries`` sites
    as canaries; returns per run the included and excluded canaries' scores, and the epsilon
    the run's accountant reports for its rounds.

    ``values``: the replicas' ``hparams`` in place of the config's own (a test's broken noise).
    """
    from fedbench.replicas import run_values
    from fedbench.run import build_simulator

    check_canaries(cfg, num_canaries)
    built = build_simulator(cfg, transforms=(canary_transform(cfg["num_clients"],
                                                              num_canaries),))
    sim = built.sim
    if sim.per_client_models or sim.algorithm.kind != "federated":
        raise ConfigError("algorithm.name", cfg["algorithm"]["name"],
                          "a synchronous algorithm with one global model for canaries")
    base = dict(run_values(cfg, built.privacy) if values is None else values)
    start = sim.init_replicas(list(seeds), [base] * len(seeds))
    end = sim.run_replicas(start, int(cfg["rounds"]), axis)
    slots = jnp.arange(num_canaries)

    @jax.jit
    def score(first, last):
        moved = jax.tree.map(lambda a, b: b - a, first.params, last.params)
        dirs = jax.vmap(lambda s: direction(first.key, s, moved))(slots)
        dots = sum(jnp.tensordot(d, m, axes=m.ndim) for d, m in
                   zip(jax.tree.leaves(dirs), jax.tree.leaves(moved)))
        return dots, jax.vmap(lambda s: included(first.key, s))(slots)

    runs = []
    for r in range(len(seeds)):
        dots, bits = (np.asarray(a) for a in score(sim.replica(start, r), sim.replica(end, r)))
        runs.append({"in": dots[bits], "out": dots[~bits]})
    participation = np.zeros(cfg["num_clients"])
    claimed = built.privacy.report(int(cfg["rounds"]), participation)
    return {"runs": runs, "claimed_epsilon": float(claimed["epsilon"]),
            "delta": float(claimed["delta"]), "noise_multiplier": built.privacy.noise_multiplier,
            "canaries": num_canaries}
