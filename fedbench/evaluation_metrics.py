"""Host-side metrics of what evaluation's compiled programs return
(:class:`fedbench.evaluation.Evaluator`): the distribution of a per-client metric over clients
(:func:`spread`), survival data's C-indices (Harrell's) and the per-site table answering Pati et
al. 2022's (FeTS) question (:func:`site_table`). Plain functions of numpy arrays and the data.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from fedbench.dataset.flat import FlatFederatedData
from fedbench.task import concordance_index, cox_terms


def spread(prefix: str, values: np.ndarray, tail: np.ndarray) -> dict[str, float]:
    """The distribution of a per-client metric: ``<prefix>_mean`` and ``_std`` (population
    standard deviation, ddof 0) over ``values``; ``_p10`` (``np.percentile``, linear
    interpolation) and ``_min`` (the worst client) over ``tail``, the clients whose test split is
    large enough for a tail statistic. NaN where the set is empty."""
    nan = float("nan")
    return {
        f"{prefix}_mean": float(values.mean()) if values.size else nan,
        f"{prefix}_p10": float(np.percentile(tail, 10)) if tail.size else nan,
        f"{prefix}_min": float(tail.min()) if tail.size else nan,
        f"{prefix}_std": float(values.std()) if values.size else nan,
    }


def survival_metrics(raw, data, per_client: bool) -> dict[str, float]:
    """Host-side C-indices (Harrell) from the scores of the survival evaluation program
    (:meth:`fedbench.evaluation.Evaluator._survival_impl`); ``per_client``: one model per
    client (a leading axis over them)."""
    pooled_y = np.asarray(data.pooled_test_y)
    pooled_scores = np.asarray(raw["pooled_scores"])
    if per_client:  # mean over the client models, as for accuracy
        pooled_c = float(np.nanmean([concordance_index(pooled_y[:, 1], s, pooled_y[:, 0])
                                      for s in pooled_scores]))
    else:
        pooled_c = concordance_index(pooled_y[:, 1], pooled_scores, pooled_y[:, 0])
    test_y, counts = np.asarray(data.test_y), np.asarray(data.test_counts)
    scores = np.asarray(raw["test_scores"])
    own = np.array([
        concordance_index(test_y[c, :m, 1], scores[c, :m], test_y[c, :m, 0]) if m else np.nan
        for c, m in enumerate(counts)
    ])
    own = own[np.isfinite(own)]
    # Test loss: the Cox loss of the pooled test set as one risk set (for local: model mean).
    rows = pooled_scores if per_client else pooled_scores[None]
    valid = jnp.ones(pooled_y.shape[0], bool)
    test_loss = float(np.mean([cox_terms(jnp.asarray(r), jnp.asarray(pooled_y), valid).mean()
                               for r in rows]))
    return {
        "train_loss": float(raw["train_loss"]),
        "test_loss": test_loss,
        "test_cindex": pooled_c,
        **spread("client_cindex", own, own),
    }


def metric_of(outputs: np.ndarray, y: np.ndarray, task: str, metric: str | None = None) -> float:
    """Accuracy, ROC AUC (``metric="auc"``, binary tasks: area under the ROC curve of the
    class-1 logit margin) or for survival Harrell's C-index; NaN where undefined (no
    examples, or a test split holding one class only)."""
    if len(y) == 0:
        return float("nan")
    if task == "survival":
        return concordance_index(y[:, 1], outputs[:, 0], y[:, 0])
    if metric == "auc":
        if len(np.unique(y)) < 2:
            return float("nan")
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y, outputs[:, 1] - outputs[:, 0]))
    return float(np.mean(np.argmax(outputs, -1) == y))


def site_table(per_site: np.ndarray, pooled: np.ndarray, data, per_client: bool) -> dict[str, Any]:
    """:meth:`fedbench.evaluation.Evaluator.site_results` from the model outputs on every site's
    test split (``per_site``) and on the pooled test set (``pooled``) of ``data``; with
    ``per_client`` models a leading axis over them."""
    counts = np.asarray(data.test_counts)
    pooled_y = np.asarray(data.pooled_test_y)
    if isinstance(data, FlatFederatedData):  # each site's rows of the pooled split
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        per_site = [pooled[s:s + m] for s, m in zip(starts, counts)]
        test_y = [pooled_y[s:s + m] for s, m in zip(starts, counts)]
    else:
        test_y = np.asarray(data.test_y)

    def table(metric):
        if (isinstance(data, FlatFederatedData) and metric is None and not per_client
                and data.task != "survival"):
            # Accuracy of every site at once (the loop below takes ~1 s at 100,000 sites):
            # the same float64 sums of 0/1 over the same rows, so the same values.
            correct = (np.argmax(pooled, -1) == pooled_y).astype(np.float64)
            sums = np.bincount(np.repeat(np.arange(len(counts)), counts), weights=correct,
                               minlength=len(counts))
            with np.errstate(invalid="ignore", divide="ignore"):
                own = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            return {"own": own.tolist(), "pooled": metric_of(pooled, pooled_y, data.task)}

        def row(site_out):
            return [metric_of(site_out[j][:m], test_y[j][:m], data.task, metric)
                    for j, m in enumerate(counts)]

        if not per_client:
            return {"own": row(per_site), "pooled": metric_of(pooled, pooled_y, data.task, metric)}
        matrix = [row(per_site[k]) for k in range(per_site.shape[0])]
        by_model = [metric_of(pooled[k], pooled_y, data.task, metric)
                    for k in range(pooled.shape[0])]
        return {"own": [matrix[k][k] for k in range(len(matrix))],
                "pooled": float(np.nanmean(by_model)), "matrix": matrix,
                "pooled_by_model": by_model}

    result = {
        "metric": "cindex" if data.task == "survival" else "accuracy",
        "test_sizes": counts.tolist(),
        "train_sizes": np.asarray(data.train_counts).tolist(),
        **table(None),
    }
    if data.task == "classification" and data.num_classes == 2:
        result["auc"] = table("auc")  # same layout, ROC AUC
    return result
