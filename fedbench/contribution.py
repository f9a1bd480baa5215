"""What each site adds to a federation: leave-one-out, exact Shapley values and truncated
Monte-Carlo Shapley, every sub-federation trained as a replica of one compiled program.

A coalition ``S`` of sites is a sub-federation whose clients alone are ever sampled (the
``members`` mask, :mod:`fedbench.hparams`; uniform sampling among members, every member each
round when there are no more of them than ``clients_per_round``). Its value ``v(S)`` is a metric
of the model it trains, named by ``value``:

* ``pooled``: accuracy (C-index for survival data) on the pooled test set of all sites;
* ``sites_mean``: the mean over sites of the metric on each site's own test split.

``v(empty)`` is the initial model's. The Shapley value of site ``i`` (Shapley 1953) is

    phi_i = sum_{S subset of N without i} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)),

the average of ``i``'s marginal contribution over all orders in which the sites could join; the
values sum to ``v(N) - v(empty)`` (efficiency). Exact values need all ``2^n`` coalitions (up to
about 10 sites); beyond that truncated Monte-Carlo sampling of orders (Ghorbani and Zou, "Data
Shapley", ICML 2019, Algorithm 1: a permutation's remaining marginals are taken as 0 once
``|v(N) - v(prefix)| < tolerance``) estimates them with a standard error. Leave-one-out:
``v(N) - v(N without i)``. Every replica averages over ``seeds`` training seeds.

Command line: ``fedbench-contribution [overrides...] --method exact|tmc|loo --value pooled``.
"""

from __future__ import annotations

import time

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

Coalition = frozenset
VALUES = ("pooled", "sites_mean")


def all_coalitions(n: int) -> list[Coalition]:
    """Every subset of ``range(n)``, the empty one first."""
    return [Coalition(c) for k in range(n + 1) for c in itertools.combinations(range(n), k)]


def shapley_exact(values: Mapping[Coalition, float], n: int) -> np.ndarray:
    """Exact Shapley values from ``v`` of all ``2^n`` coalitions (module docstring)."""
    phi = np.zeros(n)
    for i in range(n):
        for coalition, v in values.items():
            if i in coalition:
                continue
            k = len(coalition)
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            phi[i] += weight * (values[coalition | {i}] - v)
    return phi


def leave_one_out(values: Mapping[Coalition, float], n: int) -> np.ndarray:
    """``v(N) - v(N without i)`` for each site ``i``."""
    everyone = Coalition(range(n))
    return np.array([values[everyone] - values[everyone - {i}] for i in range(n)])


def tmc_shapley(
    evaluate: Callable[[list[Coalition]], list[float]],
    n: int,
    permutations: int,
    tolerance: float,
    seed: int = 0,
    batch: int = 8,
) -> tuple[np.ndarray, np.ndarray, dict[Coalition, float]]:
    """Truncated Monte-Carlo Shapley (Ghorbani and Zou 2019, Algorithm 1).

    ``evaluate(coalitions) -> values`` trains what it is given (one replica program per call);
    permutations are processed ``batch`` at a time, prefix length by prefix length, so every
    call evaluates the not yet known prefixes of the batch's untruncated permutations together.
    Returns ``(phi, standard error, every coalition evaluated)``.
    """
    rng = np.random.default_rng(seed)
    cache: dict[Coalition, float] = {}

    def known(coalitions: Iterable[Coalition]) -> None:
        new = sorted({c for c in coalitions if c not in cache}, key=sorted)
        if new:
            cache.update(zip(new, evaluate(new)))

    everyone, empty = Coalition(range(n)), Coalition()
    known([everyone, empty])
    marginals = []
    for start in range(0, permutations, batch):
        orders = [rng.permutation(n) for _ in range(min(batch, permutations - start))]
        previous = [cache[empty]] * len(orders)
        contrib = np.zeros((len(orders), n))
        for j in range(n):
            live = [p for p in range(len(orders))
                    if abs(cache[everyone] - previous[p]) >= tolerance]
            known(Coalition(orders[p][: j + 1]) for p in live)
            for p in live:
                now = cache[Coalition(orders[p][: j + 1])]
                contrib[p, orders[p][j]] = now - previous[p]
                previous[p] = now
        marginals.extend(contrib)
    marginals = np.asarray(marginals)
    stderr = (marginals.std(axis=0, ddof=1) / math.sqrt(len(marginals))
              if len(marginals) > 1 else np.full(n, np.nan))
    return marginals.mean(axis=0), stderr, cache


