"""A clone or a wheel is self-contained: configs and data ship inside the package, and every
command of ``pip install .`` works with the core dependencies alone.

The wheel tests build fedbench's wheel offline and install it into a fresh virtual environment
(``core_venv``) that holds fedbench only from the wheel and, of this environment's packages,
exactly the distributions that fedbench's core requirements (no extras) need: nothing is
downloaded, and neither the base interpreter's packages nor the test extra's are visible. They
run every command of ``[project.scripts]`` from an empty folder, as a user of ``pip install .``
would.
"""

from __future__ import annotations

import csv
import dataclasses
import email.parser
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


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


def core_closure(requires: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requires`` (``Requires-Dist`` lines) need, by canonical
    name: each requirement whose marker holds without extras, then recursively theirs (with the
    extras a requirement asks of its distribution). Fails when one is missing or too old."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    asked: dict[str, set[str]] = {}
    todo = [(line, ("",)) for line in requires]  # a requirement, the extras its requirer got
    while todo:
        line, extras = todo.pop()
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(req.name)
        if name in found and set(req.extras) <= asked[name]:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req} (a core dependency) is not installed here: pip install -e .")
        assert req.specifier.contains(dist.version, prereleases=True), (
            f"{req.name} {dist.version} installed here does not satisfy {req}")
        found[name] = dist
        asked[name] = asked.get(name, set()) | set(req.extras)
        todo += [(r, ("", *sorted(asked[name]))) for r in dist.requires or []]
    return found


def _link_distribution(dist: metadata.Distribution, site: Path) -> None:
    """Symlinks every file that ``dist`` installed into site-packages (its RECORD: packages,
    modules, ``.dist-info``, bundled ``.libs``) into ``site``, file by file, so a directory two
    distributions share (a namespace package) brings nothing of a third."""
    files = dist.files
    if files is None:
        pytest.fail(f"{dist.metadata['Name']} has no RECORD of its files; reinstall it with pip")
    root = Path(dist.locate_file(""))
    for path in files:
        if path.parts[0] == "..":  # console scripts, headers: outside site-packages
            continue
        source, target = root / path, site / path
        if not source.is_file() or target.is_symlink():
            continue  # a .pyc pip recorded and something removed; a file two of them list
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)


