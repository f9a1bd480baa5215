"""fedbench's one-run audit path reproduces jax_privacy's published golden values.

jax_privacy's own tests of ``CanaryScoreAuditor`` (``auditing_test.py``,
``test_epsilon_one_shot_close``) fix 10,000 "out" canary scores spaced like a standard normal
(the normal quantiles of the midpoints ``(i + 1/2) / n``) and "in" scores shifted by 1, 2 and 4,
and expect the one-run epsilon lower bounds (Steinke, Nasr, Jagielski, NeurIPS 2023, Thm 3.1) of
1.13346, 2.311945 and 4.395568 at significance 0.05 and delta 1e-6 (rtol 1e-5). The same scores
through :func:`fedbench.audit.epsilon.audit_scores`, the function every fedbench audit report
takes its ``epsilon_one_run`` from, must give the same numbers; a shift of 0 (no signal) gives 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from fedbench.audit.epsilon import audit_scores

N = 10_000
OUT = scipy.stats.norm.ppf(np.linspace(0, 1, N, endpoint=False) + 1 / (2 * N))


@pytest.mark.parametrize("shift, published", [(0, 0.0), (1, 1.13346), (2, 2.311945),
                                              (4, 4.395568)])
def test_one_run_bound_reproduces_jax_privacys_golden_values(shift, published):
    got = audit_scores(OUT + shift, OUT, delta=1e-6, significance=0.05)
    np.testing.assert_allclose(got["epsilon_one_run"], published, rtol=1e-5, atol=1e-9)
    assert got["canaries"] == 2 * N
