"""What an honest-but-curious server observes of one client, as functions of the client's data.

The attacks of :mod:`fedbench.audit.inversion` invert these maps: given the observed update they
search for inputs (and labels) whose update matches it. Labels enter as probability vectors
(one-hot for real data, a softmax for DLG's learned dummy labels) so that the update is
differentiable in them.

* :func:`client_gradient`: the mean cross-entropy gradient of one batch at the server model
  (FedSGD's message; Zhu et al. 2019, Sec. 3, ``nabla W = d l(F(x, W), y) / d W``).
* :func:`local_delta`: FedAvg's message, ``w_E - w_0`` after ``steps`` local SGD steps with
  learning rate ``lr``, cycling over the client's examples in consecutive minibatches
  (Geiping et al., NeurIPS 2020, Sec. 6, "multiple local steps": the attacker unrolls the same
  local updates on its dummy data, with ``lr``, ``steps`` and the batch size known).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


def soft_cross_entropy(logits: jax.Array, probs: jax.Array) -> jax.Array:
    """Mean over the batch of ``-sum_k p_k log softmax(logits)_k``; ``[B, K], [B, K] -> []``."""
    return -jnp.mean(jnp.sum(probs * jax.nn.log_softmax(logits), axis=-1))


def client_gradient(apply_fn: ApplyFn, params: Params, x: jax.Array, probs: jax.Array) -> Params:
    """Gradient of the mean cross-entropy of the batch ``(x, probs)`` at ``params``."""
    return jax.grad(lambda p: soft_cross_entropy(apply_fn(p, x), probs))(params)


def minibatch_slices(num_examples: int, batch_size: int, steps: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each local step's minibatch: consecutive slices of ``batch_size``
    examples, starting again at 0 after the last full one (an epoch is ``n // batch_size``
    steps; a trailing partial batch is not used, as in a drop-last loader)."""
    if batch_size < 1 or batch_size > num_examples:
        raise ValueError(f"batch_size={batch_size} must be in [1, {num_examples}]")
    per_epoch = num_examples // batch_size
    return [((s % per_epoch) * batch_size, (s % per_epoch + 1) * batch_size) for s in range(steps)]


def local_delta(
    apply_fn: ApplyFn,
    params: Params,
    x: jax.Array,
    probs: jax.Array,
    lr: float,
    steps: int,
    batch_size: int | None = None,
) -> Params:
    """FedAvg's update ``w_E - w_0`` after ``steps`` SGD steps of size ``lr`` (minibatches of
    :func:`minibatch_slices`; ``batch_size=None``: the whole batch at every step).

    Unrolled in Python (``steps`` is small), so it is differentiable in ``x`` and ``probs`` to
    any order.
    """
    batch_size = x.shape[0] if batch_size is None else batch_size
    w = params
    for start, stop in minibatch_slices(x.shape[0], batch_size, steps):
        g = client_gradient(apply_fn, w, x[start:stop], probs[start:stop])
        w = jax.tree.map(lambda p, d: p - lr * d, w, g)
    return jax.tree.map(jnp.subtract, w, params)


def update_map(
    apply_fn: ApplyFn,
    params: Params,
    kind: str,
    lr: float = 0.1,
    steps: int = 1,
    batch_size: int | None = None,
) -> Callable[[jax.Array, jax.Array], Params]:
    """``(x, probs) -> observed update`` for ``kind`` ``gradient`` or ``delta``."""
    if kind == "gradient":
        return lambda x, probs: client_gradient(apply_fn, params, x, probs)
    if kind == "delta":
        return lambda x, probs: local_delta(apply_fn, params, x, probs, lr, steps, batch_size)
    raise ValueError(f"unknown update kind {kind!r}: gradient or delta")
