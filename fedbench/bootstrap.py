"""Paired bootstrap confidence intervals for the difference of two models' test metrics.

Efron's nonparametric bootstrap (Efron, Ann. Statist. 7, 1979; Efron & Tibshirani, *An
Introduction to the Bootstrap*, 1993): the ``n`` test examples are drawn with replacement ``B``
times; on each resample both models are scored on the *same* examples (paired), and the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the ``B`` differences form the percentile
interval (Efron & Tibshirani 1993, ch. 13). Pairing removes the part of the variation that the
two models share (the difficulty of the examples drawn), so the interval is the one for the
difference, not two overlapping intervals.

For ROC AUC the examples are resampled within each class (positives and negatives separately, the
stratified bootstrap; Carpenter & Bithell, Stat. Med. 19, 2000; pROC's default, Robin et al.,
BMC Bioinformatics 12, 2011), so every resample holds both classes and the AUC is always defined.

Scores carry a leading axis over training seeds (``[S, n]``: the same test examples scored by the
models of ``S`` training seeds). The statistic of a resample is the mean over seeds of the
metric, so with one seed it is the plain metric. The models are held fixed: the interval says how
much the difference could move with another draw of test examples, not with another training
run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from fedbench.errors import ConfigError

#: Per-example scores each metric takes: ``accuracy``: 1 if the prediction is right, else 0;
#: ``auc``: a score that is higher for class 1 (binary tasks); ``cindex``: a log-risk score
#: (survival, labels ``[n, 2]`` rows ``(event, time)``).
METRICS = ("accuracy", "auc", "cindex")


@dataclasses.dataclass(frozen=True)
class PairedBootstrap:
    """``difference = metric(a) - metric(b)`` on the test set and its percentile interval.

    ``low`` and ``high`` are NaN when the difference is undefined (no examples, one class for
    AUC, no comparable pair for the C-index) or fewer than half the resamples define it.
    ``replicates``: the finite bootstrap differences.
    """

    a: float
    b: float
    difference: float
    low: float
    high: float
    level: float
    n_boot: int
    replicates: np.ndarray

    @property
    def defined(self) -> bool:
        return bool(np.isfinite(self.difference) and np.isfinite(self.low) and np.isfinite(self.high))


def metric_value(metric: str, scores: np.ndarray, y: np.ndarray) -> float:
    """The metric of ``scores`` (``[S, n]`` or ``[n]``) against labels ``y``, mean over seeds."""
    scores = np.asarray(scores, np.float64)
    scores = scores[None] if scores.ndim == 1 else scores
    return float(_statistic(metric, scores[:, None, :], np.asarray(y)[None])[0])


def paired_bootstrap(
    metric: str,
    a: np.ndarray,
    b: np.ndarray,
    y: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedBootstrap:
    """Paired percentile bootstrap of ``metric(a) - metric(b)`` over the test examples.

    Args:
      metric: one of :data:`METRICS`.
      a, b: per-example scores of the two models, ``[S, n]`` (``S`` training seeds) or ``[n]``,
        on the same ``n`` examples in the same order.
      y: the ``n`` labels (survival: ``[n, 2]`` rows ``(event, time)``).
      n_boot: number of resamples ``B``.
      level: coverage of the interval, e.g. 0.95.
      seed: seed of the resampling (``numpy.random.default_rng``).
    """
    if metric not in METRICS:
        raise ConfigError("--metric", metric, "one of: " + ", ".join(METRICS))
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError("--bootstrap", n_boot, "an integer >= 1 (number of resamples)")
    if not 0 < level < 1:
        raise ConfigError("level", level, "a number in (0, 1)")
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = (a[None] if a.ndim == 1 else a), (b[None] if b.ndim == 1 else b)
    y = np.asarray(y)
    n = a.shape[-1]
    if b.shape[-1] != n or len(y) != n:
        raise ValueError(f"a, b and y must hold the same examples: {a.shape}, {b.shape}, {y.shape}")
    point_a, point_b = metric_value(metric, a, y), metric_value(metric, b, y)
    difference = point_a - point_b
    if n == 0 or not np.isfinite(difference):
        return PairedBootstrap(point_a, point_b, difference, np.nan, np.nan, level, n_boot,
                               np.empty(0))
    rng = np.random.default_rng(seed)
    strata = _strata(y) if metric == "auc" else [np.arange(n)]
    chunk = max(1, 4_000_000 // (n * (a.shape[0] + b.shape[0])))
    parts = []
    for idx in _resamples(strata, n_boot, rng, chunk):
        ys = y[idx]
        parts.append(_statistic(metric, a[:, idx], ys) - _statistic(metric, b[:, idx], ys))
    replicates = np.concatenate(parts)
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < n_boot / 2:
        return PairedBootstrap(point_a, point_b, difference, np.nan, np.nan, level, n_boot, finite)
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return PairedBootstrap(point_a, point_b, difference, float(low), float(high), level, n_boot,
                           finite)


def _strata(y: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(y == c) for c in np.unique(y)]


def _resamples(strata: list[np.ndarray], n_boot: int, rng: np.random.Generator,
               chunk: int) -> Iterator[np.ndarray]:
    """Index arrays ``[b, n]`` (``b <= chunk``, ``B`` rows in all): each row draws every stratum's
    size from that stratum, with replacement."""
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        yield np.concatenate(
            [s[rng.integers(0, len(s), (size, len(s)))] for s in strata], axis=1)
        done += size


def _statistic(metric: str, scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Metric of every resample: ``scores`` ``[S, b, n]``, ``y`` ``[b, n]`` (survival
    ``[b, n, 2]``) -> ``[b]``, the mean over the ``S`` seeds."""
    if scores.shape[-1] == 0:
        return np.full(scores.shape[1], np.nan)
    if metric == "accuracy":
        return scores.mean(-1).mean(0)
    if metric == "auc":
        return _auc(scores, y).mean(0)
    return _cindex(scores, y).mean(0)


