"""One validation pass: the Hydra config in, a checked and typed run description out.

:func:`check_config` checks every setting the config alone decides, in one place and before
anything is loaded, built or compiled: the top-level settings (:func:`fedbench.validation.validate`),
the member set, the sweep and every replica as its separate job would be checked, the algorithm,
the privacy group (:func:`fedbench.privacy.plan.check_privacy`) and whether the mechanism can
privatise the algorithm, uplink and downlink compression, stragglers, the client store's dtype,
hospital links and ``model.local``. It returns a :class:`CheckedRun` holding the typed pieces
(``Settings``, the ``Algorithm``, the mechanism's class, the compressors, ``Stragglers``,
``Links``, the replicas' configs), which :func:`fedbench.run.build_simulator` builds from
without checking them again.

A few checks depend on what the dataset turns out to be and run in :func:`check_with_data`,
after the dataset is loaded and before any model is built or program compiled: the task
(survival data refuse DP-SGD and flat storage), the client storage, and error feedback, whose
contractivity test needs the shapes of the messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedbench.errors import ConfigError
from fedbench.state import Settings
from fedbench.validation import (
    _check_task_and_schedule, _integer, _store_dtype, build_stragglers, check_client_storage,
    flat_refusal,
    validate,
)


@dataclasses.dataclass(frozen=True)
class CheckedRun:
    """A run whose config passed :func:`check_config`: ``job`` is the config as given, ``cfg``
    the config the one program is built from (a sweep's first replica, :func:`fedbench.replicas.
    simulator_config`), ``replicas`` each replica's ``(name, config)`` or None for a single
    run."""

    job: Mapping[str, Any]
    cfg: dict[str, Any]
    settings: Settings
    algorithm: Any  # fedbench.algorithm.Algorithm
    mechanism: Any  # the privacy mechanism's class (fedbench.privacy.mechanism), or None
    privacy: dict[str, Any] | None  # fedbench.privacy.plan.check_privacy's checked settings
    compressor: Any  # uplink fedbench.compression.Compressor, or None
    downlink: Any  # the model's compressor, or None
    stragglers: Any  # fedbench.stragglers.Stragglers, or None
    store_dtype: Any
    links: Any  # fedbench.links.Links, or None
    replicas: list[tuple[str, dict[str, Any]]] | None
    num_seeds: int


def check_privacy(cfg: Mapping[str, Any] | None, algorithm_kind: str) -> dict[str, Any] | None:
    """:func:`fedbench.privacy.plan.check_privacy`, imported only for a run with DP (the
    accountants' import, dp-accounting and SciPy, takes 1.5 s that a run without DP never
    needs)."""
    if (cfg or {}).get("name", "none") == "none":
        return None
    from fedbench.privacy.plan import check_privacy as check

    return check(cfg, algorithm_kind)


def check_config(cfg: Mapping[str, Any]) -> CheckedRun:
    """Every config-only check of a run (see the module docstring).

    Raises:
      ConfigError: naming the key, the value and what is allowed, for the first bad setting.
    """
    from fedbench.algorithm import build_algorithm
    from fedbench.compile_cache import cache_dir
    from fedbench.compression import build_compression
    from fedbench.compression.downlink import build_downlink
    from fedbench.links import build_links
    from fedbench.model.semi import check_local
    from fedbench.privacy.mechanism import mechanism_class
    from fedbench.sweep_config import check_members, replica_configs, simulator_config, swept

    job = cfg
    num_seeds = _integer(cfg, "seeds", 1) if cfg.get("seeds") is not None else 1
    replicas = replica_configs(cfg, num_seeds) if num_seeds > 1 or swept(cfg) else None
    if replicas is not None:
        for _, replica in replicas:  # each replica's values checked as its separate job's
            validate(replica)
            algorithm = build_algorithm(replica["algorithm"], replica["clients_per_round"])
            check_privacy(replica.get("privacy"), algorithm.kind)
        cfg = simulator_config(job, replicas)
        if cfg.get("site_speed", 0.0):
            raise ConfigError("seeds", num_seeds,
                              "1 when site_speed > 0 (each seed draws its own site speeds)")
    cfg = dict(cfg)
    settings = validate(cfg)
    check_members(cfg, cfg.get("members"))
    algorithm = build_algorithm(
        {**cfg["algorithm"], "site_speed": cfg.get("site_speed", 0.0)}, cfg["clients_per_round"]
    )
    if algorithm.kind == "async" and algorithm.concurrency > cfg["num_clients"]:
        raise ConfigError(
            "algorithm.concurrency", algorithm.concurrency, f"<= num_clients={cfg['num_clients']}"
        )
    privacy_cfg = cfg.get("privacy") or {}
    mechanism = mechanism_class(privacy_cfg.get("name", "none"))
    if mechanism is not None:  # every release privatised, or refused before any work
        mechanism.check_algorithm(algorithm)
    privacy = check_privacy(privacy_cfg, algorithm.kind)
    compressor = build_compression(cfg.get("compression"), privacy_cfg.get("name"),
                                   algorithm.kind)  # uplink compression (after DP clipping)
    downlink = build_downlink(cfg.get("compression"), algorithm.kind)
    stragglers = build_stragglers(cfg.get("stragglers"), settings, algorithm.kind)
    store_dtype = _store_dtype(cfg)
    links = build_links(cfg.get("links"), cfg["num_clients"])
    check_local(cfg["model"], algorithm)  # model.local needs algorithm=semifed (model/semi.py)
    cache_dir(cfg)  # compilation_cache: auto, off, null or a directory
    return CheckedRun(job=job, cfg=cfg, settings=settings, algorithm=algorithm,
                      mechanism=mechanism, privacy=privacy, compressor=compressor,
                      downlink=downlink, stragglers=stragglers, store_dtype=store_dtype,
                      links=links, replicas=replicas, num_seeds=num_seeds)


def check_with_data(run: CheckedRun, task: str) -> tuple[str, str | None]:
    """The checks that need the loaded dataset's ``task``: what the privacy mechanism can
    account for on it, the local schedule, and the client storage. Returns ``(storage, why
    not flat)``: ``padded``, ``flat`` or ``auto`` (which the data pipeline resolves), and why
    flat storage cannot serve the run (None: it can). Runs before any model is built."""
    _check_task_and_schedule(run.cfg, run.settings, run.algorithm, task)
    return (check_client_storage(run.cfg, run.algorithm, task),
            flat_refusal(run.cfg, run.algorithm, task))


def check_messages(run: CheckedRun, param_shapes) -> None:
    """Error feedback only around a contractive compressor, judged on the shapes of what leaves
    a site (``param_shapes``: the model's, from ``jax.eval_shape``; nothing computed)."""
    from fedbench.compression.traffic import sent_shapes

    if run.compressor is not None:
        run.compressor.check_error_feedback(sent_shapes(param_shapes, run.algorithm))