def coalition_values(sim, coalitions: list[Coalition], rounds: int, seeds: Iterable[int],
                     value: str = "pooled", base: Mapping[str, Any] | None = None,
                     axis: str = "map", chunk: int = 256) -> list[float]:
    """``v`` of each coalition: its sub-federation trained for ``rounds`` rounds from each of
    ``seeds`` (replicas of one compiled program, ``chunk`` at a time) and evaluated.

    ``base``: the run's own ``hparams`` (:func:`fedbench.replicas.run_values`; the members mask
    is added per replica)."""
    if value not in VALUES:
        raise ConfigError("value", value, "one of: " + ", ".join(VALUES))
    seeds = list(seeds)
    n = sim.data.num_clients
    jobs = [(c, s) for c in coalitions for s in seeds]
    scores: list[float] = []
    for at in range(0, len(jobs), chunk):
        part = jobs[at: at + chunk]
        masks = [np.isin(np.arange(n), sorted(c)).astype(np.float32) for c, _ in part]
        states = sim.init_replicas([s for _, s in part],
                                   [{**(base or {}), "members": m} for m in masks])
        states = sim.run_replicas(states, rounds, axis)
        for i in range(len(part)):
            metrics = sim.evaluate(sim.replica(states, i))
            scores.append(_value(metrics, value))
    per = np.asarray(scores).reshape(len(coalitions), len(seeds))
    return per.mean(axis=1).tolist()


def _value(metrics: Mapping[str, Any], value: str) -> float:
    survival = "test_cindex" in metrics
    if value == "pooled":
        return float(metrics["test_cindex" if survival else "test_accuracy"])
    return float(metrics["client_cindex_mean" if survival else "client_accuracy_mean"])


def contribution(cfg: Mapping[str, Any], method: str = "auto", value: str = "pooled",
                 seeds: int = 1, permutations: int = 50, tolerance: float = 0.0,
                 max_exact: int = 10, progress: bool = False) -> dict[str, Any]:
    """Each site's contribution in the federation ``cfg`` (one site = one client).
    ``progress``: a line per stage (building, each batch of coalitions trained), with the time.

    ``method``: ``exact`` (all coalitions), ``tmc`` (``permutations`` sampled orders,
    truncation ``tolerance``), ``loo`` (the federation without each site), ``auto`` (exact up
    to ``max_exact`` sites, else tmc). Leave-one-out is reported with every method (its
    coalitions are among exact's; for tmc they are trained too).
    """
    from fedbench.replicas import check_members, run_values
    from fedbench.run import build_simulator

    if method not in ("auto", "exact", "tmc", "loo"):
        raise ConfigError("method", method, "one of: auto, exact, tmc, loo")
    if (cfg.get("privacy") or {}).get("name", "none") != "none":
        raise ConfigError("privacy.name", cfg["privacy"]["name"],
                          "none (contributions are measured without DP)")
    check_members(cfg, list(range(cfg["num_clients"])))
    start = time.perf_counter()

    def say(text: str) -> None:
        if progress:
            print(f"fedbench-contribution: {text} ({time.perf_counter() - start:.0f} s)",
                  flush=True)

    say("building the federation")
    built = build_simulator(cfg)
    sim, n = built.sim, built.data.num_clients
    base = run_values(cfg, None)
    train_seeds = range(cfg["seed"], cfg["seed"] + seeds)
    trained = [0]

    def evaluate(coalitions):
        say(f"training {len(coalitions)} coalitions x {seeds} seed(s), {cfg['rounds']} rounds "
            f"each, as replicas of one program ({trained[0]} trained so far)")
        trained[0] += len(coalitions)
        return coalition_values(sim, coalitions, cfg["rounds"], train_seeds, value, base)

    method = ("exact" if n <= max_exact else "tmc") if method == "auto" else method
    everyone = Coalition(range(n))
    out: dict[str, Any] = {"sites": n, "method": method, "value": value, "seeds": seeds,
                           "rounds": cfg["rounds"]}
    if method == "exact":
        coalitions = all_coalitions(n)
        values = dict(zip(coalitions, evaluate(coalitions)))
        out["shapley"] = shapley_exact(values, n).tolist()
    elif method == "tmc":
        phi, stderr, values = tmc_shapley(evaluate, n, permutations, tolerance, cfg["seed"])
        out.update(shapley=phi.tolist(), shapley_stderr=stderr.tolist(),
                   permutations=permutations, tolerance=tolerance)
        missing = [everyone - {i} for i in range(n) if everyone - {i} not in values]
        values.update(zip(missing, evaluate(missing)) if missing else ())
    else:
        coalitions = [everyone, Coalition()] + [everyone - {i} for i in range(n)]
        values = dict(zip(coalitions, evaluate(coalitions)))
    out["leave_one_out"] = leave_one_out(values, n).tolist()
    out["v_all"], out["v_empty"] = values[everyone], values[Coalition()]
    out["coalitions_trained"] = len(values)
    out["train_sizes"] = np.asarray(built.data.train_counts).tolist()
    return out
