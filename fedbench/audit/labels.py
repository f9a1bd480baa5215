"""Label recovery from the last layer's update (iDLG).

B. Zhao, K. R. Mopuri, H. Bilen. "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610,
2020, Sec. 3.1. For one example with softmax cross-entropy, the gradient of the loss with respect
to the logits is ``p - y`` (``p`` the softmax output, ``y`` one-hot), negative only at the true
class ``c``. The last dense layer ``z = W h + b`` has ``dL/dW_k = (p_k - y_k) h``, so with
non-negative features ``h`` (after a sigmoid or ReLU) the ``k``-th row of the kernel gradient
is non-positive exactly for ``k = c`` (Zhao et al., eq. 3-5). We read the sign of each class's
summed kernel gradient ``s_k = (p_k - y_k) sum_f h_f``: the label is ``argmin_k s_k``.

A FedAvg delta ``w_E - w_0 = -lr sum_t g_t`` has the opposite sign (``sign=-1``); over a batch
of ``B`` examples the ``B`` most negative classes are the heuristic extension of Wainakh et al.
("User-Level Label Leakage from Gradients in Federated Learning", PETS 2022, Sec. 4), exact when
the batch's labels are distinct and each example's ``p_c - 1`` term dominates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Params = Any


def last_layer_kernel(update: Params, num_classes: int) -> jax.Array:
    """The ``[features, num_classes]`` kernel of the last dense layer in the update pytree
    (the last 2-D leaf named ``kernel`` whose second axis has ``num_classes`` entries)."""
    found = None
    for path, leaf in jax.tree_util.tree_flatten_with_path(update)[0]:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel" and leaf.ndim == 2 and leaf.shape[1] == num_classes:
            found = leaf
    if found is None:
        raise ValueError(f"no dense kernel with {num_classes} outputs in the update")
    return found


def class_scores(update: Params, num_classes: int, sign: float = 1.0) -> jax.Array:
    """``s_k``: the summed last-layer kernel gradient of each class, ``[num_classes]``
    (``sign=-1`` for a delta ``w_E - w_0``, which points against the gradient)."""
    return sign * last_layer_kernel(update, num_classes).sum(axis=0)


def idlg_label(update: Params, num_classes: int, sign: float = 1.0) -> jax.Array:
    """The label of a batch of one: ``argmin_k s_k`` (Zhao et al. 2020, eq. 5)."""
    return jnp.argmin(class_scores(update, num_classes, sign))


def batch_labels(update: Params, num_classes: int, batch: int, sign: float = 1.0) -> jax.Array:
    """``batch`` labels: the classes with the most negative scores, ``[batch]`` (a batch larger
    than ``num_classes`` repeats classes in order of their scores)."""
    order = jnp.argsort(class_scores(update, num_classes, sign))
    return order[jnp.arange(batch) % num_classes]


def label_accuracy(recovered: jax.Array, true: jax.Array, num_classes: int) -> jax.Array:
    """Share of the true labels recovered, as multisets (order-free):
    ``sum_k min(count_rec(k), count_true(k)) / B``."""
    rec = jnp.bincount(jnp.ravel(recovered), length=num_classes)
    ref = jnp.bincount(jnp.ravel(true), length=num_classes)
    return jnp.minimum(rec, ref).sum() / jnp.size(true)
