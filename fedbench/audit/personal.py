"""Membership inference against each site's personalised model (Ditto, FedRep, APFL, ...).

A site's personalised model never leaves the site in training, but a hospital that deploys it
(or shares it with a partner) releases it. The question: does the model reveal which of the
site's patients it was trained on? Members are site ``k``'s training examples, non-members its
held-out test examples, both scored by site ``k``'s own model.

* Loss threshold (Yeom et al., CSF 2018): minus the example's loss under its site's model.
* Offline LiRA (Carlini et al., S&P 2022, Sec. VI-C), with the **other sites' personalised
  models as the OUT models**: none of them trained on site ``k``'s data directly, so the spread
  of an example's logit-scaled confidence over them is the OUT distribution the attack
  calibrates against (:func:`fedbench.audit.membership.lira_offline_scores`). They are only
  approximately OUT: a site's training examples reach the other sites' models through the
  shared global model, which raises the OUT mean of members and makes this attack conservative
  (it can under-state, not over-state, the leak). No shadow training is needed: the federation
  trains its own reference models.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from fedbench.audit import membership


def site_examples(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every site's training then test examples: ``(x, y, owner, is_member)``, flat."""
    xs, ys, owners, members = [], [], [], []
    for split, is_member in (("train", True), ("test", False)):
        x, y = np.asarray(getattr(data, f"{split}_x")), np.asarray(getattr(data, f"{split}_y"))
        counts = np.asarray(getattr(data, f"{split}_counts"))
        for k in range(data.num_clients):
            n = int(counts[k])
            xs.append(x[k, :n])
            ys.append(y[k, :n])
            owners.append(np.full(n, k))
            members.append(np.full(n, is_member))
    return (np.concatenate(xs), np.concatenate(ys).astype(np.int32), np.concatenate(owners),
            np.concatenate(members))


def personal_membership(apply_fn, models: Any, data, min_std: float = 1e-3) -> dict[str, Any]:
    """Loss-threshold and offline-LiRA summaries of site membership against each site's own
    model. ``models``: the personalised models stacked ``[num_clients, ...]``
    (:meth:`fedbench.evaluation.Evaluator.evaluated_params`); ``apply_fn(params, x)``."""
    x, y, owner, is_member = site_examples(data)
    sites = data.num_clients

    logits_of = jax.jit(apply_fn)
    phi, logp = [], []
    for k in range(sites):  # one model at a time: memory of one model's logits
        logits = logits_of(jax.tree.map(lambda p, k=k: p[k], models), x)
        logp.append(np.asarray(membership.true_class_logprob(logits, y)))
        phi.append(membership.logit_confidence(logits, y))
    phi, logp = np.stack(phi), np.stack(logp)  # [K, E]
    rows = np.arange(len(y))
    own_phi, own_loss = phi[owner, rows], logp[owner, rows]
    shadow_in = np.arange(sites)[:, None] == owner[None, :]  # a site's own model is IN
    lira = membership.lira_offline_scores(own_phi, phi, shadow_in, min_std)
    return {
        "loss_threshold": membership.roc_summary(own_loss[is_member], own_loss[~is_member]),
        "lira_offline": membership.roc_summary(lira[is_member], lira[~is_member]),
        "sites": sites, "reference_models": sites - 1,
    }
