"""FedAdagrad, FedAdam and FedYogi: adaptive server optimisers on the mean client delta.

S. J. Reddi, Z. Charles, M. Zaheer, Z. Garrett, K. Rush, J. Konecny, S. Kumar, H. B. McMahan,
"Adaptive Federated Optimization", ICLR 2021, Algorithm 2. Clients run FedAvg's local SGD; the
server treats ``-mean delta`` as a pseudo-gradient for :func:`scale_by_fedopt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedbench.algorithm.base import Algorithm, positive, server_step, unit


class FedOptState(NamedTuple):
    """First and second moment estimates ``m`` and ``v`` of Reddi et al. 2021, Algorithm 2."""

    m: Any
    v: Any


def scale_by_fedopt(
    variant: str, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
) -> optax.GradientTransformation:
    """The adaptive server direction of FedAdagrad / FedAdam / FedYogi (Reddi et al., Alg. 2).

    With ``g`` the pseudo-gradient (the negated average client delta):
    ``m = beta1 * m + (1 - beta1) * g``;
    ``v = v + g^2`` (Adagrad), ``v = beta2 * v + (1 - beta2) * g^2`` (Adam),
    ``v = v - (1 - beta2) * g^2 * sign(v - g^2)`` (Yogi);
    output ``m / (sqrt(v) + tau)``. Unlike ``optax.adam`` there is no bias correction and
    ``tau`` is added outside the square root, as in the paper. ``v`` starts at ``tau^2``
    (the paper requires ``v_{-1} >= tau^2``) and ``m`` at zero.
    """
    if variant not in ("adagrad", "adam", "yogi"):
        raise ValueError(f"unknown FedOpt variant {variant!r}")

    def init_fn(params):
        return FedOptState(
            m=jax.tree.map(jnp.zeros_like, params),
            v=jax.tree.map(lambda p: jnp.full_like(p, tau**2), params),
        )

    def update_fn(updates, state, params=None):
        del params
        m = jax.tree.map(lambda m, g: beta1 * m + (1 - beta1) * g, state.m, updates)
        if variant == "adagrad":
            v = jax.tree.map(lambda v, g: v + g * g, state.v, updates)
        elif variant == "adam":
            v = jax.tree.map(lambda v, g: beta2 * v + (1 - beta2) * g * g, state.v, updates)
        else:
            v = jax.tree.map(
                lambda v, g: v - (1 - beta2) * g * g * jnp.sign(v - g * g), state.v, updates
            )
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
        return out, FedOptState(m=m, v=v)

    return optax.GradientTransformation(init_fn, update_fn)


def _fedopt(name: str, cfg: Mapping[str, Any]) -> Algorithm:
    server_lr, tau = positive(cfg, "server_lr"), positive(cfg, "tau")
    beta1, beta2 = unit(cfg, "beta1"), unit(cfg, "beta2")
    transform = optax.chain(
        scale_by_fedopt(name.removeprefix("fed"), beta1, beta2, tau), server_step(server_lr)
    )
    settings = {"server_lr": server_lr, "beta1": beta1, "beta2": beta2, "tau": tau}
    return Algorithm(name, "federated", transform, settings=settings,
                     hyperparameters=("server_lr",))


def fedadam(cfg: Mapping[str, Any]) -> Algorithm:
    return _fedopt("fedadam", cfg)


def fedyogi(cfg: Mapping[str, Any]) -> Algorithm:
    return _fedopt("fedyogi", cfg)


def fedadagrad(cfg: Mapping[str, Any]) -> Algorithm:
    return _fedopt("fedadagrad", cfg)
