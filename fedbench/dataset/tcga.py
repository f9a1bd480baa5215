"""Fed-TCGA-BRCA: breast-cancer survival, 6 regions of the USA as natural clients.

1,088 TCGA-BRCA patients with 39 clinical covariates (age and one-hot encoded stage, TNM,
histology, ...), an event indicator (death observed) and a time (days), as preprocessed by FLamby
(Ogier du Terrail et al., NeurIPS 2022 Datasets and Benchmarks, following Andreux et al. 2020
and Liu et al., Cell 2018). The clients are the 6 regions of the tissue source sites, each with
FLamby's fixed train/test split (train/test sizes 248/63, 156/40, 164/42, 129/33, 129/33, 40/11).

FLamby's three files ship inside the package (``fedbench/dataset/data/fed_tcga_brca/``, with their
attribution and terms in the README there), so a clone or a wheel runs this dataset with nothing
beside it. ``dataset.path`` points at another folder with ``brca.csv``, ``centers.csv`` and
``train_test_split.csv``; ``$FEDBENCH_DATA/fed_tcga_brca`` is used when that variable is set.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

NUM_FEATURES = 39
NUM_REGIONS = 6
FILES = ("brca.csv", "centers.csv", "train_test_split.csv")


PACKAGED = Path(__file__).resolve().parent / "data" / "fed_tcga_brca"


def default_path() -> Path:
    """``$FEDBENCH_DATA/fed_tcga_brca`` if that variable is set, else the packaged files."""
    root = os.environ.get("FEDBENCH_DATA")
    if root:
        return Path(root) / "fed_tcga_brca"
    return PACKAGED


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ConfigError("dataset.path", str(path), "a CSV file with a header row (it is empty)")
    return rows[0], rows[1:]


def _malformed(path: Path, what: str) -> ConfigError:
    return ConfigError("dataset.path", str(path.parent), f"FLamby's Fed-TCGA-BRCA files; {path.name}: {what}")


def load_tcga_brca(cfg: Mapping[str, Any]):
    """Loads Fed-TCGA-BRCA as a survival :class:`~fedbench.dataset.RawDataset`.

    ``x``: ``[n, 39]`` float32 covariates; ``target``: ``[n, 2]`` ``(event, time in days)``;
    ``y``: the event indicator; natural clients are FLamby's region indices (``fold2`` of
    ``train_test_split.csv``) with its fixed train/test split; region names come from
    ``centers.csv`` (tissue-source-site code = characters 6-7 of the TCGA barcode).

    Raises:
      ConfigError: a missing folder or file, or a file whose columns or values are not as
        documented in the data folder's README.
    """
    from fedbench.dataset import RawDataset

    path = Path(cfg["path"]) if cfg.get("path") else default_path()
    if not path.is_dir():
        raise ConfigError(
            "dataset.path", str(path),
            "a folder holding FLamby's Fed-TCGA-BRCA files (" + ", ".join(FILES) + "); by default "
            "the files shipped in fedbench/dataset/data/fed_tcga_brca, or "
            "$FEDBENCH_DATA/fed_tcga_brca when that variable is set",
        )
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError("dataset.path", str(path), f"a folder containing {', '.join(FILES)}; missing: {', '.join(missing)}")

    header, rows = _read_csv(path / "brca.csv")
    if header[0] != "pid" or header[-2:] != ["E", "T"] or len(header) != NUM_FEATURES + 3:
        raise _malformed(
            path / "brca.csv",
            f"expected columns pid, {NUM_FEATURES} features, E, T; found {len(header)} columns "
            f"starting {header[:2]} and ending {header[-2:]}",
        )
    pids, values = [], []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise _malformed(path / "brca.csv", f"line {line} has {len(row)} fields, not {len(header)}")
        try:
            values.append([float(v) for v in row[1:]])
        except ValueError as err:
            raise _malformed(path / "brca.csv", f"line {line}: a non-numeric value ({err})") from None
        pids.append(row[0])
    table = np.asarray(values, np.float64)
    if not np.isfinite(table).all():
        raise _malformed(path / "brca.csv", "missing or non-finite values")
    event, time = table[:, -2], table[:, -1]
    if not np.isin(event, (0.0, 1.0)).all() or (time < 0).any():
        raise _malformed(path / "brca.csv", "E must be 0 or 1 and T >= 0")

    split_header, split_rows = _read_csv(path / "train_test_split.csv")
    if split_header[:3] != ["pid", "fold", "fold2"]:
        raise _malformed(path / "train_test_split.csv", f"expected columns pid, fold, fold2; found {split_header}")
    row_of = {pid: i for i, pid in enumerate(pids)}
    keep, client, is_test = [], [], []
    for pid, fold, fold2 in (r[:3] for r in split_rows):
        part, _, region = fold2.partition("_")
        if pid not in row_of or fold not in ("train", "test") or part != fold or not region.isdigit():
            raise _malformed(
                path / "train_test_split.csv",
                f"row {pid},{fold},{fold2}: pid must be in brca.csv and fold2 be <fold>_<region index>",
            )
        keep.append(row_of[pid])
        client.append(int(region))
        is_test.append(fold == "test")
    client = np.asarray(client, np.int32)
    if sorted(set(client.tolist())) != list(range(NUM_REGIONS)):
        raise _malformed(path / "train_test_split.csv", f"expected regions 0..{NUM_REGIONS - 1}")

    centers_header, centers_rows = _read_csv(path / "centers.csv")
    if "TSS Code" not in centers_header or "Region" not in centers_header:
        raise _malformed(path / "centers.csv", f"expected columns 'TSS Code' and 'Region'; found {centers_header}")
    code_col, region_col = centers_header.index("TSS Code"), centers_header.index("Region")
    region_of_code = {r[code_col]: r[region_col] for r in centers_rows}
    names = []
    for k in range(NUM_REGIONS):
        codes = [pids[keep[i]][5:7] for i in np.flatnonzero(client == k)]
        found = Counter(region_of_code.get(c, "unknown") for c in codes)
        names.append(found.most_common(1)[0][0])

    keep = np.asarray(keep)
    target = np.stack([event[keep], time[keep]], axis=1).astype(np.float32)
    return RawDataset(
        "tcga_brca",
        table[keep, :NUM_FEATURES].astype(np.float32),
        event[keep].astype(np.int32),
        2,
        natural_client=client,
        natural_is_test=np.asarray(is_test),
        normalize=str(cfg.get("normalize", "standardize")),
        task="survival",
        target=target,
        client_names=names,
    )
