"""Every number a study's README quotes is rendered from its committed data
(fedbench/study_readme.py).

Each ``results/*/README.md`` names its generator script; re-rendering it from the folder's
committed files must reproduce the README exactly, so a typed or stale number fails here. The
renderer itself is checked on hand-written text, and its paired t interval against SciPy's
``ttest_rel(...).confidence_interval`` (a second implementation) and the closed form.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from fedbench.study_readme import (ReadmeError, compare, excludes_zero, generator, paired_t,
                                   render, rendered)

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(p.parent.name for p in (ROOT / "results").glob("*/README.md"))


def test_render_replaces_inline_and_block_values():
    text = ("a <!--val:x-->1.0<!--/val--> b\n<!--val:table-->\n| old |\n<!--/val-->\nend "
            "<!--val:x-->2<!--/val-->\n")
    out = render(text, {"x": "3.5", "table": "| a |\n|---|\n| 1 |"})
    assert out == ("a <!--val:x-->3.5<!--/val--> b\n<!--val:table-->\n\n| a |\n|---|\n| 1 |\n\n"
                   "<!--/val-->\nend <!--val:x-->3.5<!--/val-->\n")
    assert render(out, {"x": "3.5", "table": "| a |\n|---|\n| 1 |"}) == out  # a fixed point


def test_render_refuses_missing_and_unused_values():
    with pytest.raises(ReadmeError, match="marked in the README but not generated: y"):
        render("<!--val:y-->1<!--/val-->", {})
    with pytest.raises(ReadmeError, match="generated but not marked in the README: z"):
        render("no markers", {"z": "1"})


def test_paired_t_matches_scipy_and_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5), rng.normal(size=5)
    mean, low, high = paired_t(a, b)
    ci = scipy.stats.ttest_rel(a, b).confidence_interval(0.95)
    np.testing.assert_allclose([low, high], [ci.low, ci.high], rtol=1e-12)
    d = a - b  # closed form: mean +- t_{0.975, 4} sd / sqrt(5), t_{0.975, 4} = 2.7764451...
    half = 2.7764451051977987 * d.std(ddof=1) / math.sqrt(5)
    np.testing.assert_allclose([mean, low, high], [d.mean(), d.mean() - half, d.mean() + half])


def test_compare_names_a_direction_only_when_the_interval_excludes_zero():
    ahead = compare("FedProx", "FedAvg", [0.80, 0.81, 0.82], [0.70, 0.70, 0.71])
    assert ahead.startswith("FedProx ahead of FedAvg by 0.107")
    behind = compare("A", "B", [0.1, 0.1, 0.11], [0.2, 0.21, 0.2])
    assert behind.startswith("A behind B by")
    level = compare("A", "B", [0.1, 0.3, 0.2], [0.2, 0.1, 0.25])
    assert level.startswith("no difference between A and B at this number of seeds")
    assert not excludes_zero(paired_t([0.1, 0.3, 0.2], [0.2, 0.1, 0.25]))


@pytest.mark.parametrize("study", STUDIES)
def test_readme_is_what_its_data_render(study):
    folder = ROOT / "results" / study
    assert generator(folder / "README.md").exists(), "the README's generator script is missing"
    current, new = rendered(folder)
    if new != current:
        diff = "".join(difflib.unified_diff(current.splitlines(True), new.splitlines(True),
                                            "README.md (committed)", "README.md (rendered)"))
        pytest.fail(f"results/{study}/README.md is not what its data render; run "
                    f"`python -m fedbench.study_readme results/{study}`:\n{diff[:4000]}")
