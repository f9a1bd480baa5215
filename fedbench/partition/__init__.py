"""Seeded partitioners that assign every example to exactly one client, and heterogeneity stats.

Every partitioner returns a list of ``num_clients`` index arrays that together hold each example
index exactly once (tested), except ``prevalence``, which draws the sites it is asked for and
leaves the other examples out. They see only the labels, so they apply to any dataset.

References:
  H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Aguera y Arcas. "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017 (pathological shards, Sec. 3).
  T.-M. H. Hsu, H. Qi, M. Brown. "Measuring the Effects of Non-Identical Data Distribution for
  Federated Visual Classification", arXiv:1909.06335, 2019 (Dirichlet label skew, Sec. 3).
  Q. Li, Y. Diao, Q. Chen, B. He. "Federated Learning on Non-IID Data Silos: An Experimental
  Study", ICDE 2022 (NIID-Bench: per-class Dirichlet split over clients with a balancing cap and
  a minimum client size, and Dirichlet quantity skew with a minimum client size, Sec. IV).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedbench.errors import ConfigError
from fedbench.partition.stats import heterogeneity_stats  # noqa: F401  (public here)

PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "natural", "prevalence", "rotated",
              "label_swap", "acquisition")  # rotated, label_swap: iid, then client groups
# (groups.py); acquisition: iid or dirichlet, then each site's scanner (acquisition.py)
_SITE_KEYS = ("size", "classes", "shift")
_MAX_RESAMPLES = 10_000  # NIID-Bench redraws without limit; we stop and say so
#: NIID-Bench's minimum client size: its label- and quantity-skew draws are repeated until every
#: client holds at least this many examples (``min_require_size = 10``). ``conf/partition/``
#: dirichlet.yaml and quantity.yaml say the same (tested).
MIN_CLIENT_SIZE = 10
#: Partitioners added at run time by :func:`register`: ``partition.name`` ->
#: ``partitioner(labels, num_clients, rng, cfg) -> list of index arrays``.
REGISTERED: dict[str, Callable[..., list[np.ndarray]]] = {}


def register(name: str, partitioner: Callable[..., list[np.ndarray]]) -> None:
    """Adds ``partitioner`` as ``partition.name=<name>`` for this process (a partition defined
    outside ``fedbench/partition``; ``docs/extending/partition.md``). It is called as
    ``partitioner(labels, num_clients, rng, cfg)`` (``rng``: a NumPy generator seeded with the
    partition seed; ``cfg``: the ``partition`` config group) and returns ``num_clients`` arrays
    of example indices, no index twice. The feature shift, lab panels, the per-client
    train/test split and normalisation then apply as for the built-in partitions.

    Raises:
      ValueError: ``name`` is taken (a built-in partition or one registered before).
    """
    if name in PARTITIONS or name in REGISTERED:
        raise ValueError(f"a partition named {name!r} exists already")
    REGISTERED[name] = partitioner


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly shuffled, near-equal split (sizes differ by at most one)."""
    return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    alpha: float,
    min_size: int = MIN_CLIENT_SIZE,
    balance: bool = True,
) -> list[np.ndarray]:
    """Label skew: each class is split over clients in proportions ``p ~ Dir(alpha * 1)``.

    Small ``alpha`` gives clients few classes each; large ``alpha`` approaches IID (Hsu et al.
    2019). With ``balance`` (default) this is NIID-Bench's label-distribution skew (Li et al.
    2022): classes are split one after another, and for each class ``p_j`` is set to 0 for every
    client ``j`` that already holds ``>= N / num_clients`` examples before ``p`` is renormalised,
    which keeps client sizes closer together; ``balance=False`` is Hsu et al.'s plain per-class
    split. Either way the whole draw is repeated until every client holds at least
    ``min_size`` examples (NIID-Bench: 10).

    Raises:
      ConfigError: ``min_size * num_clients`` exceeds the examples, or no draw in 10,000 gives
        every client ``min_size`` examples.
    """
    n = len(labels)
    _check_min_size(min_size, num_clients, n)
    classes = np.unique(labels)
    cap = n / num_clients
    for _ in range(_MAX_RESAMPLES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        held = np.zeros(num_clients, np.int64)
        for k in classes:
            idx = rng.permutation(np.flatnonzero(labels == k))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            if balance:
                # Some client is below the cap while any example is left to place; if all of
                # the mass underflowed onto full clients, share the class among the others.
                open_ = held < cap
                proportions = proportions * open_
                total = proportions.sum()
                proportions = proportions / total if total > 0 else open_ / open_.sum()
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
                held[client] += len(chunk)
        if held.min() >= min_size:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise ConfigError(
        "partition.alpha",
        alpha,
        f"a value for which every one of {num_clients} clients gets >= {min_size} examples "
        f"({_MAX_RESAMPLES:,} draws failed); raise alpha, lower partition.min_size or lower "
        "num_clients",
    )


def _check_min_size(min_size: int, num_clients: int, n: int) -> None:
    if min_size * num_clients > n:
        raise ConfigError(
            "partition.min_size", min_size,
            f"<= {n // num_clients}: {num_clients} clients x min_size examples must fit in the "
            f"{n} examples",
        )


def shards(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, shards_per_client: int
) -> list[np.ndarray]:
    """Pathological non-IID: sort by label, cut into ``num_clients * k`` shards, k per client.

    McMahan et al. 2017 (MNIST: 200 shards of 300, 2 per client). When the dataset size is not a
    multiple of the shard count, shards differ in size by one so no example is dropped.
    """
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, num_clients * shards_per_client)
    assignment = rng.permutation(len(pieces)).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]


