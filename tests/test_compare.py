"""fedbench-compare: federated vs local vs pooled on every site's test split."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, compose

from fedbench.algorithm import build_algorithm
from fedbench.compare import compare, regime_config, verdicts, wide_table

SMALL = ["dataset=breast_cancer", "model=logreg", "num_clients=3", "clients_per_round=3",
         "rounds=6", "eval_every=3", "partition=dirichlet", "partition.alpha=1.0",
         "partition.min_size=20"]


def test_compare_table_agrees_with_each_runs_own_metrics(tmp_path):
    cfg = compose(SMALL)
    rows = compare(cfg, tmp_path, algorithms=["fedavg", "fedprox"], seeds=[3])
    # 3 local models + centralized + 2 federated, each on pooled + 3 sites.
    assert len(rows) == (3 + 1 + 2) * 4
    import json

    for regime in ("local", "centralized", "fedavg", "fedprox"):
        for seed in (3,):
            summary = json.loads((tmp_path / regime / f"seed={seed}" / "summary.json").read_text())
            final = summary["final"]
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
    runs = {regime: json.loads((tmp_path / regime / "seed=3" / "summary.json").read_text())
            for regime in ("fedavg", "fedprox")}
    assert runs["fedprox"]["config"]["algorithm"] == _yaml_algorithm("fedprox")
    assert runs["fedavg"]["final"]["train_loss"] != runs["fedprox"]["final"]["train_loss"]
    with open(tmp_path / "table.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    sets, lines = wide_table(rows)
    assert sets[0] == "pooled" and len(lines) == 3 + 1 + 2


def test_verdicts_name_the_sites_where_local_wins():
    rows = []
    for model, values in (("site model: a", (0.6, 0.9, 0.5)), ("site model: b", (0.7, 0.4, 0.8))):
        for s, v in zip(("pooled", "a", "b"), values):
            rows.append({"regime": "local", "model": model, "seed": 0, "eval_set": s, "value": v})
    for s, v in zip(("pooled", "a", "b"), (0.75, 0.85, 0.9)):
        rows.append({"regime": "fedavg", "model": "global model", "seed": 0, "eval_set": s, "value": v})
    text = verdicts(rows, ["fedavg"])
    assert "at least as good" in text[0] and "site model: b" in text[0]
    assert "a (0.850 < 0.900)" in text[1] and "b (" not in text[1]


def test_compare_cli_reports_auc_and_rejects_bad_input(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fedbench.compare", *SMALL, "--metric", "auc", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "pooled-test auc" in out.stdout and "best single-site model" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "fedbench.compare", *SMALL, "lr=-1", "--out", str(tmp_path / "b")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert bad.returncode == 2 and "lr" in bad.stderr


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
        run_cfg = regime_config(cfg, name, seed=0)
        assert run_cfg["algorithm"] == _yaml_algorithm(name), name
        assert {k: v for k, v in run_cfg.items() if k not in ("algorithm", "seed")} == {
            k: v for k, v in cfg.items() if k not in ("algorithm", "seed")}
    fedavg = build_algorithm(regime_config(cfg, "fedavg", seed=0)["algorithm"])
    fedprox = build_algorithm(regime_config(cfg, "fedprox", seed=0)["algorithm"])
    assert fedavg.prox_mu == 0.0 and fedprox.prox_mu == _yaml_algorithm("fedprox")["mu"]


def test_the_configs_own_algorithm_keeps_its_overrides():
    cfg = compose([*SMALL, "algorithm=fedprox", "algorithm.mu=0.5"])
    assert regime_config(cfg, "fedprox", seed=0)["algorithm"]["mu"] == 0.5
    assert regime_config(cfg, "fedavg", seed=0)["algorithm"] == _yaml_algorithm("fedavg")


def test_an_unknown_algorithm_is_a_config_error(tmp_path):
    from fedbench.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compare(compose(SMALL), tmp_path, algorithms=["fedavg", "nope"])
    assert err.value.key == "--algorithms" and "fedprox" in err.value.allowed
