"""Client-level DP-FedAvg (``privacy=dp_client``): the mechanism wraps the round's aggregation.

Each sampled client's model delta is clipped to L2 norm ``clip`` before it leaves the site
(the first update transform); the server sums the cohort's clipped deltas, adds Gaussian noise
of standard deviation ``noise_multiplier * clip`` to every coordinate and divides by the
*expected* number of reporting clients (McMahan et al. 2018, Algorithm 1, the fixed-denominator
estimator). Cohorts are Poisson (each client with probability ``q``,
:func:`fedbench.privacy.mechanisms.poisson_cohort`) or fixed-size without replacement. The
neighbouring relation is adding or removing one client under Poisson cohorts, and replacing one
client's data by another's under fixed-size cohorts (dp-accounting accounts sampling without
replacement under replace-one); each round is a sampled Gaussian mechanism, accounted with
dp-accounting (:func:`fedbench.privacy.accounting.account`).

An algorithm runs under it only if its clients release nothing but the clipped delta
(``Algorithm.dp_client`` is None) and it aggregates with the example-weighted mean or declares
its post-processing of the noisy mean (``Algorithm.dp_aggregate``); else it is refused before
any work (:meth:`ClientDP.check_algorithm`).

Adaptive clipping (Andrew et al. 2021, Algorithm 1): the clip is state (``ServerState.clip``),
moved geometrically towards a quantile of the delta norms through a noisy count that shares the
budget (:func:`adaptive`).

References:
  H. B. McMahan, D. Ramage, K. Talwar, L. Zhang. "Learning Differentially Private Recurrent
  Language Models", ICLR 2018, Algorithm 1 (DP-FedAvg) and Sec. 2 (estimators).
  G. Andrew, O. Thakkar, H. B. McMahan, S. Ramaswamy. "Differentially Private Learning with
  Adaptive Clipping", NeurIPS 2021, Algorithm 1 and Theorem 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from fedbench import hparams
from fedbench.algorithm.base import check_client_dp
from fedbench.errors import ConfigError
from fedbench.privacy.accounting import SAMPLINGS, account, calibrate_noise
from fedbench.privacy.mechanism import BuildContext, Mechanism
from fedbench.privacy.mechanisms import (
    add_gaussian_noise, clip_to_norm, poisson_buffer_size, poisson_cohort,
)
from fedbench.transforms import clip_by_norm

Params = Any


@dataclasses.dataclass(frozen=True)
class ClientDP(Mechanism):
    """Client-level DP-FedAvg (see the module docstring).

    Attributes:
      clip: L2 bound on each client's model delta.
      noise_multiplier: noise std / clip.
      sampling: ``poisson`` (each client with probability ``rate``) or ``fixed``
        (``clients_per_round`` without replacement).
      rate: sampling probability ``q``.
      expected_cohort: the expected cohort (``q * num_clients``; ``clients_per_round``).
      buffer: slots for a Poisson cohort (overflow is counted and reported as an error).
      adaptive: adaptive clipping (Andrew et al. 2021): ``clip`` is only the initial value.
      target_quantile, clip_lr: the quantile gamma the clip tracks and its learning rate eta_C.
      count_stddev: std sigma_b of the noise on the count of unclipped clients.
      delta_noise_multiplier: noise multiplier on the deltas' sum when adaptive; together with
        the count query it composes to ``noise_multiplier`` (Andrew et al. 2021, Thm. 1).
      report_share: the expected share of sampled clients whose update arrives (below 1 when
        stragglers are dropped; set by the simulator from its stragglers,
        :func:`fedbench.stragglers.report_share`). Data independent.
    """

    clip: float
    noise_multiplier: float
    sampling: str
    rate: float
    expected_cohort: float
    buffer: int
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float = 0.0
    delta_noise_multiplier: float = 0.0
    report_share: float = 1.0

    name = "dp_client"
    unit = "client"
    hyperparameters = ("noise_multiplier", "clip", "target_epsilon")
    alternatives = (("target_epsilon", "noise_multiplier"),)  # either one sets the noise
    bounds_messages = True  # the noise is calibrated to the clip: every message keeps it
    # Fixed-size cohorts: the simulator's uniform draw, as without DP.
    identity = {"sampling": "fixed", "accountant": "rdp", "clip": 1e6, "target_epsilon": None,
                "noise_multiplier": 0}

    @property
    def expected_reports(self) -> float:
        """The fixed denominator: the expected number of clients whose update arrives."""
        return self.expected_cohort * self.report_share

    @classmethod
    def check_algorithm(cls, algorithm) -> None:
        """Refuses an algorithm that releases more than its clipped delta, or aggregates its
        own way without declaring how under a mechanism
        (:func:`fedbench.algorithm.base.check_client_dp`)."""
        check_client_dp(algorithm)

    @classmethod
    def sweep_refusal(cls, key: str, cfg: Mapping[str, Any]) -> str | None:
        if (cfg.get("adaptive_clip") or {}).get("enabled"):
            return "null with privacy.adaptive_clip (the clip and noise split are state of their own)"
        return None

    def bind(self, algorithm, settings, stragglers) -> ClientDP:
        """Checks the algorithm; fixes the expected share of sampled clients whose update
        arrives (:func:`fedbench.stragglers.report_share`), the denominator's second factor."""
        from fedbench.stragglers import report_share

        self.check_algorithm(algorithm)
        share = report_share(stragglers, settings.clients_per_round, self.independent_stragglers)
        if share <= 0:
            raise ConfigError("stragglers.fraction", stragglers.fraction,
                              "below 1 with privacy=dp_client and policy drop (no update "
                              "would arrive)")
        return dataclasses.replace(self, report_share=share)

    @property
    def independent_stragglers(self) -> bool:
        return self.sampling == "poisson"

    def transforms(self) -> tuple:
        return (clip_by_norm(),)  # first: what any later transform (a compressor) sees is clipped

    def sample_cohort(self, key, num_clients: int, round=None):
        if self.sampling != "poisson":
            return None  # fixed-size: the simulator's uniform cohort
        ids, valid, count = poisson_cohort(key, num_clients, self.rate, self.buffer)
        return ids, valid, (count > self.buffer).astype(jnp.int32)

    def init_state(self, state, num_clients: int):
        if not self.adaptive:
            return state
        return state.replace(clip=jnp.asarray(self.clip, jnp.float32))

    def round_info(self, state) -> dict[str, Any]:
        """The clip bound every client's delta is clipped to this round."""
        return {"clip": state.clip if self.adaptive
                else hparams.get(state.hparams, "clip", self.clip)}

    def aggregate(self, state, uploads, infos, valid, key, algorithm):
        """The noisy mean of the clipped deltas (:func:`dp_noisy_mean`), then the algorithm's
        declared post-processing (``Algorithm.dp_aggregate``); under adaptive clipping the
        next clip bound. A client whose update transforms report ``infos["absent"]`` (an
        audit's excluded canary site, which sends a zero update:
        :func:`fedbench.audit.canaries.canary_transform`) counts as not sampled, so it
        releases exactly what its absence would, the count of unclipped clients included."""
        bound = self.round_info(state)["clip"]
        if "absent" in infos:
            valid = valid & ~infos["absent"]
        mean, clip = dp_noisy_mean(uploads["delta"], infos["norm"], valid, self, key, bound,
                                   noise_std=hparams.get(state.hparams, "noise_std", None))
        private = algorithm.dp_aggregate
        aggregates = {"delta": mean} if private is None else private({"delta": mean})
        return aggregates, ({} if clip is None else {"clip": clip})

    def carried(self) -> dict[str, float]:
        """A fixed clip's bound and noise std ``z * clip``, carried as data (a sweep replica's
        own); adaptive clipping carries its clip in the state instead."""
        if self.adaptive:
            return {}
        z = self.noise_multiplier
        return {"clip": self.clip, "noise_std": z * self.clip if z > 0 else 0.0}

    def report(self, plan, rounds: int, participation, steps):
        """``rounds`` sampled Gaussian mechanisms at rate ``q`` (Poisson) or ``m`` of ``n``
        without replacement, accounted by dp-accounting (``plan``: delta, accountant)."""
        rep = account(self.noise_multiplier, self.rate, rounds, plan.delta, plan.accountant,
                      self.sampling, population=plan.num_clients,
                      cohort=plan.clients_per_round if self.sampling == "fixed" else None)
        return {**rep.as_dict(), "unit": "client"}

    def describe(self) -> dict[str, Any]:
        """Settings reported beside the epsilon (adaptive clipping's)."""
        if not self.adaptive:
            return {}
        return {"adaptive_clip": {
            "target_quantile": self.target_quantile, "learning_rate": self.clip_lr,
            "count_stddev": self.count_stddev,
            "delta_noise_multiplier": self.delta_noise_multiplier}}


