"""Site-level membership inference: was hospital ``k`` one of the federation's sites?

An observer of the released global model, who knows each candidate site's data (or data like
it), asks whether site ``k`` took part. LiRA (Carlini et al., S&P 2022) lifted from examples to
sites: ``shadows`` shadow federations, each a sub-federation (``members``) in which every site
takes part in exactly half of them, are trained by the simulator itself as replicas of one
compiled program (``Simulator.init_replicas`` / ``run_replicas``, the run's own settings and
hparams). For each site's training examples ``j`` and each model the logit-scaled confidence
``phi`` (:func:`fedbench.audit.membership.logit_confidence`) is computed; then

* online: per example, Gaussians fitted to ``phi`` under the IN and the OUT models; the site's
  score is the sum over its examples of ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)``
  (the examples treated as independent evidence, Carlini et al.'s likelihood ratio, Sec. IV);
* offline: only the OUT models; the site's score is the mean over its examples of
  ``(phi - mu_out) / s_out`` (Sec. VI-C, one-sided).

The attack is evaluated leave-one-out (Carlini et al., Sec. V): each shadow federation in turn
is the target and the others are its shadows, giving ``shadows x sites`` decisions, half of
them members. Client-level membership of a DP run cannot be evaluated this way (``members`` is
refused with DP: a sub-federation's sampling is not what the accountant assumes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import norm

from fedbench.audit import membership
from fedbench.errors import ConfigError


def balanced_masks(rng: np.random.Generator, shadows: int, sites: int) -> np.ndarray:
    """``[shadows, sites]`` bool: each site in exactly ``shadows // 2`` shadow federations."""
    masks = np.zeros((shadows, sites), bool)
    for k in range(sites):
        masks[rng.permutation(shadows)[: shadows // 2], k] = True
    return masks


def site_scores(phi: np.ndarray, counts: np.ndarray, masks: np.ndarray, min_std: float = 1e-3,
                fixed_variance: bool = True) -> dict[str, np.ndarray]:
    """Leave-one-out online and offline LiRA scores, ``[shadows, sites]`` each.

    Args:
      phi: ``[S, K, J]`` logit confidences of site ``k``'s example ``j`` under model ``s``.
      counts: ``[K]`` real examples per site (the rest of ``J`` is padding).
      masks: ``[S, K]`` whether site ``k`` took part in federation ``s``.
      fixed_variance: one IN and one OUT variance per site, pooled over its examples (Carlini
        et al., Sec. VI-B: better with few shadow models); else one per example.
    """
    shadows, sites, width = phi.shape
    valid = np.arange(width)[None, :] < np.asarray(counts)[:, None]  # [K, J]
    online = np.zeros((shadows, sites))
    offline = np.zeros((shadows, sites))
    for t in range(shadows):
        keep = np.arange(shadows) != t
        p, m = phi[keep], masks[keep][:, :, None]  # [S-1, K, J], [S-1, K, 1]
        stats = {}
        for name, sel in (("in", m), ("out", ~m)):
            n = sel.sum(axis=0)
            mu = np.where(sel, p, 0).sum(axis=0) / n
            var = np.where(sel, (p - mu) ** 2, 0).sum(axis=0) / np.maximum(n - 1, 1)
            if fixed_variance:  # one variance per site, pooled over its examples
                var = np.broadcast_to((var * valid).sum(axis=1, keepdims=True)
                                      / valid.sum(axis=1, keepdims=True), var.shape)
            stats[name] = (mu, np.maximum(np.sqrt(var), min_std))
        x = phi[t]
        ratio = (norm.logpdf(x, *stats["in"]) - norm.logpdf(x, *stats["out"]))
        z = (x - stats["out"][0]) / stats["out"][1]
        online[t] = np.where(valid, ratio, 0).sum(axis=1)
        offline[t] = np.where(valid, z, 0).sum(axis=1) / np.asarray(counts)
    return {"online": online, "offline": offline}


def site_membership(cfg: Mapping[str, Any], shadows: int = 16, axis: str = "map",
                    seed: int | None = None) -> dict[str, Any]:
    """Trains ``shadows`` shadow federations of ``cfg`` and attacks site membership.

    Returns AUC and TPR at 0.1% / 1% FPR of the online and offline attacks, the counts they
    rest on, and the shadow federations' mean test accuracy.
    """
    from fedbench.replicas import run_values
    from fedbench.run import build_simulator

    if (cfg.get("privacy") or {}).get("name", "none") != "none":
        raise ConfigError("privacy.name", cfg["privacy"]["name"],
                          "none for site-level membership inference (sub-federations under DP "
                          "are refused)")
    if isinstance(shadows, bool) or not isinstance(shadows, int) or shadows < 6 or shadows % 2:
        raise ConfigError("audit.sites.shadows", shadows, "an even integer >= 6")
    built = build_simulator(cfg)
    sim, data, model = built.sim, built.data, built.model
    if sim.per_client_models:
        raise ConfigError("algorithm.name", cfg["algorithm"]["name"],
                          "an algorithm with one global model for site-level membership")
    sites = data.num_clients
    seed = int(cfg["seed"]) if seed is None else seed
    masks = balanced_masks(np.random.default_rng(seed + 7), shadows, sites)
    base = run_values(cfg, None)
    states = sim.init_replicas([seed + 1 + s for s in range(shadows)],
                               [{**base, "members": m.astype(np.float32)} for m in masks])
    states = sim.run_replicas(states, int(cfg["rounds"]), axis)
    x, y = np.asarray(data.train_x), np.asarray(data.train_y)
    counts = np.asarray(data.train_counts)
    flat_x = x.reshape(sites * x.shape[1], *x.shape[2:])
    flat_y = y.reshape(-1).astype(np.int32)
    phi, accuracy = [], []
    for s in range(shadows):
        state = sim.replica(states, s)
        params = state.params if "params" in state.params else {"params": state.params}
        logits = model.apply(params, flat_x)
        phi.append(membership.logit_confidence(logits, flat_y).reshape(sites, x.shape[1]))
        accuracy.append(float(sim.evaluate(state)["test_accuracy"]))
    scores = site_scores(np.stack(phi), counts, masks)
    out = {"shadows": shadows, "sites": sites, "decisions": int(masks.size),
           "shadow_test_accuracy": float(np.mean(accuracy))}
    for name, s in scores.items():
        out[f"lira_{name}"] = membership.roc_summary(s[masks], s[~masks])
    return out
