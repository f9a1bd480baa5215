"""Numbers in a study's README rendered from its committed data, never typed.

A study's ``results/<study>/README.md`` names the script that generates it, on a line of its own::

    <!--generated-by: experiments/collect_fedprox_synthetic.py-->

and marks every table and every number its prose quotes::

    FedProx's sd over seeds is <!--val:sd_ratio_min-->1.5<!--/val-->x to ...

    <!--val:final_table-->
    | dataset | ... |
    <!--/val-->

The script defines ``readme_values(folder: Path) -> Mapping[str, str]``, computed from the files
committed in ``folder`` only (the CSVs, not the runs), and its ``main`` calls :func:`render_file`
after writing them. :func:`render` replaces each marked span by its value; a marked name the
script does not produce, or a produced value the README does not use, is an error, so a number
cannot silently go stale or go missing. ``tests/test_study_readmes.py`` re-renders every
``results/*/README.md`` and fails on any difference.

Rankings: :func:`paired_t` and :func:`compare` give the sentence for "A against B" over paired
seeds (a paired t interval; Student 1908, the standard two-sided interval for the mean of the
paired differences): a direction only when the interval excludes zero, otherwise "no difference
at this number of seeds".

Usage::

    python -m fedbench.study_readme results/fedprox_synthetic          # re-render in place
    python -m fedbench.study_readme results/fedprox_synthetic --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

GENERATOR = re.compile(r"^<!--generated-by: *(?P<script>[^ ]+?) *-->$", re.M)
VALUE = re.compile(r"<!--val:(?P<name>[A-Za-z0-9_.-]+)-->(?P<body>.*?)<!--/val-->", re.S)
ROOT = Path(__file__).resolve().parent.parent


class ReadmeError(ValueError):
    """A README whose markers and the generator's values do not match."""


def render(text: str, values: Mapping[str, object]) -> str:
    """``text`` with every ``<!--val:name-->...<!--/val-->`` span's body replaced by
    ``values[name]`` (a value with a newline is written as a block: the markers on lines of
    their own, a blank line between them and the value, so Markdown still sees a table).

    Raises:
      ReadmeError: a marked name missing from ``values``, or a value no marker uses.
    """
    used: set[str] = set()
    missing: list[str] = []

    def _one(match: re.Match) -> str:
        name = match["name"]
        if name not in values:
            missing.append(name)
            return match[0]
        used.add(name)
        body = str(values[name])
        if "\n" in body:  # a block: blank lines around it, so a table stays a table
            body = "\n\n" + body.strip("\n") + "\n\n"
        return f"<!--val:{name}-->{body}<!--/val-->"

    out = VALUE.sub(_one, text)
    unused = sorted(set(values) - used)
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"marked in the README but not generated: {', '.join(sorted(missing))}")
        if unused:
            parts.append(f"generated but not marked in the README: {', '.join(unused)}")
        raise ReadmeError("; ".join(parts))
    return out


def generator(readme: Path) -> Path:
    """The script a README names on its ``<!--generated-by: ...-->`` line (relative to the
    repository root)."""
    found = GENERATOR.findall(Path(readme).read_text())
    if len(found) != 1:
        raise ReadmeError(f"{readme}: needs exactly one '<!--generated-by: SCRIPT-->' line, "
                          f"found {len(found)}")
    return ROOT / found[0]


