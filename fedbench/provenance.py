"""Where a number came from: the source a run was computed with, and the check a study's
collect script makes before it writes anything into ``results/``.

Every ``summary.json`` carries ``provenance`` (:func:`source`): fedbench's version, and when the
package runs from a git checkout, the commit and every uncommitted change under ``fedbench/`` and
``conf/`` (modified, staged or untracked files: what can change a number). A study is citable
when all its runs come from one clean commit; :func:`check_study` reads every run of a study
and refuses otherwise, naming the runs and the files. ``--allow-dirty`` in the collect scripts is
the explicit override for exploration: the study's ``PROVENANCE.json`` then says so.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: The source folders whose changes can change a result.
WATCHED = ("fedbench", "conf")


class ProvenanceError(RuntimeError):
    """A study whose runs do not all come from one clean commit."""


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def source(package_dir: str | None = None) -> dict[str, Any]:
    """``{"version", "commit", "modified", "checkout"}`` of the fedbench that runs:
    ``commit`` (None outside a git checkout, e.g. an installed wheel: then ``version`` is what
    identifies it) and ``modified``, the uncommitted paths under :data:`WATCHED`."""
    from fedbench import __version__

    package = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    root = package.parent
    top = _git(root, "rev-parse", "--show-toplevel")
    out: dict[str, Any] = {"version": __version__, "commit": None, "modified": [],
                           "checkout": False}
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return out  # not the checkout this package belongs to
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *WATCHED)
    out.update(checkout=True, commit=None if commit is None else commit.strip(),
               modified=sorted(line[3:] for line in (status or "").splitlines() if line.strip()))
    return out


def check_study(runs: Iterable[Path], allow_dirty: bool = False) -> dict[str, Any]:
    """The provenance of a study from its runs' ``summary.json`` files (``runs``: their paths,
    or the run directories): one commit, no uncommitted change.

    Returns:
      ``{"commit", "runs", "exploration", "problems"}`` for the study's ``PROVENANCE.json``;
      ``exploration`` is true (and ``problems`` lists why) only under ``allow_dirty``.

    The index ``summary.json`` of a job that ran replicas (``seeds=N``, in-program sweeps;
    it has ``replicas``) is not a run: the replicas' own summaries are. Since it records
    provenance too it is checked when it does.

    Raises:
      ProvenanceError: a run without recorded provenance, from outside a git checkout, with
        uncommitted changes to ``fedbench/`` or ``conf/``, or runs from different commits;
        unless ``allow_dirty``.
    """
    problems, commits, count = [], set(), 0
    for run in runs:
        path = Path(run)
        path = path / "summary.json" if path.is_dir() else path
        summary = json.loads(path.read_text())
        if "replicas" in summary and "provenance" not in summary:
            continue  # a seeds=N / sweep job's index (before it recorded provenance): its
            # replicas' own summaries, in its subfolders, are the runs checked
        count += 1
        recorded = summary.get("provenance")
        if not recorded:
            problems.append(f"{path}: no provenance recorded (run before fedbench recorded it)")
        elif recorded.get("commit") is None:
            problems.append(f"{path}: not run from a git checkout (version "
                            f"{recorded.get('version')})")
        else:
            commits.add(recorded["commit"])
            if recorded.get("modified"):
                shown = ", ".join(recorded["modified"][:5])
                more = len(recorded["modified"]) - 5
                problems.append(f"{path}: uncommitted changes to {shown}"
                                + (f" and {more} more" if more > 0 else ""))
    if count == 0:
        raise ProvenanceError("no summary.json found: nothing to collect")
    if len(commits) > 1:
        problems.append("runs from different commits: " + ", ".join(sorted(commits)))
    if problems and not allow_dirty:
        raise ProvenanceError(
            "results must come from one clean commit; " + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            + ". Commit the changes and rerun the study, or pass --allow-dirty to collect "
            "for exploration (PROVENANCE.json then says so).")
    return {"commit": sorted(commits)[0] if len(commits) == 1 else sorted(commits),
            "runs": count, "exploration": bool(problems), "problems": problems}


def write_study_provenance(out_dir: Path, runs: Iterable[Path], allow_dirty: bool = False
                           ) -> dict[str, Any]:
    """:func:`check_study`, then ``out_dir/PROVENANCE.json`` written atomically; call it
    before writing anything else into ``out_dir``."""
    from fedbench.atomic import write_json

    out = check_study(runs, allow_dirty)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "PROVENANCE.json", out)
    return out


def study_provenance(runs_root: Path, out_dir: Path, allow_dirty: bool = False) -> dict[str, Any]:
    """What a study's collect script calls before writing into ``out_dir``: every
    ``summary.json`` under ``runs_root`` checked (:func:`check_study`) and ``PROVENANCE.json``
    written. Raises ``SystemExit`` with the reason instead of a traceback."""
    try:
        return write_study_provenance(out_dir, sorted(Path(runs_root).rglob("summary.json")),
                                      allow_dirty)
    except ProvenanceError as err:
        raise SystemExit(f"{Path(runs_root)}: {err}") from None
