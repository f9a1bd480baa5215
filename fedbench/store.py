"""The per-client state store: one pytree with a leading ``[num_clients]`` axis.

Whatever outlives a round at a client (SCAFFOLD's control variates, FedDyn's linear terms, an
update transform's residuals, later personal models and heads) is declared by the algorithm or
transform that needs it as one client's entry; :func:`init_store` stacks ``num_clients`` of
them. Each round :func:`gather` reads the sampled clients' entries and :func:`scatter` writes
back only those whose update counted; every other client keeps its entry (also through the
rounds it is not sampled). ``dtype`` (e.g. ``bfloat16``) stores floating entries compactly for
large federations; they are read back in their computation dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Store = Any


def init_store(entry: Any, num_clients: int, dtype: Any = None) -> Store:
    """``num_clients`` copies of ``entry`` stacked on a leading axis (``None`` stays ``None``)."""

    def stack(leaf):
        leaf = jnp.asarray(leaf)
        if dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf = leaf.astype(dtype)
        return jnp.broadcast_to(leaf, (num_clients,) + leaf.shape)

    return jax.tree.map(stack, entry)


def gather(store: Store, ids: jax.Array, like: Any = None) -> Any:
    """The entries of clients ``ids`` (``[cohort, ...]``), cast to the dtypes of ``like``."""
    entries = jax.tree.map(lambda s: s[ids], store)
    if like is None:
        return entries
    return jax.tree.map(lambda e, ref: e.astype(jnp.asarray(ref).dtype), entries, like)


def scatter(store: Store, ids: jax.Array, entries: Any, mask: jax.Array) -> Store:
    """Writes ``entries[j]`` to client ``ids[j]`` where ``mask[j]``; other clients keep theirs.

    Masked-out slots are sent out of bounds and dropped, so padded cohorts (repeated ids) never
    overwrite a real client's entry.
    """
    num = jax.tree.leaves(store)[0].shape[0] if jax.tree.leaves(store) else 0
    target = jnp.where(mask, ids, num)
    return jax.tree.map(lambda s, e: s.at[target].set(e.astype(s.dtype), mode="drop"), store,
                        entries)
