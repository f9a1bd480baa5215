"""``fedbench-audit``'s work: train the configured federation, then attack it as an observer.

1. The federation runs as ``fedbench`` would (:func:`fedbench.run.run_experiment`) in
   ``<run dir>/federation/``; its final global model is read back from the last checkpoint.
2. Gradient inversion (:mod:`fedbench.audit.attack`) on one site's updates at a freshly
   initialised model of the configured architecture (a site's first update): one gradient step
   on one example (FedSGD), and ``audit.local_steps`` local SGD steps on it (FedAvg); each as
   the site sends it under this config (client-level DP clips it, the server adding noise only
   to the sum; compression encodes it) and under the what-if ``audit.defences``. Inputs are
   compared in ``[0, 1]`` after mapping each pixel's range over the training inputs onto it,
   which is also the box the cosine attack searches in.
3. Membership inference (:mod:`fedbench.audit.membership`) against the global model: members are
   all clients' training examples, non-members their held-out test examples.
4. With ``audit.sites.enabled``, site-level membership inference (:mod:`fedbench.audit.sites`):
   LiRA over shadow federations trained by the simulator as replicas (not under DP).
   With a personalised algorithm, membership against each site's own model
   (:mod:`fedbench.audit.personal`).
5. Epsilon (:func:`epsilon_audit_of`): under DP the configured epsilon, with what it protects,
   under which neighbouring relation, and what it covers (the ``privacy`` block of the run's
   ``summary.json``); in every mode a one-run lower bound (:mod:`fedbench.audit.epsilon`) from
   canaries through whole runs of the configured federation (:func:`whole_run_audit`): canary
   sites without DP and under ``dp_client`` (:mod:`fedbench.audit.canaries`), canary records
   under ``dp_sample`` (:mod:`fedbench.audit.records`), or the reason it was not run. Without DP
   that bound is the federation's empirical epsilon, which a DP claim can be compared with.
   Under DP also a check of the noise code: one round of the Gaussian mechanism at the run's
   noise multiplier (``one_round``, :data:`NOISE_CHECK`), never compared with the run's epsilon.

If the federation diverged (:func:`fedbench.audit.report.divergence`), steps 3, 4 and the
whole-run canaries are not run: their verdicts would be about a broken model. The report says
training diverged and what to change (:func:`fedbench.audit.report.withheld`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.audit import epsilon as epsilon_audit
from fedbench.audit import membership, metrics
from fedbench.audit.attack import InversionSetting, run_trials
from fedbench.audit.settings import AuditSettings, parse_audit
from fedbench.audit.shadow import shadow_masks, train_shadows
from fedbench.errors import ConfigError


def federation_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's config without ``audit``, checkpointing at the end (the model is read back)."""
    out = {k: v for k, v in cfg.items() if k != "audit"}
    if (out.get("seeds") or 1) != 1:
        raise ConfigError("seeds", out["seeds"], "1 for fedbench-audit (one federation)")
    if out.get("checkpoint_every") == 0:
        out["checkpoint_every"] = None
    return out


def final_params(run_dir: Path) -> Any:
    """The global model of the latest checkpoint in ``run_dir/checkpoints``."""
    import orbax.checkpoint as ocp

    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(steps[-1]) / "state")
                                               .resolve())
    params = state["params"]
    return params if "params" in params else {"params": params}  # flax's collection


def configured_defence(cfg: dict[str, Any]):
    """What this config does to a site's update before the server sees it, as a defence."""
    from fedbench.compression import build_compression
    from fedbench.privacy.mechanisms import clip_to_norm

    privacy = cfg.get("privacy") or {}
    compressor = build_compression(cfg.get("compression"), privacy.get("name"))
    from fedbench.privacy.mechanism import mechanism_class

    mechanism = mechanism_class(privacy.get("name", "none"))
    clip = privacy.get("clip") if mechanism is not None and mechanism.bounds_messages else None

    def defend(update, key):
        if clip is not None:
            update, _ = clip_to_norm(update, float(clip))
        if compressor is not None:
            update, _ = compressor.compress(update, key)
        return update

    return defend, {"clip": clip, "compression": compressor.name if compressor else "none"}


