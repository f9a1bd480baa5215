"""The RDP accountant's per-order warnings become one counted sentence (fedbench/logs.py)."""

from __future__ import annotations

import logging

import dp_accounting

from fedbench import logs


def test_the_accountants_order_warnings_are_counted_not_printed(caplog):
    logs.summarise_accountant()
    before = logs._FILTER.count
    with caplog.at_level(logging.WARNING, logger="absl"):
        accountant = dp_accounting.rdp.RdpAccountant([1.1, 1.5, 2.0, 8.0])
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            0.3, dp_accounting.GaussianDpEvent(1.0)), 10)
        accountant.get_epsilon(1e-5)
        logging.getLogger("absl").warning("an unrelated warning")
    printed = [r.getMessage() for r in caplog.records]
    assert "an unrelated warning" in printed
    assert not [m for m in printed if "failed to converge" in m]
    assert logs._FILTER.count > before  # the fractional orders 1.1 and 1.5 (seen unfiltered)
    assert str(logs._FILTER.count) in logs.accountant_note()
