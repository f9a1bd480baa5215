"""Issue 27, items 3 and 5: honest audit verdicts, and what epsilon covers.

Expectations are independent of the code under test: the neighbouring relation is the one
dp-accounting's own RDP accountant accepts for the event (built here directly from
``dp_accounting``), the delta threshold is one over units counted by hand, the epsilon that
depends on a client's size is computed twice by the accountant, and the audit report is
written from made-up results whose numbers would, on a working model, produce exactly the
verdicts that must be withheld.
"""

from __future__ import annotations

import json
import warnings

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedbench.audit.report import verdict, write_reports
from fedbench.audit.run import epsilon_audit_of
from fedbench.audit.settings import parse_audit
from fedbench.privacy.plan import build_privacy
from fedbench.privacy.release import PrivacyWarning

#: A small dp_client federation: 20 clients, 5 a round, 3 rounds.
CLIENTS, COHORT, ROUNDS = 20, 5, 3


def _client_plan(**privacy):
    cfg = {"name": "dp_client", "clip": 1.0, "noise_multiplier": 1.0, **privacy}
    return build_privacy(cfg, algorithm_kind="federated", num_clients=CLIENTS,
                         clients_per_round=COHORT, rounds=ROUNDS, local_epochs=1, batch_size=10,
                         client_sizes=np.full(CLIENTS, 10))


def _sample_plan(sizes, **privacy):
    cfg = {"name": "dp_sample", "clip": 1.0, "noise_multiplier": 1.0, **privacy}
    return build_privacy(cfg, algorithm_kind="federated", num_clients=len(sizes),
                         clients_per_round=len(sizes), rounds=ROUNDS, local_epochs=1,
                         batch_size=10, client_sizes=np.asarray(sizes))


def _relation_dp_accounting_accepts(event) -> str:
    """The one of dp-accounting's two unit relations (add/remove-one, replace-one) under which
    its RDP accountant accounts ``event``."""
    accepted = [r for r in (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
                            dp_accounting.NeighboringRelation.REPLACE_ONE)
                if rdp.RdpAccountant(neighboring_relation=r).supports(event)]
    assert len(accepted) == 1, accepted
    return accepted[0].name.lower()


# --------------------------------------------------------------------------------------------
# Item 5 (a): covers states the neighbouring relation the accountant used


@pytest.mark.parametrize("sampling,event,words,not_words", [
    ("poisson", dp_accounting.PoissonSampledDpEvent(COHORT / CLIENTS,
                                                    dp_accounting.GaussianDpEvent(1.0)),
     "adding or removing one client", "replacing"),
    ("fixed", dp_accounting.SampledWithoutReplacementDpEvent(CLIENTS, COHORT,
                                                             dp_accounting.GaussianDpEvent(1.0)),
     "replacing one client's data by another's", "adding or removing"),
])
def test_covers_names_the_relation_dp_accounting_accounts_for_the_sampling(
        sampling, event, words, not_words):
    plan = _client_plan(sampling=sampling, accountant="rdp")
    expected = _relation_dp_accounting_accepts(dp_accounting.SelfComposedDpEvent(event, ROUNDS))
    report = plan.report(ROUNDS, np.full(CLIENTS, 1))
    block = {**report, **plan.disclosure({"final": {}})}  # as summary.json's privacy block
    assert report["neighboring_relation"] == expected == block["neighboring_relation"]
    assert f"with respect to {words} ({expected})" in block["covers"]
    assert not_words not in block["covers"]
    assert block["protected_unit"] == "one client" and block["assumes_public"] == []


# --------------------------------------------------------------------------------------------
# Item 5 (b): dp_sample's guarantee treats client sizes as public


def test_dp_sample_states_that_client_sizes_are_public_because_epsilon_depends_on_them():
    """One more example at the first client changes its sampling rate (10/10 -> 10/11) and its
    steps (1 -> 2 per round), so the accounted epsilon moves: the accounting is a function of
    n_i, which the disclosure must therefore name as public."""
    participation = np.full(2, ROUNDS)
    small, grown = _sample_plan([10, 30]), _sample_plan([11, 30])
    eps_small = small.report(ROUNDS, participation)["epsilon"]
    eps_grown = grown.report(ROUNDS, participation)["epsilon"]
    assert abs(eps_small - eps_grown) > 1e-3
    out = small.disclosure({"final": {}})
    assert len(out["assumes_public"]) == 1
    assert "number of training examples n_i" in out["assumes_public"][0]
    assert "it assumes public every client's number of training examples" in out["covers"]
    assert "adding or removing one training example of one client" in out["covers"]


# --------------------------------------------------------------------------------------------
# Item 5 (c): a delta above 1 / units warns, naming both numbers, and is recorded


