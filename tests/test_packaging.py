"""A clone or a wheel is self-contained: configs and data ship inside the package.

The wheel test builds fedbench's wheel offline, installs it into a fresh virtual environment
(dependencies from this environment, fedbench itself only from the wheel) and runs the
``fedbench`` command from an empty folder, as a user of ``pip install .`` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_every_package_and_all_configs_are_packaged():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(project["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "fedbench").rglob("__init__.py")
    }
    assert on_disk <= listed, f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    assert project["package-dir"]["fedbench.conf"] == "conf"
    # Every config group file is matched by the package-data globs (no group deeper than one).
    depth = {len(p.relative_to(REPO / "conf").parts) for p in (REPO / "conf").rglob("*.yaml")}
    assert depth <= {1, 2, 3} and "**/*.yaml" in project["package-data"]["fedbench.conf"]


def test_tcga_files_ship_inside_the_package():
    from fedbench.dataset import tcga

    assert tcga.PACKAGED.is_relative_to(REPO / "fedbench")
    for name in (*tcga.FILES, "README.md"):
        assert (tcga.PACKAGED / name).is_file()
    readme = (tcga.PACKAGED / "README.md").read_text()
    assert "FLamby" in readme and "MIT" in readme and "identify individual" in readme


def test_tcga_default_path_ignores_folders_beside_the_repository(monkeypatch):
    from fedbench.dataset import load_dataset, tcga

    monkeypatch.delenv("FEDBENCH_DATA", raising=False)
    assert tcga.default_path() == tcga.PACKAGED
    raw = load_dataset({"name": "tcga_brca"})
    assert raw.x.shape == (1088, tcga.NUM_FEATURES)
    monkeypatch.setenv("FEDBENCH_DATA", "/nonexistent-root")
    assert tcga.default_path() == Path("/nonexistent-root/fed_tcga_brca")


@pytest.mark.slow
def test_wheel_runs_fedbench_from_an_empty_folder(tmp_path):
    # Nothing of this checkout may leak into the venv's processes (PYTHONPATH, a data override).
    env = {k: v for k, v in os.environ.items() if k not in ("FEDBENCH_DATA", "PYTHONPATH")}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        env=env, check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = wheels.glob("fedbench-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   env=env, check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   env=env, check=True, capture_output=True, text=True, timeout=300)

    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [str(python), "-c",
         "import fedbench, fedbench.cli, fedbench.dataset.tcga as t; "
         "print(fedbench.__file__); print(fedbench.cli.CONF_DIR); print(t.default_path())"],
        cwd=empty, env=env, check=True, capture_output=True, text=True, timeout=120,
    )
    module, conf, data = (Path(line) for line in where.stdout.split())
    site = venv / "lib"
    assert module.is_relative_to(site) and conf.is_relative_to(site) and data.is_relative_to(site)
    assert not REPO.joinpath("fedbench").samefile(module.parent)

    run = subprocess.run(
        [str(venv / "bin" / "fedbench"), "dataset=tcga_brca", "rounds=1", "local_steps=5",
         f"hydra.run.dir={empty / 'run'}"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((empty / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["partition"]["name"] == "natural"
    assert summary["config"]["model"]["name"] == "cox"
    assert summary["partition_stats"]["client_sizes"] == [248, 156, 164, 129, 129, 40]
