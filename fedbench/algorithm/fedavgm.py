"""FedAvgM: FedAvg with server momentum.

T.-M. H. Hsu, H. Qi, M. Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", arXiv:1909.06335, 2019, Sec. 3 (Algorithm "FedAvgM"): with
``Delta`` the example-weighted mean client delta, the server keeps a velocity
``v <- beta v + (-Delta)`` and steps ``w <- w - server_lr * v`` (``beta = 0``: FedAvg with a
server learning rate). This is ``optax.sgd(server_lr, momentum=beta)`` on the pseudo-gradient,
written as ``optax.trace`` and :func:`~fedbench.algorithm.base.server_step` so the server
learning rate can be a replica's own (``sweep.server_lr``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from fedbench.algorithm.base import Algorithm, positive, server_step, unit


def fedavgm(cfg: Mapping[str, Any]) -> Algorithm:
    server_lr, momentum = positive(cfg, "server_lr"), unit(cfg, "momentum")
    return Algorithm("fedavgm", "federated", optax.chain(optax.trace(decay=momentum), server_step(server_lr)),
                     settings={"server_lr": server_lr, "momentum": momentum},
                     hyperparameters=("server_lr",))