def quantity(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    alpha: float,
    min_size: int = MIN_CLIENT_SIZE,
) -> list[np.ndarray]:
    """Size skew: client shares ``q ~ Dir(alpha * 1)`` of a shuffled dataset (NIID-Bench).

    Labels stay IID in expectation; only the amount of data differs. Redrawn until every client
    has at least ``min_size`` examples (NIID-Bench: 10).

    Raises:
      ConfigError: ``min_size * num_clients`` exceeds the examples, or no draw in 10,000 gives
        every client ``min_size`` examples.
    """
    n = len(labels)
    _check_min_size(min_size, num_clients, n)
    for _ in range(_MAX_RESAMPLES):
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * n).astype(int)
        if np.diff(cuts, prepend=0, append=n).min() >= min_size:
            return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]
    raise ConfigError(
        "partition.alpha", alpha,
        f"a value for which every one of {num_clients} clients gets >= {min_size} examples "
        f"({_MAX_RESAMPLES:,} draws failed); raise alpha, lower partition.min_size or lower "
        "num_clients",
    )


def natural(natural_client: np.ndarray | None, num_clients: int) -> list[np.ndarray]:
    """The dataset's own clients (e.g. Synthetic's 30 devices): each client's example indices in
    increasing order. One stable sort (``O(n log n)``), not a scan of all ``n`` examples per
    client, so 100,000 clients partition in well under a second."""
    client = np.asarray(natural_client)
    order = np.argsort(client, kind="stable")
    bounds = np.searchsorted(client[order], np.arange(num_clients + 1))
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _largest_remainder(targets: np.ndarray, total: int) -> np.ndarray:
    """Integers within one of ``targets`` (which sum to ``total``) that sum to ``total`` exactly.

    Floors every target and gives the remaining units to the largest fractional parts (ties:
    the lower index), the Hamilton apportionment method.
    """
    counts = np.floor(targets + 1e-9).astype(np.int64)
    order = np.argsort(-(targets - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def _class_id(key: Any) -> int | None:
    """A class id written as an int or an integer string (Hydra may give either); else None."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    return None


def _proportion(value: Any) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 1.0
    )


def prevalence_counts(sites: Any, labels: np.ndarray, num_clients: int) -> np.ndarray:
    """Validates ``partition.sites`` and returns the ``[sites, classes]`` example counts.

    Site ``i`` asks for ``size`` examples with class ``k`` making up ``classes[k]`` of them;
    classes it does not name share the remaining mass ``1 - sum(classes)`` in proportion to
    their overall frequency in ``labels``. Each site's row is rounded to integers that sum to
    ``size`` exactly, each within one of ``size`` times its share (largest remainder).

    Raises:
      ConfigError: a site count other than ``num_clients``, a size below 1, a class id not in
        ``labels``, a proportion outside [0, 1], proportions summing above 1 (or below 1 with
        every class named), an unknown site key, or more examples of a class than exist.
    """
    form = "a list of sites, each {size: N, classes: {class id: proportion}, shift: optional}"
    if isinstance(sites, (str, bytes, Mapping)) or not isinstance(sites, Sequence) or not sites:
        raise ConfigError("partition.sites", sites, form)
    if len(sites) != num_clients:
        raise ConfigError(
            "num_clients", num_clients,
            f"{len(sites)}, the number of partition.sites: set num_clients={len(sites)} and "
            f"clients_per_round<={len(sites)}",
        )
    available = np.bincount(labels)
    present = np.flatnonzero(available)
    overall = available / available.sum()
    rows = []
    for i, site in enumerate(sites):
        key = f"partition.sites[{i}]"
        if not isinstance(site, Mapping):
            raise ConfigError(key, site, form)
        unknown = sorted(str(k) for k in site if k not in _SITE_KEYS)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", site[unknown[0]],
                              "no such key (keys: " + ", ".join(_SITE_KEYS) + ")")
        size = site.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"{key}.size", size, "an integer >= 1 (examples at this site)")
        classes = site.get("classes") or {}
        if not isinstance(classes, Mapping):
            raise ConfigError(f"{key}.classes", classes, "a mapping {class id: proportion}")
        mass = np.zeros(len(available))
        for name, share in classes.items():
            k = _class_id(name)
            if k is None or k not in present:
                raise ConfigError(
                    f"{key}.classes", dict(classes),
                    f"class ids that exist in the dataset ({present.min()}..{present.max()}); "
                    f"there is no class {name!r}",
                )
            if not _proportion(share):
                raise ConfigError(f"{key}.classes", dict(classes),
                                  f"proportions in [0, 1]; class {k} has {share!r}")
            mass[k] = float(share)
        named = float(mass.sum())
        if named > 1 + 1e-9:
            raise ConfigError(f"{key}.classes", dict(classes),
                              f"proportions summing to at most 1 (they sum to {named:g})")
        rest = np.setdiff1d(present, [_class_id(n) for n in classes])
        if len(rest):
            mass[rest] = max(0.0, 1 - named) * overall[rest] / overall[rest].sum()
        elif named < 1 - 1e-9:
            raise ConfigError(
                f"{key}.classes", dict(classes),
                f"proportions summing to 1 when every class is named (they sum to {named:g})",
            )
        rows.append(_largest_remainder(mass / mass.sum() * size, size))
    counts = np.stack(rows)
    asked = counts.sum(axis=0)
    short = np.flatnonzero(asked > available)
    if len(short):
        k = short[0]
        raise ConfigError(
            "partition.sites",
            f"{asked[k]} examples of class {k} in total (per site: {counts[:, k].tolist()})",
            f"at most {available[k]}, the examples of class {k} in the dataset (drawn without "
            f"replacement); lower the sizes or class {k}'s proportions",
        )
    return counts


def prevalence(
    labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Hospital scenarios: site ``i`` gets ``counts[i, k]`` examples of class ``k``.

    Each class's examples are shuffled once and dealt out in site order, so the draw is without
    replacement; examples no site asks for are left out. ``counts`` comes from
    :func:`prevalence_counts`.
    """
    parts: list[list[np.ndarray]] = [[] for _ in range(len(counts))]
    for k in range(counts.shape[1]):
        idx = rng.permutation(np.flatnonzero(labels == k))
        cuts = np.cumsum(counts[:, k])
        for site, chunk in enumerate(np.split(idx[: cuts[-1]], cuts[:-1])):
            parts[site].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def partition(
    cfg: Mapping[str, Any],
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    natural_client: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Dispatches on ``cfg["name"]``; validates its settings first.

    Raises:
      ConfigError: unknown name, ``alpha <= 0``, a ``min_size`` that is not an integer >= 1 or
        that the clients cannot all reach, ``balance`` not a boolean, a ``prevalence`` site spec
        that cannot be met (see :func:`prevalence_counts`).
    """
    name = cfg.get("name")
    if name not in PARTITIONS and name not in REGISTERED:
        raise ConfigError("partition.name", name,
                          "one of: " + ", ".join((*PARTITIONS, *REGISTERED)))
    rng = np.random.default_rng(seed)
    n = len(labels)
    if name in REGISTERED:
        return _checked(name, REGISTERED[name](labels, num_clients, rng, cfg), num_clients, n)
    if name == "natural":
        if natural_client is None:
            raise ConfigError(
                "partition.name", name, "a dataset with its own clients (e.g. synthetic)"
            )
        available = int(natural_client.max()) + 1
        if num_clients != available:
            raise ConfigError(
                "num_clients", num_clients, f"{available}: the dataset's own number of clients"
            )
        return natural(natural_client, num_clients)
    if name == "prevalence":
        return prevalence(labels, prevalence_counts(cfg.get("sites"), labels, num_clients), rng)
    if num_clients > n:
        raise ConfigError("num_clients", num_clients, f"<= {n}, the number of examples")
    if name == "acquisition":  # the scanners' transforms: fedbench/partition/acquisition.py
        from fedbench.partition.acquisition import check

        check(cfg, num_clients)
        if cfg.get("labels", "iid") == "iid":
            return iid(labels, num_clients, rng)
    if name in ("iid", "rotated", "label_swap"):  # groups' transforms: fedbench/partition/groups.py
        return iid(labels, num_clients, rng)
    if name in ("dirichlet", "quantity", "acquisition"):
        alpha = cfg.get("alpha")
        if alpha is None or not float(alpha) > 0:
            raise ConfigError("partition.alpha", alpha, "> 0 (Dirichlet concentration)")
        min_size = cfg.get("min_size", MIN_CLIENT_SIZE)
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
            raise ConfigError("partition.min_size", min_size,
                              "an integer >= 1 (examples per client)")
        if name == "quantity":
            return quantity(labels, num_clients, rng, float(alpha), min_size)
        balance = cfg.get("balance", True)
        if not isinstance(balance, bool):
            raise ConfigError("partition.balance", balance, "true or false")
        return dirichlet(labels, num_clients, rng, float(alpha), min_size, balance)
    k = cfg.get("shards_per_client")
    if k is None or int(k) < 1:
        raise ConfigError("partition.shards_per_client", k, "an integer >= 1")
    if num_clients * int(k) > n:
        raise ConfigError(
            "partition.shards_per_client", k, f"<= {n // num_clients} (num_clients * k <= {n})"
        )
    return shards(labels, num_clients, rng, int(k))


def _checked(name: str, parts: Sequence[np.ndarray], num_clients: int,
             n: int) -> list[np.ndarray]:
    """A registered partitioner's output: ``num_clients`` integer arrays of distinct indices."""
    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    joined = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if len(parts) != num_clients:
        raise ValueError(f"partition {name} returned {len(parts)} clients, not {num_clients}")
    if len(joined) and (joined.min() < 0 or joined.max() >= n
                        or len(np.unique(joined)) != len(joined)):
        raise ValueError(f"partition {name} returned an index twice or outside [0, {n})")
    return parts