@dataclasses.dataclass(frozen=True)
class CoreVenv:
    root: Path
    site: Path
    env: dict[str, str]
    core: frozenset[str]  # canonical names of the distributions besides fedbench

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        """``argv[0]`` (a console script of the venv, or ``python``) run from ``cwd``."""
        return subprocess.run([str(self.root / "bin" / argv[0]), *argv[1:]], cwd=cwd,
                              env=self.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> CoreVenv:
    """A venv of the running interpreter's base Python (whether or not it runs in a venv itself)
    without its site-packages: fedbench from a wheel of this checkout and symlinks to exactly
    the distributions of fedbench's core requirements installed here. Offline."""
    tmp = tmp_path_factory.mktemp("core_venv")
    # Nothing of this checkout or of the running environment may leak into the venv's processes.
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEDBENCH_DATA", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                        "PYTHONUSERBASE", "VIRTUAL_ENV")}
    offline = {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(wheels), str(REPO)],
        env=offline, check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = wheels.glob("fedbench-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.parser.Parser().parsestr(whl.read(meta).decode()).get_all(
            "Requires-Dist") or []
    closure = core_closure(requires)

    root = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)],
                   env=env, check=True, capture_output=True, text=True, timeout=120)
    # This environment's pip installs into the venv (--python): the venv needs no pip of its own.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
         "--no-deps", "--no-index", "-q", str(wheel)],
        env=offline, check=True, capture_output=True, text=True, timeout=300,
    )
    site = subprocess.run(
        [str(root / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_path('purelib'))"],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    for dist in closure.values():
        _link_distribution(dist, Path(site))
    return CoreVenv(root, Path(site), env, frozenset(closure))


@pytest.fixture(scope="module")
def fedbench_run(core_venv, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``fedbench`` of the wheel run from an empty folder: (the folder, the finished process)."""
    empty = tmp_path_factory.mktemp("empty")
    run = core_venv.run(["fedbench", "dataset=tcga_brca", "rounds=1", "local_steps=5",
                         f"hydra.run.dir={empty / 'run'}"], cwd=empty)
    return empty, run


@pytest.mark.slow
def test_core_venv_sees_only_fedbench_and_its_core_dependencies(core_venv, tmp_path):
    from packaging.utils import canonicalize_name

    seen = core_venv.run(
        ["python", "-c",
         "import importlib.metadata as m, importlib.util as u, json, sys; print(json.dumps(["
         "[d.metadata['Name'] for d in m.distributions()], sys.prefix != sys.base_prefix, "
         "[n for n in ('pytest', 'hypothesis', 'mlxtend', 'tensorflow') if u.find_spec(n)]]))"],
        cwd=tmp_path)
    assert seen.returncode == 0, seen.stderr
    names, in_venv, extras = json.loads(seen.stdout)
    assert in_venv and not extras
    assert sorted(canonicalize_name(n) for n in names) == sorted({*core_venv.core, "fedbench"})
    assert {"jax", "pandas", "matplotlib", "pyarrow"} <= core_venv.core


@pytest.mark.slow
def test_wheel_runs_fedbench_from_an_empty_folder(core_venv, fedbench_run):
    empty, run = fedbench_run
    where = core_venv.run(
        ["python", "-c",
         "import fedbench, fedbench.cli, fedbench.dataset.tcga as t; "
         "print(fedbench.__file__); print(fedbench.cli.CONF_DIR); print(t.default_path())"],
        cwd=empty,
    )
    assert where.returncode == 0, where.stderr
    module, conf, data = (Path(line) for line in where.stdout.split())
    site = core_venv.root / "lib"
    assert module.is_relative_to(site) and conf.is_relative_to(site) and data.is_relative_to(site)
    assert not REPO.joinpath("fedbench").samefile(module.parent)
    assert not module.is_symlink()  # the wheel's own file, not a link into this environment

    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((empty / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["partition"]["name"] == "natural"
    assert summary["config"]["model"]["name"] == "cox"
    assert summary["partition_stats"]["client_sizes"] == [248, 156, 164, 129, 129, 40]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_command_answers_help(core_venv, script, tmp_path):
    done = core_venv.run([script, "--help"], cwd=tmp_path, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert done.stdout.strip()
    assert not any(tmp_path.iterdir())  # --help does no work


# Each command's smallest real run, from an empty folder of the core-only venv: the arguments
# (EMPTY: that folder) and the files it must write there. fedbench's is fedbench_run (above).
TINY = ["model=logreg", "num_clients=3", "clients_per_round=3"]
EXAMPLES = {
    "fedbench": None,  # test_wheel_runs_fedbench_from_an_empty_folder
    "fedbench-collect": (["RUN", "--out", "table"], ["table.parquet", "table.csv"]),
    "fedbench-compare": (
        ["dataset=breast_cancer", *TINY, "rounds=1", "eval_every=1", "partition=dirichlet",
         "partition.alpha=1.0", "partition.min_size=20", "--val-fraction", "0",
         "--bootstrap", "50", "--out", "compare"],
        ["compare/table.csv", "compare/verdicts.json"]),
    "fedbench-audit": (
        [*TINY, "rounds=1", "audit.trials=1", "audit.iterations=2", "audit.local_steps=1",
         "audit.defences=[]", "audit.membership.shadows=4", "audit.membership.shadow_epochs=1",
         "audit.epsilon.canaries=10", "audit.epsilon.run.sites=0", "hydra.run.dir=audit"],
        ["audit/audit.json", "audit/audit.html", "audit/audit.md"]),
    "fedbench-contribution": (
        ["dataset=breast_cancer", *TINY, "rounds=1", "--method", "exact", "--out", "contrib"],
        ["contrib/contribution.json"]),
    "fedbench-release": (  # DPRUN: a client-level DP run of the wheel's fedbench (below)
        ["DPRUN", "release"],
        [f"release/{n}" for n in ("model.npz", "metrics.jsonl", "privacy.json", "MANIFEST.json",
                                  "README.md")]),
    "fedbench-suitability": (  # tabular data: no gradient-inversion audit (fedbench-audit's)
        ["dataset=breast_cancer", *TINY, "rounds=2", "eval_every=1",
         "suitability.contribution.method=exact", "suitability.compare.bootstrap=20",
         "suitability.render=false", "--out", "suit"],
        ["suit/suitability.json", "suit/suitability.md", "suit/suitability.html"]),
}


def test_every_command_has_an_example():
    assert sorted(EXAMPLES) == SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", [s for s in SCRIPTS if EXAMPLES.get(s)])
def test_every_command_runs_its_smallest_example(core_venv, script, tmp_path, request):
    argv, outputs = EXAMPLES[script]
    if "RUN" in argv:  # fedbench-collect gathers the run of the wheel's fedbench
        empty, run = request.getfixturevalue("fedbench_run")
        assert run.returncode == 0, run.stderr[-3000:]
        argv = [str(empty / "run") if a == "RUN" else a for a in argv]
    if "DPRUN" in argv:  # fedbench-release needs a finished DP run
        dp = core_venv.run(["fedbench", "dataset=breast_cancer", *TINY, "rounds=1",
                            "privacy=dp_client", "privacy.target_epsilon=null",
                            "privacy.noise_multiplier=1.0", "hydra.run.dir=dprun"], cwd=tmp_path)
        assert dp.returncode == 0, dp.stderr[-3000:]
        argv = ["dprun" if a == "DPRUN" else a for a in argv]
    done = core_venv.run([script, *argv], cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (
        done.stdout[-2000:] + done.stderr[-3000:])
    for name in outputs:
        assert (tmp_path / name).is_file(), f"{script} wrote no {name}"
    if script == "fedbench-collect":
        with open(tmp_path / "table.csv", newline="") as table:
            rows = list(csv.DictReader(table))
        assert rows and {r["status"] for r in rows} == {"completed"}
