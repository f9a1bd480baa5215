"""Uplink compression of client updates: the ``compression`` config group.

A compressor is an update transform (:mod:`fedbench.transforms`) applied to each client's model
delta inside the client map, after DP clipping if any; :func:`build_compression` turns a
``conf/compression/<name>.yaml`` config into a :class:`Compressor`, whose ``transform()`` goes to
``Simulator(transforms=...)``:

* ``none``: the delta is sent as it is (dense float32; the default);
* ``topk`` / ``randk``: ``k`` entries (``fraction`` or ``k`` per block), the largest in magnitude
  or uniformly random (rescaled by ``d / k``, unbiased; unscaled under error feedback, which
  needs a contractive compressor: :meth:`Compressor.check_error_feedback`);
* ``quantize``: unbiased stochastic uniform ``bits``-bit quantisation, a float32 scale per
  tensor (or per ``bucket_size`` entries);
* ``qsgd``: QSGD with ``levels`` = ``s`` and ``bucket_size`` (Alistarh et al. 2017);
* ``signsgd``: the sign scaled by the mean magnitude (EF-SignSGD, Karimireddy et al. 2019);
* ``error_feedback: true`` on any of them: each client keeps its residual across rounds.

A chain is a sparsifier followed by a quantiser of its kept values, written with ``then``: the
name of the quantiser's config, or a mapping of its settings, e.g.
``compression=topk compression.then=quantize`` or
``compression=topk 'compression.then={name:qsgd,levels:4}'``. The blocks (``per_tensor``) and
``error_feedback`` belong to the first compressor of the chain.

Each client's message is counted exactly (``info["bits"]``: positions at the smallest sufficient
width or as a bitmap, whichever is smaller; values at 32 bits, or the quantiser's bits plus one
float32 per scale); the run's ``bytes_up`` is the total over the messages that were sent.

Under ``privacy=dp_client`` the Gaussian noise is calibrated to the clip, so every message must
keep the clipped delta's norm bound: each compressor declares whether it can raise the norm
(:attr:`Compressor.raises_norm`). ``topk`` (dropping entries) and ``signsgd`` (``mean|x|
sign(x)`` has norm ``||x||_1 / sqrt(n) <= ||x||_2``), alone or chained, without error feedback,
are allowed; ``randk``'s ``d / k`` rescaling, the unbiased quantisers and an error-feedback
residual can all exceed the clip, and are refused (:class:`ConfigError`) rather than re-clipped
(re-clipping would bias the unbiased compressors).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from fedbench.compression.compressor import (
    QUANTIZERS,
    SPARSIFIERS,
    Compressor,
)
from fedbench.compression.traffic import add_bits, total_bits, zero_bits
from fedbench.errors import ConfigError

NAMES = ("none",) + SPARSIFIERS + QUANTIZERS

__all__ = ["NAMES", "QUANTIZERS", "SPARSIFIERS", "Compressor", "add_bits",
           "build_compression", "compression_defaults", "total_bits", "zero_bits"]


def compression_defaults(name: str) -> dict[str, Any]:
    """The settings of ``conf/compression/<name>.yaml``: the one source of every default."""
    return copy.deepcopy(_yaml_defaults(name))


@functools.cache
def _yaml_defaults(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    path = CONF_DIR / "compression" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _settings(cfg: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``cfg`` with the keys it leaves out filled from its YAML; unknown names or keys refused."""
    name = cfg.get("name")
    if name not in NAMES:
        raise ConfigError(f"{prefix}.name", name, "one of: " + ", ".join(NAMES))
    defaults = compression_defaults(name)
    for key, value in cfg.items():
        if key not in defaults:
            raise ConfigError(f"{prefix}.{key}", value,
                              f"a key of conf/compression/{name}.yaml: " + ", ".join(defaults))
    return {**defaults, **cfg}


def _check(settings: dict[str, Any], prefix: str) -> None:
    def flag(key):
        if key in settings and not isinstance(settings[key], bool):
            raise ConfigError(f"{prefix}.{key}", settings[key], "true or false")

    def integer(key, low, high=None, optional=False):
        value = settings.get(key)
        if key not in settings or (optional and value is None):
            return
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if not ok or (high is not None and value > high):
            bound = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
            raise ConfigError(f"{prefix}.{key}", value, ("null or " if optional else "") + bound)

    flag("per_tensor")
    flag("error_feedback")
    integer("k", 1, optional=True)
    integer("bits", 1, 16)
    integer("levels", 1, 2**16)
    integer("bucket_size", 1, optional=True)
    if "fraction" in settings:
        fraction = settings["fraction"]
        if settings.get("k") is None and (isinstance(fraction, bool)
                                          or not isinstance(fraction, (int, float))
                                          or not 0 < fraction <= 1):
            raise ConfigError(f"{prefix}.fraction", fraction, "a number in (0, 1] (or set k)")


