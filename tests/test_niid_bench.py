"""The Dirichlet label-skew and quantity-skew partitioners against NIID-Bench.

Q. Li, Y. Diao, Q. Chen, B. He, "Federated Learning on Non-IID Data Silos: An Experimental
Study", ICDE 2022, Sec. IV. The reference functions below transcribe NIID-Bench's procedures
from their description (numpy only, no code shared with :mod:`fedbench.partition`):

* label skew: for each class in turn, draw ``p ~ Dir(alpha)`` over the clients, zero ``p_j``
  for every client that already holds ``>= N / n`` examples, renormalise, split the class's
  shuffled examples at ``cumsum(p) * len``; repeat the whole draw until every client holds at
  least 10 examples;
* quantity skew: draw ``q ~ Dir(alpha)``; repeat until ``min(q) * N >= 10``; split a shuffled
  dataset at ``cumsum(q) * N``.

The statistic compared is the coefficient of variation of client sizes (std / mean), averaged
over 50 seeds, on the labels of scikit-learn's digits (1,797 examples, 10 classes).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REPO

from fedbench.errors import ConfigError
from fedbench.partition import partition

SEEDS = range(50)
NUM_CLIENTS = 20


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def niid_bench_label_skew(labels, n_parties, alpha, rng, min_require_size=10):
    """NIID-Bench's ``noniid-labeldir`` partition; returns the client sizes."""
    n = labels.shape[0]
    min_size = 0
    while min_size < min_require_size:
        idx_batch = [[] for _ in range(n_parties)]
        for k in np.unique(labels):
            idx_k = np.where(labels == k)[0]
            rng.shuffle(idx_k)
            proportions = rng.dirichlet(np.repeat(alpha, n_parties))
            proportions = np.array(
                [p * (len(idx_j) < n / n_parties) for p, idx_j in zip(proportions, idx_batch)]
            )
            proportions = proportions / proportions.sum()
            cuts = (np.cumsum(proportions) * len(idx_k)).astype(int)[:-1]
            idx_batch = [idx_j + idx.tolist()
                         for idx_j, idx in zip(idx_batch, np.split(idx_k, cuts))]
            min_size = min(len(idx_j) for idx_j in idx_batch)
    return np.array([len(b) for b in idx_batch])


def niid_bench_quantity_skew(n, n_parties, alpha, rng, min_require_size=10):
    """NIID-Bench's ``iid-diff-quantity`` partition; returns the client sizes."""
    idxs = rng.permutation(n)
    min_size = 0
    while min_size < min_require_size:
        proportions = rng.dirichlet(np.repeat(alpha, n_parties))
        proportions = proportions / proportions.sum()
        min_size = np.min(proportions * len(idxs))
    cuts = (np.cumsum(proportions) * len(idxs)).astype(int)[:-1]
    return np.array([len(b) for b in np.split(idxs, cuts)])


def _cv(sizes) -> float:
    sizes = np.asarray(sizes, float)
    return float(sizes.std() / sizes.mean())


@pytest.mark.parametrize("alpha", [0.05, 0.5])
def test_dirichlet_sizes_match_niid_bench(digits_labels, alpha):
    ours, reference = [], []
    for seed in SEEDS:
        parts = partition({"name": "dirichlet", "alpha": alpha}, digits_labels, NUM_CLIENTS, seed)
        sizes = [len(p) for p in parts]
        assert min(sizes) >= 10  # NIID-Bench's minimum client size, by default
        ours.append(_cv(sizes))
        rng = np.random.default_rng(10_000 + seed)
        reference.append(_cv(niid_bench_label_skew(digits_labels, NUM_CLIENTS, alpha, rng)))
    # Without the balancing step the CV is about 0.16 (alpha 0.05) and 0.13 (alpha 0.5) higher;
    # the standard error of the difference of the two means is about 0.016.
    assert np.mean(ours) == pytest.approx(np.mean(reference), abs=0.05), (alpha, np.mean(ours),
                                                                         np.mean(reference))


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_quantity_sizes_match_niid_bench(digits_labels, alpha):
    ours, reference = [], []
    for seed in SEEDS:
        parts = partition({"name": "quantity", "alpha": alpha}, digits_labels, NUM_CLIENTS, seed)
        sizes = [len(p) for p in parts]
        assert min(sizes) >= 10
        ours.append(_cv(sizes))
        rng = np.random.default_rng(10_000 + seed)
        reference.append(_cv(niid_bench_quantity_skew(len(digits_labels), NUM_CLIENTS, alpha, rng)))
    assert np.mean(ours) == pytest.approx(np.mean(reference), abs=0.05)


def test_quantity_min_size_is_configurable_and_impossible_ones_are_named(digits_labels):
    parts = partition({"name": "quantity", "alpha": 5.0, "min_size": 50}, digits_labels, 20, 0)
    assert min(len(p) for p in parts) >= 50
    with pytest.raises(ConfigError) as err:  # 20 clients x 100 > 1,797 examples
        partition({"name": "quantity", "alpha": 0.5, "min_size": 100}, digits_labels, 20, 0)
    assert err.value.key == "partition.min_size" and "1797" in str(err.value)


def test_dirichlet_impossible_min_size_is_named(digits_labels):
    with pytest.raises(ConfigError) as err:
        partition({"name": "dirichlet", "alpha": 0.5, "min_size": 100}, digits_labels, 20, 0)
    assert err.value.key == "partition.min_size"


def test_balance_false_is_the_plain_per_class_split(digits_labels):
    # Hsu et al. 2019's split without NIID-Bench's cap: sizes vary more.
    def mean_cv(cfg):
        return np.mean([_cv([len(p) for p in partition(cfg, digits_labels, NUM_CLIENTS, seed)])
                        for seed in SEEDS])

    plain = mean_cv({"name": "dirichlet", "alpha": 0.5, "balance": False})
    balanced = mean_cv({"name": "dirichlet", "alpha": 0.5})
    assert plain > balanced + 0.08
    with pytest.raises(ConfigError) as err:
        partition({"name": "dirichlet", "alpha": 0.5, "balance": "yes"}, digits_labels, 20, 0)
    assert err.value.key == "partition.balance"


@pytest.mark.parametrize("name", ["dirichlet", "quantity"])
def test_yaml_defaults_are_niid_bench_defaults(name):
    cfg = yaml.safe_load((REPO / "conf" / "partition" / f"{name}.yaml").read_text())
    assert cfg["min_size"] == 10
    if name == "dirichlet":
        assert cfg["balance"] is True
