"""A worked example of adding an algorithm: FedExP, one file (and, to register it, one config).

D. Jhunjhunwala, S. Wang, G. Joshi, "FedExP: Speeding Up Federated Averaging via
Extrapolation", ICLR 2023, Algorithm 1: the server extrapolates the uniform mean of the
cohort's deltas ``mean = 1/M sum_i delta_i`` by a step size it computes from them,

    eta_g = max(1, sum_i ||delta_i||^2 / (2 M (||mean||^2 + eps)))          (Eq. 10)
    w <- w + eta_g * mean.

The algorithm has its own ``aggregate`` (it needs every client's ``||delta_i||^2``), so under
``privacy=dp_client`` the mechanism's noisy mean cannot stand in for it: it declares no
``dp_aggregate`` and is refused, naming itself, before any work (the individual norms would be
released without noise). Everything else is FedAvg's: the local update, ``client_finish`` and
the server optimiser (``optax.sgd(1.0)`` on ``-aggregate``, i.e. ``w + eta_g * mean``).

Registering it in fedbench is one line in ``fedbench.algorithm.BUILDERS`` plus
``conf/algorithm/fedexp.yaml`` (``name: fedexp``, ``eps: 0.001``); ``tests/test_combinations.py``
then checks it in every combination with no test edited. ``tests/test_examples.py`` imports
this file, runs it in the simulator and compares it with a NumPy loop written from the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, positive


def fedexp_aggregate(eps: float):
    """The server's extrapolated step over the cohort (leading axis: clients; ``valid``: the
    clients whose update counted)."""

    def aggregate(uploads, weights, stats, valid, num_clients):
        del weights, stats, num_clients
        w = valid.astype(jnp.float32)
        count = jnp.maximum(w.sum(), 1.0)
        deltas = uploads["delta"]
        mean = jax.tree.map(lambda d: jnp.tensordot(w, d, axes=1) / count, deltas)
        squares = sum(jnp.tensordot(w, jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1), axes=1)
                      for d in jax.tree.leaves(deltas))
        norm = sum(jnp.sum(m * m) for m in jax.tree.leaves(mean))
        step = jnp.maximum(1.0, squares / (2.0 * count * (norm + eps)))
        return {"delta": jax.tree.map(lambda m: step * m, mean), "step": step}

    return aggregate


def fedexp(cfg: Mapping[str, Any]) -> Algorithm:
    """``algorithm=fedexp``: ``eps`` (> 0) keeps the step finite when the mean vanishes."""
    eps = positive(cfg, "eps")
    return Algorithm("fedexp", "federated", optax.sgd(1.0), settings={"eps": eps},
                     aggregate=fedexp_aggregate(eps))
