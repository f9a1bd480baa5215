"""Partitioners, the Synthetic(alpha, beta) generator and the padding/normalising pipeline.

Every expectation here is computed independently of the code under test: by a plain NumPy loop,
by a closed form (the generator's covariance, the paper's size rule), by hand, or by a second
library (scikit-learn's logistic regression).
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

from fedbench.dataset import RawDataset, load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.dataset.synthetic import generate_synthetic
from fedbench.errors import ConfigError
from fedbench.partition import heterogeneity_stats, partition

NUM_CLASSES = 10

PARTITION_CFGS = {
    "iid": {"name": "iid"},
    "dirichlet": {"name": "dirichlet", "alpha": 0.5, "min_size": 1},
    "shards": {"name": "shards", "shards_per_client": 2},
    "quantity": {"name": "quantity", "alpha": 0.5},
}


@pytest.fixture(scope="module")
def labels_1k() -> np.ndarray:
    return np.random.default_rng(1234).integers(0, NUM_CLASSES, 1000)


def _plain_tv(client_labels: list[np.ndarray], num_classes: int) -> list[float]:
    """Mean total variation by explicit loops over clients and classes (reference)."""
    total = sum(len(y) for y in client_labels)
    glob = [sum(int((y == k).sum()) for y in client_labels) / total for k in range(num_classes)]
    out = []
    for y in client_labels:
        tv = 0.0
        for k in range(num_classes):
            tv += abs(int((y == k).sum()) / len(y) - glob[k])
        out.append(tv / 2)
    return out


# --------------------------------------------------------------------------- partitioners


@pytest.mark.parametrize("name", sorted(PARTITION_CFGS))
def test_partition_covers_every_index_exactly_once(name, labels_1k):
    parts = partition(PARTITION_CFGS[name], labels_1k, 10, seed=0)
    assert len(parts) == 10
    assert all(len(p) >= 1 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == len(labels_1k)  # nothing duplicated ...
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels_1k)))  # ... or lost
    for p in parts:
        assert np.issubdtype(p.dtype, np.integer)


@pytest.mark.parametrize("name", sorted(PARTITION_CFGS))
def test_partition_is_a_function_of_the_seed(name, labels_1k):
    a = partition(PARTITION_CFGS[name], labels_1k, 10, seed=7)
    b = partition(PARTITION_CFGS[name], labels_1k, 10, seed=7)
    c = partition(PARTITION_CFGS[name], labels_1k, 10, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_differ_by_at_most_one(labels_1k):
    sizes = [len(p) for p in partition({"name": "iid"}, labels_1k[:997], 10, seed=0)]
    assert sum(sizes) == 997 and max(sizes) - min(sizes) <= 1


def test_heterogeneity_stats_by_hand():
    # client A: labels 0,0,0,0,1,2  -> p_A = (4/6, 1/6, 1/6, 0)
    # client B: labels 2,2          -> p_B = (0, 0, 1, 0)
    # pooled: (4, 1, 3, 0) / 8      -> p   = (1/2, 1/8, 3/8, 0)
    # tv_A = 0.5 * (1/6 + 1/24 + 5/24) = 5/24 ; tv_B = 0.5 * (1/2 + 1/8 + 5/8) = 5/8
    a = np.array([0, 0, 0, 0, 1, 2])
    b = np.array([2, 2])
    stats = heterogeneity_stats([a, b], num_classes=4)
    assert stats["client_sizes"] == [6, 2]
    assert stats["label_histograms"] == [[4, 1, 1, 0], [0, 0, 2, 0]]
    np.testing.assert_allclose(stats["global_label_distribution"], [0.5, 0.125, 0.375, 0.0])
    np.testing.assert_allclose(stats["total_variation"], [5 / 24, 5 / 8], atol=1e-6)
    assert stats["mean_total_variation"] == pytest.approx((5 / 24 + 5 / 8) / 2)
    assert (stats["size_min"], stats["size_max"], stats["size_mean"]) == (2, 6, 4.0)


def test_heterogeneity_stats_identical_and_disjoint_clients():
    same = heterogeneity_stats([np.array([0, 1, 2]), np.array([2, 1, 0])], 3)
    assert same["mean_total_variation"] == pytest.approx(0.0)
    # Two equal-sized clients with disjoint labels: each is 1/2 away from the 50/50 mix.
    apart = heterogeneity_stats([np.array([0, 0]), np.array([1, 1])], 2)
    assert apart["total_variation"] == pytest.approx([0.5, 0.5])


def test_dirichlet_alpha_controls_label_skew():
    labels = np.random.default_rng(0).integers(0, NUM_CLASSES, 10_000)
    tv = {}
    for alpha in (0.05, 100.0):
        parts = partition({"name": "dirichlet", "alpha": alpha}, labels, 10, seed=3)
        client_labels = [labels[p] for p in parts]
        stats = heterogeneity_stats(client_labels, NUM_CLASSES)
        np.testing.assert_allclose(
            stats["total_variation"], _plain_tv(client_labels, NUM_CLASSES), atol=1e-6
        )
        tv[alpha] = stats["mean_total_variation"]
    assert tv[100.0] < 0.1, tv
    assert tv[0.05] > 0.5, tv
    assert tv[0.05] > tv[100.0]


def test_dirichlet_min_size_is_honoured(labels_1k):
    parts = partition({"name": "dirichlet", "alpha": 0.3, "min_size": 20}, labels_1k, 10, seed=0)
    assert min(len(p) for p in parts) >= 20


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("num_clients,per_class", [(10, 100), (100, 600)])
def test_shards_give_each_client_at_most_two_labels(num_clients, per_class, shuffle):
    # McMahan et al. 2017: label-sorted data cut into 2 * num_clients shards, 2 per client.
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    if shuffle:  # the partitioner sorts by label itself
        labels = np.random.default_rng(0).permutation(labels)
    parts = partition({"name": "shards", "shards_per_client": 2}, labels, num_clients, seed=0)
    n = len(labels)
    assert [len(p) for p in parts] == [n // num_clients] * num_clients
    assert max(len(np.unique(labels[p])) for p in parts) <= 2
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def test_quantity_skews_sizes_but_keeps_every_client(labels_1k):
    parts = partition({"name": "quantity", "alpha": 0.5}, labels_1k, 10, seed=0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1
    assert sizes.sum() == 1000
    assert sizes.max() >= 2 * sizes.min()  # skewed; an IID split would give 100 each
    assert len(set(sizes.tolist())) > 1


def test_natural_partition_rejects_other_num_clients():
    natural_client = np.repeat(np.arange(30), 5)
    labels = np.zeros(len(natural_client), int)
    parts = partition({"name": "natural"}, labels, 30, 0, natural_client)
    assert [len(p) for p in parts] == [5] * 30
    with pytest.raises(ConfigError) as err:
        partition({"name": "natural"}, labels, 10, 0, natural_client)
    assert err.value.key == "num_clients"
    assert "num_clients=10" in str(err.value)
    assert "30" in str(err.value)


# ------------------------------------------------------------------------- synthetic data


@pytest.mark.parametrize("seed", [0, 5])
def test_synthetic_paper_defaults_and_lognormal_sizes(seed):
    train_x, train_y, test_x, test_y = generate_synthetic(0.0, 0.0, seed=seed)
    assert len(train_x) == len(train_y) == len(test_x) == len(test_y) == 30
    # Li et al. 2020: n_k = int(lognormal(4, 2)) + 50, the first draws of the generator's rng.
    expected = np.random.default_rng(seed).lognormal(4, 2, 30).astype(int) + 50
    for k in range(30):
        n_k = len(train_y[k]) + len(test_y[k])
        assert n_k == expected[k]
        assert len(train_y[k]) == int(0.9 * expected[k])
        assert train_x[k].shape == (len(train_y[k]), 60)
        assert test_x[k].shape == (len(test_y[k]), 60)
        assert train_x[k].dtype == np.float32
    all_y = np.concatenate(train_y + test_y)
    assert all_y.min() >= 0 and all_y.max() < 10


def test_synthetic_settings_are_honoured():
    train_x, train_y, test_x, test_y = generate_synthetic(
        0.5, 0.5, num_clients=7, dimension=13, num_classes=4, samples_per_client=40, seed=1
    )
    assert len(train_x) == 7
    for k in range(7):
        assert train_x[k].shape == (36, 13) and test_x[k].shape == (4, 13)
        assert train_y[k].shape == (36,) and test_y[k].shape == (4,)
    all_y = np.concatenate(train_y + test_y)
    assert set(np.unique(all_y)) <= {0, 1, 2, 3}


def test_synthetic_is_seeded():
    a = generate_synthetic(1.0, 1.0, seed=3, samples_per_client=20)
    b = generate_synthetic(1.0, 1.0, seed=3, samples_per_client=20)
    c = generate_synthetic(1.0, 1.0, seed=4, samples_per_client=20)
    np.testing.assert_array_equal(np.concatenate(a[0]), np.concatenate(b[0]))
    assert not np.array_equal(np.concatenate(a[0]), np.concatenate(c[0]))


def test_synthetic_feature_variance_is_j_to_minus_1_2():
    train_x, _, test_x, _ = generate_synthetic(
        0.0, 0.0, num_clients=1, samples_per_client=20_000, seed=0
    )
    x = np.concatenate([train_x[0], test_x[0]]).astype(np.float64)
    assert x.shape == (20_000, 60)
    expected = np.arange(1, 61, dtype=np.float64) ** -1.2  # Sigma_jj = j^-1.2, j = 1..d
    # Relative standard error of a sample variance is sqrt(2 / n) = 1% here.
    np.testing.assert_allclose(x.var(axis=0), expected, rtol=0.05)


def _pooled_linear_fit_accuracy(**kwargs) -> float:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    train_x, train_y, test_x, test_y = generate_synthetic(samples_per_client=100, seed=0, **kwargs)
    x = np.concatenate(train_x + test_x)
    y = np.concatenate(train_y + test_y)
    # One BLAS thread: the fit is tiny, and oversubscribed threads make it 50x slower.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=100.0, max_iter=300).fit(x, y)
    return float(clf.score(x, y))


def test_synthetic_iid_labels_come_from_one_linear_model():
    # Synthetic-IID: every client labels with one shared (W, b), so the pooled data is linearly
    # separable; Synthetic(1, 1) gives each client its own model, which no single one fits.
    iid_acc = _pooled_linear_fit_accuracy(alpha=0.0, beta=0.0, iid=True)
    niid_acc = _pooled_linear_fit_accuracy(alpha=1.0, beta=1.0, iid=False)
    assert iid_acc >= 0.99, iid_acc
    assert niid_acc < 0.97, niid_acc
    assert iid_acc - niid_acc > 0.03


def test_synthetic_loader_natural_split_keeps_papers_90_10():
    cfg = {"name": "synthetic", "alpha": 0.5, "beta": 0.5, "num_clients": 6, "seed": 2}
    raw = load_dataset(cfg)
    train_x, _, test_x, _ = generate_synthetic(0.5, 0.5, num_clients=6, seed=2)
    data, stats = build_federated(raw, {"name": "natural"}, 6, seed=99)
    np.testing.assert_array_equal(np.asarray(data.train_counts), [len(a) for a in train_x])
    np.testing.assert_array_equal(np.asarray(data.test_counts), [len(a) for a in test_x])
    for c in range(6):  # raw features (normalize: none), exactly the generator's split
        x, _ = data.client_train(c)
        np.testing.assert_array_equal(x, train_x[c])
    assert stats["client_sizes"] == [len(a) for a in train_x]


# -------------------------------------------------------------------- build_federated


@pytest.fixture(scope="module")
def digits_raw() -> RawDataset:
    return load_dataset({"name": "digits"})


DIRICHLET = {"name": "dirichlet", "alpha": 0.5, "min_size": 10}


def _id_dataset(raw: RawDataset) -> RawDataset:
    """Same labels as ``raw``; the only feature of example ``i`` is ``i`` itself."""
    ids = np.arange(len(raw.y), dtype=np.float32)[:, None]
    return RawDataset("ids", ids, raw.y, raw.num_classes, normalize="none")


def _client_ids(data, split: str) -> list[np.ndarray]:
    x, counts = np.asarray(getattr(data, f"{split}_x")), np.asarray(getattr(data, f"{split}_counts"))
    return [x[c, : counts[c], 0].astype(int) for c in range(len(counts))]


def test_build_federated_keeps_every_example_once(digits_raw):
    data, stats = build_federated(_id_dataset(digits_raw), DIRICHLET, 20, seed=0)
    train_ids, test_ids = _client_ids(data, "train"), _client_ids(data, "test")
    everything = np.concatenate(train_ids + test_ids)
    assert len(everything) == len(digits_raw.y) == 1797
    np.testing.assert_array_equal(np.sort(everything), np.arange(1797))
    y_train, y_test = np.asarray(data.train_y), np.asarray(data.test_y)
    for c in range(20):
        # labels travel with their examples
        np.testing.assert_array_equal(y_train[c, : len(train_ids[c])], digits_raw.y[train_ids[c]])
        np.testing.assert_array_equal(y_test[c, : len(test_ids[c])], digits_raw.y[test_ids[c]])
        # each client holds out int(0.2 * n) of its own examples
        n = len(train_ids[c]) + len(test_ids[c])
        assert len(test_ids[c]) == min(int(0.2 * n), n - 1)
        assert n >= 10  # min_size
    assert stats["client_sizes"] == [len(t) for t in train_ids]
    assert stats["test_sizes"] == [len(t) for t in test_ids]
    np.testing.assert_array_equal(
        np.asarray(data.pooled_test_x)[:, 0].astype(int), np.concatenate(test_ids)
    )


def test_build_federated_padding_is_zero_and_counts_match(digits_raw):
    data, _ = build_federated(digits_raw, DIRICHLET, 20, seed=0, normalization="none")
    tx, ty, tc = (np.asarray(a) for a in (data.train_x, data.train_y, data.train_counts))
    ex, ey, ec = (np.asarray(a) for a in (data.test_x, data.test_y, data.test_counts))
    assert tx.shape == (20, tc.max(), 8, 8, 1) and ty.shape == (20, tc.max())
    assert ex.shape == (20, ec.max(), 8, 8, 1) and ey.shape == (20, ec.max())
    assert data.feature_shape == (8, 8, 1) and data.num_clients == 20
    assert tc.sum() + ec.sum() == 1797
    assert len(np.asarray(data.pooled_test_y)) == ec.sum()
    for c in range(20):
        assert not tx[c, tc[c] :].any() and not ty[c, tc[c] :].any()
        assert not ex[c, ec[c] :].any() and not ey[c, ec[c] :].any()
    # The multiset of (image, label) pairs is the dataset's own (digits has duplicate images,
    # so compare counts, not sets).
    def key(x, y):
        return (np.asarray(x, np.float32).tobytes(), int(y))

    got = collections.Counter()
    for c in range(20):
        got.update(key(x, y) for x, y in zip(tx[c, : tc[c]], ty[c, : tc[c]]))
        got.update(key(x, y) for x, y in zip(ex[c, : ec[c]], ey[c, : ec[c]]))
    want = collections.Counter(key(x, y) for x, y in zip(digits_raw.x, digits_raw.y))
    assert got == want


def _unpadded(data, split: str) -> np.ndarray:
    x, counts = np.asarray(getattr(data, f"{split}_x")), np.asarray(getattr(data, f"{split}_counts"))
    return np.concatenate([x[c, : counts[c]] for c in range(len(counts))])


def test_standardize_uses_training_statistics_only(digits_raw):
    plain, _ = build_federated(digits_raw, DIRICHLET, 20, seed=0, normalization="none")
    std, _ = build_federated(digits_raw, DIRICHLET, 20, seed=0, normalization="standardize")
    np.testing.assert_array_equal(np.asarray(plain.train_counts), np.asarray(std.train_counts))

    raw_train = _unpadded(plain, "train").astype(np.float64)
    raw_test = _unpadded(plain, "test").astype(np.float64)
    mean = raw_train.mean(axis=0)
    sd = raw_train.std(axis=0)
    constant = sd == 0
    assert constant.any() and (~constant).sum() > 50  # digits has always-blank corner pixels
    scale = np.where(constant, 1.0, sd)
    np.testing.assert_allclose(_unpadded(std, "train"), (raw_train - mean) / scale, atol=1e-5)
    np.testing.assert_allclose(_unpadded(std, "test"), (raw_test - mean) / scale, atol=1e-5)

    # (FederatedData.pooled_train gives the same rows, but slices device arrays once per
    # client size, compiling a slice for each: seconds on a busy CPU.)
    pooled = _unpadded(std, "train").astype(np.float64)
    np.testing.assert_allclose(pooled.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(pooled.std(axis=0)[~constant], 1.0, rtol=1e-4)
    assert not pooled[:, constant].any()  # constant features are only centred
    # padding stays zero after the transform
    tx, tc = np.asarray(std.train_x), np.asarray(std.train_counts)
    assert all(not tx[c, tc[c] :].any() for c in range(20))


def test_changing_test_examples_does_not_change_the_transform(digits_raw):
    # The partition and split depend only on labels and seed: find the test examples by id.
    ids, _ = build_federated(_id_dataset(digits_raw), DIRICHLET, 20, seed=0)
    test_ids = np.concatenate(_client_ids(ids, "test"))
    assert len(test_ids) > 100

    altered_x = digits_raw.x.copy()
    altered_x[test_ids] = altered_x[test_ids] * 7.0 + 100.0
    altered = RawDataset("digits", altered_x, digits_raw.y, digits_raw.num_classes)

    base, _ = build_federated(digits_raw, DIRICHLET, 20, seed=0, normalization="standardize")
    moved, _ = build_federated(altered, DIRICHLET, 20, seed=0, normalization="standardize")
    np.testing.assert_array_equal(np.asarray(base.train_x), np.asarray(moved.train_x))
    # ... while the test inputs are the altered ones pushed through the same transform.
    assert not np.allclose(np.asarray(base.test_x), np.asarray(moved.test_x))
    raw_train = _unpadded(build_federated(digits_raw, DIRICHLET, 20, seed=0, normalization="none")[0], "train")
    mean = raw_train.astype(np.float64).mean(axis=0)
    sd = raw_train.astype(np.float64).std(axis=0)
    scale = np.where(sd == 0, 1.0, sd)
    expected_test = (altered_x[test_ids].astype(np.float64) - mean) / scale
    np.testing.assert_allclose(np.asarray(moved.pooled_test_x), expected_test, rtol=1e-5, atol=1e-4)


def test_normalize_rejects_unknown_method(digits_raw):
    with pytest.raises(ConfigError) as err:
        build_federated(digits_raw, DIRICHLET, 20, seed=0, normalization="minmax")
    assert err.value.key == "dataset.normalize" and "minmax" in str(err.value)


def test_client_without_training_examples_is_a_clear_error():
    from fedbench.dataset import load_dataset
    from fedbench.dataset.pipeline import build_federated
    from fedbench.errors import ConfigError

    raw = load_dataset({"name": "synthetic", "samples_per_client": 1})  # int(0.9 * 1) = 0 train
    with pytest.raises(ConfigError) as err:
        build_federated(raw, {"name": "natural"}, 30, seed=0)
    assert err.value.key == "dataset.samples_per_client"
    assert "at least one training example" in str(err.value)
