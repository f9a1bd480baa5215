"""Membership inference against each site's personalised model (fedbench/audit/personal.py)."""

from __future__ import annotations

import tempfile

import pytest
from conftest import compose

from fedbench.audit.personal import personal_membership, site_examples
from fedbench.run import build_simulator, run_experiment


def test_site_examples_are_every_sites_train_then_test_split():
    data = build_simulator(compose(["dataset.num_clients=5", "clients_per_round=5"])).data
    x, y, owner, member = site_examples(data)
    assert member.sum() == int(data.train_counts.sum())
    assert (~member).sum() == int(data.test_counts.sum())
    k = 3  # site 3's first test example is where its split says
    first = int(data.train_counts.sum() + data.test_counts[:k].sum())
    assert owner[first] == k and not member[first]
    assert (x[first] == data.test_x[k, 0]).all() and y[first] == data.test_y[k, 0]


@pytest.mark.parametrize("trained", [False, True])
def test_site_models_that_memorise_reveal_their_members_and_untrained_ones_do_not(trained):
    """Local training only, 10 epochs a round on ~36 examples per site: each site's model
    memorises its training split (both attacks AUC > 0.65). The same attacks on the untrained
    models, where a site's training and test examples are exchangeable, are at chance
    (|AUC - 0.5| < 0.06, about 3.5 standard errors with ~1,450 members and ~350 non-members)."""
    cfg = compose(["algorithm=local", "rounds=30", "local_epochs=10", "dataset.num_clients=40"])
    got = {}
    if trained:
        with tempfile.TemporaryDirectory() as d:
            run_experiment(cfg, d, progress=None,
                           on_finish=lambda sim, state: got.update(sim=sim, state=state))
    else:
        got["sim"] = build_simulator(cfg).sim
        got["state"] = got["sim"].init()
    sim = got["sim"]
    out = personal_membership(sim.apply_fn, sim.evaluated_params(got["state"]), sim.data)
    assert out["reference_models"] == 39
    for attack in ("loss_threshold", "lira_offline"):
        auc = out[attack]["auc"]
        assert (auc > 0.65) if trained else abs(auc - 0.5) < 0.06, (attack, auc)
