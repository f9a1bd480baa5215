"""Canary sites inserted through whole runs: a lower bound on a federation's epsilon for one site.

G. Andrew, P. Kairouz, S. Oh, A. Oprea, H. B. McMahan, V. Suriyakumar. "One-shot Empirical
Privacy Estimation for Federated Learning", ICLR 2024, Sec. 3: canary clients whose update,
whenever they are sampled, is a fixed random direction, scored after training by how much of
that direction the final model carries. Here the canaries are scored with Steinke, Nasr and
Jagielski's one-run bound (NeurIPS 2023), so each canary is included with probability 1/2:

* the last ``m`` sites of the population are canary sites (they train on their own data as any
  site does; what they send is replaced);
* canary ``i`` draws a unit direction ``u_i`` over the parameters a site sends and an inclusion
  bit from the run's key; whenever it is sampled it sends ``s * u_i`` if included and a zero
  update if not (``s``: the scale, below);
* the score of canary ``i`` is ``<w_T - w_0, u_i>``, the server model's movement along ``u_i``.

That is the white-box *gradient* canary. The black-box *input* canary (``kind="input"``, Steinke
et al. Sec. 6.1, at the client level): each canary site holds one canary example (uniform noise
over each feature's training range, a random label) and trains on it as any site does; "in"
sends its real (clipped) update, "out" a zero update; the score is the final model's
logit-scaled confidence in the canary's label (Carlini et al.'s ``phi``), which needs nothing
but the released model.

Per mode (:func:`check_canaries` refuses the rest with the reason the report prints):

* ``dp_client``, fixed clip: ``s`` is the clip, so ``s * u_i`` has norm exactly the bound. Under
  DP-FedAvg's fixed-denominator estimator (McMahan et al. 2018) a zero update releases exactly
  what the site's absence would, so an excluded canary is a removed client (the add/remove
  adjacency the accountant uses; under fixed-size cohorts it is a replaced one).
* ``dp_client`` with adaptive clipping (Andrew et al. 2021): ``s`` is the round's clip (state).
  The round also releases a noisy count of unclipped clients, in which a zero update would
  count; so an excluded canary reports itself absent (``info["absent"]``) and the mechanism
  counts it as not sampled (:meth:`fedbench.privacy.dp_client.ClientDP.aggregate`): its
  contributions to the sum and to the count are both an absent site's. An included canary is an
  added client whose clipped update is ``s * u_i`` and whose count bit is its own update's (any
  bit is one some client sends: an update of norm ``s`` counts, a longer one clipped to
  ``s * u_i`` does not). Both are covered by Andrew et al.'s Theorem 1, as the accountant is.
* No DP: nothing bounds a site's update, so ``s`` is the norm of the update the canary site
  itself computed that round (before any compressor). A fixed norm would be arbitrary (too
  large and any direction stands out; too small and none does) and would not follow the updates
  as they shrink during training; the norm of a real site's real update, at the model and round
  it is sent, makes the canary exactly as loud as a hospital's update and differ from it only in
  pointing where nobody else's does, which is what an observer of the released model exploits.
  An excluded canary sends a zero update, weighted in the example-weighted mean as a site that
  learned nothing. The bound is then the empirical epsilon lower bound of this federation
  without DP (whose true epsilon is unbounded): the number a hospital compares a DP claim with.
* Personalised algorithms (Ditto, APFL, pFedMe, finetune, FedPer, ...): a site's data reaches the
  server model only through what it sends, which the canary replaces, and the score reads the
  server model, which is what epsilon covers (the sites' personal models are not, and are not
  scored here). Where a model part stays at the site (FedPer's head), ``u_i`` spans the parts
  sent.
* Refused: ``dp_sample`` (one record, not one site, is protected: its canaries are records,
  :mod:`fedbench.audit.records`), algorithms that are not synchronous rounds of one global
  model (FedBuff, centralized, local, IFCA's and CFL's cluster models).

The canary transform comes after DP's clip and before any compressor. Canaries from several
independent runs (replicas of one program, each with its own key) are pooled: each canary
touches only its own run, so the runs together are one mechanism that is still (epsilon,
delta)-DP with respect to every canary.
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


def update_norm(delta: Any) -> jax.Array:
    """The L2 norm of an update over all of its leaves."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(d.astype(jnp.float32)))
                        for d in jax.tree.leaves(delta)))