def inversion_audit(cfg, audit: AuditSettings, model, data) -> dict[str, Any]:
    """Reconstructions and metrics of each scenario and defence."""
    n = int(data.train_counts[audit.client])
    x = jnp.asarray(data.train_x[audit.client, :n])
    y = jnp.asarray(data.train_y[audit.client, :n])
    pooled, _ = data.pooled_train()
    lo, hi = jnp.asarray(pooled.min(axis=0)), jnp.asarray(pooled.max(axis=0))  # per pixel
    params = model.init(jax.random.PRNGKey(int(cfg["seed"])), x[:1])
    defend, sent = configured_defence(cfg)
    grid = [("as sent", defend), ("as computed", ("none", 0.0))] + [
        (f"{name} {strength:g}", (name, strength)) for name, strength in audit.defences]
    scenarios = {"one gradient step (FedSGD)": ("gradient", 1),
                 f"{audit.local_steps} local steps (FedAvg)": ("delta", audit.local_steps)}
    results = []
    for scenario, (kind, steps) in scenarios.items():
        setting = InversionSetting(attack=audit.attack, target=kind, local_steps=steps,
                                   lr=float(cfg["lr"]), iterations=audit.iterations, tol=1e-10)
        outs = run_trials(model.apply, lambda k: params, x, y, jnp.arange(audit.trials), 1,
                          setting, data.num_classes, (lo, hi),
                          defence_grid=tuple(g for _, g in grid))
        for (label, _), out in zip(grid, outs):
            rec = metrics.to_unit_range(np.asarray(out["x"]), lo, hi)
            org = metrics.to_unit_range(np.asarray(out["original"]), lo, hi)
            per = [metrics.batch_metrics(r, o) for r, o in zip(rec, org)]
            correct = np.asarray(out["labels"]) == np.asarray(out["true_labels"])
            results.append({
                "scenario": scenario, "defence": label,
                **{k: float(np.median([p[k] for p in per])) for k in ("mse", "psnr", "ssim")},
                "label_accuracy": float(correct.mean()),
                "images": (np.clip(rec[:, 0], 0, 1), org[:, 0]),
            })
    return {"rows": results, "sent": sent, "client": audit.client, "examples": n}


def membership_audit(cfg, audit: AuditSettings, model, data, params) -> dict[str, Any]:
    """Loss-threshold, offline- and online-LiRA scores of the global model, summarised."""
    members_x, members_y = (jnp.asarray(a) for a in data.pooled_train())
    non_x, non_y = jnp.asarray(data.pooled_test_x), jnp.asarray(data.pooled_test_y)
    pop_x, pop_y = jnp.concatenate([members_x, non_x]), jnp.concatenate([members_y, non_y])
    is_member = np.r_[np.ones(len(members_y), bool), np.zeros(len(non_y), bool)]
    logits = model.apply(params, pop_x)
    loss = membership.loss_scores(logits, pop_y)
    epochs = audit.shadow_epochs or (cfg["rounds"] * cfg["clients_per_round"] / cfg["num_clients"]
                                     * (cfg.get("local_epochs") or 1))
    batch = int(cfg["batch_size"])
    steps = max(1, int(math.ceil(epochs * len(pop_y) / 2 / batch)))
    masks = shadow_masks(jax.random.PRNGKey(int(cfg["seed"]) + 1), audit.shadows, len(pop_y))
    if audit.shadow_kind == "federations":  # shadow federations: simulator replicas
        from fedbench.audit.shadow_federations import shadow_federation_params, site_owners

        owners = np.r_[site_owners(data.train_counts), site_owners(data.test_counts)]
        params_list, masks = shadow_federation_params(
            federation_config(cfg), np.asarray(pop_x), np.asarray(pop_y), owners,
            np.asarray(masks), [int(cfg["seed"]) + 100 + s for s in range(audit.shadows)])
        steps = None
    else:
        shadows = train_shadows(lambda k: model.init(k, pop_x[:1]), model.apply, pop_x, pop_y,
                                masks, jax.random.PRNGKey(int(cfg["seed"]) + 2),
                                float(cfg["lr"]), batch, steps)
        params_list = [jax.tree.map(lambda a, i=i: a[i], shadows) for i in range(audit.shadows)]
    shadow_phi = np.stack([membership.logit_confidence(model.apply(p, pop_x), pop_y)
                           for p in params_list])
    target_phi = membership.logit_confidence(logits, pop_y)
    lira = membership.lira_offline_scores(target_phi, shadow_phi, np.asarray(masks))
    online = membership.lira_online_scores(target_phi, shadow_phi, np.asarray(masks))
    return {
        "loss_threshold": membership.roc_summary(loss[is_member], loss[~is_member]),
        "lira_offline": membership.roc_summary(lira[is_member], lira[~is_member]),
        "lira_online": membership.roc_summary(online[is_member], online[~is_member]),
        "shadows": audit.shadows, "shadow_steps": steps, "shadow_kind": audit.shadow_kind,
    }


