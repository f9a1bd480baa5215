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

That is the white-box *gradient* canary. The black-box *input* canary (``kind="input"``, Steinke
et al. Sec. 6.1, at the client level): each canary site holds one canary example (uniform noise
over each feature's training range, a random label) and trains on it as any site does; "in"
sends its real clipped update, "out" a zero update; the score is the final model's
logit-scaled confidence in the canary's label (Carlini et al.'s ``phi``), which needs nothing
but the released model.

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
from fedbench.privacy.mechanism import mechanism_class
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


KINDS = ("gradient", "input")


def canary_transform(num_clients: int, num_canaries: int, kind: str = "gradient"
                     ) -> UpdateTransform:
    """Replaces the message of each of the last ``num_canaries`` sites (reads
    ``info["client"]``, ``info["run_key"]`` and ``info["clip"]``): ``gradient``: with its
    canary ``clip * u_i`` or zeros; ``input``: with its own clipped update or zeros."""
    first = num_clients - num_canaries

    def update(delta, state, info):
        slot = info["client"] - first
        is_canary = slot >= 0
        inside = included(info["run_key"], slot)
        if kind == "gradient":
            scale = jnp.where(inside, info["clip"], 0.0)
            canary = jax.tree.map(lambda u: scale * u, direction(info["run_key"], slot, delta))
        else:
            canary = jax.tree.map(lambda d: jnp.where(inside, d, jnp.zeros_like(d)), delta)
        sent = jax.tree.map(lambda c, d: jnp.where(is_canary, c, d), canary, delta)
        return sent, state, {}

    return UpdateTransform(lambda params: (), update)


def input_canaries(data, num_canaries: int, seed: int):
    """``data`` with each of the last ``num_canaries`` sites holding one canary example:
    uniform over each feature's range in the training data, a uniformly random label.
    Returns ``(data, x [m, F...], y [m])``."""
    rng = np.random.default_rng([seed, 0xCA4C])
    pooled, _ = data.pooled_train()
    lo, hi = pooled.min(axis=0), pooled.max(axis=0)
    x = rng.uniform(lo, hi, (num_canaries,) + lo.shape).astype(np.float32)
    y = rng.integers(0, data.num_classes, num_canaries).astype(np.int32)
    first = data.num_clients - num_canaries
    train_x, train_y = np.array(data.train_x), np.array(data.train_y)
    counts = np.array(data.train_counts)
    train_x[first:] = 0
    train_y[first:] = 0
    train_x[first:, 0], train_y[first:, 0], counts[first:] = x, y, 1
    return data.replace(train_x=jnp.asarray(train_x), train_y=jnp.asarray(train_y),
                        train_counts=jnp.asarray(counts)), x, y


def check_canaries(cfg: Mapping[str, Any], num_canaries: Any, kind: str = "gradient") -> None:
    """Canaries audit client-level DP-FedAvg with a fixed clip and one global model."""
    if kind not in KINDS:
        raise ConfigError("audit.epsilon.run.kind", kind, "one of: " + ", ".join(KINDS))
    if kind == "input" and cfg.get("local_steps") is not None:
        raise ConfigError("local_steps", cfg["local_steps"], "null for input canaries (a "
                          "canary site holds one example; the step schedule follows epochs)")
    privacy = cfg.get("privacy") or {}
    mechanism = mechanism_class(privacy.get("name", "none"))
    if mechanism is None or mechanism.unit != "client" or not mechanism.bounds_messages:
        raise ConfigError("privacy.name", privacy.get("name", "none"),
                          "a client-level mechanism that clips each update (dp_client) for "
                          "canaries through a run (they audit client-level DP)")
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
                  axis: str = "map", values: Mapping[str, Any] | None = None,
                  kind: str = "gradient") -> dict[str, Any]:
    """Runs ``cfg`` once per seed (replicas of one program) with its last ``num_canaries`` sites
    as canaries; returns per run the included and excluded canaries' scores, and the epsilon
    the run's accountant reports for its rounds.

    ``values``: the replicas' ``hparams`` in place of the config's own (a test's broken noise).
    """
    from fedbench.replicas import run_values
    from fedbench.run import build_simulator

    check_canaries(cfg, num_canaries, kind)
    built = build_simulator(cfg, transforms=(canary_transform(cfg["num_clients"],
                                                              num_canaries, kind),))
    sim = built.sim
    if kind == "input":  # the round reads the data as an argument: replacing it is enough
        sim.data, canary_x, canary_y = input_canaries(sim.data, num_canaries, int(cfg["seed"]))
    if sim.per_client_models or sim.algorithm.kind != "federated":
        raise ConfigError("algorithm.name", cfg["algorithm"]["name"],
                          "a synchronous algorithm with one global model for canaries")
    base = dict(run_values(cfg, built.privacy) if values is None else values)
    start = sim.init_replicas(list(seeds), [base] * len(seeds))
    end = sim.run_replicas(start, int(cfg["rounds"]), axis)
    slots = jnp.arange(num_canaries)

    @jax.jit
    def score(first, last):
        if kind == "input":  # black box: the released model's confidence in each canary
            logits = sim.apply_fn(last.params, canary_x)
            own = jnp.take_along_axis(logits, canary_y[:, None], axis=1)[:, 0]
            rest = jnp.where(jax.nn.one_hot(canary_y, logits.shape[1], dtype=bool), -jnp.inf,
                             logits)
            phi = own - jax.nn.logsumexp(rest, axis=1)  # log p_y - log(1 - p_y)
            return phi, jax.vmap(lambda s: included(first.key, s))(slots)
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