def dp_noisy_mean(
    clipped: Params, norms: jax.Array, valid: jax.Array, dp: ClientDP, key: jax.Array,
    bound: float | jax.Array, noise_std: float | jax.Array | None = None,
) -> tuple[Params, jax.Array | None]:
    """DP-FedAvg's aggregator: sum the valid clipped deltas, add Gaussian noise, divide by the
    expected number of reporting clients ``dp.expected_reports`` (McMahan et al. 2018,
    Algorithm 1, fixed-denominator estimator; the expected cohort when no straggler is dropped).

    ``clipped``: the cohort's deltas already clipped to ``bound`` (the first update transform,
    :func:`fedbench.transforms.clip_by_norm`); ``norms``: their norms before clipping.
    Fixed clipping: noise std ``noise_multiplier * bound`` (``noise_std``: a sweep replica's own,
    computed on the host; :mod:`fedbench.hparams`); returns ``(mean, None)``.
    Adaptive clipping (Andrew et al. 2021, Algorithm 1): the sum gets noise std
    ``delta_noise_multiplier * bound``; the share of clients whose delta was within the bound,
    ``(sum_i (1[||delta_i|| <= bound] - 1/2) + N(0, count_stddev^2)) / expected_reports + 1/2``
    (centred bits: sensitivity 1/2), moves the bound geometrically towards the
    ``target_quantile`` of the norms: ``bound * exp(-clip_lr * (share - target_quantile))``.
    Returns ``(mean, new_bound)``.
    """
    weights = valid.astype(jnp.float32)
    total = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), clipped)
    delta_key, count_key = jax.random.split(key)
    z = dp.delta_noise_multiplier if dp.adaptive else dp.noise_multiplier
    # z = 0 means no noise even with clip = inf (0 * inf would be NaN).
    stddev = z * bound if z > 0 else 0.0
    if not dp.adaptive and noise_std is not None:  # a replica's own z * clip (host-computed)
        stddev = noise_std
    noisy = add_gaussian_noise(total, stddev, delta_key if dp.adaptive else key)
    mean = jax.tree.map(lambda t: t / dp.expected_reports, noisy)
    if not dp.adaptive:
        return mean, None
    # Centred bits (b_i - 1/2): one client moves the sum by at most 1/2 (sensitivity 1/2).
    centred = jnp.sum(jnp.where(valid, jnp.where(norms <= bound, 0.5, -0.5), 0.0))
    centred = centred + dp.count_stddev * jax.random.normal(count_key, ())
    share = centred / dp.expected_reports + 0.5
    return mean, bound * jnp.exp(-dp.clip_lr * (share - dp.target_quantile))


