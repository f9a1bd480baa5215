"""fedbench-compare: federated vs local vs pooled on every site's test split."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, compose

from fedbench.algorithm import build_algorithm
from fedbench.bootstrap import metric_value, paired_bootstrap
from fedbench.compare import compare, regime_config, wide_table
from fedbench.compare_verdicts import (Comparison, best_local, validation_data, verdict_lines,
                                       verdicts)

SMALL = ["dataset=breast_cancer", "model=logreg", "num_clients=3", "clients_per_round=3",
         "rounds=6", "eval_every=3", "partition=dirichlet", "partition.alpha=1.0",
         "partition.min_size=20"]


SEEDS = (3, 4)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison on breast_cancer: local, centralized, fedavg and fedprox, two seeds."""
    out = tmp_path_factory.mktemp("compare")
    rows = compare(compose(SMALL), out, algorithms=["fedavg", "fedprox"], seeds=list(SEEDS))
    return out, rows


def _summary(out, regime, seed):
    import json

    return json.loads((out / regime / f"seed={seed}" / "summary.json").read_text())


def test_compare_table_agrees_with_each_runs_own_metrics(compared):
    tmp_path, rows = compared
    # 3 local models + centralized + 2 federated, each on pooled + 3 sites, per seed.
    assert len(rows) == (3 + 1 + 2) * 4 * len(SEEDS)
    for regime in ("local", "centralized", "fedavg", "fedprox"):
        for seed in SEEDS:
            final = _summary(tmp_path, regime, seed)["final"]
            mine = [r for r in rows if r["regime"] == regime and r["seed"] == seed]
            pooled = [r["value"] for r in mine if r["eval_set"] == "pooled"]
            # The pooled-test accuracy of the site table (predictions on the host) equals the
            # simulator's evaluation (sums inside jit); for local, the mean over site models.
            np.testing.assert_allclose(np.mean(pooled), final["test_accuracy"], atol=1e-6)
            if regime == "local":
                own = [r["value"] for r in mine if r["eval_set"] == r["model"].split(": ")[1]]
            else:
                own = [r["value"] for r in mine if r["eval_set"] != "pooled"]
            np.testing.assert_allclose(np.mean(own), final["client_accuracy_mean"], atol=1e-6)
    # Each federated algorithm ran with its own conf/algorithm/<name>.yaml settings, so FedProx
    # (mu = 0.01) is not a second FedAvg.
    runs = {regime: _summary(tmp_path, regime, 3) for regime in ("fedavg", "fedprox")}
    assert runs["fedprox"]["config"]["algorithm"] == _yaml_algorithm("fedprox")
    assert runs["fedavg"]["final"]["train_loss"] != runs["fedprox"]["final"]["train_loss"]
    with open(tmp_path / "table.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    sets, lines = wide_table(rows)
    assert sets[0] == "pooled" and len(lines) == 3 + 1 + 2


def test_every_training_seed_runs_on_the_same_partition(compared):
    out, _ = compared
    for regime in ("local", "fedavg"):
        a, b = (_summary(out, regime, s) for s in SEEDS)
        assert a["config"]["seed"] != b["config"]["seed"]  # the training seed varies ...
        assert a["config"]["partition"]["seed"] == b["config"]["partition"]["seed"] == 0
        assert a["partition_stats"] == b["partition_stats"]  # ... the sites and splits do not
        assert a["sites"]["test_sizes"] == b["sites"]["test_sizes"]


def test_the_partition_seed_is_pinned_while_the_training_seed_varies():
    from fedbench.dataset import load_dataset
    from fedbench.partition import partition

    cfg = compose(SMALL)
    raw = load_dataset(cfg["dataset"])

    def clients(run_cfg):  # the partition run_experiment draws for this config
        seed = run_cfg["partition"]["seed"]
        seed = run_cfg["seed"] if seed is None else seed
        return [set(p.tolist()) for p in partition(run_cfg["partition"], raw.y, 3, seed)]

    configs = [regime_config(cfg, regime, seed) for seed in (0, 1, 2)
               for regime in ("local", "fedavg")]
    assert len({c["seed"] for c in configs}) == 3
    first = clients(configs[0])
    assert all(clients(c) == first for c in configs[1:])
    pinned = compose([*SMALL, "partition.seed=7"])
    assert {regime_config(pinned, "fedavg", s)["partition"]["seed"] for s in (0, 5)} == {7}


def test_per_example_scores_reproduce_each_runs_site_results(compared):
    out, _ = compared
    comp = Comparison.load(out / "scores.npz")
    assert comp.seeds == list(SEEDS) and comp.partition_seed == 0 and comp.metric == "accuracy"
    for i, seed in enumerate(SEEDS):
        for regime in ("local", "centralized", "fedavg", "fedprox"):
            sites = _summary(out, regime, seed)["sites"]
            scores = comp.scores[regime][i]
            assert list(np.diff(comp.offsets)) == sites["test_sizes"]
            if regime == "local":
                for k, row in enumerate(sites["matrix"]):
                    assert np.mean(scores[k]) == pytest.approx(sites["pooled_by_model"][k])
                    for j, value in enumerate(row):
                        assert np.mean(scores[k, comp.site(j)]) == pytest.approx(value)
            else:
                assert np.mean(scores[0]) == pytest.approx(sites["pooled"])
                for j, value in enumerate(sites["own"]):
                    assert np.mean(scores[0, comp.site(j)]) == pytest.approx(value)


def test_verdicts_report_test_sizes_and_the_validated_choice(compared):
    import json

    out, rows = compared
    report = json.loads((out / "verdicts.json").read_text())
    assert report["seeds"] == list(SEEDS) and report["partition_seed"] == 0
    records = report["verdicts"]
    assert [(r["algorithm"], r["eval_set"]) for r in records] == [
        (a, s) for a in ("fedavg", "fedprox") for s in ("pooled", "site 0", "site 1", "site 2")]
    # Test sizes and positives from the split rebuilt here with the pinned partition seed.
    sizes = _test_sizes()
    for r in records:
        n, pos = ((sum(n for n, _ in sizes), sum(p for _, p in sizes)) if r["eval_set"] == "pooled"
                  else sizes[int(r["eval_set"].split()[1])])
        assert (r["n"], r["positives"]) == (n, pos)
        assert r["ci_low"] <= r["ci_high"] and r["n_boot"] == 2000 and r["level"] == 0.95

    def seed_mean(regime, model, eval_set):
        return np.mean([x["value"] for x in rows if x["regime"] == regime
                        and x["model"] == model and x["eval_set"] == eval_set])

    pooled = records[0]
    assert pooled["selected_on"] == "validation"
    # The chosen site model is scored on the pooled test set as the table reports it.
    chosen = f"site model: {pooled['local_model']}"
    assert pooled["local"] == pytest.approx(seed_mean("local", chosen, "pooled"))
    assert pooled["fl"] == pytest.approx(seed_mean("fedavg", "global model", "pooled"))
    site = records[2]
    assert site["local"] == pytest.approx(seed_mean("local", "site model: site 1", "site 1"))


def test_paired_bootstrap_of_an_accuracy_difference_matches_the_normal_closed_form():
    # Paired 0/1 outcomes of two models (3 seeds) with a known joint law. The bootstrap
    # distribution of a mean of n i.i.d. differences d_i has sd sqrt(plug-in var(d) / n), and for
    # n = 1500 its percentile interval is close to the normal one: mean +- 1.96 sd.
    rng = np.random.default_rng(0)
    n = 1500
    both = rng.random((3, n)) < 0.7
    a = (both | (rng.random((3, n)) < 0.2)).astype(float)
    b = (both | (rng.random((3, n)) < 0.1)).astype(float)
    y = np.zeros(n)
    res = paired_bootstrap("accuracy", a, b, y, n_boot=4000, seed=1)
    d = (a - b).mean(0)
    sd = d.std() / np.sqrt(n)
    assert res.difference == pytest.approx(a.mean() - b.mean())
    assert res.replicates.std() == pytest.approx(sd, rel=0.05)
    assert res.low == pytest.approx(d.mean() - 1.959964 * sd, abs=0.15 * sd)
    assert res.high == pytest.approx(d.mean() + 1.959964 * sd, abs=0.15 * sd)


def _delong_variance(s1, s2, y):
    """Var(AUC_1 - AUC_2) by DeLong, DeLong & Clarke-Pearson (Biometrics 44, 1988)."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (s1, s2):
        psi = (s[pos][:, None] > s[neg][None]) + 0.5 * (s[pos][:, None] == s[neg][None])
        comps.append((psi.mean(), psi.mean(1), psi.mean(0)))
    s10 = np.cov(np.stack([comps[0][1], comps[1][1]]))
    s01 = np.cov(np.stack([comps[0][2], comps[1][2]]))
    c = np.array([1.0, -1.0])
    return comps[0][0] - comps[1][0], c @ s10 @ c / pos.sum() + c @ s01 @ c / neg.sum()


def test_paired_bootstrap_of_an_auc_difference_matches_delong():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = (rng.random(400) < 0.3).astype(int)
    shared = rng.normal(size=400)
    s1 = 1.2 * y + shared + 0.5 * rng.normal(size=400)
    s2 = 0.8 * y + shared + 0.5 * rng.normal(size=400)
    res = paired_bootstrap("auc", s1, s2, y, n_boot=3000, seed=3)
    diff, var = _delong_variance(s1, s2, y)
    assert res.a == pytest.approx(roc_auc_score(y, s1)) and res.b == pytest.approx(roc_auc_score(y, s2))
    assert res.difference == pytest.approx(diff)
    assert res.replicates.std() == pytest.approx(np.sqrt(var), rel=0.1)
    assert res.low < diff < res.high and len(res.replicates) == 3000  # stratified: all defined


def test_identical_models_give_no_difference_and_clear_gaps_a_side():
    rng = np.random.default_rng(4)
    correct = (rng.random((2, 50)) < 0.8).astype(float)
    same = paired_bootstrap("accuracy", correct, correct, np.zeros(50))
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    y = np.arange(40) % 2
    margin = np.where(y == 1, 1.0, -1.0) + 0.1 * rng.normal(size=40)
    assert paired_bootstrap("auc", margin, margin, y).high == 0.0
    better = paired_bootstrap("auc", margin, -margin, y)
    assert (better.difference, better.low) == (2.0 * metric_value("auc", margin, y) - 1.0, 1.0)
    survival = np.stack([np.ones(30), np.arange(1.0, 31.0)], 1)  # events at times 1..30
    risk = -survival[:, 1]  # earlier event, higher risk: concordant on every pair
    worse = paired_bootstrap("cindex", -risk, risk, survival, n_boot=200)
    assert (worse.a, worse.b, worse.high) == (0.0, 1.0, -1.0)


def test_bootstrap_metrics_agree_with_independent_implementations():
    from sklearn.metrics import roc_auc_score

    from fedbench.task import concordance_index

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.normal(size=60), 1)  # ties
    assert metric_value("auc", score, y) == pytest.approx(roc_auc_score(y, score))
    survival = np.stack([rng.integers(0, 2, 60), rng.integers(1, 15, 60)], 1).astype(float)
    assert metric_value("cindex", score, survival) == pytest.approx(
        concordance_index(survival[:, 1], score, survival[:, 0]))
    two_seeds = np.stack([score, -score])
    assert metric_value("cindex", two_seeds, survival) == pytest.approx(np.mean(
        [concordance_index(survival[:, 1], s, survival[:, 0]) for s in two_seeds]))


def _toy(validation):
    """Two sites of 5 test examples: site a's model is right on 6 of the 10, site b's on 9."""
    local = np.array([[[1, 1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]]], float)
    fl = np.ones((1, 1, 10))
    return Comparison("accuracy", ["a", "b"], np.array([0, 5, 10]), np.arange(10) % 2,
                      {"local": local, "fedavg": fl}, validation, True, [0], 0)


def test_the_best_single_site_model_is_chosen_on_validation_not_test():
    comp = _toy(np.array([[0.9, 0.5]]))  # validation prefers a; the test set would pick b
    assert best_local(comp)[:2] == (0, "validation")
    pooled = verdicts(comp, ["fedavg"], n_boot=500)[0]
    assert (pooled["local_model"], pooled["selected_on"]) == ("a", "validation")
    assert pooled["local"] == pytest.approx(0.6) and pooled["fl"] == 1.0
    assert pooled["n"] == 10 and pooled["positives"] == 5
    assert "(a, selected on validation)" in verdict_lines(verdicts(comp, ["fedavg"], 500))[1]
    for no_validation in (None, np.full((1, 2), np.nan)):
        comp = _toy(no_validation)
        pooled = verdicts(comp, ["fedavg"], n_boot=500)[0]
        assert (pooled["local_model"], pooled["selected_on"]) == ("b", "test")
        assert "(b, selected on test)" in verdict_lines([pooled])[1]


def test_site_verdicts_follow_the_interval():
    comp = _toy(np.array([[0.9, 0.5]]))
    records = verdicts(comp, ["fedavg"], n_boot=500)
    # Site a: FL right on 5 of 5, local on 5 of 5 -> identical -> no difference; site b: 5 vs 4.
    by_site = {r["eval_set"]: r for r in records}
    assert by_site["a"]["verdict"] == "no difference" and by_site["a"]["n"] == 5
    assert by_site["b"]["difference"] == pytest.approx(0.2) and by_site["b"]["ci_low"] == 0.0
    assert by_site["b"]["verdict"] == "no difference"  # one error in 5: the interval holds 0
    big = Comparison("accuracy", ["a"], np.array([0, 200]), np.zeros(200),
                     {"local": np.zeros((1, 1, 200)), "fedavg": np.ones((1, 1, 200))},
                     None, False, [0], 0)
    site = verdicts(big, ["fedavg"], n_boot=200)[1]
    assert site["verdict"] == "FL better" and site["positives"] is None
    assert "n=200)" in verdict_lines([site])[1]
    big.scores = {"local": big.scores["fedavg"], "fedavg": big.scores["local"]}
    assert verdicts(big, ["fedavg"], n_boot=200)[1]["verdict"] == "local better"


def test_survival_verdicts_count_events():
    time = np.arange(1.0, 21.0)
    event = (np.arange(20) % 4 != 0).astype(float)  # 15 events, 5 censored
    labels = np.stack([event, time], 1)
    risk = -time[None, None]
    comp = Comparison("cindex", ["a"], np.array([0, 20]), labels,
                      {"local": risk[:, :, ::-1].copy(), "fedavg": risk}, None, False, [0], 0)
    site = verdicts(comp, ["fedavg"], n_boot=300)[1]
    assert (site["n"], site["events"], site["positives"]) == (20, 15, None)
    assert site["fl"] == 1.0 and site["verdict"] == "FL better"
    assert "(n=20, 15 events)" in verdict_lines([site])[1]


def test_validation_data_holds_out_training_examples_only(uneven_data):
    held = validation_data(uneven_data, 0.25, seed=0)
    assert np.array_equal(held.test_counts, [min(int(0.25 * n), n - 1) for n in (3, 17, 8, 25, 1, 12)])
    for c, n in enumerate(np.asarray(uneven_data.train_counts)):
        original = np.asarray(uneven_data.train_x[c, :n])
        parts = np.concatenate([np.asarray(held.train_x[c, :held.train_counts[c]]),
                                np.asarray(held.test_x[c, :held.test_counts[c]])])
        assert sorted(map(tuple, parts)) == sorted(map(tuple, original))  # a split of train
    again = validation_data(uneven_data, 0.25, seed=0)
    assert np.array_equal(again.test_x, held.test_x)  # the same examples in every seed
    assert validation_data(uneven_data, 0.0, seed=0) is None


def test_compare_cli_reports_auc_and_rejects_bad_input(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fedbench.compare", *SMALL, "--metric", "auc", "--out", str(tmp_path),
         "--val-fraction", "0", "--bootstrap", "300"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "pooled-test auc" in out.stdout and "best single-site model" in out.stdout
    assert "fedbench-compare: training local (seed 0; run 1 of " in out.stdout  # its stages
    # No validation data asked for: the choice is made, and labelled, on the test set.
    assert "selected on test" in out.stdout and "selected on validation" not in out.stdout
    assert "95% percentile interval of a paired bootstrap over test examples (300" in out.stdout
    for j, (n, pos) in enumerate(_test_sizes()):
        assert f"site {j} test (n={n}, {pos} positive)" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "fedbench.compare", *SMALL, "lr=-1", "--out", str(tmp_path / "b")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert bad.returncode == 2 and "lr" in bad.stderr


def _test_sizes():
    """(examples, positives) of each site's test split, rebuilt with partition seed 0."""
    from fedbench.dataset import load_dataset
    from fedbench.dataset.pipeline import build_federated

    cfg = compose(SMALL)
    data, _ = build_federated(load_dataset(cfg["dataset"]), cfg["partition"], 3, seed=0,
                              test_fraction=float(cfg["dataset"].get("test_fraction", 0.2)))
    y = np.asarray(data.test_y)
    return [(int(m), int((y[j, :m] == 1).sum())) for j, m in enumerate(data.test_counts)]


@pytest.mark.parametrize("key, value, kwargs", [
    ("--val-fraction", 1.0, {"val_fraction": 1.0}),
    ("--val-fraction", -0.1, {"val_fraction": -0.1}),
    ("--bootstrap", 0, {"n_boot": 0}),
    ("seeds", 2, {}),  # replicas inside one run: compare takes its training seeds from --seeds
])
def test_compare_rejects_bad_verdict_settings(tmp_path, key, value, kwargs):
    from fedbench.errors import ConfigError

    cfg = compose([*SMALL, f"seeds={value if key == 'seeds' else 1}"])
    with pytest.raises(ConfigError) as err:
        compare(cfg, tmp_path, **kwargs)
    assert (err.value.key, err.value.value) == (key, value) and err.value.allowed
    assert not (tmp_path / "local").exists()  # refused before any training


@pytest.mark.parametrize("name", ["local", "centralized"])
def test_compare_rejects_a_baseline_as_the_federated_algorithm(tmp_path, name):
    from fedbench.errors import ConfigError

    with pytest.raises(ConfigError):
        compare(compose(SMALL), tmp_path, algorithms=[name])


def _yaml_algorithm(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "conf" / "algorithm" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("own", ["fedavg", "fedadam"])
def test_regimes_take_each_algorithm_from_its_yaml(own):
    cfg = compose([*SMALL, f"algorithm={own}"])
    for name in ("fedprox", "fedadam", "scaffold", "fedbuff"):
        if name == own:
            continue
        run_cfg = regime_config(cfg, name, seed=5)
        assert run_cfg["algorithm"] == _yaml_algorithm(name), name
        assert {k: v for k, v in run_cfg.items() if k not in ("algorithm", "seed", "partition")} == {
            k: v for k, v in cfg.items() if k not in ("algorithm", "seed", "partition")}
        assert run_cfg["partition"] == {**cfg["partition"], "seed": cfg["seed"]}
    fedavg = build_algorithm(regime_config(cfg, "fedavg", seed=0)["algorithm"])
    fedprox = build_algorithm(regime_config(cfg, "fedprox", seed=0)["algorithm"])
    assert fedavg.settings.get("mu", 0.0) == 0.0
    assert fedprox.settings.get("mu", 0.0) == _yaml_algorithm("fedprox")["mu"]


def test_the_configs_own_algorithm_keeps_its_overrides():
    cfg = compose([*SMALL, "algorithm=fedprox", "algorithm.mu=0.5"])
    assert regime_config(cfg, "fedprox", seed=0)["algorithm"]["mu"] == 0.5
    assert regime_config(cfg, "fedavg", seed=0)["algorithm"] == _yaml_algorithm("fedavg")


def test_an_unknown_algorithm_is_a_config_error(tmp_path):
    from fedbench.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compare(compose(SMALL), tmp_path, algorithms=["fedavg", "nope"])
    assert err.value.key == "--algorithms" and "fedprox" in err.value.allowed