def _auc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC by the Mann-Whitney U statistic (ties count 1/2): ``(R_1 - n_1 (n_1 + 1) / 2) /
    (n_1 n_0)`` with ``R_1`` the sum of the positives' mid-ranks (Hanley & McNeil, Radiology
    143, 1982). NaN where a resample holds one class."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=-1)
    positive = (y == 1)[None]
    n1 = positive.sum(-1)
    n0 = scores.shape[-1] - n1
    u = (ranks * positive).sum(-1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n1 * n0 > 0, u / (n1 * n0), np.nan)


def _cindex(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Harrell's C-index of every seed and resample, ``[S, b]``, with the pair rules of
    :func:`fedbench.task.concordance_index`: ``(i, j)`` is comparable when ``i``'s event was
    observed and ``T_i < T_j`` (or ``T_i == T_j`` with ``j`` censored); concordant when
    ``risk_i > risk_j``, a tie in risk counting 1/2. NaN where no pair is comparable."""
    time, event = y[..., 1], y[..., 0] > 0  # [b, n]
    n = scores.shape[-1]
    out = np.empty(scores.shape[:2])
    step = max(1, 4_000_000 // (n * n * scores.shape[0]))
    for i in range(0, scores.shape[1], step):
        t, e, r = time[i:i + step], event[i:i + step], scores[:, i:i + step]
        comparable = ((t[:, :, None] < t[:, None, :])
                      | ((t[:, :, None] == t[:, None, :]) & ~e[:, None, :])) & e[:, :, None]
        diff = r[..., :, None] - r[..., None, :]
        concordant = ((diff > 0) + 0.5 * (diff == 0)) * comparable
        total = comparable.sum((-1, -2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, i:i + step] = np.where(total > 0, concordant.sum((-1, -2)) / total, np.nan)
    return out
