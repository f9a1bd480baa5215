"""``--help`` and ``--version`` answer what fedbench is, not what Hydra is (issue "A newcomer's
first hour", item 6): the help names every config group and option found in ``conf/`` (listed
here independently from the directory) and no Hydra banner; the version is the installed
distribution's, with JAX's."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parent.parent / "conf"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.argv[0] = 'x'; from {module} import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("module", ["fedbench.cli", "fedbench.audit.cli"])
def test_help_lists_every_group_and_option_and_no_hydra_banner(module):
    out = _run(module, "--help")
    assert out.returncode == 0, out.stderr
    assert "powered by Hydra" not in out.stdout and "usage: fedbench" in out.stdout
    own = {"fedbench.cli": set(), "fedbench.audit.cli": {"audit"}}[module]
    text = out.stdout.split("Config groups")[1].split("Common keys")[0]
    listed = {}  # group -> the options on its (possibly wrapped) lines
    for line in text.splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("   "):
            group, rest = line.split(None, 1)
            listed[group] = rest
        elif line.strip():
            listed[group] += " " + line.strip()
    for group in (d for d in CONF.iterdir() if d.is_dir() and d.name != "hydra"):
        if group.name in ("audit", "suitability") and group.name not in own:
            assert group.name not in listed  # a group only another command adds
            continue
        assert {p.stem for p in group.glob("*.yaml")} == set(
            listed[group.name].replace(",", " ").split()), group.name


@pytest.mark.parametrize("module,flag", [("fedbench.cli", "--version"),
                                         ("fedbench.audit.cli", "-V"),
                                         ("fedbench.contribution_cli", "--version"),
                                         ("fedbench.release_bundle", "-V")])
def test_version_is_fedbench_and_jax(module, flag):
    out = _run(module, flag)
    assert out.returncode == 0, out.stderr
    assert metadata.version("fedbench") in out.stdout
    assert f"jax {metadata.version('jax')}" in out.stdout


def test_contribution_help_explains_every_choice_without_markup():
    out = _run("fedbench.contribution_cli", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for word in ("exact", "tmc", "loo", "auto", "pooled", "sites_mean"):
        assert word in text
    assert "Shapley" in text and "`" not in out.stdout


def test_release_help_says_what_is_released_and_what_is_refused():
    out = _run("fedbench.release_bundle", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert text.startswith("usage: fedbench-release")
    for words in ("epsilon covers", "model.npz", "privacy.json", "MANIFEST.json",
                  "Checkpoints", "secret", "exit status 2"):
        assert words in text, words
