"""Issue 27, item 2: whole-run audits for every mode, and a one-round check that is never read
against a run's epsilon.

* no DP: canary sites (each sending, when included, a secret direction with the norm of its
  own update) give the federation an empirical epsilon, positive and below what its canaries
  could show;
* dp_sample: canary records (one example each, present or absent at the same public client
  size) stay below the epsilon the runs' accountant reports, in every run;
* adaptive clipping: an excluded canary is absent from the noisy count as well as the sum, so
  the canaries stay below the accountant's epsilon;
* an algorithm the audit cannot plant canaries in is refused with its reason, which audit.json
  and the rendered report print;
* the one-round Gaussian bound is labelled a check of the noise code and never phrased as
  evidence for or against the claim.

Canaries run as replicas of one program on tiny federations (about 50 s in all on 2 cores).
"""

from __future__ import annotations

import html
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.audit.canaries import canary_scores
from fedbench.audit.epsilon import audit_scores
from fedbench.audit.report import verdict, write_reports
from fedbench.audit.run import NOISE_CHECK, epsilon_audit_of, whole_run_audit
from fedbench.audit.settings import parse_audit
from fedbench.privacy.dp_sgd import ABSENT_LABEL, dp_sgd_estimator
from fedbench.privacy.plan import build_privacy

#: Phrases that read a bound against the claim.
AGAINST_CLAIM = ("consistent with the claim", "MORE than claimed", "the claim does not hold")


def _result(eps: dict, privacy: str = "none") -> dict:
    """An audit result around ``eps`` (the reconstruction and the config made up)."""
    rng = np.random.default_rng(0)
    rows = [{"scenario": s, "defence": d, "mse": 1e-3, "psnr": 30.0, "ssim": 0.2,
             "label_accuracy": 1.0, "images": (rng.random((1, 8, 8, 1)),) * 2}
            for s in ("one gradient step (FedSGD)", "2 local steps (FedAvg)")
            for d in ("as sent", "as computed")]
    return {"config": {"dataset": {"name": "digits"}, "model": {"name": "logreg"},
                       "algorithm": {"name": "fedavg"}, "privacy": {"name": privacy},
                       "num_clients": 24, "rounds": 2, "seed": 0, "lr": 0.1},
            "status": "completed", "final": {"train_loss": 0.3, "test_accuracy": 0.9},
            "inversion": {"rows": rows, "sent": {"clip": None, "compression": "none"},
                          "client": 0, "examples": 10},
            "epsilon": eps}


def _said(tmp_path, result) -> tuple[str, dict, str, str]:
    write_reports(result, tmp_path)
    said = json.loads((tmp_path / "audit.json").read_text())
    return (" ".join(said["verdict"]), said, (tmp_path / "audit.md").read_text(),
            (tmp_path / "audit.html").read_text())


# --------------------------------------------------------------------------------------------
# No DP: the federation's empirical epsilon


def test_without_dp_the_federation_gets_an_empirical_epsilon_below_its_ceiling(tmp_path):
    """24 sites, the last 16 canaries, 2 rounds of 12, 2 runs: 32 canaries, whose updates are
    as long as their sites' own, are told apart from the released model (finetune: each site
    also has a personalised model, which is not scored)."""
    cfg = compose(["model=logreg", "partition=iid", "dataset.num_clients=24",
                   "clients_per_round=12", "rounds=2", "local_steps=1", "batch_size=4",
                   "algorithm=finetune"])
    audit = parse_audit({"epsilon": {"run": {"sites": 16, "runs": 2}}}, num_clients=24)
    eps = epsilon_audit_of({"final": {}}, audit, seed=0, cfg=cfg)  # a summary without privacy
    run = eps["whole_run"]
    assert eps["claimed"] == np.inf and "one_round" not in eps
    assert run["theoretical"] is None and run["unit"] == "client" and run["canaries"] == 32
    assert 0.5 < run["epsilon_one_run_fdp"] <= run["ceiling_fdp"]
    assert run["epsilon_one_run"] <= run["epsilon_one_run_fdp"] and run["auroc"] > 0.8
    assert "own update" in run["scale"] and "personalised model" in run["not_scored"]
    assert "without DP" in run["label"]
    text, said, markdown, _ = _said(tmp_path, _result(eps))
    bound = run["epsilon_one_run_fdp"]
    assert f"showed an empirical epsilon of at least {bound:.2f} for this federation" in text
    assert "a lower bound for this federation without DP" in text
    assert f"a claim below {bound:.2f} rules out the leakage this audit measured" in text
    assert "personalised model is covered neither by epsilon nor by it" in text
    assert said["epsilon"]["whole_run"]["epsilon_one_run_fdp"] == pytest.approx(bound)
    assert "| one site | none (no DP) |" in markdown
    assert not any(p in text or p in markdown for p in AGAINST_CLAIM)


