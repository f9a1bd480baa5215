"""Hospital scenarios (``partition=prevalence``) and per-site feature shift.

Expected class counts are computed here from the spec by hand-written arithmetic (a share of
the size, the unnamed classes in proportion to their overall frequency); expected shifts from the
documented transforms with NumPy's own mean and std of the raw inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import compose

from fedbench.dataset import load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.errors import ConfigError
from fedbench.partition import partition
from fedbench.partition.feature_shift import shift_plan


@pytest.fixture(scope="module")
def cancer():
    return load_dataset({"name": "breast_cancer"})  # class 0 = malignant (212), 1 = benign (357)


@pytest.fixture(scope="module")
def digits():
    return load_dataset({"name": "digits"})


def prevalence_cfg(*sites):
    return {"name": "prevalence", "sites": list(sites)}


HOSPITALS = prevalence_cfg(
    {"size": 300, "classes": {0: 0.40}},  # oncology centre
    {"size": 150, "classes": {0: 0.05}},  # community hospital
    {"size": 30},                         # overall mix
)


# --------------------------------------------------------------------------- prevalence


def test_site_sizes_and_class_mix_follow_the_spec(cancer):
    parts = partition(HOSPITALS, cancer.y, 3, seed=0)
    overall = np.bincount(cancer.y) / len(cancer.y)
    for part, site in zip(parts, HOSPITALS["sites"], strict=True):
        assert len(part) == site["size"] and len(np.unique(part)) == len(part)
        counts = np.bincount(cancer.y[part], minlength=2)
        named = site.get("classes", {})
        for k in range(2):
            share = named[k] if k in named else (
                (1 - sum(named.values())) * overall[k] / sum(overall[j] for j in range(2)
                                                           if j not in named))
            assert abs(counts[k] - share * site["size"]) < 1, (site, k, counts)
    assert [np.bincount(cancer.y[p], minlength=2).tolist() for p in parts[:2]] == [
        [120, 180], [8, 142]]  # 7.5 rounds up: the larger remainder
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # without replacement, across sites too


def test_unnamed_classes_share_the_rest_by_overall_frequency(digits):
    cfg = prevalence_cfg({"size": 300, "classes": {3: 0.5, "7": 0.2}}, {"size": 100})
    parts = partition(cfg, digits.y, 2, seed=1)
    counts = np.bincount(digits.y[parts[0]], minlength=10)
    assert counts[3] == 150 and counts[7] == 60
    freq = np.bincount(digits.y).astype(float)
    rest = [k for k in range(10) if k not in (3, 7)]
    for k in rest:
        assert abs(counts[k] - 90 * freq[k] / freq[rest].sum()) < 1


def test_prevalence_is_a_function_of_the_seed(cancer):
    a = partition(HOSPITALS, cancer.y, 3, seed=7)
    b = partition(HOSPITALS, cancer.y, 3, seed=7)
    c = partition(HOSPITALS, cancer.y, 3, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _sites_with(index, **site):
    sites = [dict(s) for s in HOSPITALS["sites"]]
    sites[index] = site
    return prevalence_cfg(*sites)


@pytest.mark.parametrize("cfg,key,words", [
    (_sites_with(1, size=0), "partition.sites[1].size", "integer >= 1"),
    (_sites_with(1, size=2.5), "partition.sites[1].size", "integer >= 1"),
    (_sites_with(1, size=50, classes={0: 1.2}), "partition.sites[1].classes", "[0, 1]"),
    (_sites_with(0, size=50, classes={0: -0.1}), "partition.sites[0].classes", "[0, 1]"),
    (_sites_with(2, size=50, classes={0: 0.7, 1: 0.6}), "partition.sites[2].classes",
     "sum to 1.3"),
    (_sites_with(1, size=50, classes={0: 0.3, 1: 0.3}), "partition.sites[1].classes",
     "every class is named"),
    (_sites_with(1, size=50, classes={2: 0.1}), "partition.sites[1].classes", "no class 2"),
    (_sites_with(1, size=50, classes={"malignant": 0.1}), "partition.sites[1].classes",
     "no class 'malignant'"),
    (_sites_with(1, size=50, prevalence=0.1), "partition.sites[1].prevalence", "no such key"),
    (_sites_with(1, size=50, shift={"kind": "blur", "value": 1}), "partition.sites[1].shift.kind",
     "intensity, contrast, noise"),
    (_sites_with(1, size=50, shift={"kind": "contrast", "value": 0}),
     "partition.sites[1].shift.value", "> 0"),
    ({"name": "prevalence", "sites": []}, "partition.sites", "a list of sites"),
])
def test_bad_site_specs_name_the_key(cancer, cfg, key, words):
    with pytest.raises(ConfigError) as error:
        build_federated(cancer, cfg, len(cfg["sites"]) or 1, seed=0)
    assert error.value.key == key and str(error.value).startswith(key + "=")
    assert words in str(error.value)


def test_asking_for_more_examples_than_exist_says_how_many(cancer):
    cfg = prevalence_cfg({"size": 400, "classes": {0: 0.4}}, {"size": 100, "classes": {0: 0.6}})
    with pytest.raises(ConfigError, match=r"partition\.sites") as error:
        partition(cfg, cancer.y, 2, seed=0)
    message = str(error.value)
    assert "220 examples of class 0 in total (per site: [160, 60])" in message
    assert "at most 212" in message


def test_site_count_must_equal_num_clients(cancer):
    with pytest.raises(ConfigError, match=r"num_clients=5 .*set num_clients=3 and "
                                          r"clients_per_round<=3"):
        partition(HOSPITALS, cancer.y, 5, seed=0)


def test_default_config_composes_and_runs_the_worked_example():
    cfg = compose(["dataset=breast_cancer", "partition=prevalence", "num_clients=2",
                   "clients_per_round=2"])
    raw = load_dataset(cfg["dataset"])
    _, stats = build_federated(raw, cfg["partition"], 2, seed=0, test_fraction=0.2)
    assert [a + b for a, b in zip(stats["client_sizes"], stats["test_sizes"])] == [300, 150]
    cli = compose(["dataset=breast_cancer", "partition=prevalence", "num_clients=3",
                   "clients_per_round=3",
                   "partition.sites=[{size:400,classes:{0:0.4}},{size:60,classes:{0:0.05}},"
                   "{size:40,shift:{kind:contrast,value:1.5}}]"])
    _, stats = build_federated(raw, cli["partition"], 3, seed=0)
    assert stats["feature_shift"][2] == {"kind": "contrast", "value": 1.5}
    assert [s["kind"] for s in stats["feature_shift"][:2]] == ["none", "none"]


# --------------------------------------------------------------------------- feature shift


def _split(data, c, split):
    n = int(getattr(data, f"{split}_counts")[c])
    return np.asarray(getattr(data, f"{split}_x")[c][:n], dtype=np.float64)


def _build(raw, kind, strength=0.8, seed=3, name="iid"):
    cfg = {"name": name, "feature_shift": {"kind": kind, "strength": strength}}
    return build_federated(raw, cfg, 5, seed=seed, normalization="none")


@pytest.mark.parametrize("kind", ["intensity", "contrast", "noise"])
def test_shifted_clients_move_by_the_documented_amount(digits, kind):
    plain, _ = _build(digits, "none")
    shifted, stats = _build(digits, kind)
    x = digits.x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)  # overall per-feature moments, all examples
    varying = std > 0
    assert len(stats["feature_shift"]) == 5
    for c, shift in enumerate(stats["feature_shift"]):
        assert shift["kind"] == kind
        v = shift["value"]
        for split in ("train", "test"):  # the test split is shifted the same way
            before, after = _split(plain, c, split), _split(shifted, c, split)
            if kind == "intensity":
                np.testing.assert_allclose(after, before + v * std, atol=1e-4)
            elif kind == "contrast":
                np.testing.assert_allclose(after - mean, v * (before - mean), atol=1e-4)
            else:
                np.testing.assert_array_equal(after[..., ~varying], before[..., ~varying])
                z = (after - before)[..., varying] / std[varying]
                assert abs(z.mean()) < 0.05 * max(v, 0.1)
                tolerance = 4 * v / math.sqrt(2 * z.size)  # 4 standard errors of a std
                assert abs(z.std() - v) < tolerance + 1e-6, (c, split, z.std(), v)


def test_site_parameters_follow_the_documented_distributions():
    n = 4000
    for kind, check in (
        ("intensity", lambda v: (abs(v.mean()) < 0.05, abs(v.std() - 0.5) < 0.03)),
        ("contrast", lambda v: (abs(np.log(v).mean()) < 0.05, abs(np.log(v).std() - 0.5) < 0.03)),
        ("noise", lambda v: (v.min() >= 0, abs(v.mean() - 0.5 * math.sqrt(2 / math.pi)) < 0.03)),
    ):
        plan = shift_plan({"name": "iid", "feature_shift": {"kind": kind, "strength": 0.5}}, n, 0)
        assert all(check(np.array([p["value"] for p in plan])))


def test_shift_parameters_are_a_function_of_the_seed():
    cfg = {"name": "iid", "feature_shift": {"kind": "intensity", "strength": 1.0}}
    assert shift_plan(cfg, 6, 1) == shift_plan(cfg, 6, 1)
    assert shift_plan(cfg, 6, 1) != shift_plan(cfg, 6, 2)


def test_no_shift_leaves_data_and_stats_unchanged(digits):
    data, stats = build_federated(digits, {"name": "iid"}, 5, seed=0)
    same, same_stats = build_federated(
        digits, {"name": "iid", "feature_shift": {"kind": "none", "strength": 0.5}}, 5, seed=0)
    np.testing.assert_array_equal(np.asarray(data.train_x), np.asarray(same.train_x))
    assert "feature_shift" not in stats and same_stats == stats


def test_per_site_override_shifts_only_that_site(cancer):
    cfg = _sites_with(1, size=150, classes={0: 0.05}, shift={"kind": "intensity", "value": 2.0})
    plain, _ = build_federated(cancer, HOSPITALS, 3, seed=0, normalization="none")
    shifted, stats = build_federated(cancer, cfg, 3, seed=0, normalization="none")
    std = cancer.x.astype(np.float64).std(axis=0)
    assert stats["feature_shift"] == [
        {"kind": "none", "value": None}, {"kind": "intensity", "value": 2.0},
        {"kind": "none", "value": None}]
    for split in ("train", "test"):
        for c in (0, 2):
            np.testing.assert_array_equal(_split(shifted, c, split), _split(plain, c, split))
        np.testing.assert_allclose(_split(shifted, 1, split), _split(plain, 1, split) + 2 * std,
                                   rtol=1e-5)


def test_shift_with_missing_values_still_imputes_everything():
    raw = load_dataset({"name": "opt"})
    cfg = {"name": "natural", "feature_shift": {"kind": "noise", "strength": 0.3}}
    data, stats = build_federated(raw, cfg, 4, seed=0)
    assert np.isfinite(np.asarray(data.train_x)).all() and np.isfinite(np.asarray(data.test_x)).all()
    assert stats["client_names"] == ["NY", "MN", "KY", "MS"]


@pytest.mark.parametrize("shift,key", [
    ({"kind": "blur"}, "partition.feature_shift.kind"),
    ({"kind": "noise", "strength": -1.0}, "partition.feature_shift.strength"),
    ({"kind": "noise", "strength": float("nan")}, "partition.feature_shift.strength"),
    ({"kind": "noise", "std": 1.0}, "partition.feature_shift.std"),
])
def test_bad_feature_shift_names_the_key(cancer, shift, key):
    with pytest.raises(ConfigError) as error:
        build_federated(cancer, {"name": "iid", "feature_shift": shift}, 3, seed=0)
    assert error.value.key == key
