"""Client data as one flat array with per-client offsets: memory set by the examples, not by
``num_clients x the largest client`` (``client_storage=flat``).

:class:`~fedbench.dataset.federated.FederatedData` pads every client to the largest one, which
for heavy-tailed client sizes (Li et al. 2020's lognormal devices) costs ``num_clients x max``
rows: 3,000 FedProx-sized clients do not fit in 24 GiB. :class:`FlatFederatedData` keeps each
split as all clients' rows concatenated in client order plus each client's offset and count;
each round :meth:`FlatFederatedData.cohort` gathers only the sampled clients' rows, zero-padded
to the largest client, exactly the arrays the padded layout would index, so training is the
same bit for bit. Evaluation runs over the flat rows in chunks and sums per client with
``jax.ops.segment_sum``.

Shapes (``C`` clients, ``R`` = total training rows, ``S`` = total test rows, ``N`` = the
largest client's training size, ``F...`` the feature shape):

=================  ==================  =======================================================
field              shape / dtype       meaning
=================  ==================  =======================================================
``rows_x``         ``[R, F...]``        every client's training inputs, client after client
``rows_y``         ``[R]`` i32          their labels
``train_offsets``  ``[C]`` i32          where each client's rows start
``train_counts``   ``[C]`` i32          how many rows it has
``test_rows_x``    ``[S, F...]``        every client's test split, client after client: also
                                       the pooled test set (same order as the padded layout's)
``test_rows_y``    ``[S]`` i32
``test_counts``    ``[C]`` i32
=================  ==================  =======================================================

The fields are named differently from the padded layout's on purpose: code that indexes
``data.train_x[client]`` cannot silently read one example instead of one client.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

#: The shortest padded length :meth:`FlatFederatedData.bucket_lengths` goes down to.
MIN_BUCKET = 8


@flax.struct.dataclass
class FlatFederatedData:
    """All clients' rows concatenated plus offsets and counts; a pytree for ``jit``."""

    rows_x: jax.Array
    rows_y: jax.Array
    train_offsets: jax.Array
    train_counts: jax.Array
    test_rows_x: jax.Array
    test_rows_y: jax.Array
    test_counts: jax.Array
    num_classes: int = flax.struct.field(pytree_node=False)
    max_train: int = flax.struct.field(pytree_node=False)  # N: a cohort's padded length
    task: str = flax.struct.field(pytree_node=False, default="classification")
    client_groups: tuple[int, ...] | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def num_clients(self) -> int:
        return int(self.train_counts.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.rows_x.shape[1:])

    @property
    def pooled_test_x(self) -> jax.Array:
        return self.test_rows_x

    @property
    def pooled_test_y(self) -> jax.Array:
        return self.test_rows_y

    def example_input(self) -> jax.Array:
        """One input row ``[1, F...]`` (to initialise a model)."""
        return self.rows_x[:1]

    def cohort(self, ids: jax.Array, length: int | None = None) -> tuple[jax.Array, jax.Array]:
        """The training rows of clients ``ids``, ``[k, N, F...]`` and ``[k, N]``, zero past each
        client's count: the arrays ``FederatedData.cohort`` returns for the same clients
        (``length``: pad to that many rows instead of ``N``; every client must fit)."""
        n = self.max_train if length is None else length
        offsets, counts = self.train_offsets[ids], self.train_counts[ids]
        valid = jnp.arange(n)[None, :] < counts[:, None]
        rows = jnp.where(valid, offsets[:, None] + jnp.arange(n)[None, :], 0)

        def take(a):
            picked = a[rows]
            mask = valid.reshape(valid.shape + (1,) * (a.ndim - 1))
            return jnp.where(mask, picked, jnp.zeros((), a.dtype))

        return take(self.rows_x), take(self.rows_y)

    def bucket_lengths(self) -> tuple[int, ...]:
        """Padded lengths a cohort may get: ``N``, ``ceil(N / 2)``, ``ceil(N / 4)``, then a
        quarter of the previous each, down to :data:`MIN_BUCKET` rows, longest first. (Halved
        twice first: the largest of a cohort of lognormal sizes is often just over ``N / 4``,
        e.g. in 43% of W5's rounds; ``benchmarks/NOTES.md``.)"""
        lengths = [self.max_train]
        while -(-lengths[-1] // (2 if len(lengths) < 3 else 4)) >= MIN_BUCKET:
            lengths.append(-(-lengths[-1] // (2 if len(lengths) < 3 else 4)))
        return tuple(lengths)

    def with_cohort(self, ids: jax.Array, fn):
        """``fn(x, y)`` on clients ``ids``' rows padded to the shortest of
        :meth:`bucket_lengths` that holds the largest of them (a ``lax.switch``, each length
        compiled once). Training does not depend on the padded length (epoch orders and
        Poisson samples are drawn per slot from partitionable keys, padding sorts last), so the
        result is the padded layout's bit for bit, at the cost of the cohort's largest client
        rather than the population's."""
        lengths = self.bucket_lengths()
        if len(lengths) == 1:
            return fn(*self.cohort(ids))
        largest = jnp.max(self.train_counts[ids])
        # Branch i pads to lengths[i]; choose the last (shortest) one that still fits.
        index = jnp.sum(jnp.asarray(lengths[1:]) >= largest)
        return jax.lax.switch(index, [lambda n=n: fn(*self.cohort(ids, n)) for n in lengths])

    def train_segments(self) -> jax.Array:
        """The client id of every training row, ``[R]`` int32 (traceable)."""
        return _segments(self.train_counts, self.rows_y.shape[0])

    def test_segments(self) -> jax.Array:
        """The client id of every test row, ``[S]`` int32 (traceable)."""
        return _segments(self.test_counts, self.test_rows_y.shape[0])

    def client_train(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """The training arrays of one client (host NumPy), for reference loops."""
        start, n = int(self.train_offsets[client]), int(self.train_counts[client])
        return (np.asarray(self.rows_x[start:start + n]),
                np.asarray(self.rows_y[start:start + n]))

    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        """All clients' training examples in client order (host NumPy)."""
        return np.asarray(self.rows_x), np.asarray(self.rows_y)


def _segments(counts: jax.Array, total: int) -> jax.Array:
    return jnp.repeat(jnp.arange(counts.shape[0], dtype=jnp.int32), counts,
                      total_repeat_length=total)


def flat_from_client_arrays(
    train_x: Sequence[np.ndarray],
    train_y: Sequence[np.ndarray],
    test_x: Sequence[np.ndarray],
    test_y: Sequence[np.ndarray],
    num_classes: int,
    task: str = "classification",
    client_groups: Sequence[int] | None = None,
) -> FlatFederatedData:
    """The flat counterpart of :func:`fedbench.dataset.federated.from_client_arrays` (same
    arguments): rows concatenated in client order, no padding."""
    train_counts = np.array([len(a) for a in train_x], dtype=np.int32)
    test_counts = np.array([len(a) for a in test_x], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(train_counts)[:-1]]).astype(np.int32)
    if int(train_counts.sum()) >= 2**31:
        raise ValueError("more than 2**31 training rows: offsets are int32")
    y_dtype = np.float32 if task == "survival" else np.int32
    return FlatFederatedData(
        rows_x=jnp.asarray(np.concatenate(train_x).astype(np.float32, copy=False)),
        rows_y=jnp.asarray(np.concatenate(train_y).astype(y_dtype, copy=False)),
        train_offsets=jnp.asarray(offsets),
        train_counts=jnp.asarray(train_counts),
        test_rows_x=jnp.asarray(np.concatenate(test_x).astype(np.float32, copy=False)),
        test_rows_y=jnp.asarray(np.concatenate(test_y).astype(y_dtype, copy=False)),
        test_counts=jnp.asarray(test_counts),
        num_classes=int(num_classes),
        max_train=max(1, int(train_counts.max())),
        task=task,
        client_groups=None if client_groups is None else tuple(int(g) for g in client_groups),
    )


def flat_sums(apply_fn, params, x: jax.Array, y: jax.Array, segments: jax.Array,
              num_segments: int, chunk: int, per_example) -> tuple[jax.Array, jax.Array]:
    """Per-segment sums of ``per_example(outputs, y) -> (loss, correct)`` over the rows of
    ``x`` in chunks of ``chunk`` rows (memory bounded by a chunk): ``([C], [C])``."""
    rows = x.shape[0]
    if rows == 0:  # e.g. no test rows (dataset.test_fraction=0)
        return (jnp.zeros((num_segments,), jnp.float32), jnp.zeros((num_segments,), jnp.int32))
    chunk = max(1, min(chunk, rows))
    count = -(-rows // chunk)

    def one(i):  # chunk i in place (no padded copy of x); the last one ends at the last row
        start = jnp.minimum(i * chunk, rows - chunk)
        return per_example(apply_fn(params, jax.lax.dynamic_slice_in_dim(x, start, chunk)),
                           jax.lax.dynamic_slice_in_dim(y, start, chunk))

    loss, correct = jax.lax.map(one, jnp.arange(count))
    tail = rows - (count - 1) * chunk  # rows of the last chunk not already in the one before
    loss = jnp.concatenate([loss[:-1].reshape(-1), loss[-1, chunk - tail:]])
    correct = jnp.concatenate([correct[:-1].reshape(-1), correct[-1, chunk - tail:]])
    return (jax.ops.segment_sum(loss, segments, num_segments),
            jax.ops.segment_sum(correct.astype(jnp.int32), segments, num_segments))
