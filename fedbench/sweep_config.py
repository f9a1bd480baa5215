"""The replicas of a run, from its config: which ``sweep.<name>`` keys exist for it (declared by
the algorithm and the privacy mechanism beside their code), the swept values checked, and each
replica's config: the config of the separate job it stands for (:mod:`fedbench.replicas` runs
them; :func:`fedbench.checked.check_config` checks them).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

from fedbench.errors import ConfigError
from fedbench.privacy.mechanism import declared_hyperparameters, mechanism_class, registry


#: sweep.<name> -> the config path it sets, for keys no algorithm or privacy mechanism owns.
#: An algorithm's own keys (``sweep.<key>`` -> ``algorithm.<key>``) are those it declares beside
#: its code (``Algorithm.hyperparameters``: FedProx's ``mu``, FedDyn's ``alpha``, the server
#: optimisers' ``server_lr``), a privacy mechanism's (``sweep.<key>`` -> ``privacy.<key>``)
#: likewise (``Mechanism.hyperparameters``: the clip, the noise, the target epsilon):
#: :func:`sweep_keys`.
SWEEP_KEYS = {
    "lr": ("lr",),
    "members": ("members",),  # sub-federations: lists of client indices (fedbench-contribution)
    "partition_alpha": ("partition", "alpha"),  # partitions as replicas (fedbench/replica_data.py)
    "partition_seed": ("partition", "seed"),
}


def algorithm_hyperparameters(algorithm_cfg: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The sweepable keys the configured algorithm declares (``Algorithm.hyperparameters``)."""
    from fedbench.algorithm import BUILDERS, build_algorithm

    name = (algorithm_cfg or {}).get("name")
    if name not in BUILDERS:
        return ()
    return build_algorithm(dict(algorithm_cfg), 1).hyperparameters  # shapes of no concern


def sweep_keys(cfg: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """``sweep.<name>`` -> the config path it sets, for this config: :data:`SWEEP_KEYS`, the
    algorithm's declared hyper-parameters and the privacy mechanism's."""
    declared = algorithm_hyperparameters(cfg.get("algorithm"))
    private = declared_hyperparameters(cfg.get("privacy"))
    return {**SWEEP_KEYS, **{key: ("algorithm", key) for key in declared},
            **{key: ("privacy", key) for key in private}}


def swept(cfg: Mapping[str, Any]) -> dict[str, list[float]]:
    """The ``sweep`` keys that hold a list of values, checked."""
    out = {}
    keys = sweep_keys(cfg) if any(v is not None for v in (cfg.get("sweep") or {}).values()) \
        else SWEEP_KEYS
    for name, values in (cfg.get("sweep") or {}).items():
        if values is None:
            continue
        if name not in keys:
            owners = [m for m in registry() if name in mechanism_class(m).hyperparameters]
            if owners and (cfg.get("privacy") or {}).get("name", "none") == "none":
                raise ConfigError(f"sweep.{name}", values,
                                  f"null without privacy ({', '.join(owners)} declare it)")
            algorithm = (cfg.get("algorithm") or {}).get("name")
            privacy = (cfg.get("privacy") or {}).get("name", "none")
            own = [k for k in keys if keys[k][0] == "algorithm"]
            mine = [k for k in keys if keys[k][0] == "privacy"]
            raise ConfigError(f"sweep.{name}", values,
                              f"null, or a key of ({algorithm} declares "
                              f"{', '.join(own) or 'none'}; privacy={privacy} declares "
                              f"{', '.join(mine) or 'none'}): " + ", ".join(keys))
        values = [values] if isinstance(values, (str, int, float)) else list(values)
        if name == "members":  # a list of client-index lists, each checked by check_members
            values = [sorted(int(c) for c in v) if not isinstance(v, (str, int, float)) else v
                      for v in values]
            for v in values:
                check_members(cfg, v, f"sweep.{name}")
            out[name] = values
            continue
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float))
                             for v in values):
            raise ConfigError(f"sweep.{name}", values, "a non-empty list of numbers")
        out[name] = values  # as typed: 2 stays 2, as in a separate job's config
    privacy = cfg.get("privacy") or {}
    mechanism = mechanism_class(privacy.get("name", "none"))
    for name in out:
        refusal = (None if mechanism is None or keys[name][0] != "privacy"
                   else mechanism.sweep_refusal(name, privacy))
        if refusal is not None:
            raise ConfigError(f"sweep.{name}", out[name], refusal)
        if name == "partition_alpha" and "alpha" not in (cfg.get("partition") or {}):
            raise ConfigError("sweep.partition_alpha", out[name], "null unless the partition has an alpha "
                              "(partition=dirichlet)")
        if name == "partition_seed" and not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in out[name]):
            raise ConfigError("sweep.partition_seed", out[name], "a list of integers >= 0")
    for group in () if mechanism is None else mechanism.alternatives:
        both = [name for name in group if name in out]
        if len(both) > 1:  # e.g. a target epsilon and a noise multiplier: one sets the noise
            raise ConfigError(f"sweep.{both[1]}", out[both[1]],
                              f"null when sweep.{both[0]} is set ({privacy.get('name')}: "
                              f"{' and '.join(group)} set the same thing)")
    return out