def dp_client_mean(
    deltas: Params, valid: jax.Array, dp: ClientDP, key: jax.Array, clip: jax.Array | None = None
) -> tuple[Params, jax.Array | None]:
    """Clip each client delta to ``clip`` (default ``dp.clip``) and aggregate them with
    :func:`dp_noisy_mean`: the whole DP-FedAvg release of one round in one call."""
    bound = dp.clip if clip is None else clip
    clipped, norms = jax.vmap(clip_to_norm, in_axes=(0, None))(deltas, bound)
    return dp_noisy_mean(clipped, norms, valid, dp, key, bound)


def adaptive(mech: ClientDP, cfg: Mapping[str, Any]) -> ClientDP:
    """Adaptive clipping (Andrew et al. 2021) within the same privacy budget.

    The round releases two Gaussian queries: the clipped sum (sensitivity ``clip``, noise
    multiplier ``z_delta``) and the count of unclipped clients (sensitivity 1 per client under
    add/remove, std ``sigma_b``; centred bits have sensitivity 1/2, so multiplier ``2 sigma_b``).
    Their composition is one Gaussian mechanism with ``z^-2 = z_delta^-2 + (2 sigma_b)^-2``
    (Andrew et al. 2021, Theorem 1), so ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` keeps the
    accounted ``z`` (and the epsilon) unchanged.
    """
    gamma = cfg.get("target_quantile", 0.5)
    if not isinstance(gamma, (int, float)) or not 0 < gamma < 1:
        raise ConfigError("privacy.adaptive_clip.target_quantile", gamma, "in (0, 1)")
    lr = cfg.get("learning_rate", 0.2)
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError("privacy.adaptive_clip.learning_rate", lr, "> 0")
    sigma_b = cfg.get("count_stddev")
    sigma_b = mech.expected_cohort / 20 if sigma_b is None else sigma_b
    z = mech.noise_multiplier
    if not isinstance(sigma_b, (int, float)) or sigma_b < 0:
        raise ConfigError("privacy.adaptive_clip.count_stddev", sigma_b, ">= 0")
    if z == 0:
        z_delta = 0.0
    elif 2 * sigma_b <= z:
        raise ConfigError(
            "privacy.adaptive_clip.count_stddev", sigma_b,
            f"> noise_multiplier / 2 = {z / 2:.4g} (the count query would use more than the "
            "whole privacy budget)",
        )
    else:
        z_delta = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
    return dataclasses.replace(
        mech, adaptive=True, target_quantile=float(gamma), clip_lr=float(lr),
        count_stddev=float(sigma_b), delta_noise_multiplier=float(z_delta),
    )


