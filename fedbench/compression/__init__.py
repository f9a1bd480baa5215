"""Uplink and downlink compression of client updates: the ``compression`` config group.

A compressor is an update transform (:mod:`fedbench.transforms`) applied to each client's model
delta inside the client map, after DP clipping if any; :func:`build_compression` turns a
``conf/compression/<name>.yaml`` config into a :class:`Compressor`, whose ``transform()`` goes to
``Simulator(transforms=...)``; :func:`~fedbench.compression.downlink.build_downlink` turns
``compression.downlink`` into the compressor of the model each client receives.

**The registry.** Each compressor is a piece in its own file, ``fedbench/compression/<name>.py``,
exposing ``PIECE``: a :class:`~fedbench.compression.piece.Sparsifier` (which entries of a block
are sent) or a :class:`~fedbench.compression.piece.Quantizer` (how the sent values are encoded).
:mod:`fedbench.compression.registry` finds every such module when this package is imported
(:data:`~fedbench.compression.registry.COMPRESSORS`); nothing keeps a list of names. A piece
declares what the rest reads:

* ``role``, and how it encodes (``select``/``kept``/``rescale``, or ``encode``) given the
  settings, the values and a key; ``bits``: its exact bits for a block of ``n`` entries;
* ``uses_key``: whether it is random; ``raises_norm``: why it can raise a clipped update's norm,
  or None (client-level DP accepts only pieces that declare None, and no error feedback);
* contraction: an unbiased quantiser's ``variance_bound`` ``omega``, a biased one's
  ``contraction``, a sparsifier's ``kept`` (``1 - k / n``; its ``rescale`` is None under error
  feedback); error feedback wraps only a compressor contractive on the model
  (:meth:`Compressor.check_error_feedback`);
* ``downlink``: whether it may encode the server's model; ``check``: the rules of its own
  settings (a :class:`ConfigError` naming key, value and what is allowed); ``configure``: the
  :class:`Compressor` settings it takes from its config.

The built-in pieces: ``topk`` / ``randk`` (``k`` entries per block, ``fraction`` or ``k``, the
largest in magnitude or uniformly random, rescaled by ``d / k`` unless under error feedback);
``quantize`` (unbiased stochastic ``bits``-bit uniform, a float32 scale per tensor or per
``bucket_size`` entries); ``qsgd`` (Alistarh et al. 2017, ``levels`` = ``s``); ``signsgd`` (the
scaled sign of EF-SignSGD, Karimireddy et al. 2019). ``none`` (the default) sends the delta
dense; ``error_feedback: true`` on any: each client keeps its residual across rounds.

**Adding a compressor** is one file plus one config, no list edited:

1. ``fedbench/compression/<name>.py`` with its math and ``PIECE = Quantizer(name="<name>",
   encode=..., bits=..., uses_key=..., raises_norm=..., downlink=..., variance_bound=... or
   contraction=..., check=..., configure=...)`` (or a ``Sparsifier``), each function of
   ``(settings, ...)`` with a docstring citing its paper and equation;
2. ``conf/compression/<name>.yaml`` with ``name: <name>``, its settings and their defaults,
   and ``per_tensor``, ``error_feedback``, ``then``, ``downlink`` (see ``quantize.yaml``);
   a setting that is not a :class:`Compressor` field travels in ``Compressor.options``.

``tests/test_compressor_registry.py`` then checks its declarations and its bytes with every
algorithm, and ``tests/test_combinations.py`` its norm and error-feedback declarations, with no
test edited. ``docs/examples/compressor.py`` writes TernGrad this way (registered at run time
with :func:`~fedbench.compression.registry.register`).

A chain is a sparsifier followed by a quantiser of its kept values, written with ``then``: the
name of the quantiser's config, or a mapping of its settings, e.g.
``compression=topk compression.then=quantize`` or
``compression=topk 'compression.then={name:qsgd,levels:4}'``. The blocks (``per_tensor``) and
``error_feedback`` belong to the first compressor of the chain.

Each client's message is counted exactly (``info["bits"]``: positions at the smallest sufficient
width or as a bitmap, whichever is smaller; values at 32 bits, or the quantiser's bits plus one
float32 per scale); the run's ``bytes_up`` is the total over the messages that were sent.

Under ``privacy=dp_client`` the Gaussian noise is calibrated to the clip, so every message must
keep the clipped delta's norm bound: a piece that declares it can raise the norm (rand-k's
``d / k``, the unbiased quantisers) and an error-feedback residual are refused
(:class:`ConfigError`) rather than re-clipped (re-clipping would bias the unbiased compressors);
``topk`` and ``signsgd``, alone or chained, without error feedback, are allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from fedbench.compression import registry
from fedbench.compression.compressor import Compressor
from fedbench.compression.piece import Piece, check_flag
from fedbench.compression.traffic import add_bits, total_bits, zero_bits
from fedbench.errors import ConfigError

__all__ = ["COMPRESSORS", "NAMES", "QUANTIZERS", "SPARSIFIERS", "Compressor", "add_bits",
           "build_compression", "compression_defaults", "total_bits", "zero_bits"]

#: Keys every compression config has, whatever its pieces: not a piece's own settings.
STRUCTURE = ("name", "per_tensor", "error_feedback", "then", "downlink")


def _names() -> tuple[str, ...]:
    """Every name ``compression.name`` accepts: ``none`` (no compressor) and the registry's."""
    return ("none",) + registry.names()


