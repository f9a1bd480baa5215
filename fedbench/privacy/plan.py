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
from fedbench.privacy.accounting import ACCOUNTANTS, default_delta
from fedbench.privacy.mechanism import BuildContext, Mechanism, names, registry
from fedbench.privacy.release import (  # noqa: F401  (noise_salt and the lists: public here too)
    NOISE_SALT_IGNORED,
    NOISE_SALT_IGNORED_PRIVACY,
    PRIVATE_METRICS,
    PRIVATE_SUMMARY,
    REGENERABLE,
    SECURE,
    TEST_METRICS,
    noise_salt,
)


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
      name: the mechanism's ``privacy.name``.
      mechanism: the :class:`~fedbench.privacy.mechanism.Mechanism` handed to the simulator.
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
    mechanism: Mechanism
    delta: float
    accountant: str
    sampling: str = "poisson"
    target_epsilon: float | None = None
    num_clients: int = 0
    clients_per_round: int = 0
    client_sizes: np.ndarray | None = None
    steps_per_round: np.ndarray | None = None
    rates: np.ndarray | None = None
    shared_noise: bool = False
    release_metrics: bool = True
    noise: str = "reproducible"
    data_digest: str | None = None

    def salt_of(self, cfg: Mapping[str, Any]) -> int | None:
        """The noise salt of the run with config ``cfg`` on this plan's data (None under
        ``shared_noise``: seed and round only)."""
        return None if self.shared_noise else noise_salt(cfg, self.data_digest)

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
        unit = ("one client" if self.mechanism.unit == "client"
                else "one training example of one client")
        final = summary.get("final") or {}
        outputs = [k for k in final if k in PRIVATE_METRICS or k in TEST_METRICS]
        outputs += [k for k in PRIVATE_SUMMARY if summary.get(k) is not None]
        outputs += list(self.mechanism.uncovered)  # e.g. DP-SGD's worst client's epsilon
        return {
            "covers": (
                f"the released model parameters only (every round's server model, and under "
                f"adaptive clipping the clip bound), with respect to adding or removing {unit}; "
                "not the metrics, statistics or counts computed from the clients' data listed "
                "in non_private_outputs"
            ),
            "release_metrics": self.release_metrics,
            "shared_noise": self.shared_noise,
            "noise": self.noise,
            "noise_note": SECURE if self.noise == "secure" else REGENERABLE,
            "non_private_outputs": outputs,
        }

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
            **self.mechanism.describe(),
        }
        if final_clip is not None and "adaptive_clip" in base:
            base["final_clip"] = float(final_clip)
        if rounds == 0:
            return {**base, "epsilon": 0.0}
        rep = self.mechanism.report(self, rounds, participation, steps)
        return {**base, "epsilon": 0.0} if rep is None else {**base, **rep}


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
    data_digest: str | None = None,
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
    module = registry().get(name)
    if module is None:
        if name == "none":
            return None
        raise ConfigError("privacy.name", name, "one of: " + ", ".join(names()))
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
    module.check(cfg, accountant)  # the mechanism's own settings
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
    ctx = BuildContext(num_clients, clients_per_round, rounds, local_epochs, batch_size,
                       np.asarray(client_sizes))
    delta = _number(cfg, "delta")
    delta = default_delta(module.population(ctx)) if delta is None else delta
    if not 0 < delta < 1:
        raise ConfigError("privacy.delta", delta, "in (0, 1)")

    switches = {}
    for key, default in (("shared_noise", False), ("release_metrics", True)):
        value = cfg.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"privacy.{key}", value, "true or false")
        switches[key] = value
    noise_mode = cfg.get("noise", "reproducible")
    if noise_mode not in ("reproducible", "secure"):
        raise ConfigError("privacy.noise", noise_mode, "reproducible or secure")
    if noise_mode == "secure" and switches["shared_noise"]:
        raise ConfigError("privacy.shared_noise", True,
                          "false with privacy.noise=secure (shared noise is reproducible noise)")
    common = {"clip": clip, "noise": noise, "target": target, "delta": delta,
              "accountant": accountant}
    mech, fields = module.build(cfg, common, ctx)
    return PrivacyPlan(name, mech, delta, accountant, target_epsilon=target,
                       num_clients=num_clients, clients_per_round=clients_per_round,
                       **fields, **switches, noise=noise_mode, data_digest=data_digest)
