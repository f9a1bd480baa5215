"""``fedbench dataset=X`` typed alone runs X: its natural federation where it has one.

Every ``conf/dataset/*.yaml`` is composed with only ``dataset=X`` (and ``rounds=2``) and run.
Datasets with their own sites (tcga_brca, opt, indo_rct, synthetic) must run those sites, all of
them fitting in a round, with a model for their task; re-partitioning is asked for explicitly.
TFDS datasets run on ``tfds.testing.mock_data`` (nothing downloads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import compose, mock_tfds

from fedbench.errors import ConfigError
from fedbench.run import run_experiment

REPO = Path(__file__).resolve().parent.parent
DATASETS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))
TFDS = {"mnist", "fashion_mnist", "emnist", "cifar10"}
NATURAL = {  # dataset: (sites, model the task needs); sizes from the datasets' own sources
    "tcga_brca": (6, "cox"),
    "opt": (4, "logreg"),
    "indo_rct": (4, "logreg"),
    "synthetic": (30, "logreg"),
}


def test_every_dataset_config_is_covered():
    assert TFDS | set(NATURAL) | {"digits", "breast_cancer", "mnist5k", "tfds"} == set(DATASETS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [d for d in DATASETS if d != "tfds"])
def test_dataset_typed_alone_runs_two_rounds(name, tmp_path):
    cfg = compose([f"dataset={name}", "rounds=2"])
    if name in TFDS:
        with mock_tfds(3000):
            summary = run_experiment(cfg, tmp_path, progress=None)
    else:
        summary = run_experiment(cfg, tmp_path, progress=None)
    assert summary["status"] == "completed" and summary["final"]["round"] == 2
    assert np.isfinite(summary["final"]["train_loss"])
    sizes = summary["partition_stats"]["client_sizes"]
    assert cfg["clients_per_round"] <= cfg["num_clients"] == len(sizes)
    if name in NATURAL:
        sites, model = NATURAL[name]
        assert cfg["partition"]["name"] == "natural" and cfg["model"]["name"] == model
        assert len(sizes) == sites
    else:
        assert cfg["partition"]["name"] == "dirichlet" and cfg["model"]["name"] == "mlp"


def test_tcga_brca_alone_is_flambys_setting():
    # FLamby (Ogier du Terrail et al. 2022), Fed-TCGA-BRCA: 6 regions, all per round, Cox
    # model, batch 8, 100 local updates, (866 // 6 // 8) * 30 // 100 = 5 rounds, FedAvg lr 0.1.
    cfg = compose(["dataset=tcga_brca"])
    assert (cfg["partition"]["name"], cfg["model"]["name"]) == ("natural", "cox")
    assert (cfg["num_clients"], cfg["clients_per_round"], cfg["batch_size"]) == (6, 6, 8)
    assert (cfg["local_steps"], cfg["rounds"], cfg["lr"]) == (100, (866 // 6 // 8) * 30 // 100, 0.1)


def test_repartitioning_a_natural_federation_is_explicit():
    cfg = compose(["dataset=tcga_brca", "partition=dirichlet", "clients_per_round=3"])
    assert cfg["partition"]["name"] == "dirichlet" and cfg["clients_per_round"] == 3
    assert cfg["model"]["name"] == "cox"  # still a survival task
    cfg = compose(["dataset=synthetic", "partition=iid", "model=mlp", "lr=0.3"])
    assert (cfg["partition"]["name"], cfg["model"]["name"], cfg["lr"]) == ("iid", "mlp", 0.3)
    # Datasets without sites of their own keep the top-level defaults.
    assert compose(["dataset=breast_cancer"])["partition"]["name"] == "dirichlet"


def test_generic_tfds_alone_asks_for_its_name(tmp_path):
    with pytest.raises(ConfigError) as err:
        run_experiment(compose(["dataset=tfds", "rounds=2"]), tmp_path, progress=None)
    assert err.value.key == "dataset.tfds_name"