def compression_defaults(name: str) -> dict[str, Any]:
    """The settings of ``conf/compression/<name>.yaml`` (of :func:`registry.register`'s
    ``defaults`` for a piece registered at run time): the one source of every default."""
    if name in registry.RUNTIME_DEFAULTS:
        return copy.deepcopy(registry.RUNTIME_DEFAULTS[name])
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
    if name not in _names():
        raise ConfigError(f"{prefix}.name", name, "one of: " + ", ".join(_names()))
    defaults = compression_defaults(name)
    for key, value in cfg.items():
        if key not in defaults:
            raise ConfigError(f"{prefix}.{key}", value,
                              f"a key of conf/compression/{name}.yaml: " + ", ".join(defaults))
    return {**defaults, **cfg}


def _check(settings: dict[str, Any], prefix: str) -> None:
    """The rules every config follows (``per_tensor``, ``error_feedback``: flags), then the
    piece's own (its ``check``)."""
    check_flag(settings, "per_tensor", prefix)
    check_flag(settings, "error_feedback", prefix)
    registry.lookup(settings["name"]).check(settings, prefix)


def _configure(piece: Piece, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`Compressor` keyword arguments of ``piece`` from its checked ``settings``: its
    name under its role, and its ``configure``'d settings (those that are not fields of
    :class:`Compressor` in ``options``)."""
    fields = {f.name for f in dataclasses.fields(Compressor)}
    own = piece.configure(settings)
    options = tuple(sorted((key, value) for key, value in own.items() if key not in fields))
    return {piece.role: piece.name, **{k: v for k, v in own.items() if k in fields},
            **({"options": options} if options else {})}


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
      privacy: the ``privacy.name`` of the run (a mechanism that declares ``bounds_messages``,
        e.g. ``dp_client``, restricts the compressors).
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
        quantizers, sparsifiers = registry.names("quantizer"), registry.names("sparsifier")
        if name not in sparsifiers or then.get("name") not in quantizers:
            raise ConfigError(
                "compression.then", then.get("name"),
                f"a quantiser ({', '.join(quantizers)}) after a sparsifier "
                f"({', '.join(sparsifiers)}); got {name} then {then.get('name')}",
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
    from fedbench.privacy.mechanism import mechanism_class

    mechanism = mechanism_class(privacy or "none")
    if mechanism is not None and mechanism.encodes_messages:
        raise ConfigError("compression.name", name,
                          f"none with privacy={privacy}: it sends each update as integers of "
                          "privacy.bits bits through secure aggregation itself (its quantisation)")
    if mechanism is not None and mechanism.bounds_messages:
        # The mechanism's noise is calibrated to each message's clip (its declaration); each
        # piece declares whether it can raise the clipped norm.
        for key, chosen in (("compression.name", name),
                            ("compression.then", then_settings and then_settings["name"])):
            piece = registry.lookup(chosen)
            if piece is not None and piece.raises_norm is not None:
                safe = ", ".join(registry.names(raises_norm=None))
                raise ConfigError(
                    key, chosen,
                    f"a compressor that never raises a clipped update's norm ({safe}) with "
                    f"privacy={privacy}: the noise is calibrated to the clip, and "
                    f"{piece.raises_norm}",
                )
        if settings["error_feedback"]:
            raise ConfigError(
                "compression.error_feedback", True,
                f"false with privacy={privacy}: the residual added back can make a sent update's "
                "norm exceed privacy.clip, which the noise is calibrated to",
            )

    options = _configure(registry.lookup(name), settings)
    if then_settings is not None:
        then_options = _configure(registry.lookup(then_settings["name"]), then_settings)
        own = options.get("options", ()) + then_options.pop("options", ())
        options.update(then_options, **({"options": own} if own else {}))
    return Compressor(per_tensor=settings["per_tensor"],
                      error_feedback=settings["error_feedback"], **options)


registry.discover()
#: The registry (:mod:`fedbench.compression.registry`): every piece by name.
COMPRESSORS = registry.COMPRESSORS
#: The names the package registers (``none`` first), sparsifiers and quantisers: derived from
#: the registry when the package is imported (for compatibility; pieces registered later are
#: in :data:`COMPRESSORS` and accepted too).
NAMES = _names()
SPARSIFIERS = registry.names("sparsifier")
QUANTIZERS = registry.names("quantizer")