@pytest.mark.parametrize("delta,warns", [(0.04, False), (0.05, False), (0.06, True)])
def test_delta_warning_triggers_exactly_above_one_over_the_clients(delta, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = _client_plan(delta=delta)  # 20 clients: the threshold is 1/20 = 0.05
    ours = [w for w in caught if issubclass(w.category, PrivacyWarning)]
    assert len(ours) == int(warns)
    recorded = plan.disclosure({"final": {}})["warnings"]
    assert recorded == [str(w.message) for w in ours]
    if warns:
        assert issubclass(PrivacyWarning, UserWarning)
        assert f"privacy.delta={delta:g}" in recorded[0] and "1/20" in recorded[0]
        assert "20 clients" in recorded[0]


@pytest.mark.parametrize("delta,warns", [(0.01, False), (0.011, True)])
def test_delta_warning_counts_every_training_example_under_dp_sample(delta, warns):
    sizes = [10, 30, 60]  # 100 protected units: every training example of every client
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = _sample_plan(sizes, delta=delta)
    ours = [str(w.message) for w in caught if issubclass(w.category, PrivacyWarning)]
    assert plan.disclosure({"final": {}})["warnings"] == ours
    assert len(ours) == int(warns)
    if warns:
        assert "1/100" in ours[0] and "100 training examples" in ours[0]


def test_the_default_delta_never_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        assert _client_plan().warnings == ()
        assert _sample_plan([10, 30, 60]).warnings == ()


# --------------------------------------------------------------------------------------------
# Item 3: honest verdicts


def _rows(ssim: float) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"scenario": s, "defence": d, "mse": 1e-3, "psnr": 30.0, "ssim": ssim,
             "label_accuracy": 1.0, "images": (rng.random((1, 8, 8, 1)),) * 2}
            for s in ("one gradient step (FedSGD)", "2 local steps (FedAvg)")
            for d in ("as sent", "as computed")]


def _result(plan, *, status: str, final: dict, config_privacy: dict) -> dict:
    """An audit result whose epsilon block comes from ``plan`` through the audit's own code
    (:func:`epsilon_audit_of` on the privacy block run_summary writes), and whose membership
    and whole-run canary numbers are those the README's diverged example reported: AUC 0 and
    a bound of 0, which read as "better than guessing" and "consistent with the claim"."""
    privacy = {**plan.report(ROUNDS, np.full(CLIENTS, 1)), **plan.disclosure({"final": final})}
    audit = parse_audit({"epsilon": {"canaries": 100}}, num_clients=CLIENTS)
    eps = epsilon_audit_of({"privacy": privacy}, audit, seed=0)
    eps["whole_run"] = {"theoretical": eps["claimed"], "kind": "gradient", "runs": 4,
                        "epsilon_one_run": 0.0, "epsilon_one_run_fdp": 0.0, "ceiling_fdp": 3.2,
                        "auroc": float("nan"), "canaries": 40}
    roc = {"auc": 0.0, "tpr_at_0.1%_fpr": 0.0, "tpr_at_1%_fpr": 0.0, "members": 10,
           "nonmembers": 5}
    return {"config": {"dataset": {"name": "digits"}, "model": {"name": "mlp"},
                       "algorithm": {"name": "fedavg"}, "privacy": config_privacy,
                       "num_clients": CLIENTS, "rounds": 20, "seed": 0, "lr": 0.1,
                       "clients_per_round": COHORT, "local_epochs": 1},
            "status": status, "final": final,
            "inversion": {"rows": _rows(0.9), "sent": {"clip": 1.0, "compression": "none"},
                          "client": 0, "examples": 10},
            "membership": {"lira_offline": roc, "lira_online": roc, "loss_threshold": roc},
            "epsilon": eps}


DIVERGED_FINAL = {"round": 20, "train_loss": None, "test_loss": None, "test_accuracy": None,
                  "epsilon": 3.2}
#: What a verdict on the model would say; none of it may appear for a diverged model.
MODEL_VERDICTS = ("better than guessing", "consistent with the claim", "MORE than claimed",
                  "does reveal something")


@pytest.mark.parametrize("status,final", [
    ("diverged", DIVERGED_FINAL),  # as summary.json writes it: NaN as null
    ("completed", {"round": 20, "train_loss": float("nan"), "test_accuracy": 0.1}),
])
def test_a_diverged_model_gets_no_membership_or_epsilon_bound_verdict(tmp_path, status, final):
    plan = _client_plan()
    result = _result(plan, status=status, final=final,
                     config_privacy={"name": "dp_client", "clip": 1.0})
    write_reports(result, tmp_path)
    said = json.loads((tmp_path / "audit.json").read_text())
    text = " ".join(said["verdict"])
    markdown = (tmp_path / "audit.md").read_text()
    html = (tmp_path / "audit.html").read_text()
    for phrase in MODEL_VERDICTS:
        assert phrase not in text and phrase not in markdown and phrase not in html
    assert text.startswith("Training diverged (") and "lower learning rate (lr=0.1" in text
    assert "no verdict on whether it reveals who was in its training data" in text
    assert "## Membership inference" not in markdown and "## Verdicts withheld" in markdown
    assert "final test accuracy" not in markdown.split("## Gradient inversion")[0]
    held = said["verdicts_withheld"]
    assert held["reason"].startswith("training diverged")
    assert ("diverged" in held["reason"]) if status == "diverged" else "train_loss nan" in held[
        "reason"]
    assert {"membership", "epsilon bound"} <= set(held["withheld"])
    assert any("learning rate" in r for r in held["what_to_change"])
    assert any("target_epsilon" in r for r in held["what_to_change"])
    # The same numbers on a model that trained give the verdicts withheld above.
    healthy = _result(plan, status="completed", final={"round": 20, "train_loss": 0.3,
                                                        "test_accuracy": 0.9},
                      config_privacy={"name": "dp_client", "clip": 1.0})
    healthy_text = " ".join(verdict(healthy))
    assert "better than guessing" in healthy_text and "consistent with the claim" in healthy_text


