"""The one representation of a federated dataset used by every algorithm.

Clients hold different numbers of examples. To train them all at once under ``jax.vmap`` their
arrays are padded to a common length and each client's true example count is kept beside them;
the simulator masks the padded rows, so no example is ever dropped or duplicated.

Shapes (``C`` clients, ``N`` = the largest client's training size, ``M`` = the largest client's
test size, ``T`` = pooled test size, ``F...`` = the feature shape, e.g. ``(8, 8, 1)``):

=================  ==================  =======================================================
field              shape / dtype       meaning
=================  ==================  =======================================================
``train_x``        ``[C, N, F...]`` f32 client training inputs, zero-padded past ``train_counts``
``train_y``        ``[C, N]`` i32       labels, padded with 0 (survival: ``[C, N, 2]`` f32
                                       ``(event, time)`` rows, see :mod:`fedbench.task`)
``train_counts``   ``[C]`` i32          true number of training examples of each client
``test_x``         ``[C, M, F...]`` f32 each client's own test split, zero-padded
``test_y``         ``[C, M]`` i32
``test_counts``    ``[C]`` i32          may be 0 for a tiny client
``pooled_test_x``  ``[T, F...]`` f32    the union of all clients' test splits
``pooled_test_y``  ``[T]`` i32
=================  ==================  =======================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class FederatedData:
    """Padded per-client arrays plus counts; a pytree, so it can be passed into ``jit``."""

    train_x: jax.Array
    train_y: jax.Array
    train_counts: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    test_counts: jax.Array
    pooled_test_x: jax.Array
    pooled_test_y: jax.Array
    num_classes: int = flax.struct.field(pytree_node=False)
    task: str = flax.struct.field(pytree_node=False, default="classification")
    #: each client's known group (``partition=rotated`` / ``label_swap``), else None
    client_groups: tuple[int, ...] | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def num_clients(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def max_train(self) -> int:
        """``N``: the padded training length."""
        return int(self.train_x.shape[1])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.train_x.shape[2:])

    def cohort(self, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The padded training arrays of clients ``ids``: ``[k, N, F...]`` and ``[k, N]``."""
        return self.train_x[ids], self.train_y[ids]

    def with_cohort(self, ids: jax.Array, fn):
        """``fn(x, y)`` on the padded training arrays of clients ``ids``."""
        return fn(*self.cohort(ids))

    def example_input(self) -> jax.Array:
        """One input row ``[1, F...]`` (to initialise a model)."""
        return self.train_x[0, :1]

    def client_train(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """The unpadded training arrays of one client (host NumPy), for reference loops."""
        n = int(self.train_counts[client])
        # Slice on the host: a device slice per distinct size would compile each time.
        return np.asarray(self.train_x[client])[:n], np.asarray(self.train_y[client])[:n]

    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        """All clients' training examples concatenated in client order (host NumPy)."""
        x, y, counts = (np.asarray(a) for a in (self.train_x, self.train_y, self.train_counts))
        return (
            np.concatenate([x[c, :n] for c, n in enumerate(counts)]),
            np.concatenate([y[c, :n] for c, n in enumerate(counts)]),
        )


def _pad_stack(arrays: Sequence[np.ndarray], length: int, dtype) -> np.ndarray:
    first = arrays[0]
    out = np.zeros((len(arrays), length) + first.shape[1:], dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def from_client_arrays(
    train_x: Sequence[np.ndarray],
    train_y: Sequence[np.ndarray],
    test_x: Sequence[np.ndarray],
    test_y: Sequence[np.ndarray],
    num_classes: int,
    task: str = "classification",
    client_groups: Sequence[int] | None = None,
) -> FederatedData:
    """Pads per-client arrays to common lengths and moves them to the default device.

    Args:
      train_x: one ``[n_i, F...]`` array per client (``n_i >= 1``).
      train_y: one ``[n_i]`` integer array per client.
      test_x: one ``[m_i, F...]`` array per client (``m_i`` may be 0).
      test_y: one ``[m_i]`` array per client.
      num_classes: number of label classes.
      task: ``classification`` (integer labels) or ``survival`` (``[n_i, 2]`` float targets).
      client_groups: each client's known group (a scenario's), kept as a static tuple.

    Returns:
      The padded :class:`FederatedData`; the pooled test set is the concatenation of the
      clients' test splits in client order.
    """
    train_counts = np.array([len(a) for a in train_x], dtype=np.int32)
    test_counts = np.array([len(a) for a in test_x], dtype=np.int32)
    n_max = max(1, int(train_counts.max()))
    m_max = max(1, int(test_counts.max()))
    y_dtype = np.float32 if task == "survival" else np.int32
    return FederatedData(
        train_x=jnp.asarray(_pad_stack(train_x, n_max, np.float32)),
        train_y=jnp.asarray(_pad_stack(train_y, n_max, y_dtype)),
        train_counts=jnp.asarray(train_counts),
        test_x=jnp.asarray(_pad_stack(test_x, m_max, np.float32)),
        test_y=jnp.asarray(_pad_stack(test_y, m_max, y_dtype)),
        test_counts=jnp.asarray(test_counts),
        pooled_test_x=jnp.asarray(np.concatenate(test_x).astype(np.float32)),
        pooled_test_y=jnp.asarray(np.concatenate(test_y).astype(y_dtype)),
        num_classes=int(num_classes),
        task=task,
        client_groups=None if client_groups is None else tuple(int(g) for g in client_groups),
    )