def load_values(script: Path) -> Callable[[Path], Mapping[str, object]]:
    """``readme_values`` of a generator script, imported from its path."""
    spec = importlib.util.spec_from_file_location(f"_readme_{Path(script).stem}", script)
    if spec is None or spec.loader is None:
        raise ReadmeError(f"{script}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "readme_values"):
        raise ReadmeError(f"{script}: defines no readme_values(folder)")
    return module.readme_values


def rendered(folder: Path) -> tuple[str, str]:
    """``(current, rendered)`` text of ``folder/README.md``."""
    readme = Path(folder) / "README.md"
    current = readme.read_text()
    values = load_values(generator(readme))(Path(folder))
    try:
        return current, render(current, values)
    except ReadmeError as err:
        raise ReadmeError(f"{readme}: {err}") from None


def render_file(folder: Path) -> bool:
    """Re-render ``folder/README.md`` in place; True when it changed."""
    current, new = rendered(folder)
    if new != current:
        (Path(folder) / "README.md").write_text(new)
    return new != current


# ---------------------------------------------------------------------------------------------
# Formatting and paired comparisons, shared by the generator scripts.


def fmt(x: float, digits: int = 3, sign: bool = False) -> str:
    """``x`` with ``digits`` decimals (``+`` for positive numbers when ``sign``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``"0.757 ± 0.045"``: mean and sample sd (ddof 1; 0 for one value)."""
    v = np.asarray(values, float)
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{fmt(float(v.mean()), digits)} ± {fmt(sd, digits)}"


def paired_t(a: Sequence[float], b: Sequence[float], level: float = 0.95
             ) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired seeds and its two-sided ``level`` t interval
    ``(mean, low, high)``; with one pair the interval is unbounded."""
    import scipy.stats

    d = np.asarray(a, float) - np.asarray(b, float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("paired_t needs two equally long, non-empty sequences")
    mean = float(d.mean())
    if len(d) < 2:
        return mean, -math.inf, math.inf
    half = float(scipy.stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def excludes_zero(interval: tuple[float, float, float]) -> bool:
    """True when the interval ``(mean, low, high)`` lies on one side of zero."""
    _, low, high = interval
    return low > 0 or high < 0


def compare(name_a: str, name_b: str, a: Sequence[float], b: Sequence[float], digits: int = 3,
            higher: str = "ahead of", lower: str = "behind", level: float = 0.95) -> str:
    """The sentence for A against B over paired seeds (difference: A - B): ``"A ahead of B by
    0.031 (difference 95% paired t interval [+0.012, +0.050], 3 seeds)"`` when the interval
    excludes zero, otherwise ``"no difference between A and B at this number of seeds
    (difference +0.004, 95% paired t interval [-0.020, +0.030], 3 seeds)"``."""
    interval = paired_t(a, b, level)
    mean, low, high = interval
    span = f"{level:.0%} paired t interval [{fmt(low, digits, True)}, {fmt(high, digits, True)}]"
    n = f"{len(a)} seeds"
    if excludes_zero(interval):
        word = higher if mean > 0 else lower
        return (f"{name_a} {word} {name_b} by {fmt(abs(mean), digits)} (difference {span}, "
                f"{n})")
    return (f"no difference between {name_a} and {name_b} at this number of seeds "
            f"(difference {fmt(mean, digits, True)}, {span}, {n})")


def write_rows(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """``rows`` (dicts with the same keys, in order) as a CSV file with a header."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows as dicts of strings (what :func:`write_rows` wrote)."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wall_times(logs: Sequence[Path]) -> dict[str, float]:
    """Each program's wall seconds from a study script's logs: ``/usr/bin/time -f "NAME wall %e
    s"`` lines (the last one of a name wins)."""
    out = {}
    for log in logs:
        for line in Path(log).read_text().splitlines():
            m = re.fullmatch(r"(\S+) wall ([0-9.]+) s", line.strip())
            if m:
                out[m[1]] = float(m[2])
    return out


def collect_arguments(study: str, description: str,
                      argv: Sequence[str] | None = None) -> argparse.Namespace:
    """A collect script's command line: ``--runs`` (default ``multirun/<study>``), ``--out``
    (``results/<study>``), ``--log`` (the study script's logs, :func:`wall_times`) and
    ``--allow-dirty`` (collect runs not from one clean commit; ``PROVENANCE.json`` says so)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=Path, default=Path("multirun") / study)
    parser.add_argument("--out", type=Path, default=Path("results") / study)
    parser.add_argument("--log", type=Path, nargs="*", default=[],
                        help=f"logs of experiments/{study}.sh (its 'NAME wall S s' lines)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="collect runs not from one clean commit (PROVENANCE.json says so)")
    return parser.parse_args(argv)


def collected(study: str, description: str, collect: Callable[[Path, dict], list],
              argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list]:
    """A collect script's start: its command line (:func:`collect_arguments`), the runs'
    provenance checked and written before any other output
    (:func:`fedbench.provenance.study_provenance`), and ``collect(runs, walls)``'s rows (``walls``:
    :func:`wall_times` of the logs). Exits naming the runs folder when there are no rows."""
    from fedbench.provenance import study_provenance

    args = collect_arguments(study, description, argv)
    study_provenance(args.runs, args.out, args.allow_dirty)
    rows = collect(args.runs, wall_times(args.log))
    if not rows:
        raise SystemExit(f"no runs under {args.runs}")
    return args, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                   align: str | None = None) -> str:
    """A Markdown table; ``align`` one character per column (``l`` or ``r``, default: first
    column left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="results/<study> folders")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a README is not what its data render")
    args = parser.parse_args(argv)
    stale = []
    for folder in args.folders:
        try:
            current, new = rendered(folder)
        except ReadmeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if new != current:
            stale.append(folder)
            if not args.check:
                (folder / "README.md").write_text(new)
        print(f"{folder / 'README.md'}: {'stale' if new != current else 'up to date'}"
              + (" (re-rendered)" if new != current and not args.check else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
