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
bound, released through its own noisy count), with respect to the neighbouring relation the
accountant used (:attr:`PrivacyPlan.neighboring_relation`: adding or removing one unit under
Poisson sampling, replacing one client's data by another's under ``privacy.sampling=fixed``).
What a mechanism assumes public is stated beside it (``Mechanism.assumes_public``: under
``dp_sample`` every client's size). A ``delta`` above one over the number of protected units is
allowed but warned about (:class:`~fedbench.privacy.release.PrivacyWarning`) and recorded in the
``privacy`` block's ``warnings``. Everything else a run writes that is computed from
the clients' data is outside the guarantee (:data:`PRIVATE_METRICS`, :data:`PRIVATE_SUMMARY`);
``privacy.release_metrics=false`` leaves it out of ``metrics.jsonl``, ``summary.json`` and
tracking (:meth:`PrivacyPlan.released`), and where evaluation scores each client with its own
model (Ditto, APFL, pFedMe, finetune: neither released nor DP) the pooled test metrics too.

The DP noise is keyed by the seed, the round and a salt, :func:`noise_salt`: a hash of the
run's whole config, so two runs that differ in any setting draw independent noise and an
identical config reproduces exactly. ``privacy.shared_noise=true`` drops the salt (noise from
seed and round only, as before): the noise of runs that differ only in the noise multiplier is
then one draw scaled, and two such models released together reveal the noiseless update.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench.errors import ConfigError
from fedbench.privacy.accounting import ACCOUNTANTS, default_delta, dp_event
from fedbench.privacy.events import _neighboring_relation
from fedbench.privacy.mechanism import BuildContext, Mechanism, names, registry
from fedbench.privacy.release import (  # noqa: F401  (noise_salt and the lists: public here too)
    NOISE_SALT_IGNORED,
    NOISE_SALT_IGNORED_PRIVACY,
    PRIVATE_METRICS,
    PRIVATE_SUMMARY,
    REGENERABLE,
    SECURE,
    TEST_METRICS,
    UNITS,
    UNITS_COUNTED,
    PrivacyWarning,
    noise_salt,
    relation_words,
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
      per_client_models: evaluation scores each client with a model of its own
        (:func:`~fedbench.privacy.release.evaluates_own_models`: Ditto's, APFL's and pFedMe's
        personal models, finetune's fine-tuned ones), which is neither the released model nor
        DP: without ``release_metrics`` the pooled :data:`TEST_METRICS` computed from them are
        withheld too.
      warnings: what :func:`build_privacy` warned about (:class:`PrivacyWarning`), for the
        ``privacy`` block of ``summary.json``.
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
    per_client_models: bool = False
    noise: str = "reproducible"
    data_digest: str | None = None
    warnings: tuple[str, ...] = ()

    def salt_of(self, cfg: Mapping[str, Any]) -> int | None:
        """The noise salt of the run with config ``cfg`` on this plan's data (None under
        ``shared_noise``: seed and round only)."""
        return None if self.shared_noise else noise_salt(cfg, self.data_digest)

    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier

    @property
    def neighboring_relation(self) -> str:
        """dp-accounting's neighbouring relation for this plan's sampling, as its report names
        it (``add_or_remove_one``: Poisson; ``replace_one``: fixed-size cohorts), taken from
        the accountant's own rule for the event (:func:`fedbench.privacy.events.dp_event`)."""
        if self.mechanism.relation is not None:  # a mechanism's own (ddp: zero-out)
            return self.mechanism.relation
        sampling = "fixed" if self.sampling == "fixed" else "poisson"  # or none: no sampling
        event = dp_event(1.0, None, 1, sampling, population=max(self.num_clients, 1),
                         cohort=max(min(self.clients_per_round, self.num_clients), 1))
        return _neighboring_relation(event).name.lower()

    def released(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` as written and tracked: without :data:`PRIVATE_METRICS` unless
        ``release_metrics``; then, with ``per_client_models``, also without the pooled
        :data:`TEST_METRICS` (computed from each client's own, non-DP model)."""
        if self.release_metrics:
            return dict(metrics)
        withheld = set(PRIVATE_METRICS) | (set(TEST_METRICS) if self.per_client_models else set())
        return {k: v for k, v in metrics.items() if k not in withheld}

    def disclosure(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """What epsilon covers, for the ``privacy`` block of ``summary``: ``covers`` (with the
        neighbouring relation the accountant used and what it assumes public),
        ``neighboring_relation``, ``protected_unit``, ``assumes_public``, ``release_metrics``,
        ``shared_noise``, ``noise``, ``noise_note``, ``warnings`` and ``non_private_outputs``,
        the outputs in ``summary`` (its ``final`` metrics and blocks) computed from the clients'
        data that the guarantee does not cover."""
        relation = self.neighboring_relation
        assumed = list(self.mechanism.assumes_public)
        final = summary.get("final") or {}
        outputs = [k for k in final if k in PRIVATE_METRICS or k in TEST_METRICS]
        outputs += [k for k in PRIVATE_SUMMARY if summary.get(k) is not None]
        outputs += list(self.mechanism.uncovered)  # e.g. DP-SGD's worst client's epsilon
        return {
            "covers": (
                f"the released model parameters only (every round's server model, and under "
                f"adaptive clipping the clip bound), with respect to "
                f"{relation_words(relation, self.mechanism.unit)} ({relation}); "
                "not the metrics, statistics or counts computed from the clients' data listed "
                "in non_private_outputs"
                + "".join(f"; it assumes public {a}" for a in assumed)
            ),
            "neighboring_relation": relation,
            "protected_unit": UNITS.get(self.mechanism.unit, f"one {self.mechanism.unit}"),
            "assumes_public": assumed,
            "warnings": list(self.warnings),
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


def check_privacy(cfg: Mapping[str, Any] | None, algorithm_kind: str) -> dict[str, Any] | None:
    """The ``privacy`` group's settings checked from the config alone (no data, no accountant
    run): the mechanism's module, ``clip``, ``accountant``, ``target``, ``noise``, ``delta``
    (None: the default, set from the federation by :func:`build_privacy`), ``noise_mode``,
    ``switches``; None without DP. Part of the run's single validation pass
    (:func:`fedbench.checked.check_config`); :func:`build_privacy` calls it again.

    Raises:
      ConfigError: see :func:`build_privacy`.
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
    delta = _number(cfg, "delta")  # None: the default, from the number of protected units
    if delta is not None and not 0 < delta < 1:
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
    return {"name": name, "module": module, "clip": clip, "accountant": accountant,
            "target": target, "noise": noise, "delta": delta, "noise_mode": noise_mode,
            "switches": switches}


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
    per_client_models: bool = False,
    num_params: int | None = None,
) -> PrivacyPlan | None:
    """Validates the ``privacy`` group and calibrates the mechanism before training.

    ``per_client_models``: the run's evaluation scores each client with its own model
    (:func:`~fedbench.privacy.release.evaluates_own_models` of its algorithm), so that
    ``release_metrics=false`` withholds the pooled test metrics too
    (:meth:`PrivacyPlan.released`). ``num_params``: the model's parameter count (``ddp``'s
    rotation size).

    Raises:
      ConfigError: unknown name, DP on a non-federated baseline, ``clip <= 0``, ``epsilon <=
        0``, ``delta`` outside (0, 1), both or neither of ``target_epsilon`` and
        ``noise_multiplier``, a target that cannot be reached in ``rounds`` rounds, a
        sampling scheme the accountant does not cover, or ``dp_sample`` with a ``sampling``
        or ``adaptive_clip`` setting it would ignore (it always Poisson-samples examples and
        clips at a fixed bound), ``shared_noise`` or ``release_metrics`` not a boolean.

    Warns:
      PrivacyWarning: ``delta`` above one over the number of protected units
        (:func:`delta_warning`); also kept in the plan's ``warnings``.
    """
    checked = check_privacy(cfg, algorithm_kind)
    if checked is None:
        return None
    module, cfg = checked["module"], cfg or {}
    clip, accountant, target, noise = (checked[k] for k in ("clip", "accountant", "target", "noise"))
    ctx = BuildContext(num_clients, clients_per_round, rounds, local_epochs, batch_size,
                       np.asarray(client_sizes), num_params)
    units = module.population(ctx)
    delta = default_delta(units) if checked["delta"] is None else checked["delta"]
    switches, noise_mode, name = checked["switches"], checked["noise_mode"], checked["name"]
    common = {"clip": clip, "noise": noise, "target": target, "delta": delta,
              "accountant": accountant}
    mech, fields = module.build(cfg, common, ctx)
    weak_delta = delta_warning(delta, units, module.MECHANISM.unit)
    notes = () if weak_delta is None else (weak_delta,)
    for note in notes:  # once the config is known to be valid
        warnings.warn(PrivacyWarning(note), stacklevel=2)
    return PrivacyPlan(name, mech, delta, accountant, target_epsilon=target,
                       num_clients=num_clients, clients_per_round=clients_per_round,
                       **fields, **switches, noise=noise_mode, data_digest=data_digest,
                       per_client_models=bool(per_client_models), warnings=notes)


def delta_warning(delta: float, units: int, unit: str) -> str | None:
    """Why ``delta`` is weak, or None: above ``1 / units``, one over the number of protected
    units (``unit``: ``Mechanism.unit``), a mechanism that publishes one unit's data outright
    with probability ``delta`` meets the guarantee, and with ``units`` units someone's is
    expected to be published."""
    if not delta > 1.0 / units:
        return None
    counted = UNITS_COUNTED.get(unit, unit + "s")
    return (f"privacy.delta={delta:g} is above 1/{units} = {1.0 / units:.3g}, one over the "
            f"number of protected units ({units} {counted}): a mechanism that "
            f"publishes one unit's data outright with probability delta still meets the "
            f"guarantee; use a delta well below 1/{units} (the default is "
            f"min(1e-5, {units}^-1.1) = {default_delta(units):.3g})")