def canary_transform(num_clients: int, num_canaries: int, kind: str = "gradient",
                     absent: bool = False) -> UpdateTransform:
    """Replaces the message of each of the last ``num_canaries`` sites (reads
    ``info["client"]``, ``info["run_key"]`` and, under DP, ``info["clip"]``): ``gradient``: with
    its canary ``s * u_i`` (``s``: the clip, else the norm of the site's own update) or zeros;
    ``input``: with its own (clipped) update or zeros. ``absent``: an excluded canary also
    reports ``info["absent"]`` (adaptive clipping's count leaves it out)."""
    first = num_clients - num_canaries

    def update(delta, state, info):
        slot = info["client"] - first
        is_canary = slot >= 0
        inside = included(info["run_key"], slot)
        if kind == "gradient":
            size = info["clip"] if "clip" in info else update_norm(delta)
            scale = jnp.where(inside, size, 0.0)
            canary = jax.tree.map(lambda u: (scale * u).astype(u.dtype),
                                  direction(info["run_key"], slot, delta))
        else:
            canary = jax.tree.map(lambda d: jnp.where(inside, d, jnp.zeros_like(d)), delta)
        sent = jax.tree.map(lambda c, d: jnp.where(is_canary, c, d), canary, delta)
        return sent, state, ({"absent": is_canary & ~inside} if absent else {})

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
    """Canary sites audit a federation without DP or under client-level DP (fixed or adaptive
    clip); see the module docstring. The algorithm is checked once built
    (:func:`check_algorithm`)."""
    if kind not in KINDS:
        raise ConfigError("audit.epsilon.run.kind", kind, "one of: " + ", ".join(KINDS))
    if kind == "input" and cfg.get("local_steps") is not None:
        raise ConfigError("local_steps", cfg["local_steps"], "null for input canaries (a "
                          "canary site holds one example; the step schedule follows epochs)")
    privacy = cfg.get("privacy") or {}
    name = privacy.get("name", "none")
    mechanism = mechanism_class(name)
    if mechanism is not None and (mechanism.unit != "client" or not mechanism.bounds_messages):
        raise ConfigError("privacy.name", name,
                          "none or a client-level mechanism that clips each update (dp_client) "
                          "for canary sites (they audit one site; a record-level mechanism's "
                          "canaries are records, fedbench.audit.records)")
    n = cfg["num_clients"]
    if isinstance(num_canaries, bool) or not isinstance(num_canaries, int) or not (
            2 <= num_canaries < n):
        raise ConfigError("audit.epsilon.run.sites", num_canaries,
                          f"an integer in [2, num_clients - 1 = {n - 1}]")


def check_algorithm(sim, cfg: Mapping[str, Any]) -> None:
    """Canaries through a run are scored on one server model, trained in synchronous rounds."""
    alg = sim.algorithm
    if alg.kind != "federated":
        raise ConfigError("algorithm.name", cfg["algorithm"]["name"],
                          "a synchronous federated algorithm for canaries through a run ("
                          f"{alg.name} is {alg.kind}: no rounds of one server model to plant "
                          "canary updates in)")
    if alg.init_models is not None:
        raise ConfigError("algorithm.name", cfg["algorithm"]["name"],
                          f"an algorithm with one server model for canaries through a run "
                          f"({alg.name} keeps several cluster models, and a canary's movement "
                          "is scored on one)")


def sent_parts(sent: Sequence[bool], params: Any) -> list:
    """The leaves of ``params`` that sites send (``sent``:
    :func:`fedbench.compression.traffic.sent_leaves`; all but FedPer's and FedRep's head)."""
    return [leaf for leaf, s in zip(jax.tree.leaves(params), sent, strict=True) if s]


