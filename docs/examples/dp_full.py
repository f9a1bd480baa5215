"""Worked example: a privacy mechanism in one file (docs/architecture.md, "Adding a privacy
mechanism").

``dp_full``: client-level DP for a cross-silo federation in which every site takes part in
every round, so there is no amplification by sampling. Each site's model delta is clipped to
L2 norm ``clip``; the server adds ``N(0, (noise_multiplier * clip)^2)`` to every coordinate of
the sum and divides by the number of sites. Adding or removing one site moves the sum by at
most ``clip``, so a round is a Gaussian mechanism with noise multiplier ``z`` and ``T`` rounds
are its ``T``-fold composition (McMahan et al. 2018, Algorithm 1 with ``q = 1``), accounted by
dp-accounting as ``SelfComposedDpEvent(GaussianDpEvent(z), T)``.

Inside the package it would be ``fedbench/privacy/dp_full.py`` plus ``conf/privacy/dp_full.yaml``
(``name: dp_full``, ``clip``, ``noise_multiplier``, ``target_epsilon``, ``delta``,
``accountant``); here :func:`fedbench.privacy.mechanism.register` adds it for a test
(``tests/test_examples.py``), which checks the noise's scale and the epsilon against the
Gaussian mechanism's closed form. The correlated-noise mechanism the issue "Cross-silo DP
without sampling" asks for (DP-FTRL) is this regime done better: same interface, with its noise
state in the server state.

References:
  H. B. McMahan, D. Ramage, K. Talwar, L. Zhang. "Learning Differentially Private Recurrent
  Language Models", ICLR 2018, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import dp_accounting
import jax
import jax.numpy as jnp

from fedbench import hparams
from fedbench.algorithm.base import check_client_dp
from fedbench.errors import ConfigError
from fedbench.privacy.accounting import epsilon
from fedbench.privacy.mechanism import BuildContext, Mechanism, every_site_every_round
from fedbench.privacy.mechanisms import add_gaussian_noise
from fedbench.transforms import clip_by_norm


@dataclasses.dataclass(frozen=True)
class FullParticipationDP(Mechanism):
    """Every site in every round; Gaussian noise on the clipped sum (module docstring)."""

    clip: float
    noise_multiplier: float
    num_clients: int

    name = "dp_full"
    unit = "client"
    hyperparameters = ("noise_multiplier", "clip")
    bounds_messages = True
    identity = {"clip": 1e6, "target_epsilon": None, "noise_multiplier": 0}

    @classmethod
    def check_algorithm(cls, algorithm) -> None:
        check_client_dp(algorithm, "dp_full")  # releases nothing but its clipped delta

    def bind(self, algorithm, settings, stragglers):
        self.check_algorithm(algorithm)
        every_site_every_round("dp_full", self.num_clients, settings, stragglers)
        return self

    def transforms(self) -> tuple:
        return (clip_by_norm(),)

    def round_info(self, state) -> dict[str, Any]:
        return {"clip": hparams.get(state.hparams, "clip", self.clip)}

    def aggregate(self, state, uploads, infos, valid, key, algorithm):
        z = self.noise_multiplier
        stddev = hparams.get(state.hparams, "noise_std", z * self.clip if z > 0 else 0.0)
        weights = valid.astype(jnp.float32)
        total = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), uploads["delta"])
        mean = jax.tree.map(lambda t: t / self.num_clients,
                            add_gaussian_noise(total, stddev, key))
        post = algorithm.dp_aggregate
        return ({"delta": mean} if post is None else post({"delta": mean})), {}

    def carried(self) -> dict[str, float]:
        z = self.noise_multiplier
        return {"clip": self.clip, "noise_std": z * self.clip if z > 0 else 0.0}

    def report(self, plan, rounds: int, participation, steps):
        eps = _epsilon(self.noise_multiplier, rounds, plan.delta, plan.accountant)
        return {"epsilon": eps, "steps": rounds, "sampling": "none", "unit": "client"}


def _epsilon(z: float, rounds: int, delta: float, accountant: str) -> float:
    if z <= 0:
        return math.inf
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)
    return epsilon(event, delta, accountant)


def check(cfg: Mapping[str, Any], accountant: str) -> None:
    if cfg.get("sampling") not in (None, "none"):
        raise ConfigError("privacy.sampling", cfg["sampling"],
                          "unset with privacy=dp_full (every site in every round)")


def build(cfg: Mapping[str, Any], common: Mapping[str, Any], ctx: BuildContext):
    noise = common["noise"]
    if noise is None and math.isinf(common["target"]):
        noise = 0.0
    if noise is None:  # the smallest z (to 1e-3) whose epsilon after every round is the target
        low, high = 0.0, 1.0
        while _epsilon(high, ctx.rounds, common["delta"], common["accountant"]) > common["target"]:
            low, high = high, 2 * high
        while high - low > 1e-3:
            mid = (low + high) / 2
            spent = _epsilon(mid, ctx.rounds, common["delta"], common["accountant"])
            low, high = (mid, high) if spent > common["target"] else (low, mid)
        noise = high
    return FullParticipationDP(common["clip"], noise, ctx.num_clients), {"sampling": "none"}


def population(ctx: BuildContext) -> int:
    return ctx.num_clients


MECHANISM = FullParticipationDP
