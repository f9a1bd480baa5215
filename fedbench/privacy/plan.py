"""From the ``privacy`` config group to a mechanism for the simulator and its accounting.

:func:`build_privacy` validates the settings, calibrates the noise multiplier to
``privacy.target_epsilon`` before training (for the configured rounds, sampling rate and delta)
and returns a :class:`PrivacyPlan`, which the runner asks for the epsilon actually spent after
every evaluation.

* ``dp_client``: one noisy release per round; the unit is a client; ``steps = rounds run``,
  ``q = clients_per_round / num_clients`` (Poisson) or fixed-size sampling of
  ``clients_per_round`` out of ``num_clients``.
* ``dp_sample``: the unit is one example of one client. Client ``i`` with ``n_i`` examples runs
  ``local_epochs * ceil(n_i / batch_size)`` DP-SGD steps with sampling rate
  ``q_i = min(1, batch_size / n_i)`` in every round it takes part in. Calibration assumes every
  client takes part in every round (a bound that holds whatever clients are sampled: client
  sampling does not look at the data, so it needs no accounting); the reported epsilon counts
  the rounds each client actually took part in and is the worst client's, searched over every
  client (:func:`~fedbench.privacy.accounting.worst_account`: RDP and PLD rank clients
  differently). The default delta's population is every training example of every client.
  The steps are those each client actually took (a partial straggler runs fewer epochs), counted
  by the simulator (``ServerState.dp_steps``).

What epsilon covers: the released model parameters only (and under adaptive clipping the clip
bound, released through its own noisy count). Everything else a run writes that is computed from
the clients' data is outside the guarantee (:data:`PRIVATE_METRICS`, :data:`PRIVATE_SUMMARY`);
``privacy.release_metrics=false`` leaves it out of ``metrics.jsonl``, ``summary.json`` and
tracking (:meth:`PrivacyPlan.released`).

The DP noise is keyed by the seed, the round and a salt, :func:`noise_salt`: a hash of the
run's whole config, so two runs that differ in any setting draw independent noise and an
identical config reproduces exactly. ``privacy.shared_noise=true`` drops the salt (noise from
seed and round only, as before): the noise of runs that differ only in the noise multiplier is
then one draw scaled, and two such models released together reveal the noiseless update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench.errors import ConfigError
from fedbench.privacy.accounting import (
    ACCOUNTANTS,
    SAMPLINGS,
    account,
    calibrate_noise,
    calibrate_noise_worst,
    default_delta,
    worst_account,
)
from fedbench.privacy.mechanisms import ClientDP, SampleDP, poisson_buffer_size
from fedbench.privacy.release import (  # noqa: F401  (noise_salt and the lists: public here too)
    NOISE_SALT_IGNORED,
    NOISE_SALT_IGNORED_PRIVACY,
    PRIVATE_METRICS,
    PRIVATE_SUMMARY,
    TEST_METRICS,
    noise_salt,
)

PRIVACY = ("none", "dp_client", "dp_sample")

def _number(cfg: Mapping[str, Any], key: str) -> float | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"privacy.{key}", value, "a number")
    return float(value)


@dataclasses.dataclass
class PrivacyPlan:
    """A calibrated mechanism plus what is needed to account for it.

    Attributes:
      name: ``dp_client`` or ``dp_sample``.
      mechanism: the :class:`ClientDP` / :class:`SampleDP` handed to the simulator.
      delta, accountant, sampling, target_epsilon: as configured (delta resolved).
      client_sizes: ``[C]`` training sizes (``dp_sample``).
      steps_per_round: ``[C]`` DP-SGD steps per participation (``dp_sample``).
      rates: ``[C]`` per-client example sampling rates (``dp_sample``).
      shared_noise: noise keyed by seed and round only (no :func:`noise_salt`): unsafe to
        release runs that differ only in their noise together.
      release_metrics: write :data:`PRIVATE_METRICS` and :data:`PRIVATE_SUMMARY` (not covered
        by epsilon).
    """

    name: str
    mechanism: ClientDP | SampleDP
    delta: float
    accountant: str
    sampling: str
    target_epsilon: float | None
    num_clients: int
    clients_per_round: int
    client_sizes: np.ndarray | None = None
    steps_per_round: np.ndarray | None = None
    rates: np.ndarray | None = None
    shared_noise: bool = False
    release_metrics: bool = True

    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier

    def released(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` as written and tracked: without :data:`PRIVATE_METRICS` unless
        ``release_metrics``."""
        if self.release_metrics:
            return dict(metrics)
        return {k: v for k, v in metrics.items() if k not in PRIVATE_METRICS}

    def disclosure(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """What epsilon covers, for the ``privacy`` block of ``summary``: ``covers``,
        ``release_metrics``, ``shared_noise`` and ``non_private_outputs``, the outputs in
        ``summary`` (its ``final`` metrics and blocks) computed from the clients' data that the
        guarantee does not cover."""
        unit = "one client" if self.name == "dp_client" else "one training example of one client"
        final = summary.get("final") or {}
        outputs = [k for k in final if k in PRIVATE_METRICS or k in TEST_METRICS]
        outputs += [k for k in PRIVATE_SUMMARY if summary.get(k) is not None]
        if self.name == "dp_sample":  # the worst client's, from every client's size
            outputs += ["epsilon", "worst_client_sampling_rate", "worst_client_steps"]
        return {
            "covers": (
                f"the released model parameters only (every round's server model, and under "
                f"adaptive clipping the clip bound), with respect to adding or removing {unit}; "
                "not the metrics, statistics or counts computed from the clients' data listed "
                "in non_private_outputs"
            ),
            "release_metrics": self.release_metrics,
            "shared_noise": self.shared_noise,
            "non_private_outputs": outputs,
        }

    def _client_level(self, rounds: int):
        dp = self.mechanism
        return account(
            dp.noise_multiplier,
            dp.rate,
            rounds,
            self.delta,
            self.accountant,
            self.sampling,
            population=self.num_clients,
            cohort=self.clients_per_round if self.sampling == "fixed" else None,
        )

    def _sample_level(self, participation: np.ndarray, steps: np.ndarray | None):
        """The worst client's report over every client that took part (``None``: none did)."""
        if steps is None:  # every participation a full one
            steps = np.asarray(participation) * self.steps_per_round
        return worst_account(
            self.mechanism.noise_multiplier, self.rates, steps, self.delta, self.accountant
        )

    def report(
        self, rounds: int, participation: np.ndarray, final_clip: float | None = None,
        steps: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """What was spent after ``rounds`` rounds (``participation``: rounds per client).

        ``final_clip``: the clipping bound the run ended with under adaptive clipping (the
        simulator state's ``clip``), reported beside the initial ``clip``. ``steps``
        (``dp_sample``): the DP-SGD steps each client actually took (``ServerState.dp_steps``;
        a partial straggler takes fewer); default: ``participation * steps_per_round``.
        """
        base = {
            "mechanism": self.name,
            "clip": self.mechanism.clip,
            "target_epsilon": self.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "accountant": self.accountant,
        }
        if isinstance(self.mechanism, ClientDP) and self.mechanism.adaptive:
            base["adaptive_clip"] = {
                "target_quantile": self.mechanism.target_quantile,
                "learning_rate": self.mechanism.clip_lr,
                "count_stddev": self.mechanism.count_stddev,
                "delta_noise_multiplier": self.mechanism.delta_noise_multiplier,
            }
            if final_clip is not None:
                base["final_clip"] = float(final_clip)
        if rounds == 0:
            return {**base, "epsilon": 0.0}
        rep = (
            self._client_level(rounds)
            if self.name == "dp_client"
            else self._sample_level(participation, steps)
        )
        if rep is None:
            return {**base, "epsilon": 0.0}
        out = {**base, **rep.as_dict()}
        if self.name == "dp_sample":
            out["unit"] = "example"
            out["worst_client_sampling_rate"] = out.pop("sampling_rate")
            out["worst_client_steps"] = out.pop("steps")
        else:
            out["unit"] = "client"
        return out


def _adaptive(mech: ClientDP, cfg: Mapping[str, Any]) -> ClientDP:
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


def _reject_ignored_sample_settings(cfg: Mapping[str, Any]) -> None:
    """``dp_sample`` always Poisson-samples examples and clips at a fixed bound."""
    sampling = cfg.get("sampling")
    if sampling not in (None, "poisson"):
        raise ConfigError(
            "privacy.sampling", sampling,
            "poisson or unset with privacy=dp_sample (DP-SGD Poisson-samples examples; "
            "fixed-size cohorts are a dp_client setting)",
        )
    adaptive = cfg.get("adaptive_clip") or {}
    if adaptive.get("enabled"):
        raise ConfigError(
            "privacy.adaptive_clip.enabled", adaptive.get("enabled"),
            "false or unset with privacy=dp_sample (adaptive clipping is implemented for "
            "dp_client only)",
        )


def build_privacy(
    cfg: Mapping[str, Any] | None,
    *,
    algorithm_kind: str,
    num_clients: int,
    clients_per_round: int,
    rounds: int,
    local_epochs: int,
    batch_size: int,
    client_sizes: np.ndarray,
) -> PrivacyPlan | None:
    """Validates the ``privacy`` group and calibrates the mechanism before training.

    Raises:
      ConfigError: unknown name, DP on a non-federated baseline, ``clip <= 0``, ``epsilon <=
        0``, ``delta`` outside (0, 1), both or neither of ``target_epsilon`` and
        ``noise_multiplier``, a target that cannot be reached in ``rounds`` rounds, a
        sampling scheme the accountant does not cover, or ``dp_sample`` with a ``sampling``
        or ``adaptive_clip`` setting it would ignore (it always Poisson-samples examples and
        clips at a fixed bound), ``shared_noise`` or ``release_metrics`` not a boolean.
    """
    cfg = cfg or {"name": "none"}
    name = cfg.get("name", "none")
    if name not in PRIVACY:
        raise ConfigError("privacy.name", name, "one of: " + ", ".join(PRIVACY))
    if name == "none":
        return None
    if algorithm_kind != "federated":
        raise ConfigError(
            "privacy.name", name, "none for centralized, local and fedbuff (DP is "
            "implemented for synchronous federated algorithms)"
        )
    clip = _number(cfg, "clip")
    if clip is None or not clip > 0 or math.isnan(clip):
        raise ConfigError("privacy.clip", cfg.get("clip"), "a number > 0")
    accountant = cfg.get("accountant", "pld")
    if accountant not in ACCOUNTANTS:
        raise ConfigError("privacy.accountant", accountant, "one of: " + ", ".join(ACCOUNTANTS))
    if name == "dp_sample":
        _reject_ignored_sample_settings(cfg)
    sampling = cfg.get("sampling", "poisson") if name == "dp_client" else "poisson"
    if sampling not in SAMPLINGS:
        raise ConfigError("privacy.sampling", sampling, "one of: " + ", ".join(SAMPLINGS))
    if sampling == "fixed" and accountant == "pld":
        raise ConfigError(
            "privacy.accountant", accountant,
            "rdp for privacy.sampling=fixed (dp-accounting's PLD accountant has no fixed-size "
            "sampling without replacement; use privacy.accountant=rdp, or "
            "privacy.sampling=poisson with pld)",
        )
    target = _number(cfg, "target_epsilon")
    noise = _number(cfg, "noise_multiplier")
    if (target is None) == (noise is None):
        raise ConfigError(
            "privacy.target_epsilon",
            cfg.get("target_epsilon"),
            "exactly one of privacy.target_epsilon and privacy.noise_multiplier set (the other "
            f"null); noise_multiplier={cfg.get('noise_multiplier')!r}",
        )
    if target is not None and not target > 0:
        raise ConfigError("privacy.target_epsilon", target, "> 0 (inf: no noise)")
    if noise is not None and not (noise >= 0 and math.isfinite(noise)):
        raise ConfigError("privacy.noise_multiplier", noise, "a finite number >= 0")
    if not math.isfinite(clip) and (noise or (target is not None and math.isfinite(target))):
        raise ConfigError("privacy.clip", clip, "finite when noise is added")
    sizes = np.asarray(client_sizes)
    population = num_clients if name == "dp_client" else int(sizes.sum())  # units: examples
    delta = _number(cfg, "delta")
    delta = default_delta(population) if delta is None else delta
    if not 0 < delta < 1:
        raise ConfigError("privacy.delta", delta, "in (0, 1)")

    switches = {}
    for key, default in (("shared_noise", False), ("release_metrics", True)):
        value = cfg.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"privacy.{key}", value, "true or false")
        switches[key] = value

    if name == "dp_client":
        rate = clients_per_round / num_clients
        cohort = clients_per_round if sampling == "fixed" else None
        if noise is None:
            noise = calibrate_noise(
                target, delta, rate, rounds, accountant, sampling,
                population=num_clients, cohort=cohort,
            )
        buffer = (
            poisson_buffer_size(num_clients, rate, rounds) if sampling == "poisson"
            else clients_per_round
        )
        mech = ClientDP(clip, noise, sampling, rate, float(clients_per_round), buffer)
        adaptive = cfg.get("adaptive_clip") or {}
        if adaptive.get("enabled"):
            mech = _adaptive(mech, adaptive)
        return PrivacyPlan(name, mech, delta, accountant, sampling, target, num_clients,
                           clients_per_round, **switches)

    rates = np.minimum(1.0, batch_size / sizes)
    steps_per_round = local_epochs * np.ceil(sizes / batch_size).astype(int)
    if noise is None:  # the worst client over the whole run, had it taken part in every round
        noise = calibrate_noise_worst(target, delta, rates, steps_per_round * rounds, accountant)
    max_batches = rounds * clients_per_round * int(steps_per_round.max())
    buffer = poisson_buffer_size(int(sizes.max()), batch_size / sizes.max(), max_batches)
    buffer = max(1, min(buffer, int(sizes.max())))
    mech = SampleDP(clip, noise, buffer)
    return PrivacyPlan(name, mech, delta, accountant, "poisson", target, num_clients,
                       clients_per_round, sizes, steps_per_round, rates, **switches)