def build_compression(
    cfg: Mapping[str, Any] | None,
    privacy: str | None = None,
    algorithm_kind: str = "federated",
) -> Compressor | None:
    """The :class:`Compressor` of a ``compression`` config (None: nothing to compress).

    Args:
      cfg: e.g. ``{"name": "topk", "fraction": 0.1, "error_feedback": True}``; keys left out take
        their values from ``conf/compression/<name>.yaml``. ``then``: None, the name of a
        quantiser, or a mapping of its settings.
      privacy: the ``privacy.name`` of the run (``dp_client`` restricts the compressors).
      algorithm_kind: the algorithm's ``kind``: ``federated`` rounds compress their uploads;
        the centralized and local baselines upload nothing (compression does not apply);
        FedBuff's uploads are not compressed yet (refused).

    Raises:
      ConfigError: unknown name or key, an out-of-range setting, a chain that is not a
        sparsifier then a quantiser, FedBuff, or a compressor that could break the clip bound
        under ``privacy=dp_client``.
    """
    if not cfg:
        return None
    settings = _settings(cfg, "compression")
    name = settings["name"]
    if name == "none":
        return None
    _check(settings, "compression")
    then = settings.get("then")
    then_settings = None
    if then is not None:
        if isinstance(then, str):
            then = {"name": then}
        if not isinstance(then, Mapping):
            raise ConfigError("compression.then", then, "null, a quantiser's name or a mapping")
        if name not in SPARSIFIERS or then.get("name") not in QUANTIZERS:
            raise ConfigError(
                "compression.then", then.get("name"),
                f"a quantiser ({', '.join(QUANTIZERS)}) after a sparsifier "
                f"({', '.join(SPARSIFIERS)}); got {name} then {then.get('name')}",
            )
        then_settings = _settings(then, "compression.then")
        _check(then_settings, "compression.then")
        if then.get("then") is not None:
            raise ConfigError("compression.then.then", then["then"],
                              "null (a chain is one sparsifier then one quantiser)")
        if then.get("error_feedback"):
            raise ConfigError("compression.then.error_feedback", True,
                              "false: set compression.error_feedback (it wraps the whole chain)")
        if "per_tensor" in then and then["per_tensor"] != settings["per_tensor"]:
            raise ConfigError("compression.then.per_tensor", then["per_tensor"],
                              "unset: the chain's blocks are set by compression.per_tensor")

    if algorithm_kind in ("centralized", "local"):
        return None
    if algorithm_kind != "federated":
        raise ConfigError("compression.name", name,
                          "none with an asynchronous algorithm (FedBuff's uploads are not "
                          "compressed yet)")
    if privacy == "dp_client":  # each piece declares whether it can raise the clipped norm
        for key, chosen in (("compression.name", name),
                            ("compression.then", then_settings and then_settings["name"])):
            piece = (None if chosen is None else
                     Compressor(sparsifier=chosen) if chosen in SPARSIFIERS else
                     Compressor(quantizer=chosen))
            if piece is not None and piece.raises_norm is not None:
                raise ConfigError(
                    key, chosen,
                    "a compressor that never raises a clipped update's norm (topk, signsgd) with "
                    f"privacy=dp_client: the noise is calibrated to the clip, and {piece.raises_norm}",
                )
        if settings["error_feedback"]:
            raise ConfigError(
                "compression.error_feedback", True,
                "false with privacy=dp_client: the residual added back can make a sent update's "
                "norm exceed privacy.clip, which the noise is calibrated to",
            )

    quantizer = then_settings if then_settings is not None else (
        settings if name in QUANTIZERS else None)
    sparsifier = settings if name in SPARSIFIERS else None
    options = {}
    if sparsifier is not None:
        fraction = sparsifier["fraction"]
        options.update(sparsifier=name, k=sparsifier["k"],
                       fraction=None if fraction is None else float(fraction))
    if quantizer is not None:
        options.update(quantizer=quantizer["name"], bucket_size=quantizer["bucket_size"],
                       **{key: quantizer[key] for key in ("bits", "levels") if key in quantizer})
    return Compressor(per_tensor=settings["per_tensor"],
                      error_feedback=settings["error_feedback"], **options)