#: What the one-round bound is, wherever it is shown.
NOISE_CHECK = ("a check of the noise code (one round of the Gaussian mechanism at the run's "
               "noise multiplier), not an audit of this run")


def whole_run_audit(cfg: dict[str, Any], audit: AuditSettings) -> dict[str, Any]:
    """Canaries through ``audit.canary_runs`` runs of ``cfg``, pooled, beside the epsilon the
    runs' accountant reports (``theoretical``; None without DP), or ``skipped``: why not (the
    report prints it). Canary sites (one site each) without DP and under ``dp_client``; canary
    records (one example each, black box) under ``dp_sample``."""
    from fedbench.audit.canaries import canary_scores
    from fedbench.audit.records import record_scores

    if not audit.run_canaries:
        return {"skipped": "audit.epsilon.run.sites=0: no whole-run audit was asked for"}
    seeds = [int(cfg["seed"]) + 1000 + r for r in range(audit.canary_runs)]
    records = (cfg.get("privacy") or {}).get("name", "none") == "dp_sample"
    try:
        out = (record_scores(cfg, audit.run_records, seeds) if records else
               canary_scores(cfg, audit.run_canaries, seeds, kind=audit.canary_kind))
    except ConfigError as err:
        return {"skipped": str(err)}
    pooled = [np.concatenate([r[k] for r in out["runs"]]) for k in ("in", "out")]
    result = {"theoretical": out["claimed_epsilon"], "runs": len(seeds), "unit": out["unit"],
              "kind": out["kind"], "black_box": out["kind"] == "input",
              ("canary_records" if records else "canary_sites"): out["canaries"],
              "scored": "the server model",
              "per_run_fdp": [epsilon_audit.audit_scores(
                  r["in"], r["out"], delta=out["delta"],
                  significance=audit.significance)["epsilon_one_run_fdp"] for r in out["runs"]]}
    if out.get("scale"):
        result["scale"] = out["scale"]
    if out.get("personal_models"):
        result["not_scored"] = ("each site's personalised model (not covered by epsilon; see "
                                "the personalised-model membership audit)")
    if out["claimed_epsilon"] is None:
        result["label"] = ("empirical epsilon lower bound of this federation without DP (its "
                           "true epsilon is unbounded); a DP claim of epsilon E can be "
                           "compared with it")
    return {**result, **epsilon_audit.audit_scores(*pooled, delta=out["delta"],
                                                   significance=audit.significance)}


