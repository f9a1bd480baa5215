"""Privacy mechanisms: objects that wrap a federated round, one file and one config each.

A mechanism is ``fedbench/privacy/<name>.py`` plus ``conf/privacy/<name>.yaml`` (the config's
``name`` is the module's). The module defines ``MECHANISM``, a :class:`Mechanism` subclass, and
``build(cfg, common, ctx) -> (mechanism, plan_fields)``; :func:`registry` finds every module
from the configs, so nothing central lists the mechanisms (``privacy=none`` has no module).
Everything a mechanism changes in a round is one of its methods, called by the simulator and the
round without testing its type or name (the shape of jax_privacy's ``DPExecutionPlan`` and of
Flower's DP strategy wrappers):

==================  ===========================================================================
``check_run``        refuse run settings it cannot account for (a task, a step schedule)
``check_algorithm``  refuse, before any work, an algorithm it cannot privatise (naming both);
                     an algorithm declares per level of privacy what it releases beyond its
                     clipped update (``Algorithm.dp_client``, ``Algorithm.dp_sample``) and how it
                     aggregates under a mechanism (``Algorithm.dp_aggregate``)
``bind``             fix what depends on the run (the expected share of reports under dropped
                     stragglers)
``sample_cohort``    its own cohort (Poisson sampling, or a schedule of the round index: DP-FTRL's
                     cyclic groups), or None for the simulator's
``transforms``       what every client applies to its update before it leaves (the clip)
``estimator``        a client's private gradient (DP-SGD), or None
``round_info``       what the clients' transforms see this round (the clip bound)
``aggregate``        the cohort's uploads -> the released aggregate and its own state's update
                     (the noise and, under adaptive clipping, the next clip), or None: the
                     algorithm's aggregation is left as it is
``init_state``       its state in the server state (the clip, DP-SGD's step counts)
``carried``          the scalars a run carries in ``ServerState.hparams`` (clip, noise std)
``report``           what was spent (the DP event, accounted with dp-accounting)
==================  ===========================================================================

Class attributes declare the rest: ``unit`` (the neighbouring relation: adding or removing one
``client``, or one ``example`` of one client), ``relation`` (the neighbouring relation when the
mechanism fixes it: ``ddp``'s ``zero_out``), ``hyperparameters`` (the ``privacy.<key>``
scalars an in-program sweep may set: ``sweep.<key>``), ``bounds_messages`` (every message a
client sends must keep the clip bound, so compressors that can raise a norm are refused),
``encodes_messages`` (the mechanism encodes each upload itself, so no compressor composes; its
``protocol_down_bits`` counts what else each client receives: ``ddp``'s secure aggregation),
``identity`` (settings with no noise and no clipping: the run must equal the one without DP),
``assumes_public`` (what the guarantee treats as public, stated in ``summary.json``).
:func:`register` adds a mechanism defined outside the package (``docs/examples/dp_full.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Mapping
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a mechanism's ``build`` may read about the run (nothing else is shared).

    Attributes:
      num_clients: sites in the federation; clients_per_round: the cohort (or expected cohort);
      rounds: rounds configured; local_epochs, batch_size: each client's schedule;
      client_sizes: ``[C]`` training examples per client.
      num_params: the model's parameter count (None where unknown).
    """

    num_clients: int
    clients_per_round: int
    rounds: int
    local_epochs: int
    batch_size: int
    client_sizes: Any
    num_params: int | None = None