# --------------------------------------------------------------------------------------------
# dp_sample: canary records


def test_an_absent_record_is_dp_sgds_absence_at_the_same_client_size():
    """One client of 6 examples, all sampled (batch 6), noise on: with slot 2 absent the step's
    gradient is the full one less slot 2's clipped gradient over the same denominator, whatever
    the slot holds; with Poisson sampling (batch 3) the slot's content changes nothing."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}

    def apply_fn(p, xb):
        return xb @ p["w"] + p["b"]

    @jax.jit
    def steps(xs, ys):  # batch 6 (q = 1) and batch 3 (Poisson sampling)
        key = jax.random.PRNGKey(3)
        return [dp_sgd_estimator(apply_fn, batch_size=batch, clip=0.5, noise_multiplier=1.0,
                                 buffer=6).grad(params, xs, ys, jnp.int32(6), key, None, 0)[1]
                for batch in (6, 3)]

    def step(batch, xs, ys):
        return steps(xs, ys)[0 if batch == 6 else 1]

    absent = y.at[2].set(ABSENT_LABEL)
    full, without = step(6, x, y), step(6, x, absent)
    one = dp_sgd_estimator(apply_fn, batch_size=1, clip=0.5, noise_multiplier=0.0, buffer=1)
    only_2 = jax.jit(lambda xs, ys: one.grad(params, xs, ys, jnp.int32(1), jax.random.PRNGKey(0),
                                             None, 0)[1])(x[2:3], y[2:3])
    for k in params:  # q = 1: the denominator is n = 6 in both worlds
        np.testing.assert_allclose(without[k], full[k] - only_2[k] / 6, atol=1e-6)
    elsewhere = step(6, x.at[2].set(100.0), absent)
    sampled = step(3, x, absent), step(3, x.at[2].set(-7.0), absent)
    for k in params:
        np.testing.assert_array_equal(without[k], elsewhere[k])
        np.testing.assert_array_equal(*(s[k] for s in sampled))


def test_under_dp_sample_canary_records_stay_below_the_accountants_epsilon():
    """10 sites, all in each of 3 rounds, DP-SGD at sigma 1 (the accountant's epsilon about
    3.5); 100 canary records in each of 4 runs, which could certify up to about 4.4 each: every
    run's bound stays below the epsilon, and the records are seen (AUROC above 0.5)."""
    cfg = compose(["model=logreg", "partition=iid", "dataset.num_clients=10",
                   "clients_per_round=10", "rounds=3", "batch_size=10", "lr=0.5",
                   "privacy=dp_sample", "privacy.noise_multiplier=1.0",
                   "privacy.target_epsilon=null"])
    audit = parse_audit({"epsilon": {"run": {"records": 100, "runs": 4}}}, num_clients=10)
    run = whole_run_audit(cfg, audit)
    claim = run["theoretical"]
    assert run["unit"] == "example" and run["black_box"] and run["canary_records"] == 100
    assert claim == pytest.approx(3.49, abs=0.05) and run["canaries"] == 400
    assert len(run["per_run_fdp"]) == 4 and all(b <= claim for b in run["per_run_fdp"])
    assert run["epsilon_one_run_fdp"] <= claim and run["epsilon_one_run"] <= claim
    per_run_ceiling = audit_scores(np.ones(50), np.zeros(50), run["delta"])["ceiling_fdp"]
    assert per_run_ceiling > claim  # each run's canaries could have shown a broken claim
    assert run["auroc"] > 0.52
    eps = {"claimed": claim, "delta": run["delta"], "unit": "example", "whole_run": run,
           "neighboring_relation": "add_or_remove_one"}
    text = " ".join(verdict(_result(eps, "dp_sample")))
    assert "planting 100 test records" not in text  # pooled: 400 canaries over 4 runs
    assert "An audit by planting 400 test records (canary records" in text
    assert "black box" in text and "loose bounds" in text
    assert "consistent with the claim" in text and "protecting one record" in text


# --------------------------------------------------------------------------------------------
# Adaptive clipping


def _adaptive_plan():
    return build_privacy({"name": "dp_client", "clip": 1.0, "noise_multiplier": 1.0,
                          "adaptive_clip": {"enabled": True, "count_stddev": 2.0}},
                         algorithm_kind="federated", num_clients=20, clients_per_round=4,
                         rounds=3, local_epochs=1, batch_size=10,
                         client_sizes=np.full(20, 10))