def _alternatives(cfg: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """The privacy keys that ``sweep.<name>`` makes null (its mechanism's ``alternatives``)."""
    mechanism = mechanism_class((cfg.get("privacy") or {}).get("name", "none"))
    groups = () if mechanism is None else mechanism.alternatives
    return tuple(other for group in groups if name in group for other in group if other != name)


def _set(cfg: dict[str, Any], path: tuple[str, ...], value) -> None:
    node = cfg
    for key in path[:-1]:
        node[key] = dict(node.get(key) or {})
        node = node[key]
    node[path[-1]] = value


def replica_configs(cfg: Mapping[str, Any], num_seeds: int) -> list[tuple[str, dict[str, Any]]]:
    """``(directory name, config)`` of every replica: the config a separate job would have
    (its swept values set, ``seeds: 1``, its ``seed``, the shared ``partition.seed``, an empty
    ``sweep``)."""
    grid = swept(cfg)
    base = cfg["seed"]
    part_seed = cfg["partition"].get("seed")
    part_seed = base if part_seed is None else part_seed
    out = []
    for combo in itertools.product(*grid.values(), range(base, base + num_seeds)):
        *values, seed = combo
        rep = copy.deepcopy(dict(cfg))
        rep.update(seed=seed, seeds=1, partition={**cfg["partition"], "seed": part_seed})
        if "sweep" in cfg:
            rep["sweep"] = {k: None for k in (cfg.get("sweep") or {})}
        keys = sweep_keys(cfg)
        for name, value in zip(grid, values):
            _set(rep, keys[name], value)
            if keys[name][0] == "privacy":
                for other in _alternatives(cfg, name):
                    _set(rep, ("privacy", other), None)
        parts = [f"{name}={_label(value)}" for name, value in zip(grid, values)] + [f"seed={seed}"]
        out.append((",".join(parts), rep))
    return out


def _label(value) -> str:
    if isinstance(value, list):  # members: 0-2-5, or none for the empty federation
        return "-".join(str(v) for v in value) or "none"
    return f"{value:g}"


def check_members(cfg: Mapping[str, Any], members, key: str = "members") -> None:
    """``members``: null or a list of distinct client indices; only federated algorithms
    without DP (a sub-federation's sampling is not what the accountant assumes)."""
    if members is None:
        return
    n = cfg["num_clients"]
    ok = (not isinstance(members, (str, int, float))
          and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n for c in members)
          and len(set(members)) == len(members))
    if not ok:
        raise ConfigError(key, members, f"null or a list of distinct client indices in [0, {n})")
    if (cfg.get("privacy") or {}).get("name", "none") != "none":
        raise ConfigError(key, members, "null with privacy (a sub-federation's sampling is not "
                          "the one the accountant assumes)")
    if (cfg.get("algorithm") or {}).get("name") in ("fedbuff", "centralized", "local"):
        raise ConfigError(key, members, "null with fedbuff, centralized and local (synchronous "
                          "federated algorithms only)")


def simulator_config(cfg: Mapping[str, Any], replicas) -> dict[str, Any]:
    """The config the one simulator is built from: the first replica's, with FedProx's ``mu``
    non-zero if any replica's is (so the proximal term is in the program; each replica then
    uses its own ``mu``, 0 included)."""
    out = copy.deepcopy(replicas[0][1])
    mus = swept(cfg).get("mu")
    if mus and any(mus):
        out["algorithm"] = {**out["algorithm"], "mu": max(mus, key=abs)}
    return out