@pytest.mark.parametrize("name,sampling,unit_words,relation_words", [
    ("dp_client", "poisson", "protecting one hospital",
     "add/remove-one (adding or removing one hospital's data)"),
    ("dp_client", "fixed", "protecting one hospital",
     "replace-one (replacing one hospital's data by another's)"),
    ("dp_sample", None, "protecting one record of one hospital",
     "add/remove-one (adding or removing one record)"),
])
def test_every_verdict_states_epsilon_delta_unit_relation_and_coverage(
        name, sampling, unit_words, relation_words):
    if name == "dp_client":
        plan = _client_plan(sampling=sampling, accountant="rdp")
    else:
        plan = _sample_plan([10] * CLIENTS)
    final = {"round": 20, "train_loss": 0.3, "test_loss": 0.4, "test_accuracy": 0.9,
             "epsilon": 1.0}
    result = _result(plan, status="completed", final=final, config_privacy={"name": name})
    eps = result["epsilon"]
    sentences = verdict(result)
    # The guarantee's terms, written out here from the plan's own numbers.
    relation_short = {"poisson": "add/remove-one", "fixed": "replace-one", None: "add/remove-one"}
    short = (f"epsilon {eps['claimed']:.2f}, delta {plan.delta:.3g}, {unit_words}, "
             f"{relation_short[sampling]}")
    findings = [s for s in sentences if any(k in s for k in (
        "rebuild recognisable", "who was in the training data", "An audit by"))]
    assert len(findings) == 3  # reconstruction, membership, epsilon bound
    assert all(f"[{short}]" in s for s in findings)
    (full,) = [s for s in sentences if s.startswith("The configured privacy guarantee")]
    assert f"epsilon = {eps['claimed']:.2f} at delta = {plan.delta:.3g}" in full
    assert f"under the {relation_words} neighbouring relation" in full
    assert "the released model parameters only" in full
    assert "it does not cover these outputs of the run: train_loss, test_loss, test_accuracy" \
        in full
    if name == "dp_sample":
        assert "every client's number of training examples" in full


@pytest.mark.slow
def test_a_real_audit_of_a_diverging_federation_withholds_its_verdicts(tmp_path):
    """lr = 1000 on digits: the first round's update is far too large and the federation
    diverges (about 30 s on 2 cores); the audit of the trained model is not run, and the
    report says why and what to change."""
    from conftest import compose

    from fedbench.audit.run import run_audit

    cfg = compose(["+audit=default", "lr=1000", "rounds=2", "eval_every=1", "num_clients=4",
                   "clients_per_round=4", "audit.trials=1", "audit.iterations=5",
                   "audit.local_steps=1", "audit.defences=[]", "audit.membership.shadows=4",
                   "audit.epsilon.canaries=100", "audit.epsilon.run.runs=2", "privacy=dp_client",
                   "privacy.noise_multiplier=1.0", "privacy.target_epsilon=null"])
    result = run_audit(cfg, tmp_path)
    summary = json.loads((tmp_path / "federation" / "summary.json").read_text())
    assert summary["status"] == "diverged" and result["status"] == "diverged"
    said = json.loads((tmp_path / "audit.json").read_text())
    text = " ".join(said["verdict"])
    for phrase in MODEL_VERDICTS:
        assert phrase not in text and phrase not in (tmp_path / "audit.md").read_text()
    assert text.startswith("Training diverged (") and "lr=1000; try lr=100" in text
    assert "membership" not in said  # not measured on a broken model
    assert said["epsilon"]["whole_run"]["skipped"].startswith("training diverged")
    assert said["verdicts_withheld"]["reason"].startswith('training diverged: the run stopped')
    # The guarantee is still stated, with the relation the run's accountant reported.
    assert summary["privacy"]["neighboring_relation"] == "add_or_remove_one"
    assert said["epsilon"]["neighboring_relation"] == "add_or_remove_one"
    assert f"epsilon = {summary['privacy']['epsilon']:.2f} at delta = 1e-05" in text


def test_the_audit_verdict_repeats_the_runs_delta_warning():
    with pytest.warns(PrivacyWarning) as caught:
        plan = _client_plan(delta=0.06)
    result = _result(plan, status="completed", final={"round": 20, "train_loss": 0.3},
                     config_privacy={"name": "dp_client"})
    assert verdict(result)[-1] == f"Warning: {caught[0].message}."
