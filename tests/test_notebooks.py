"""The analysis notebooks in notebooks/ are committed without outputs.

nbmake runs them (``pytest`` with the repository's addopts, or ``pytest --nbmake notebooks/``);
this only checks how they are stored: nbformat 4, the ``python3`` kernel, and no outputs or
execution counts, so that diffs show code and nothing else. To strip a notebook saved from
Jupyter::

    python tests/test_notebooks.py notebooks/*.ipynb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"non_iid", "privacy_utility", "communication", "personalisation"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stripped(path: Path):
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert notebook["cells"][0]["cell_type"] == "markdown", "start with what the notebook shows"
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {index} has outputs: strip them (see docstring)"
            assert cell.get("execution_count") is None, f"cell {index} has an execution count"


def strip(path: Path) -> None:
    """Removes outputs and execution counts from a notebook, in place."""
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["metadata"].pop("execution", None)  # nbclient's timings
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        strip(Path(name))