class Mechanism:
    """The interface of a privacy mechanism (see the module docstring). The defaults change
    nothing: a mechanism overrides what it does."""

    name: ClassVar[str] = ""
    unit: ClassVar[str] = "client"  # the neighbouring relation: one client | one example
    #: The neighbouring relation when the mechanism fixes it (``ddp``: ``zero_out``, one unit's
    #: update replaced by zeros); None: dp-accounting's for the sampling.
    relation: ClassVar[str | None] = None
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    #: Hyper-parameters that set the same thing in two ways (a target epsilon or a noise
    #: multiplier): a replica that sets one gets the others null, and one sweep may vary only
    #: one of them.
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = ()
    bounds_messages: ClassVar[bool] = False
    #: The mechanism encodes each upload itself (``ddp``: integers modulo ``2^b`` through
    #: secure aggregation), so no compressor composes with it.
    encodes_messages: ClassVar[bool] = False
    #: ``privacy.<key>`` settings under which the mechanism adds no noise and clips nothing, so
    #: that a run equals the run without it (the generated matrix, tests/test_combinations.py).
    identity: ClassVar[dict[str, Any]] = {}
    #: Outputs a run writes that this mechanism's epsilon does not cover, beyond the metrics
    #: (``fedbench.privacy.release.PRIVATE_METRICS``) every mechanism leaves uncovered.
    uncovered: ClassVar[tuple[str, ...]] = ()
    #: What the guarantee assumes public (not protected by epsilon) although it is computed from
    #: the clients' data, stated in ``covers`` and ``assumes_public`` of ``summary.json``.
    assumes_public: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_algorithm(cls, algorithm) -> None:
        """Raises ``ConfigError`` naming ``algorithm.name`` if it cannot run under this."""

    @classmethod
    def sweep_refusal(cls, key: str, cfg: Mapping[str, Any]) -> str | None:
        """Why ``sweep.<key>`` cannot vary in-program under the ``privacy`` config ``cfg``
        (None: it can)."""
        return None

    @classmethod
    def check_run(cls, cfg: Mapping[str, Any], settings, task: str) -> None:
        """Raises ``ConfigError`` for run settings (task, schedule) it cannot account for."""

    def bind(self, algorithm, settings, stragglers) -> Mechanism:
        return self

    @property
    def independent_stragglers(self) -> bool:
        """Stragglers drawn per client independently (a Poisson cohort), not a fixed count."""
        return False

    def transforms(self) -> tuple:
        return ()

    def estimator(self, apply_fn, batch_size: int, loss_fn, noise_salt):
        return None

    def sample_cohort(self, key, num_clients: int, round=None):
        """``(ids, valid, overflow)`` of its own cohort, or None for the simulator's;
        ``round``: the round's index (traced), for cohorts fixed in advance."""
        return None

    def init_state(self, state, num_clients: int):
        return state

    def round_info(self, state) -> dict[str, Any]:
        return {}

    def aggregate(self, state, uploads, infos, valid, key, algorithm):
        return None

    def carried(self) -> dict[str, float]:
        return {}

    def protocol_down_bits(self) -> int:
        """Bits each participating client receives per round besides the algorithm's messages
        (``ddp``: secure aggregation's keys, shares and survivor lists)."""
        return 0

    def describe(self) -> dict[str, Any]:
        """Settings reported beside the epsilon (e.g. adaptive clipping's)."""
        return {}

    def report(self, plan, rounds: int, participation, steps) -> dict[str, Any] | None:
        """``dp-accounting``'s report of ``rounds`` rounds, or None if nothing was spent."""
        raise NotImplementedError


def every_site_every_round(name: str, num_clients: int, settings, stragglers,
                           why: str = "every site in every round") -> None:
    """For mechanisms whose accounting assumes that every site sends an update every round
    (``dp_ftrl``, ``docs/examples/dp_full.py``): refuses a partial cohort or stragglers.

    Raises:
      ConfigError: naming ``clients_per_round`` or ``stragglers.fraction``.
    """
    from fedbench.errors import ConfigError

    if settings.clients_per_round != num_clients:
        raise ConfigError("clients_per_round", settings.clients_per_round,
                          f"num_clients={num_clients} with privacy={name} ({why})")
    if stragglers is not None and stragglers.fraction > 0:
        raise ConfigError("stragglers.fraction", stragglers.fraction,
                          f"0 with privacy={name} (every site's update arrives in every round)")


@functools.cache
def registry() -> dict[str, Any]:
    """``privacy.name`` -> its module (``MECHANISM`` and ``build``), one per
    ``conf/privacy/<name>.yaml`` except ``none``."""
    from fedbench.paths import CONF_DIR

    names = sorted(p.stem for p in (CONF_DIR / "privacy").glob("*.yaml") if p.stem != "none")
    return {name: importlib.import_module(f"fedbench.privacy.{name}") for name in names}


def register(name: str, module) -> None:
    """Adds ``module`` (``MECHANISM``, ``build``, ``check``, ``population``) as
    ``privacy.name``, for mechanisms defined outside ``fedbench/privacy``; replaces one of the
    same name."""
    for attribute in ("MECHANISM", "build", "check", "population"):
        if not hasattr(module, attribute):
            raise TypeError(f"a privacy mechanism module defines {attribute}; {module!r} does not")
    registry()[name] = module


def mechanism_class(name: str) -> type[Mechanism] | None:
    """The :class:`Mechanism` class of ``privacy.name`` (None: ``none`` or unknown)."""
    if name == "none":
        return None  # no mechanism: the registry (and dp-accounting) is not imported
    module = registry().get(name)
    return None if module is None else module.MECHANISM


def names() -> tuple[str, ...]:
    """Every ``privacy.name`` accepted: ``none`` and the registered mechanisms."""
    return ("none", *registry())


def declared_hyperparameters(privacy_cfg: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The sweepable ``privacy.<key>`` scalars of the configured mechanism (none without)."""
    cls = mechanism_class((privacy_cfg or {}).get("name", "none"))
    return () if cls is None else cls.hyperparameters
