"""Evaluation of the model(s) a run has trained: one code path for every algorithm.

:class:`Evaluator` is built from explicit arguments (the model's forward pass, the algorithm, the
data, the client lr and batch size, the chunk size, the compiler options, known client groups)
and owns its compiled programs; the simulator holds one (``Simulator.evaluator``) and forwards
its public methods to it, and a partition replica gets its own over its own data
(:func:`fedbench.replica_data.evaluation_view`).

Which model scores a client is asked once (:attr:`Evaluator.per_client_models`,
:meth:`Evaluator.evaluated_params`): the global model, or each client's own (params with a
leading ``[num_clients]`` axis): ``local``'s own models, an algorithm's ``client_models(params,
server_state, store entries)`` (Ditto's personal models, FedPer's global body with each client's
head, IFCA's and CFL's cluster models), or the global model fine-tuned for ``finetune_steps``
local steps at each client. An algorithm's ``client_prepare`` (IFCA's choice of cluster) runs
for every client first, so each is scored with the model it would choose now; its
``client_clusters`` are reported (``clusters``, and ``cluster_ari``, the adjusted Rand index of
Hubert and Arabie 1985, against known client groups).
Metrics: ``train_*`` over every client's training data (example-weighted), ``test_*`` on the
pooled test set, ``client_*`` on each client's own test split; survival data report Harrell's
C-index. :meth:`Evaluator.site_results` answers Pati et al. 2022's (FeTS) question per site.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbench import hparams
from fedbench.algorithm.base import prepare_clients, scores_own_models
from fedbench.dataset.federated import FederatedData
from fedbench.dataset.flat import FlatFederatedData, flat_sums
from fedbench.evaluation_metrics import site_table, spread, survival_metrics
from fedbench.local import epochs_for_steps, make_local_update, map_over_clients
from fedbench.task import batch_loss_fn, cox_terms
from fedbench.xla_options import jit as xla_jit

__all__ = ["Evaluator", "cross_entropy", "spread"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, ``[B, K], [B] -> [B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class Evaluator:
    """Scores a run's model(s) on ``data``; built from values, never from a simulator.

    Args:
      apply_fn: the model's forward pass, ``apply_fn(params, x)``.
      algorithm: the run's :class:`~fedbench.algorithm.Algorithm` (which model scores each
        client; ``client_prepare``, ``client_clusters``; FedBuff's ``buffer_size``).
      data: the :class:`FederatedData` (or flat storage) scored; an argument of every compiled
        program, never a constant in it.
      lr, batch_size: the client learning rate and batch size of ``finetune_steps``' local
        steps (the settings', as the run's own clients use).
      eval_chunk: examples per forward pass (bounds memory).
      compiler_options: XLA options of each compiled program (:mod:`fedbench.xla_options`).
      client_groups: each client's known group (None: the data's, if any); the one attribute
        that may be set after construction (``Simulator.client_groups`` forwards to it).

    The compiled programs (evaluation, client models, clusters, site outputs) are built once
    here and trace on first use; :meth:`with_data` gives an evaluator with its own.
    """

    def __init__(self, apply_fn, algorithm, data: FederatedData, *, lr: float, batch_size: int,
                 eval_chunk: int, compiler_options: dict[str, str] | None = None,
                 client_groups=None):
        self.apply_fn, self.algorithm, self.data = apply_fn, algorithm, data
        self.lr, self.batch_size, self.eval_chunk = lr, batch_size, eval_chunk
        self.compiler_options = compiler_options or {}
        self.client_groups = client_groups
        self._evaluate = xla_jit(self._evaluate_impl, self.compiler_options)
        self._client_models = xla_jit(self._client_models_impl, self.compiler_options)
        self._clusters = xla_jit(self._clusters_impl, self.compiler_options)
        self._site_outputs = xla_jit(self._site_outputs_impl, self.compiler_options)

    def with_data(self, data: FederatedData) -> Evaluator:
        """The same evaluation of ``data`` (e.g. a partition replica's own, unpadded), with its
        own compiled programs, so its metrics are those of a run on ``data`` alone."""
        return Evaluator(self.apply_fn, self.algorithm, data, lr=self.lr,
                         batch_size=self.batch_size, eval_chunk=self.eval_chunk,
                         compiler_options=self.compiler_options,
                         client_groups=self.client_groups)

    @property
    def per_client_models(self) -> bool:
        """True when each client is scored with its own model (:meth:`evaluated_params` has a
        leading client axis)."""
        return scores_own_models(self.algorithm)

    def evaluated_params(self, state):
        """The model(s) evaluation scores: ``state.params`` (the global model, or for
        ``local`` its per-client stack), the algorithm's ``client_models`` stack, or the
        global model after ``finetune_steps`` local SGD steps at every client (client lr and
        batch size, key ``fold_in(fold_in(run_key, round), 0xF17E)``; the client lr is the run's
        own, ``state.hparams["lr"]`` when it carries one: a sweep replica's; the algorithm's
        ``finetune_lr`` instead when it has one, Per-FedAvg's ``alpha``)."""
        alg = self.algorithm
        if alg.client_models is None and alg.finetune_steps == 0:
            return state.params
        store = None if state.store is None else state.store["algorithm"]
        lr = None if alg.finetune_lr is not None else hparams.get(state.hparams, "lr", None)
        return self._client_models(state.params, state.server, store, state.key, state.round,
                                   self.data, None if lr is None else {"lr": lr})

    def _entries_now(self, params, entries, data):
        """Every client's store entries after ``client_prepare`` (as if it took part now)."""
        if self.algorithm.client_prepare is None:
            return entries
        return prepare_clients(self.algorithm.client_prepare, self.apply_fn, params, data.train_x,
                               data.train_y, data.train_counts, entries,
                               batch_loss_fn(data.task), axis="map")

    def _clusters_impl(self, params, server, entries, data):
        return self.algorithm.client_clusters(params, server,
                                              self._entries_now(params, entries, data))

    @property
    def known_groups(self):
        """Each client's true group when known (:attr:`client_groups`, else the data's, e.g. a
        scenario's rotation), else None."""
        groups = self.client_groups
        return groups if groups is not None else getattr(self.data, "client_groups", None)

    def cluster_metrics(self, state) -> dict[str, Any]:
        """``clusters`` (each client's cluster) and, with :attr:`known_groups`, ``cluster_ari``
        (``sklearn.metrics.adjusted_rand_score``; 1: the true partition, ~0: chance)."""
        if self.algorithm.client_clusters is None:
            return {}
        store = None if state.store is None else state.store["algorithm"]
        clusters = np.asarray(self._clusters(state.params, state.server, store, self.data))
        out: dict[str, Any] = {"clusters": clusters.tolist()}
        if self.known_groups is not None:
            from sklearn.metrics import adjusted_rand_score

            out["cluster_ari"] = float(adjusted_rand_score(np.asarray(self.known_groups),
                                                           clusters))
        return out

    def _client_models_impl(self, params, server, entries, key, round_, data, hp=None):
        # ``data`` is an argument: a concrete array closed over would be baked into the program.
        alg = self.algorithm
        if alg.client_models is not None:
            return alg.client_models(params, server, self._entries_now(params, entries, data))
        steps = alg.finetune_steps
        smallest = int(np.min(np.asarray(self.data.train_counts)))  # host-side, a shape constant
        batch = self.batch_size
        lr = self.lr if alg.finetune_lr is None else alg.finetune_lr
        update = make_local_update(
            self.apply_fn, lr=lr, batch_size=batch, local_steps=steps,
            local_epochs=epochs_for_steps(steps, smallest, batch), loss_fn=batch_loss_fn(data.task),
        )
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, round_), 0xF17E),
                                data.num_clients)
        deltas, _ = map_over_clients(
            lambda p, x, y, n, k: update(p, x, y, n, k, hp=hp), "map", (None, 0, 0, 0, 0))(
            params, data.train_x, data.train_y, data.train_counts, keys)
        return jax.tree.map(lambda p, d: p + d, params, deltas)

    def _sums(self, params, x, y, count):
        """Sum of losses and of correct predictions over the first ``count`` rows, chunked."""
        chunk = min(self.eval_chunk, x.shape[0])
        pad = -x.shape[0] % chunk
        xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        ys = jnp.pad(y, (0, pad))
        valid = jnp.arange(xs.shape[0]) < count
        shape = (-1, chunk)

        def one(args):
            xb, yb, vb = args
            logits = self.apply_fn(params, xb)
            loss = jnp.where(vb, cross_entropy(logits, yb), 0.0).sum()
            correct = jnp.where(vb, jnp.argmax(logits, -1) == yb, False).sum()
            return loss, correct

        losses, corrects = jax.lax.map(
            one,
            (xs.reshape(shape + xs.shape[1:]), ys.reshape(shape), valid.reshape(shape)),
        )
        return losses.sum(), corrects.sum()

    def _outputs(self, params, x):
        """Model outputs on ``x`` in chunks of ``eval_chunk`` rows (bounds memory)."""
        chunk = min(self.eval_chunk, x.shape[0])
        pad = -x.shape[0] % chunk
        xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        out = jax.lax.map(lambda xb: self.apply_fn(params, xb), xs.reshape((-1, chunk) + x.shape[1:]))
        return out.reshape((-1,) + out.shape[2:])[: x.shape[0]]

    def _survival_impl(self, params, data: FederatedData):
        """Cox partial-likelihood sums (risk set = each client's own training set) and the
        log-risk scores of every test split and of the pooled test set."""
        per_client = self.per_client_models
        p_axis = 0 if per_client else None
        n = data.train_x.shape[1]

        def client_loss(p, x, y, count):
            scores = self._outputs(p, x)[:, 0]
            return cox_terms(scores, y, jnp.arange(n) < count).sum()

        losses = map_over_clients(client_loss, "map", (p_axis, 0, 0, 0))(
            params, data.train_x, data.train_y, data.train_counts
        )
        test_scores = map_over_clients(lambda p, x: self._outputs(p, x)[:, 0], "map", (p_axis, 0))(
            params, data.test_x
        )
        pooled = map_over_clients(
            lambda p: self._outputs(p, data.pooled_test_x)[:, 0], "map", (p_axis,)
        )
        pooled_scores = pooled(params) if per_client else self._outputs(params, data.pooled_test_x)[:, 0]
        return {"train_loss": losses.sum() / data.train_counts.sum(), "test_scores": test_scores,
                "pooled_scores": pooled_scores}

    def _flat_impl(self, params, data: FlatFederatedData):
        """:meth:`_evaluate_impl` over flat storage (global model, classification): per-example
        losses in chunks of ``eval_chunk`` rows, summed per client (``segment_sum``)."""
        def per_example(logits, y):
            return cross_entropy(logits, y), jnp.argmax(logits, -1) == y

        c, chunk = data.num_clients, self.eval_chunk
        train_loss, train_correct = flat_sums(self.apply_fn, params, data.rows_x, data.rows_y,
                                              data.train_segments(), c, chunk, per_example)
        test_loss, test_correct = flat_sums(self.apply_fn, params, data.test_rows_x,
                                            data.test_rows_y, data.test_segments(), c, chunk,
                                            per_example)
        n_train, pooled_n = data.train_counts.sum(), data.test_rows_y.shape[0]
        return {"train_loss": train_loss.sum() / n_train,
                "train_accuracy": train_correct.sum() / n_train,
                "test_loss": test_loss.sum() / pooled_n,
                "test_accuracy": test_correct.sum() / pooled_n,
                "client_test_correct": test_correct}

    def _evaluate_impl(self, params, data: FederatedData):
        if isinstance(data, FlatFederatedData):
            return self._flat_impl(params, data)
        if data.task == "survival":
            return self._survival_impl(params, data)
        per_client = self.per_client_models
        p_axis = 0 if per_client else None

        def client_sums(p, x, y, n):
            return self._sums(p, x, y, n)

        clients = map_over_clients(client_sums, "map", (p_axis, 0, 0, 0))
        train_loss, train_correct = clients(params, data.train_x, data.train_y, data.train_counts)
        test_loss, test_correct = clients(params, data.test_x, data.test_y, data.test_counts)
        pooled_n = data.pooled_test_y.shape[0]
        if per_client:
            pooled = map_over_clients(
                lambda p: self._sums(p, data.pooled_test_x, data.pooled_test_y, pooled_n),
                "map",
                (0,),
            )
            pooled_loss, pooled_correct = pooled(params)
            pooled_loss, pooled_correct = pooled_loss.mean(), pooled_correct.mean()
        else:
            pooled_loss, pooled_correct = self._sums(
                params, data.pooled_test_x, data.pooled_test_y, pooled_n
            )
        n_train = data.train_counts.sum()
        return {
            "train_loss": train_loss.sum() / n_train,
            "train_accuracy": train_correct.sum() / n_train,
            "test_loss": pooled_loss / pooled_n,
            "test_accuracy": pooled_correct / pooled_n,
            "client_test_correct": test_correct,
        }

    def _site_outputs_impl(self, params, data: FederatedData):
        """Outputs of the model(s) on every site's test split and on the pooled test set; with
        per-client models (``local``, Ditto, FedPer, finetune) a leading axis over them. Flat
        storage: the pooled outputs, which are every site's split one after another."""
        if isinstance(data, FlatFederatedData):
            pooled = self._outputs(params, data.test_rows_x)
            return pooled, pooled
        def one(p):
            per_site = jax.lax.map(lambda x: self._outputs(p, x), data.test_x)
            return per_site, self._outputs(p, data.pooled_test_x)

        if self.per_client_models:
            return jax.lax.map(one, params)
        return one(params)

    def site_results(self, state) -> dict[str, Any]:
        """Per-site results: the question of Pati et al. 2022 (FeTS) -- is the federated model
        at least as good on each institution's data as that institution's own model?

        Returns ``metric`` (``accuracy`` or ``cindex``), ``test_sizes``, ``own`` (for each site,
        the metric on its own test split of the model that site uses: the global model, or its
        own (``local``, Ditto, FedPer, finetune)) and ``pooled`` (the pooled test set; with
        per-client models the mean over them). With per-client models also ``matrix[k][j]``:
        site ``k``'s model on site ``j``'s test split, and ``pooled_by_model``. Binary classification adds ``auc``: the same
        entries with ROC AUC in place of accuracy.
        """
        per_site, pooled = jax.device_get(self._site_outputs(self.evaluated_params(state),
                                                             self.data))
        return site_table(np.asarray(per_site), np.asarray(pooled), self.data,
                          self.per_client_models)

    def evaluate(self, state, min_client_test: int = 1) -> dict[str, Any]:
        """Metrics of the current model(s).

        ``test_*`` are on the pooled test set (with per-client models, :meth:`evaluated_params`:
        the mean over them);
        ``train_*`` over all clients' training data, weighted by example counts;
        ``client_accuracy_*``: the distribution over clients of the accuracy on each client's
        own test split of the model it uses (:meth:`evaluated_params`: the global model, its
        personal model, its cluster's model): ``_mean`` and ``_std`` (ddof 0) over every client
        with a non-empty test split (the clients of ``site_results``' ``own`` vector), ``_p10``
        and ``_min`` (the worst client) over those with at least ``min_client_test`` test
        examples (tail statistics a few tiny splits would otherwise set alone);
        ``client_accuracy_p10_skipped``: the clients with a test split left out of ``_p10`` and
        ``_min``. Survival data report ``test_cindex`` and ``client_cindex_mean`` / ``_p10`` /
        ``_min`` / ``_std`` (Harrell's C-index, over every client whose C-index is defined)
        instead of accuracies (:func:`spread`).
        """
        raw = jax.device_get(self._evaluate(self.evaluated_params(state), self.data))
        extra = {}
        if state.clip is not None:
            extra["clip"] = float(state.clip)
        if state.clock is not None:
            extra["simulated_time"] = float(state.clock)
        if state.inflight is not None:
            updates = max(int(state.round), 1)
            k = self.algorithm.buffer_size
            extra["staleness_mean"] = float(state.inflight["staleness_sum"]) / (updates * k)
            extra["staleness_max"] = int(state.inflight["staleness_max"])
        extra.update(self.cluster_metrics(state))
        if self.data.task == "survival":
            return {"round": int(state.round), **extra,
                    **survival_metrics(raw, self.data, self.per_client_models)}
        counts = np.asarray(self.data.test_counts)
        has_test = counts > 0
        client_acc = np.asarray(raw["client_test_correct"])[has_test] / counts[has_test]
        large = client_acc[counts[has_test] >= min_client_test]
        return {
            "round": int(state.round),
            **extra,
            "train_loss": float(raw["train_loss"]),
            "train_accuracy": float(raw["train_accuracy"]),
            "test_loss": float(raw["test_loss"]),
            "test_accuracy": float(raw["test_accuracy"]),
            **spread("client_accuracy", client_acc, large),
            "client_accuracy_p10_skipped": int(client_acc.size - large.size),
        }