def claimed(built, cfg: Mapping[str, Any]) -> tuple[float | None, float]:
    """``(epsilon, delta)`` the run's accountant reports for its rounds (client level: it does
    not depend on who took part); without DP ``(None, delta)`` with the delta a client-level
    run of this federation would default to, so the bound reads beside such a claim."""
    if built.privacy is None:
        from fedbench.privacy.events import default_delta

        return None, default_delta(int(cfg["num_clients"]))
    rounds = int(cfg["rounds"])
    report = built.privacy.report(rounds, np.zeros(cfg["num_clients"]))
    return float(report["epsilon"]), float(report["delta"])


def canary_scores(cfg: Mapping[str, Any], num_canaries: int, seeds: Sequence[int],
                  axis: str = "map", values: Mapping[str, Any] | None = None,
                  kind: str = "gradient") -> dict[str, Any]:
    """Runs ``cfg`` once per seed (replicas of one program) with its last ``num_canaries`` sites
    as canaries; returns per run the included and excluded canaries' scores, and the epsilon
    the run's accountant reports for its rounds (None without DP).

    ``values``: the replicas' ``hparams`` in place of the config's own (a test's broken noise).
    """
    from fedbench.compression.traffic import sent_leaves
    from fedbench.replicas import run_values
    from fedbench.run import build_simulator

    check_canaries(cfg, num_canaries, kind)
    privacy = cfg.get("privacy") or {}
    adaptive = bool((privacy.get("adaptive_clip") or {}).get("enabled")) and privacy.get(
        "name", "none") != "none"
    built = build_simulator(cfg, transforms=(canary_transform(
        cfg["num_clients"], num_canaries, kind, absent=adaptive),))
    sim = built.sim
    check_algorithm(sim, cfg)
    if kind == "input":  # the round reads the data as an argument: replacing it is enough
        sim.data, canary_x, canary_y = input_canaries(sim.data, num_canaries, int(cfg["seed"]))
    base = dict(run_values(cfg, built.privacy) if values is None else values)
    start = sim.init_replicas(list(seeds), [base] * len(seeds))
    end = sim.run_replicas(start, int(cfg["rounds"]), axis)
    slots = jnp.arange(num_canaries)
    sent = sent_leaves(sim.replica(start, 0).params, sim.algorithm)  # host-side, untraced

    @jax.jit
    def score(first, last):
        bits = jax.vmap(lambda s: included(first.key, s))(slots)
        if kind == "input":  # black box: the released model's confidence in each canary
            return logit_confidence(sim.apply_fn(last.params, canary_x), canary_y), bits
        moved = sent_parts(sent, jax.tree.map(lambda a, b: b - a, first.params, last.params))
        dirs = jax.vmap(lambda s: direction(first.key, s, moved))(slots)
        dots = sum(jnp.tensordot(d, m, axes=m.ndim) for d, m in zip(dirs, moved))
        return dots, bits

    runs = []
    for r in range(len(seeds)):
        dots, bits = (np.asarray(a) for a in score(sim.replica(start, r), sim.replica(end, r)))
        runs.append({"in": dots[bits], "out": dots[~bits]})
    epsilon, delta = claimed(built, cfg)
    scale = ("the norm of the canary site's own update that round" if built.privacy is None
             else "the round's adaptive clip" if adaptive else "the clip")
    return {"runs": runs, "claimed_epsilon": epsilon, "delta": delta, "unit": "client",
            "noise_multiplier": None if built.privacy is None else built.privacy.noise_multiplier,
            "canaries": num_canaries, "kind": kind,
            "scale": scale if kind == "gradient" else None,
            "personal_models": bool(sim.per_client_models)}


def logit_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Carlini et al.'s ``phi = log p_y - log(1 - p_y)`` of each row's label."""
    own = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    rest = jnp.where(jax.nn.one_hot(labels, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return own - jax.nn.logsumexp(rest, axis=1)