def check(cfg: Mapping[str, Any], accountant: str) -> None:
    """The settings of this mechanism alone, checked before the noise is calibrated.

    Raises:
      ConfigError: an unknown ``sampling``, or fixed-size sampling with the PLD accountant.
    """
    sampling = cfg.get("sampling", "poisson")
    if sampling not in SAMPLINGS:
        raise ConfigError("privacy.sampling", sampling, "one of: " + ", ".join(SAMPLINGS))
    if sampling == "fixed" and accountant == "pld":
        raise ConfigError(
            "privacy.accountant", accountant,
            "rdp for privacy.sampling=fixed (dp-accounting's PLD accountant has no fixed-size "
            "sampling without replacement; use privacy.accountant=rdp, or "
            "privacy.sampling=poisson with pld)",
        )


def build(cfg: Mapping[str, Any], common: Mapping[str, Any], ctx: BuildContext
          ) -> tuple[ClientDP, dict[str, Any]]:
    """The calibrated mechanism of a ``privacy=dp_client`` config. ``common``: the settings
    :func:`fedbench.privacy.plan.build_privacy` checked (``clip``, ``noise`` or ``target``,
    ``delta``, ``accountant``). Returns the mechanism and the plan's ``sampling``.

    Raises:
      ConfigError: a target that cannot be reached, or an adaptive clip whose count noise
        exceeds the budget.
    """
    sampling = cfg.get("sampling", "poisson")
    n, cohort_size = ctx.num_clients, ctx.clients_per_round
    rate = cohort_size / n
    cohort = cohort_size if sampling == "fixed" else None
    noise = common["noise"]
    if noise is None:
        noise = calibrate_noise(common["target"], common["delta"], rate, ctx.rounds,
                                common["accountant"], sampling, population=n, cohort=cohort)
    buffer = poisson_buffer_size(n, rate, ctx.rounds) if sampling == "poisson" else cohort_size
    mech = ClientDP(common["clip"], noise, sampling, rate, float(cohort_size), buffer)
    if (cfg.get("adaptive_clip") or {}).get("enabled"):
        mech = adaptive(mech, cfg["adaptive_clip"])
    return mech, {"sampling": sampling}


def population(ctx: BuildContext) -> int:
    """The units of the neighbouring relation (clients), for the default delta."""
    return ctx.num_clients


MECHANISM = ClientDP
