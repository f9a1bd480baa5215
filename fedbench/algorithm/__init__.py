"""Federated algorithms as data: what clients do locally and how the server applies updates.

Every federated algorithm here shares one round (:mod:`fedbench.simulator`): clients run SGD from
the server model, the server averages their model deltas weighted by example counts and hands
the negated average to an optax server optimiser as a pseudo-gradient. They differ in

* the local objective (FedProx adds ``mu/2 * ||w - w_server||^2``),
* the local schedule (FedSGD: one full-batch gradient step),
* the server optimiser (FedAvg: SGD with learning rate 1, i.e. ``w += mean delta``; FedAdam,
  FedYogi, FedAdagrad: adaptive server steps of Reddi et al. 2021).

``centralized`` and ``local`` are baselines run by the same simulator: one learner on the pooled
training data, and every client training alone.

References:
  FedSGD, FedAvg: H. B. McMahan et al., AISTATS 2017, Algorithm 1.
  FedProx: T. Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. (2).
  FedAdagrad, FedAdam, FedYogi: S. J. Reddi et al., "Adaptive Federated Optimization", ICLR
  2021, Algorithm 2.
  SCAFFOLD: S. P. Karimireddy, S. Kale, M. Mohri, S. J. Reddi, S. U. Stich, A. T. Suresh,
  "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020, Algorithm 1
  (option II control variates).
  FedBuff: J. Nguyen, K. Malik, H. Zhan, A. Yousefpour, M. Rabbat, M. Malek, D. Huba,
  "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022, Algorithm 1.
  FedNova: J. Wang, Q. Liu, H. Liang, G. Joshi, H. V. Poor, "Tackling the Objective
  Inconsistency Problem in Heterogeneous Federated Optimization", NeurIPS 2020, Eq. 6-7.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedbench.errors import ConfigError

ALGORITHMS = (
    "fedsgd",
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "scaffold",
    "fednova",
    "fedbuff",
    "centralized",
    "local",
)
FEDOPT = ("fedadam", "fedyogi", "fedadagrad")


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


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """What the simulator needs to know about an algorithm.

    Attributes:
      name: the config name.
      kind: ``federated``, ``centralized`` (pooled data, one learner) or ``local`` (no
        communication; every client trains its own model).
      server_optimizer: applied to the negated weighted mean delta.
      prox_mu: FedProx proximal coefficient (0 = plain local SGD).
      full_batch: one full-batch gradient step per client per round (FedSGD).
      scaffold: SCAFFOLD control variates (a per-client store kept across rounds).
      normalized: FedNova's normalised averaging of deltas by local step counts.
      buffer_size, concurrency: FedBuff's K (deltas per server update) and the number of
        clients training at any time (``kind == "async"``).
      site_speed: sigma of the lognormal seconds-per-step of each site (0: all equal), used for
        the simulated clock of every federated algorithm.
    """

    name: str
    kind: str
    server_optimizer: optax.GradientTransformation
    prox_mu: float = 0.0
    full_batch: bool = False
    scaffold: bool = False
    normalized: bool = False
    buffer_size: int = 0
    concurrency: int = 0
    site_speed: float = 0.0


def algorithm_defaults(name: str) -> dict[str, Any]:
    """The settings of ``conf/algorithm/<name>.yaml``: the one source of every default.

    :func:`build_algorithm` fills keys a config leaves out from here, so a config built in code
    (``{"name": "fedprox"}``) runs what ``fedbench algorithm=fedprox`` runs.

    Raises:
      ConfigError: ``name`` has no YAML file.
    """
    return copy.deepcopy(_yaml_defaults(name))


@functools.cache
def _yaml_defaults(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from fedbench.cli import CONF_DIR

    path = CONF_DIR / "algorithm" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("algorithm.name", name,
                          f"an algorithm with a config file ({path} is missing)")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"algorithm.{key}", None,
                          f"a value (conf/algorithm/{cfg['name']}.yaml must set {key})")
    return cfg[key]


def _positive(cfg: Mapping[str, Any], key: str) -> float:
    value = _setting(cfg, key)
    if isinstance(value, bool) or value is None or not float(value) > 0:
        raise ConfigError(f"algorithm.{key}", value, "> 0")
    return float(value)


def _unit(cfg: Mapping[str, Any], key: str) -> float:
    value = _setting(cfg, key)
    if isinstance(value, bool) or value is None or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"algorithm.{key}", value, "in [0, 1)")
    return float(value)


def build_algorithm(cfg: Mapping[str, Any], clients_per_round: int | None = None) -> Algorithm:
    """Builds the algorithm named by ``cfg["name"]``, validating its settings.

    Keys ``cfg`` leaves out take their values from ``conf/algorithm/<name>.yaml``
    (:func:`algorithm_defaults`); the code holds no defaults of its own.

    Raises:
      ConfigError: unknown name, a setting missing from both ``cfg`` and the YAML file, or an
        out-of-range setting.
    """
    name = cfg.get("name")
    if name not in ALGORITHMS:
        raise ConfigError("algorithm.name", name, "one of: " + ", ".join(ALGORITHMS))
    speed = cfg.get("site_speed", 0.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed >= 0:
        raise ConfigError("site_speed", speed, "a number >= 0 (lognormal sigma)")
    algorithm = _build(name, {**algorithm_defaults(name), **cfg}, clients_per_round)
    return dataclasses.replace(algorithm, site_speed=float(speed))


def _build(name: str, cfg: Mapping[str, Any], clients_per_round: int | None) -> Algorithm:
    fedavg_server = optax.sgd(1.0)
    if name in ("centralized", "local", "fedavg"):
        return Algorithm(name, name if name != "fedavg" else "federated", fedavg_server)
    if name == "fedsgd":
        return Algorithm(name, "federated", fedavg_server, full_batch=True)
    if name == "fedbuff":
        k = _setting(cfg, "buffer_size") or clients_per_round
        m = _setting(cfg, "concurrency") or clients_per_round
        for key, value in (("buffer_size", k), ("concurrency", m)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"algorithm.{key}", value, "an integer >= 1 (null: clients_per_round)")
        if k > m:
            raise ConfigError("algorithm.buffer_size", k, f"<= algorithm.concurrency={m}")
        return Algorithm(name, "async", optax.sgd(_positive(cfg, "server_lr")),
                         buffer_size=k, concurrency=m)
    if name in ("scaffold", "fednova"):
        server_lr = _positive(cfg, "server_lr")
        return Algorithm(
            name, "federated", optax.sgd(server_lr),
            scaffold=name == "scaffold", normalized=name == "fednova",
        )
    if name == "fedprox":
        mu = _setting(cfg, "mu")
        if isinstance(mu, bool) or mu is None or not float(mu) >= 0:
            raise ConfigError("algorithm.mu", mu, ">= 0 (FedProx proximal coefficient)")
        return Algorithm(name, "federated", fedavg_server, prox_mu=float(mu))
    server_lr = _positive(cfg, "server_lr")
    beta1 = _unit(cfg, "beta1")
    beta2 = _unit(cfg, "beta2")
    tau = _positive(cfg, "tau")
    transform = optax.chain(
        scale_by_fedopt(name.removeprefix("fed"), beta1, beta2, tau), optax.scale(-server_lr)
    )
    return Algorithm(name, "federated", transform)