def test_an_absent_canary_is_left_out_of_adaptive_clippings_count():
    """Four sampled clients, the second sending a zero update: reported absent, the round
    releases exactly what it releases with that client not sampled (the mean and the next
    clip); counted as present, its bit moves the next clip."""
    mech = _adaptive_plan().mechanism
    state = SimpleNamespace(clip=jnp.float32(1.0), hparams=None)
    alg = SimpleNamespace(dp_aggregate=None)
    deltas = {"w": jnp.asarray([[0.3, 0.1], [0.0, 0.0], [0.5, -0.2], [2.0, 1.0]])}
    norms = jnp.asarray([0.32, 0.0, 0.54, 2.2])
    key = jax.random.PRNGKey(1)
    everyone = jnp.ones(4, bool)
    absent = jnp.asarray([False, True, False, False])
    marked = mech.aggregate(state, {"delta": deltas}, {"norm": norms, "absent": absent},
                            everyone, key, alg)
    missing = mech.aggregate(state, {"delta": deltas}, {"norm": norms}, ~absent, key, alg)
    present = mech.aggregate(state, {"delta": deltas}, {"norm": norms}, everyone, key, alg)
    np.testing.assert_array_equal(marked[0]["delta"]["w"], missing[0]["delta"]["w"])
    assert float(marked[1]["clip"]) == float(missing[1]["clip"])
    assert float(present[1]["clip"]) != float(missing[1]["clip"])


def test_canaries_under_adaptive_clipping_stay_below_the_accountants_epsilon():
    """100 sites, Poisson rate 1/2, 3 rounds, sigma 2 split between the sum and the count
    (the accountant's epsilon about 2.2); the last 80 sites are canaries whose norm is the
    round's clip: in each of 3 runs the bound stays below the epsilon, and they are seen."""
    cfg = compose(["model=logreg", "partition=iid", "dataset.num_clients=100",
                   "clients_per_round=50", "rounds=3", "local_steps=1", "batch_size=4",
                   "privacy=dp_client", "privacy.noise_multiplier=2.0",
                   "privacy.target_epsilon=null", "privacy.adaptive_clip.enabled=true"])
    out = canary_scores(cfg, 80, [0, 1, 2])
    claim = out["claimed_epsilon"]
    assert claim == pytest.approx(2.2, abs=0.1) and out["scale"] == "the round's adaptive clip"
    bounds = [audit_scores(r["in"], r["out"], out["delta"]) for r in out["runs"]]
    assert all(b["epsilon_one_run_fdp"] <= claim and b["epsilon_one_run"] <= claim
               for b in bounds)
    pooled = [np.concatenate([r[k] for r in out["runs"]]) for k in ("in", "out")]
    assert audit_scores(*pooled, out["delta"])["auroc"] > 0.55


# --------------------------------------------------------------------------------------------
# Refusals and the one-round check in the report


def test_an_algorithm_with_several_server_models_is_refused_with_the_reason_printed(tmp_path):
    cfg = compose(["model=logreg", "algorithm=ifca", "dataset.num_clients=6",
                   "clients_per_round=6", "rounds=1"])
    eps = epsilon_audit_of({"final": {}}, parse_audit({}, num_clients=6), seed=0, cfg=cfg)
    reason = eps["whole_run"]["skipped"]
    assert reason.startswith("algorithm.name='ifca' is not allowed") and "several" in reason
    text, said, markdown, page = _said(tmp_path, _result(eps))
    assert said["epsilon"]["whole_run"] == {"skipped": reason}
    assert f"No whole-run audit measured epsilon for this run: {reason}." in text
    assert f"Canaries through whole runs: not run ({reason})." in markdown
    assert html.escape(f"not run ({reason})") in page
    off = epsilon_audit_of({"final": {}}, parse_audit({"epsilon": {"run": {"sites": 0}}}, 6),
                           seed=0, cfg=cfg)
    assert off["whole_run"] == {"skipped": "audit.epsilon.run.sites=0: no whole-run audit "
                                           "was asked for"}


def _dp_sample_eps(one_round_bound: float, whole_run: dict | None) -> dict:
    """The epsilon block of a dp_sample run (noise 1.0, 3 rounds: epsilon about 6.3) from the
    audit's own code, its one-round bound set to ``one_round_bound``."""
    plan = build_privacy({"name": "dp_sample", "clip": 1.0, "noise_multiplier": 1.0},
                         algorithm_kind="federated", num_clients=4, clients_per_round=4,
                         rounds=3, local_epochs=1, batch_size=10,
                         client_sizes=np.asarray([10, 30, 60, 100]))
    privacy = {**plan.report(3, np.full(4, 3)), **plan.disclosure({"final": {}})}
    eps = epsilon_audit_of({"privacy": privacy}, parse_audit({"epsilon": {"canaries": 100}}, 4),
                           seed=0)
    eps["one_round"].update(epsilon_one_run=one_round_bound,
                            epsilon_one_run_fdp=one_round_bound)
    if whole_run is not None:
        eps["whole_run"] = whole_run
    return eps


