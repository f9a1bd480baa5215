"""Client-group scenarios for clustered FL (issue 12 item 5): ``partition=rotated`` (Ghosh et
al. 2020, IFCA's rotated MNIST) and ``partition=label_swap`` (Sattler et al. 2021, CFL).

Expectations are built independently: the scenario's examples are the ``partition=iid`` split of
the same seed, so each client's images must equal ``np.rot90`` of its unrotated images and its
labels the documented permutation of its unswapped labels.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose

from fedbench.dataset import load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.errors import ConfigError
from fedbench.partition.groups import label_permutations


def _build(raw, partition, num_clients, seed=3):
    return build_federated(raw, partition, num_clients, seed=seed, test_fraction=0.2,
                           normalization="none")


@pytest.fixture(scope="module")
def digits():
    return load_dataset({"name": "digits"})


@pytest.mark.parametrize("dataset", ["digits", "mnist5k"])
def test_rotation_is_exact(dataset, digits):
    raw = digits if dataset == "digits" else load_dataset({"name": "mnist5k", "max_examples": 800})
    plain, _ = _build(raw, {"name": "iid"}, 8)
    rotated, stats = _build(raw, {"name": "rotated", "angles": [0, 90, 180, 270]}, 8)
    assert rotated.client_groups == (0, 0, 1, 1, 2, 2, 3, 3)
    assert stats["groups"]["group_sizes"] == [2, 2, 2, 2]
    for split in ("train", "test"):
        x0, x1 = (np.asarray(getattr(d, f"{split}_x")) for d in (plain, rotated))
        counts = np.asarray(getattr(plain, f"{split}_counts"))
        np.testing.assert_array_equal(counts, np.asarray(getattr(rotated, f"{split}_counts")))
        np.testing.assert_array_equal(np.asarray(getattr(plain, f"{split}_y")),
                                      np.asarray(getattr(rotated, f"{split}_y")))
        for c, n in enumerate(counts):
            g = c // 2
            for i in range(n):  # image by image, rotated by g quarter turns counter-clockwise
                np.testing.assert_array_equal(x1[c, i], np.rot90(x0[c, i], g))
            if g == 1 and n:
                # 90 degrees counter-clockwise: the top row becomes the left column, reversed
                np.testing.assert_array_equal(x1[c, 0][:, 0, 0], x0[c, 0][0, ::-1, 0])


def test_group_sizes_as_configured(digits):
    data, stats = _build(digits, {"name": "rotated", "angles": [0, 180], "group_sizes": [3, 7]},
                         10)
    assert data.client_groups == (0,) * 3 + (1,) * 7
    assert stats["groups"]["group_sizes"] == [3, 7]
    # default: as equal as possible, the first groups one larger
    data, stats = _build(digits, {"name": "label_swap", "groups": 4}, 10)
    assert data.client_groups == (0, 0, 0, 1, 1, 1, 2, 2, 3, 3)
    assert stats["groups"]["group_sizes"] == [3, 3, 2, 2]


@pytest.mark.parametrize("permutation", ["shift", "random"])
def test_label_swap(permutation, digits):
    plain, _ = _build(digits, {"name": "iid"}, 8)
    swapped, stats = _build(digits, {"name": "label_swap", "groups": 4,
                                     "permutation": permutation}, 8)
    perms = np.array(stats["groups"]["label_permutations"])
    if permutation == "shift":
        np.testing.assert_array_equal(perms, [[(y + g) % 10 for y in range(10)] for g in range(4)])
    else:
        np.testing.assert_array_equal(perms[0], np.arange(10))
        assert all(sorted(p) == list(range(10)) for p in perms)
        assert len({tuple(p) for p in perms}) == 4
    np.testing.assert_array_equal(np.asarray(plain.train_x), np.asarray(swapped.train_x))
    for split in ("train", "test"):
        y0 = np.asarray(getattr(plain, f"{split}_y"))
        y1 = np.asarray(getattr(swapped, f"{split}_y"))
        for c, n in enumerate(np.asarray(getattr(plain, f"{split}_counts"))):
            np.testing.assert_array_equal(y1[c, :n], perms[c // 2][y0[c, :n]])
    # the pooled test set is the clients' (swapped) test splits
    assert sorted(np.asarray(swapped.pooled_test_y).tolist()) == sorted(
        np.concatenate([y1[c, :n] for c, n in enumerate(np.asarray(swapped.test_counts))]).tolist())


def test_random_permutations_follow_the_seed():
    cfg = {"groups": 3, "permutation": "random"}
    np.testing.assert_array_equal(label_permutations(cfg, 10, 1), label_permutations(cfg, 10, 1))
    assert not np.array_equal(label_permutations(cfg, 10, 1), label_permutations(cfg, 10, 2))


@pytest.mark.parametrize("partition, key", [
    ({"name": "rotated", "angles": [0, 45]}, "partition.angles"),
    ({"name": "rotated", "angles": []}, "partition.angles"),
    ({"name": "rotated", "group_sizes": [2, 2, 2, 1]}, "partition.group_sizes"),
    ({"name": "rotated", "group_sizes": [6, 6]}, "partition.group_sizes"),
    ({"name": "rotated", "angles": [0, 90] * 7}, "num_clients"),
    ({"name": "rotated", "groups": 4}, "partition.groups"),
    ({"name": "label_swap", "groups": 0}, "partition.groups"),
    ({"name": "label_swap", "groups": 11}, "partition.groups"),
    ({"name": "label_swap", "permutation": "swap"}, "partition.permutation"),
    ({"name": "label_swap", "angles": [0]}, "partition.angles"),
])
def test_config_errors_name_the_key(partition, key, digits):
    with pytest.raises(ConfigError) as err:
        _build(digits, partition, 12)
    assert err.value.key == key


def test_rotated_needs_images():
    raw = load_dataset({"name": "breast_cancer"})
    with pytest.raises(ConfigError, match=r"\[H, W, C\] images") as err:
        _build(raw, {"name": "rotated"}, 4)
    assert err.value.key == "partition.name"


def test_cluster_ari_is_reported(tmp_path):
    """IFCA on rotated digits: ``cluster_ari`` against the scenario's groups, equal to
    scikit-learn's adjusted Rand index of the reported clusters and the configured groups."""
    from sklearn.metrics import adjusted_rand_score

    from fedbench.run import run_experiment

    cfg = compose(["partition=rotated", "partition.group_sizes=[4,6,5,5]", "model=logreg",
                   "algorithm=ifca", "algorithm.clusters=4", "clients_per_round=20", "rounds=10",
                   "eval_every=10"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    groups = np.repeat(np.arange(4), [4, 6, 5, 5])
    assert summary["partition_stats"]["groups"]["client_groups"] == groups.tolist()
    final = summary["final"]
    assert final["cluster_ari"] == pytest.approx(adjusted_rand_score(groups, final["clusters"]))
    assert final["cluster_ari"] > 0.5  # rotations are easy to tell apart after 10 rounds
