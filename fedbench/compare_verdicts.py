"""``fedbench-compare``'s verdicts: federated vs local, with test sizes and bootstrap intervals.

Per-example scores of every model on every test example (:func:`site_scores`) are kept for every
training seed in a :class:`Comparison`. Each verdict is a paired bootstrap over the test
examples (:func:`fedbench.bootstrap.paired_bootstrap`, Efron & Tibshirani 1993): the federated
and the local model are scored on the same resampled examples and the 95% percentile interval of
their difference decides it: ``FL better`` (interval above 0), ``local better`` (below 0) or
``no difference`` (it contains 0). The training seeds share the partition, so site ``j`` and its
test examples are the same in every seed and their scores can be averaged per example.

The best single-site model is chosen on validation data, never on the test set it is then scored
on: each site's training split is divided (``val_fraction`` held out, :func:`validation_data`),
every site model is retrained on the rest and ranked by its metric on the pooled held-out
examples (:func:`validation_metric`); the chosen site's model trained on its whole training split
is then scored on the pooled test set (select, then refit). Where there is no validation data
(``val_fraction=0``, or sites too small to hold any out) the choice is made on the test set and
every line says ``selected on test``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.atomic import write_with
from fedbench.bootstrap import metric_value, paired_bootstrap


@dataclasses.dataclass
class Comparison:
    """Per-example test scores of every regime (:data:`fedbench.bootstrap.METRICS` says what a
    score is for each metric).

    Attributes:
      metric: ``accuracy``, ``auc`` or ``cindex``.
      site_names: the sites, in client order.
      offsets: ``[C + 1]``; site ``j``'s test examples are ``offsets[j]:offsets[j + 1]`` of the
        pooled test set (the sites' test splits concatenated in client order).
      labels: the pooled test labels ``[T]`` (survival ``[T, 2]``).
      scores: regime -> ``[S, K, T]``: seed, model (1 global model, or one per site for
        ``local`` and personalised algorithms), pooled test example.
      validation: ``[S, C]``: each local site model's metric on the pooled validation examples
        (retrained without them), or ``None`` where there is no validation data.
      binary: a two-class task (test sizes then also count positives; survival data count
        events).
      seeds, partition_seed: the training seeds and the one partition seed they share.
    """

    metric: str
    site_names: list[str]
    offsets: np.ndarray
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    validation: np.ndarray | None
    binary: bool
    seeds: list[int]
    partition_seed: int | None = None

    def site(self, j: int) -> slice:
        return slice(int(self.offsets[j]), int(self.offsets[j + 1]))

    def save(self, path: Path) -> None:
        """Writes the comparison as one ``.npz`` file, atomically."""
        meta = {"metric": self.metric, "site_names": self.site_names, "binary": self.binary,
                "seeds": self.seeds, "partition_seed": self.partition_seed,
                "regimes": list(self.scores)}
        arrays = {f"scores/{k}": v for k, v in self.scores.items()}
        if self.validation is not None:
            arrays["validation"] = self.validation

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, meta=np.array(json.dumps(meta)), offsets=self.offsets,
                                    labels=self.labels, **arrays)

        write_with(path, write)

    @classmethod
    def load(cls, path: Path) -> Comparison:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(meta["metric"], meta["site_names"], z["offsets"], z["labels"],
                       {k: z[f"scores/{k}"] for k in meta["regimes"]},
                       z["validation"] if "validation" in z else None, meta["binary"],
                       meta["seeds"], meta["partition_seed"])


def site_scores(sim, state, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example scores of a finished run's model(s) on the pooled test set.

    Returns ``(scores [K, T], labels [T] or [T, 2], offsets [C + 1])``: ``K`` is 1 for a global
    model, else one model per site (:meth:`fedbench.evaluation.Evaluator.evaluated_params`).
    ``metric="accuracy"``: 1 where the argmax is the label; ``auc``: class-1 logit margin;
    ``cindex``: the log-risk score.
    """
    import jax

    data = sim.data
    params = sim.evaluated_params(state)
    counts = np.asarray(data.test_counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x = data.test_x.reshape((-1,) + tuple(data.test_x.shape[2:]))
    models = ([jax.tree.map(lambda p, k=k: p[k], params) for k in range(data.num_clients)]
              if sim.per_client_models else [params])
    apply = jax.jit(sim.apply_fn)
    chunk = min(sim.settings.eval_chunk, x.shape[0])  # one compiled shape, bounded memory
    x = np.concatenate([np.asarray(x), np.zeros((-x.shape[0] % chunk,) + x.shape[1:], x.dtype)])
    labels = np.asarray(data.pooled_test_y)
    padded = tuple(data.test_x.shape[:2])  # [C, M]
    scores = []
    for p in models:
        out = np.concatenate([np.asarray(apply(p, x[i:i + chunk]), np.float64)
                              for i in range(0, len(x), chunk)])
        out = out[: padded[0] * padded[1]].reshape(padded + out.shape[1:])  # [C, M, outputs]
        out = np.concatenate([out[j, :m] for j, m in enumerate(counts)])
        if metric == "accuracy":
            scores.append((np.argmax(out, -1) == labels).astype(np.float64))
        elif metric == "auc":
            scores.append(out[:, 1] - out[:, 0])
        else:
            scores.append(out[:, 0])
    return np.stack(scores), labels, offsets


def validation_data(data, fraction: float, seed: int):
    """Each site's training split divided into a training part and a validation part
    (``int(fraction * n)`` examples, at least one left to train on), the validation parts in
    place of the test splits. ``None`` when no site can hold an example out.

    The split depends only on ``seed`` (the partition seed), so every training seed validates on
    the same examples. Inputs stay as the run normalised them (statistics of the whole training
    split: no labels, no test examples).
    """
    from fedbench.dataset.federated import from_client_arrays

    rng = np.random.default_rng([seed, 0x7A1])
    x, y, counts = (np.asarray(a) for a in (data.train_x, data.train_y, data.train_counts))
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for c, n in enumerate(counts):
        order = rng.permutation(int(n))
        held = min(int(fraction * n), int(n) - 1)
        val, train = np.sort(order[:held]), np.sort(order[held:])
        for part, arr in zip(parts, (x[c][train], y[c][train], x[c][val], y[c][val])):
            part.append(arr)
    if sum(len(v) for v in parts[3]) == 0:
        return None
    return from_client_arrays(*parts, data.num_classes, task=data.task)


def validation_metric(sim, val_data, rounds: int, metric: str) -> np.ndarray:
    """Retrains ``sim``'s per-site models (``local``) on ``val_data``'s training parts with the
    same model, algorithm, settings and seed, and returns each site model's metric on the pooled
    validation examples, ``[C]``."""
    from fedbench.simulator import Simulator

    again = Simulator(sim.model, sim.algorithm, val_data, sim.settings, seed=sim.seed,
                      stragglers=sim.stragglers, store_dtype=sim.store_dtype)
    state = again.run(again.init(), rounds)
    scores, labels, _ = site_scores(again, state, metric)
    return np.array([metric_value(metric, s, labels) for s in scores])


def best_local(comp: Comparison) -> tuple[int, str, np.ndarray]:
    """The best single-site model: ``(site index, "validation" or "test", the values ranked)``.

    Ranked by the mean over seeds of the pooled validation metric; only without validation data
    (or where it is undefined for every site) by the pooled test metric, reported as such.
    """
    if comp.validation is not None:
        finite = np.isfinite(comp.validation)
        ranking = np.where(finite.any(0), np.where(finite, comp.validation, 0.0).sum(0)
                           / np.maximum(finite.sum(0), 1), np.nan)  # mean over defined seeds
        if np.isfinite(ranking).any():
            return int(np.nanargmax(ranking)), "validation", ranking
    local = comp.scores["local"]
    ranking = np.array([metric_value(comp.metric, local[:, k], comp.labels)
                        for k in range(local.shape[1])])
    best = int(np.nanargmax(ranking)) if np.isfinite(ranking).any() else 0
    return best, "test", ranking


def _fl_scores(scores: np.ndarray, comp: Comparison) -> np.ndarray:
    """``[S, T]``: every example scored by the federated model its site uses (the global model,
    or with per-site models its own site's)."""
    if scores.shape[1] == 1:
        return scores[:, 0]
    return np.concatenate([scores[:, j, comp.site(j)] for j in range(len(comp.site_names))], -1)


def verdicts(comp: Comparison, algorithms, n_boot: int = 2000, level: float = 0.95,
             seed: int = 0) -> list[dict[str, Any]]:
    """One record per federated algorithm and test set: pooled (against the best single-site
    model) and each site's own split (against that site's own model)."""
    best, basis, _ = best_local(comp)
    local = comp.scores["local"]
    records = []
    for alg in algorithms:
        fl = _fl_scores(comp.scores[alg], comp)
        sets = [("pooled", slice(None), best)] + [
            (name, comp.site(j), j) for j, name in enumerate(comp.site_names)]
        for i, (name, where, k) in enumerate(sets):
            y = comp.labels[where]
            res = paired_bootstrap(comp.metric, fl[:, where], local[:, k, where], y, n_boot, level,
                                   seed=seed + i)
            records.append({
                "algorithm": alg, "eval_set": name, "local_model": comp.site_names[k],
                "selected_on": basis if name == "pooled" else None,
                "per_site_fl_models": comp.scores[alg].shape[1] > 1,
                "n": int(len(y)), "positives": int(np.sum(y == 1)) if comp.binary else None,
                "events": int(np.sum(y[:, 0] > 0)) if comp.metric == "cindex" else None,
                "metric": comp.metric, "fl": res.a, "local": res.b,
                "difference": res.difference, "ci_low": res.low, "ci_high": res.high,
                "level": level, "n_boot": n_boot, "verdict": verdict(res.low, res.high, len(y)),
            })
    return records


def verdict(low: float, high: float, n: int) -> str:
    """``FL better`` / ``local better`` when the interval excludes 0, else ``no difference``."""
    if n == 0:
        return "no test examples"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undefined"
    return "FL better" if low > 0 else "local better" if high < 0 else "no difference"


def _size(r: dict) -> str:
    extra = (f", {r['positives']} positive" if r["positives"] is not None
             else f", {r['events']} events" if r.get("events") is not None else "")
    return f"n={r['n']}{extra}"


def _num(v: float | None, sign: bool = False) -> str:
    if v is None or not np.isfinite(v):
        return "nan"
    return f"{v:+.4f}" if sign else f"{v:.4f}"


def verdict_lines(records: list[dict[str, Any]], seeds: int = 1,
                  partition_seed: int | None = None) -> list[str]:
    """The verdicts in words, one line per record, then a count per algorithm."""
    if not records:
        return []
    r0 = records[0]
    out = [f"verdicts: FL - local {r0['metric']}, {100 * r0['level']:g}% percentile interval of "
           f"a paired bootstrap over test examples ({r0['n_boot']} resamples"
           + (f"; scores averaged over {seeds} training seeds, one partition (partition.seed="
              f"{partition_seed})" if seeds > 1 else "") + "):"]
    for alg in dict.fromkeys(r["algorithm"] for r in records):
        mine = [r for r in records if r["algorithm"] == alg]
        for r in mine:
            own = " (each site's own FL model)" if r["per_site_fl_models"] else ""
            if r["eval_set"] == "pooled":
                what = (f"{alg}{own} vs best single-site model ({r['local_model']}, selected on "
                        f"{r['selected_on']}), pooled test")
            else:
                what = f"{alg}{own} vs {r['local_model']}'s own model, {r['eval_set']} test"
            ci = f"[{_num(r['ci_low'], True)}, {_num(r['ci_high'], True)}]"
            out.append(f"  {what} ({_size(r)}): {_num(r['fl'])} vs {_num(r['local'])}, "
                       f"difference {_num(r['difference'], True)} {ci} -> {r['verdict']}")
        sites = [r for r in mine if r["eval_set"] != "pooled"]
        counts = {v: sum(r["verdict"] == v for r in sites)
                  for v in ("FL better", "local better", "no difference")}
        other = len(sites) - sum(counts.values())
        out.append(f"  {alg}, on each site's own test split: FL better at {counts['FL better']}, "
                   f"local better at {counts['local better']}, no difference at "
                   f"{counts['no difference']}" + (f", undefined at {other}" if other else "")
                   + f" of {len(sites)} sites")
    return out