@pytest.mark.parametrize("one_round_bound", [0.5, 40.0])
def test_the_one_round_check_is_never_read_against_the_claim(tmp_path, one_round_bound):
    """Issue 27's example: under dp_sample a one-round bound was called "consistent with the
    claim", and with a smaller claim "MORE than claimed". Below and far above the claim, the
    one-round bound appears only as a labelled check of the noise code."""
    eps = _dp_sample_eps(one_round_bound, {"skipped": "training diverged: made up"})
    assert eps["one_round"]["label"] == NOISE_CHECK
    text, _, markdown, page = _said(tmp_path, _result(eps, "dp_sample"))
    for phrase in AGAINST_CLAIM + (f"{one_round_bound:.2f}",):
        assert phrase not in text
    for phrase in AGAINST_CLAIM:
        assert phrase not in markdown and html.escape(phrase) not in page
    (check,) = [b for b in markdown.split("\n\n") if "one round" in b and not b.startswith("`")]
    assert check.startswith(f"The one-round bound is {NOISE_CHECK}:")
    assert "It is not evidence for or against the run's epsilon." in check
    assert f"lower bound of {one_round_bound:.2f}" in check
    assert "No whole-run audit measured epsilon for this run: training diverged" in text
    # With a whole-run audit, its bound (not the one-round one) is read against the claim.
    run = {"theoretical": eps["claimed"], "kind": "input", "unit": "example", "runs": 4,
           "black_box": True, "epsilon_one_run": 0.1, "epsilon_one_run_fdp": 0.2,
           "ceiling_fdp": 4.4, "auroc": 0.55, "canaries": 400, "canary_records": 100}
    text = " ".join(verdict(_result(_dp_sample_eps(one_round_bound, run), "dp_sample")))
    assert "showed epsilon at least 0.20, consistent with the claim" in text
    assert f"{one_round_bound:.2f}" not in text and "one round" not in text


def test_canaries_under_dp_ftrl_stay_below_the_gaussian_mechanisms_epsilon():
    """DP-FTRL (BLT), 100 sites every round, 3 rounds, z = 1: the whole run is one Gaussian
    mechanism, so the claim is the analytic Gaussian epsilon of 1-GDP at delta 1e-5 (Balle and
    Wang 2018, Theorem 8, solved here with scipy: about 4.377). The last 80 sites are canaries
    of the clip's norm: in each of 3 runs the bound stays below it, and they are seen."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    cfg = compose(["model=logreg", "partition=iid", "dataset.num_clients=100",
                   "clients_per_round=100", "rounds=3", "local_steps=1", "batch_size=4",
                   "privacy=dp_ftrl", "privacy.matrix=blt", "privacy.noise_multiplier=1.0",
                   "privacy.target_epsilon=null"])
    out = canary_scores(cfg, 80, [0, 1, 2])
    delta = out["delta"]
    analytic = brentq(lambda e: norm.cdf(0.5 - e) - np.exp(e) * norm.cdf(-0.5 - e) - delta,
                      0.01, 50)
    claim = out["claimed_epsilon"]
    assert delta == 1e-5 and claim == pytest.approx(analytic, rel=1e-3)
    assert out["scale"] == "the clip"
    bounds = [audit_scores(r["in"], r["out"], delta) for r in out["runs"]]
    assert all(b["epsilon_one_run_fdp"] <= claim and b["epsilon_one_run"] <= claim
               for b in bounds)
    pooled = [np.concatenate([r[k] for r in out["runs"]]) for k in ("in", "out")]
    assert audit_scores(*pooled, delta)["auroc"] > 0.6


def test_under_distributed_dp_the_verdict_does_not_say_the_server_sees_each_update():
    """privacy=ddp: the server sees only the secure sum, so the reconstruction's observer is
    not the server, and the client-level sentence (the server sees each update without noise)
    is replaced by what distributed DP protects."""
    eps = {"claimed": 4.0, "delta": 1e-5, "unit": "client", "mechanism": "ddp",
           "neighboring_relation": "zero_out"}
    result = _result(eps, "ddp")
    result["inversion"]["rows"][0]["ssim"] = 0.9  # a recognisable reconstruction
    result["inversion"]["sent"]["clip"] = 1.0
    text = " ".join(verdict(result))
    assert "not the coordinating server, which sees only the secure sum" in text
    assert "still sees each hospital's update" not in text
    assert "zero-out" in text and "Distributed differential privacy" in text
    central = dict(eps, mechanism="dp_client", neighboring_relation="add_or_remove_one")
    result = _result(central, "dp_client")
    result["inversion"]["rows"][0]["ssim"] = 0.9
    result["inversion"]["sent"]["clip"] = 1.0
    text = " ".join(verdict(result))
    assert "(for example the coordinating server)" in text
    assert "still sees each hospital's update" in text
