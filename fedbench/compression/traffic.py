"""An exact counter of the bits clients upload, kept in the server state.

JAX runs without 64-bit integers by default and a float32 sum is exact only up to ``2^24``, so
the counter is two int32 limbs ``[high, low]`` worth ``high * 2^16 + low`` (``0 <= low < 2^16``):
exact up to ``2^47`` bits (16 TiB). Each message is at most ``2^31 - 1`` bits
(:data:`fedbench.compression.compressor.MAX_MESSAGE_BITS`) and a round adds at most 32,767
messages, so no partial sum overflows.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_LOW_BITS = 16
_LOW_MASK = (1 << _LOW_BITS) - 1


def zero_bits() -> jax.Array:
    """An empty counter."""
    return jnp.zeros((2,), jnp.int32)


def add_bits(counter: jax.Array, bits: jax.Array, valid: jax.Array) -> jax.Array:
    """``counter`` plus the ``bits`` of the messages where ``valid`` (both ``[cohort]``)."""
    bits = jnp.where(valid, bits.astype(jnp.int32), 0)
    low = counter[1] + jnp.sum(bits & _LOW_MASK)
    high = counter[0] + jnp.sum(bits >> _LOW_BITS) + (low >> _LOW_BITS)
    return jnp.stack([high, low & _LOW_MASK])


def total_bits(counter) -> int:
    """The counter's value as a Python ``int``."""
    high, low = (int(v) for v in np.asarray(counter))
    return (high << _LOW_BITS) + low


def traffic(state, up_bits: int, other_up_bits: int, links=None,
            down_bits: int | None = None) -> dict[str, Any]:
    """A run's traffic so far, for ``metrics.jsonl``.

    ``bytes_up``: every update that arrived, each its declared upload messages dense
    (``up_bits``: :func:`dense_bits`), or with a compressed delta its exact encoded bits plus
    the other messages dense (``other_up_bits``, e.g. SCAFFOLD's control variate), in whole
    bytes; ``compression_ratio``: dense over that (with compression only). ``bytes_down``:
    every client that started downloaded its declared messages, dropped stragglers and FedBuff
    clients still in flight included, each ``down_bits`` (whole bytes; default ``up_bits``).
    ``simulated_seconds``: the clock, when the sites have links (:mod:`fedbench.links`; the
    clock is then in seconds).
    """
    uploads = int(np.asarray(state.participation).sum())
    dense = -(-up_bits // 8)
    out: dict[str, Any] = {"bytes_up": uploads * dense}
    if state.bits_up is not None:
        out["bytes_up"] = -(-(total_bits(state.bits_up) + uploads * other_up_bits) // 8)
        out["compression_ratio"] = (uploads * dense / out["bytes_up"]
                                    if out["bytes_up"] else None)
    per_download = dense if down_bits is None else -(-down_bits // 8)
    out["bytes_down"] = int(np.asarray(state.downloads).sum()) * per_download
    if links is not None and state.clock is not None:
        out["simulated_seconds"] = float(state.clock)
    return out


def sent_leaves(shapes, algorithm) -> tuple[bool, ...]:
    """For each leaf of the model: whether it leaves the site. The algorithm's ``shared`` zeroes
    the parts that stay (FedPer's and FedRep's heads, a semi-federated model's local parts:
    never uploaded, never changed at the server, so never downloaded again); a leaf it zeroes
    entirely stays. Host-side, on shapes (outside any trace)."""
    shared = getattr(algorithm, "shared", None)
    leaves = jax.tree.leaves(shapes)
    if shared is None:
        return (True,) * len(leaves)
    kept = shared(jax.tree.map(lambda leaf: np.ones(leaf.shape, np.float32), shapes))
    return tuple(bool(np.any(np.asarray(k))) for k in jax.tree.leaves(kept))


def sent_shapes(shapes, algorithm):
    """``shapes`` with the leaves that stay at the site replaced by None (no leaf)."""
    leaves, treedef = jax.tree.flatten(shapes)
    keep = sent_leaves(shapes, algorithm)
    return jax.tree.unflatten(treedef, [leaf if k else None for leaf, k in zip(leaves, keep)])


def tree_bits(shapes) -> int:
    """Bits of a dense message of these shapes, each leaf at its dtype's width."""
    return int(sum(8 * np.dtype(leaf.dtype).itemsize * int(np.prod(leaf.shape))
                   for leaf in jax.tree.leaves(shapes)))


def declared_messages(shapes, algorithm):
    """The algorithm's :class:`~fedbench.algorithm.base.Messages` for a model of ``shapes``."""
    return algorithm.messages(algorithm, sent_shapes(shapes, algorithm))


def dense_bits(shapes, algorithm) -> int:
    """Bits of one client's dense upload: every message the algorithm declares (``up``), each
    leaf at its dtype's width. ``shapes``: the parameters or their ``jax.ShapeDtypeStruct``
    leaves."""
    return sum(tree_bits(m) for m in declared_messages(shapes, algorithm).up.values())


def other_up_bits(shapes, algorithm) -> int:
    """Bits of the upload messages besides the delta (sent dense even with a compressor)."""
    up = declared_messages(shapes, algorithm).up
    return sum(tree_bits(m) for name, m in up.items() if name != "delta")


def reports_bits(sim) -> bool:
    """Whether ``sim``'s update transforms report each message's ``"bits"`` (compressors);
    traced on shapes only (the ``"clip"`` a DP transform reads is a placeholder, as are the
    keys and the client id)."""
    info = {"clip": jnp.float32(1.0), "key": jax.random.PRNGKey(0),
            "run_key": jax.random.PRNGKey(0), "client": jnp.int32(0)}
    params = sim.param_shapes()
    shared = getattr(sim.algorithm, "shared", None)  # what enters the transforms
    delta = params if shared is None else shared(params)
    out = jax.eval_shape(lambda d, s: sim.transform.update(d, s, info)[2],
                         delta, sim.store_template["transforms"])
    return "bits" in out


def upload_bits(sim, infos) -> jax.Array | None:
    """Each cohort client's uploaded bits when ``sim``'s transforms count them: the compressed
    delta plus any other release dense (SCAFFOLD's control variate); else None (dense)."""
    if not sim.counts_bits:
        return None
    return infos["bits"].astype(jnp.float32) + sim.other_up_bits