def epsilon_audit_of(summary: dict[str, Any], audit: AuditSettings, seed: int,
                     cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The claimed epsilon, a check of the noise code under DP (``one_round``), and with ``cfg``
    canaries through whole runs (``whole_run``, :func:`whole_run_audit`), in every mode."""
    privacy = summary.get("privacy")
    if not privacy:
        out: dict[str, Any] = {"claimed": math.inf,
                               "note": "no differential privacy: epsilon is infinite"}
        if cfg is not None:
            out["whole_run"] = whole_run_audit(cfg, audit)
        return out
    out = {"claimed": privacy.get("epsilon"), "delta": privacy.get("delta"),
           "noise_multiplier": privacy.get("noise_multiplier"), "unit": privacy.get("unit"),
           "noise_note": privacy.get("noise_note")}
    # What the guarantee protects and covers, as the run's summary states it.
    for key in ("mechanism", "sampling", "neighboring_relation", "protected_unit", "covers",
                "assumes_public", "non_private_outputs", "warnings"):
        if key in privacy:
            out[key] = privacy[key]
    sigma = privacy.get("noise_multiplier")
    if sigma and privacy.get("mechanism") != "ddp":  # its noise is discrete: not this check
        scores = epsilon_audit.gaussian_canary_scores(jax.random.PRNGKey(seed), audit.canaries,
                                                      float(sigma))
        out["one_round"] = {
            "label": NOISE_CHECK,
            "round_epsilon": epsilon_audit.gaussian_epsilon(float(sigma), float(privacy["delta"])),
            **epsilon_audit.audit_scores(*scores, delta=float(privacy["delta"]),
                                         significance=audit.significance)}
    if cfg is not None:
        out["whole_run"] = whole_run_audit(cfg, audit)
    return out


def model_audits(cfg: dict[str, Any], audit: AuditSettings, model, data, finished,
                 out_dir: Path) -> dict[str, Any]:
    """The audits of the trained model (``finished``: its simulator and final state): global
    membership, each site's personalised model, site membership."""
    out: dict[str, Any] = {}
    sim = finished["sim"]
    if audit.membership and not (sim.algorithm.personal or sim.algorithm.init_models):
        out["membership"] = membership_audit(cfg, audit, model, data,
                                             final_params(out_dir / "federation"))
    if audit.membership and sim.per_client_models:
        from fedbench.audit.personal import personal_membership

        out["personal"] = personal_membership(
            sim.apply_fn, sim.evaluated_params(finished["state"]), sim.data)
    if audit.sites:
        if (cfg.get("privacy") or {}).get("name", "none") != "none":
            out["sites"] = {"skipped": "site-level membership needs sub-federations, which "
                                       "are refused under DP"}
        else:
            from fedbench.audit.sites import site_membership

            out["sites"] = site_membership(federation_config(cfg), audit.site_shadows)
    return out


def run_audit(cfg: dict[str, Any], out_dir: str | Path, progress: bool = False
              ) -> dict[str, Any]:
    """Runs the federation and the audits; writes ``audit.json``, ``audit.md``, ``audit.html``.
    ``progress``: a line per stage, with the time so far (``fedbench-audit``)."""
    from fedbench.audit.report import divergence, write_reports
    from fedbench.dataset import load_dataset
    from fedbench.dataset.pipeline import build_federated
    from fedbench.model import build_model
    from fedbench.run import run_experiment

    out_dir = Path(out_dir)
    audit = parse_audit(cfg.get("audit"), int(cfg["num_clients"]))
    fed_cfg = federation_config(cfg)
    finished = {}
    start = time.perf_counter()

    def say(text: str) -> None:
        if progress:
            print(f"fedbench-audit: {text} ({time.perf_counter() - start:.0f} s)", flush=True)

    say(f"training the federation ({fed_cfg['rounds']} rounds)")
    summary = run_experiment(fed_cfg, out_dir / "federation", progress=None,
                             on_finish=lambda sim, state: finished.update(sim=sim, state=state))
    raw = load_dataset(cfg["dataset"])
    part_seed = cfg["partition"].get("seed")
    data, _ = build_federated(raw, cfg["partition"], cfg["num_clients"],
                              seed=cfg["seed"] if part_seed is None else part_seed,
                              test_fraction=float(cfg["dataset"].get("test_fraction", 0.2)),
                              normalization=cfg["dataset"].get("normalize"))
    if data.task != "classification" or len(data.feature_shape) < 2:
        raise ConfigError("dataset.name", cfg["dataset"]["name"],
                          "an image classification dataset (digits, mnist5k, ...) for fedbench-audit")
    model = build_model(cfg["model"], data.feature_shape, data.num_classes, data.task)
    result = {"config": fed_cfg, "audit": dict(cfg.get("audit") or {}),
              "status": summary.get("status"), "final": summary.get("final", {})}
    diverged = divergence(result)  # no model verdicts: skip the audits of the trained model
    say(f"gradient inversion ({audit.attack}, {audit.trials} trial(s) per scenario)")
    result["inversion"] = inversion_audit(cfg, audit, model, data)
    say("epsilon: canaries through whole runs" if audit.run_canaries != 0 and not diverged
        else "epsilon")
    result["epsilon"] = epsilon_audit_of(summary, audit, int(cfg["seed"]),
                                         None if diverged else fed_cfg)
    if diverged:
        result["epsilon"]["whole_run"] = {"skipped": f"training diverged: {diverged}"}
    if not diverged:
        say("membership of the trained model(s)")
        result.update(model_audits(cfg, audit, model, data, finished, out_dir))
    say("writing the report")
    write_reports(result, out_dir)
    from fedbench.audit.report import verdict
    from fedbench.audit.track import track_audit

    track_audit(cfg, result, out_dir, verdict(result))
    return result
