"""LiRA's shadow models as shadow *federations*, trained by the simulator as replicas.

Carlini et al. (S&P 2022), Sec. VI-B: shadow models train on random halves of the population.
For a federation the faithful shadow is a federation: the same sites, algorithm, schedule and
settings, each site holding a random half of its own examples (its training and its test split
together: the target's members and non-members). Shadow ``s`` is a replica of one compiled
program with its own data (the mechanism of partitions as replicas,
:mod:`fedbench.replica_data`: each shadow's per-site data zero-padded to common shapes and
stacked), its own seed, and the run's own settings (``run_values``: under DP its noise).
``audit.membership.shadow_kind=federations`` selects these instead of the centrally trained
shadows of :mod:`fedbench.audit.shadow`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fedbench.errors import ConfigError


def site_owners(counts: np.ndarray) -> np.ndarray:
    """The site of each example of a pooled split (sites concatenated in order)."""
    return np.repeat(np.arange(len(counts)), np.asarray(counts))


def shadow_federation_params(cfg: Mapping[str, Any], pop_x: np.ndarray, pop_y: np.ndarray,
                             owners: np.ndarray, masks: np.ndarray, seeds: list[int],
                             axis: str = "map") -> tuple[list[Any], np.ndarray]:
    """``(params, masks)``: the final global model (flax ``{"params": ...}``) of each shadow
    federation ``s``, whose site ``k`` trains on the population examples with ``owners == k``
    and ``masks[s]``; and the masks as used (a site left empty by its half keeps its first
    example, marked IN)."""
    from fedbench.dataset.federated import from_client_arrays
    from fedbench.replica_data import stack_padded
    from fedbench.replicas import run_values
    from fedbench.run import build_simulator

    built = build_simulator(cfg)
    sim, data = built.sim, built.data
    alg = sim.algorithm
    if (sim.per_client_models or alg.kind != "federated" or alg.personal_pass is not None
            or alg.full_batch or cfg.get("local_steps") is not None):
        raise ConfigError("audit.membership.shadow_kind", "federations",
                          "central for this run (shadow federations need a synchronous "
                          "algorithm with one global model, minibatch epochs, no local_steps)")
    sites = data.num_clients
    test_x, test_y = np.asarray(data.test_x), np.asarray(data.test_y)
    test_counts = np.asarray(data.test_counts)
    masks = np.array(masks, bool)
    shadows = []
    for mask in masks:
        for k in range(sites):  # every site keeps at least one example
            if not (mask & (owners == k)).any():
                mask[np.flatnonzero(owners == k)[0]] = True
        chosen = [mask & (owners == k) for k in range(sites)]
        shadows.append(from_client_arrays(
            [pop_x[c] for c in chosen], [pop_y[c] for c in chosen],
            [test_x[k, :test_counts[k]] for k in range(sites)],
            [test_y[k, :test_counts[k]] for k in range(sites)],
            data.num_classes, data.task))
    payload = stack_padded(shadows)
    values = run_values(cfg, built.privacy)
    states = sim.init_replicas(seeds, [values] * len(seeds))
    states = sim.run_replicas(states, int(cfg["rounds"]), axis, payload)
    out = []
    for s in range(len(seeds)):
        params = jax.tree.map(lambda a, s=s: a[s], states.params)
        out.append(params if "params" in params else {"params": params})
    return out, masks
