"""What a compressor piece declares: the record each ``fedbench/compression/<name>.py`` exposes as
``PIECE`` (a :class:`Sparsifier` or a :class:`Quantizer`), read by the registry
(:mod:`fedbench.compression.registry`), by :class:`~fedbench.compression.compressor.Compressor`
(which composes a sparsifier and a quantiser and tests no name), by the config checks and by
client-level DP's refusal.

Every function of a piece takes ``settings``: the compressor's settings as one mapping
(:attr:`Compressor.settings <fedbench.compression.compressor.Compressor.settings>`: ``fraction``,
``k``, ``bits``, ``levels``, ``bucket_size``, ``per_tensor``, ``error_feedback`` and any
setting of the piece's own), so a piece never reads a global and its output depends on its
arguments only. Bits are Python ``int`` functions of the block's size and the settings (never of
the values), so a message's size is known from the shapes alone.

References:
  S. U. Stich, J.-B. Cordonnier, M. Jaggi. "Sparsified SGD with Memory", NeurIPS 2018,
  Definition 2.1 (a contractive compressor, ``E||C(x) - x||^2 <= (1 - d) ||x||^2``).
  D. Alistarh et al. "QSGD", NeurIPS 2017, Lemma 3.1 (an unbiased quantiser's variance bound
  ``E||Q(x) - x||^2 <= omega ||x||^2``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax

from fedbench.errors import ConfigError

Settings = Mapping[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Piece:
    """The declarations every piece makes.

    Attributes:
      name: its registry key, the ``name`` of ``conf/compression/<name>.yaml``.
      uses_key: whether it is random (then each client's message needs its own key).
      raises_norm: why its output can have a larger L2 norm than its input (sent alone, without
        error feedback), or None if it never does; client-level DP refuses a piece that can
        (its noise is calibrated to the clip).
      downlink: whether it may encode the server's model (``compression.downlink``).
      check: ``check(settings, prefix)`` refuses the piece's own settings out of range, with a
        :class:`ConfigError` naming ``prefix.key``, the value and what is allowed.
      configure: ``configure(settings) -> dict``: from its config (its YAML merged with the
        overrides, checked), the settings :class:`Compressor` keeps for it.
      role: ``"sparsifier"`` or ``"quantizer"`` (set by the class).
    """

    role: ClassVar[str] = ""
    name: str
    uses_key: bool
    raises_norm: str | None
    downlink: bool
    check: Callable[[Settings, str], None]
    configure: Callable[[Settings], dict[str, Any]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sparsifier(Piece):
    """Which entries of a block are sent (the first piece of a chain).

    Attributes:
      kept: ``kept(settings, size) -> int``: how many of a block's ``size`` entries it sends.
      select: ``select(settings, block, kept, key) -> indices``: which (``kept < size``).
      bits: ``bits(settings, size) -> int``: the bits of the positions it sends for a block of
        ``size`` entries (0 when it keeps them all); the values are counted by the quantiser,
        or at their dtype's width.
      rescale: ``rescale(settings, size, kept) -> float | None``: the factor the server
        multiplies the kept values by (None: none). Under error feedback the piece must be
        contractive (``E||C(x) - x||^2 <= (1 - kept / size) ||x||^2``), which a rescaled one is
        not, so it returns None there.
    """

    role: ClassVar[str] = "sparsifier"
    kept: Callable[[Settings, int], int]
    select: Callable[[Settings, jax.Array, int, jax.Array | None], jax.Array]
    bits: Callable[[Settings, int], int]
    rescale: Callable[[Settings, int, int], float | None] = lambda settings, size, kept: None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quantizer(Piece):
    """How the values that are sent are encoded (the last piece of a chain, or alone).

    Attributes:
      encode: ``encode(settings, values, key) -> decoded``: what the server decodes from the
        encoding of the 1-D ``values`` (``key``: None unless ``uses_key``).
      bits: ``bits(settings, entries) -> int``: the exact bits of the encoding of ``entries``
        values (scales included).
      variance_bound: ``variance_bound(settings, entries) -> omega`` of an unbiased quantiser,
        ``E||Q(x) - x||^2 <= omega ||x||^2``; None for a biased one (``contraction`` instead).
      contraction: for a biased quantiser, ``contraction(settings, size) -> 1 - d``, its bound
        of ``E||C(x) - x||^2 / ||x||^2`` on a block of ``size`` entries (error feedback wraps it
        where that is below 1); None for an unbiased one (bounded by ``variance_bound``).
    """

    role: ClassVar[str] = "quantizer"
    encode: Callable[[Settings, jax.Array, jax.Array | None], jax.Array]
    bits: Callable[[Settings, int], int]
    variance_bound: Callable[[Settings, int], float] | None = None
    contraction: Callable[[Settings, int], float] | None = None


# -- checks a piece's ``check`` is made of -----------------------------------------------------
def check_flag(settings: Settings, key: str, prefix: str) -> None:
    """Refuses ``settings[key]`` (if present) unless it is a bool."""
    if key in settings and not isinstance(settings[key], bool):
        raise ConfigError(f"{prefix}.{key}", settings[key], "true or false")


def check_integer(settings: Settings, key: str, prefix: str, low: int, high: int | None = None,
                  optional: bool = False) -> None:
    """Refuses ``settings[key]`` (if present; None too if ``optional``) unless it is an integer
    in ``[low, high]`` (``high`` None: no upper bound)."""
    value = settings.get(key)
    if key not in settings or (optional and value is None):
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bound = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise ConfigError(f"{prefix}.{key}", value, ("null or " if optional else "") + bound)
