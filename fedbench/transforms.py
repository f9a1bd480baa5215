"""Update transforms: what happens to a client's update before it leaves the site.

An :class:`UpdateTransform` is a pair of pure functions in optax's style, applied to each
client's model delta inside the client map:

* ``init(params) -> state``: one client's state (kept in the per-client store across rounds,
  e.g. an error-feedback residual; ``()`` if none);
* ``update(delta, state, round_info) -> (delta, state, info)``: the transformed delta, the new
  state and per-client diagnostics (``info``, e.g. the norm before clipping) for the aggregator.

:func:`chain` composes them in order. Client-level DP's clipping is the first transform
(:func:`clip_by_norm`); its noisy sum is an aggregator
(:func:`fedbench.privacy.mechanisms.dp_noisy_mean`). Compressors (:mod:`fedbench.compression`)
come after it; they report ``info["bits"]``, the encoded size of the client's message, and
draw randomness from ``round_info["key"]``, the client's own key of the round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from fedbench.privacy.mechanisms import clip_to_norm

Params = Any


class UpdateTransform(NamedTuple):
    init: Callable[[Params], Any]
    update: Callable[[Params, Any, Mapping[str, Any]], tuple[Params, Any, dict]]


def identity() -> UpdateTransform:
    """Sends the delta as it is."""
    return UpdateTransform(lambda params: (), lambda delta, state, info: (delta, state, {}))


def chain(*transforms: UpdateTransform) -> UpdateTransform:
    """Applies ``transforms`` in order; states are a tuple, infos merged (later keys win)."""
    if len(transforms) == 1:
        return transforms[0]

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(delta, states, round_info):
        new_states, infos = [], {}
        for t, s in zip(transforms, states):
            delta, s, info = t.update(delta, s, round_info)
            new_states.append(s)
            infos.update(info)
        return delta, tuple(new_states), infos

    return UpdateTransform(init, update)


def on_leaves(transform: UpdateTransform, sent: tuple[bool, ...]) -> UpdateTransform:
    """``transform`` applied to the list of the leaves marked ``sent`` (what leaves the site:
    :func:`fedbench.compression.traffic.sent_leaves`); the other leaves pass through as they
    are (zeros: never uploaded). A compressor then encodes, and counts the bits of, exactly the
    parts a client uploads (FedPer's body, not its zeroed head)."""

    def pick(tree):
        return [leaf for leaf, s in zip(jax.tree.leaves(tree), sent, strict=True) if s]

    def init(params):
        return transform.init(pick(params))

    def update(delta, state, round_info):
        leaves, treedef = jax.tree.flatten(delta)
        out, state, info = transform.update(pick(delta), state, round_info)
        rest = iter(out)
        merged = [next(rest) if s else leaf for leaf, s in zip(leaves, sent)]
        return jax.tree.unflatten(treedef, merged), state, info

    return UpdateTransform(init, update)


def clip_by_norm() -> UpdateTransform:
    """Scales the delta to L2 norm at most ``round_info["clip"]`` (over all parameters);
    ``info["norm"]`` is the norm before clipping (McMahan et al. 2018, Algorithm 1)."""

    def update(delta, state, round_info):
        clipped, norm = clip_to_norm(delta, round_info["clip"])
        return clipped, state, {"norm": norm}

    return UpdateTransform(lambda params: (), update)
