"""Downlink compression: the server model each sampled client receives, quantised.

With ``compression.downlink`` set (``quantize`` or ``qsgd``, or a mapping of their settings),
the server encodes its model once per round (one broadcast message, its own key) and every
sampled client starts local training from the decoded model ``Q(w)``; the client's delta is
taken from where it started, and the server adds the aggregate to its own exact ``w`` (Caldas et
al., "Expanding the Reach of Federated Learning by Reducing Client Resource Requirements", 2018,
Sec. 3: lossy compression of the server-to-client model, clients training on the decompressed
model). Each download then counts the message's exact bits (``bytes_down``; the link's
transfer time, :mod:`fedbench.links`); anything else the algorithm sends down (SCAFFOLD's
control variate) stays dense float32.

Each piece declares whether it may encode the model (``downlink`` in its file: the unbiased
quantisers ``quantize`` and ``qsgd``): sparsifying or sign-compressing a model (not an update)
would destroy it, and error feedback has no meaning for a model the server keeps exact.
Downlink compression is post-processing of what the server already releases, so it changes no
privacy guarantee.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from fedbench.compression import registry
from fedbench.compression.compressor import Compressor
from fedbench.errors import ConfigError


def build_downlink(cfg: Mapping[str, Any] | None, algorithm_kind: str = "federated"
                   ) -> Compressor | None:
    """The :class:`Compressor` of ``compression.downlink`` (None: the model goes dense)."""
    from fedbench.compression import _check, _configure, _settings  # the uplink's rules

    allowed = registry.names(downlink=True)

    down = (cfg or {}).get("downlink")
    if down is None or algorithm_kind in ("centralized", "local"):
        return None
    if isinstance(down, str):
        down = {"name": down}
    if not isinstance(down, Mapping) or down.get("name") not in allowed:
        name = down.get("name") if isinstance(down, Mapping) else down
        raise ConfigError("compression.downlink", name,
                          "null or a quantiser of the model: " + ", ".join(allowed))
    if algorithm_kind != "federated":
        raise ConfigError("compression.downlink", down["name"],
                          "null with an asynchronous algorithm (FedBuff's downloads are dense)")
    settings = _settings(down, "compression.downlink")
    _check(settings, "compression.downlink")
    for key in ("error_feedback", "then", "downlink"):
        if settings.get(key):
            raise ConfigError(f"compression.downlink.{key}", settings[key],
                              "unset (a downlink message is one quantised model)")
    return Compressor(per_tensor=settings["per_tensor"],
                      **_configure(registry.lookup(settings["name"]), settings))


def broadcast(sim, params, state):
    """What the round's sampled clients receive: ``params`` itself, or its quantised copy (one
    message for all, keyed ``fold_in(fold_in(run_key, round), 0xD0)``)."""
    if sim.downlink is None:
        return params
    key = jax.random.fold_in(jax.random.fold_in(state.key, state.round), 0xD0)
    return sim.downlink.compress(params, key)[0]


def download_bits(sim) -> int:
    """Bits of one client's download: its algorithm's declared ``down`` messages
    (:class:`~fedbench.algorithm.base.Messages`), the first (the server model or models)
    quantised with a downlink compressor, else dense; the others dense; plus what the privacy
    mechanism's protocol sends each client (``Mechanism.protocol_down_bits``)."""
    from fedbench.compression.traffic import declared_messages, tree_bits

    (first, model), *others = declared_messages(sim.param_shapes(), sim.algorithm).down.items()
    bits = tree_bits(model) if sim.downlink is None else sim.downlink.message_bits(model)
    protocol = 0 if sim.privacy is None else sim.privacy.protocol_down_bits()  # secure sums
    return bits + sum(tree_bits(m) for _, m in others) + protocol
