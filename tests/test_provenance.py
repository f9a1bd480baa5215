"""A study is citable only from one clean commit (fedbench/provenance.py).

Independent expectation: a scratch git repository laid out like the package (``fedbench/`` and
``conf/`` beside each other), its commit read back with ``git rev-parse``, and files changed by
hand: the recorded commit must be that one, the recorded changes exactly the hand-made ones
(untracked files included, files outside the watched folders ignored), and the study check
must refuse dirty, mixed or unrecorded runs unless told to allow them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from fedbench.provenance import ProvenanceError, check_study, source, write_study_provenance


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "repo"
    (root / "fedbench").mkdir(parents=True)
    (root / "conf").mkdir()
    (root / "fedbench" / "round.py").write_text("x = 1\n")
    (root / "conf" / "config.yaml").write_text("rounds: 1\n")
    (root / "README.md").write_text("readme\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qm", "first")
    return root


def test_the_commit_and_exactly_the_watched_changes_are_recorded(checkout):
    package = str(checkout / "fedbench")
    clean = source.__wrapped__(package)
    assert clean["checkout"] and clean["commit"] == _git(checkout, "rev-parse", "HEAD")
    assert clean["modified"] == []
    (checkout / "fedbench" / "round.py").write_text("x = 2\n")  # modified
    (checkout / "conf" / "new.yaml").write_text("a: 1\n")  # untracked
    (checkout / "README.md").write_text("changed\n")  # outside fedbench/ and conf/
    dirty = source.__wrapped__(package)
    assert dirty["modified"] == ["conf/new.yaml", "fedbench/round.py"]


def test_outside_a_checkout_only_the_version_identifies_the_source(tmp_path):
    (tmp_path / "fedbench").mkdir()
    out = source.__wrapped__(str(tmp_path / "fedbench"))
    assert out["commit"] is None and not out["checkout"] and out["version"]


def _run(tmp_path, name, provenance):
    run = tmp_path / name
    run.mkdir()
    summary = {"status": "completed"} if provenance is None else {"provenance": provenance}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_a_study_is_refused_unless_every_run_comes_from_one_clean_commit(tmp_path):
    clean = {"commit": "a" * 40, "modified": [], "version": "0.1.0"}
    good = [_run(tmp_path, f"ok{i}", clean) for i in range(2)]
    assert check_study(good) == {"commit": "a" * 40, "runs": 2, "exploration": False,
                                 "problems": []}
    cases = {
        "uncommitted changes to fedbench/round.py": {**clean, "modified": ["fedbench/round.py"]},
        "different commits": {**clean, "commit": "b" * 40},
        "not run from a git checkout": {**clean, "commit": None},
        "no provenance recorded": None,
    }
    for i, (why, provenance) in enumerate(cases.items()):
        runs = good + [_run(tmp_path, f"bad{i}", provenance)]
        with pytest.raises(ProvenanceError, match=why):
            check_study(runs)
        explored = write_study_provenance(tmp_path / f"out{i}", runs, allow_dirty=True)
        assert explored["exploration"] and any(why in p for p in explored["problems"])
        written = json.loads((tmp_path / f"out{i}" / "PROVENANCE.json").read_text())
        assert written["exploration"] is True
    with pytest.raises(ProvenanceError, match="no summary.json"):
        check_study([])


def test_a_replica_jobs_index_is_not_a_run_but_its_replicas_are(tmp_path):
    """``seeds=N`` writes an index summary.json (``replicas``) beside the replicas' own; before
    the index recorded provenance, collecting such a study failed on it."""
    clean = {"commit": "a" * 40, "modified": [], "version": "0.1.0"}
    index = tmp_path / "job" / "summary.json"
    index.parent.mkdir()
    index.write_text(json.dumps({"replicas": ["seed=0", "seed=1"], "status": "completed"}))
    replicas = [_run(tmp_path / "job", f"seed={i}", clean) for i in range(2)]
    assert check_study([index, *replicas])["runs"] == 2
    dirty = {**clean, "modified": ["conf/config.yaml"]}
    index.write_text(json.dumps({"replicas": ["seed=0", "seed=1"], "provenance": dirty}))
    with pytest.raises(ProvenanceError, match="uncommitted changes to conf/config.yaml"):
        check_study([index, *replicas])  # an index that records provenance is checked too
