"""Library warnings summarised, not repeated: dp-accounting's RDP accountant logs one line per
fractional order it cannot evaluate (``_compute_log_a_frac failed to converge ... Excluding this
order``), about 90 lines in a suitability study. :func:`summarise_accountant` replaces them by a
count, and :func:`accountant_note` by one sentence at the end of a command.

Leaving an order out of the minimum over orders can only raise the reported epsilon (the
minimum is taken over fewer orders), so the epsilon stays an upper bound.
"""

from __future__ import annotations

import logging

_MARK = "failed to converge"


class _AccountantOrders(logging.Filter):
    """Counts (and drops) the RDP accountant's 'order excluded' warnings."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if _MARK in record.getMessage() and "order" in record.getMessage():
            self.count += 1
            return False
        return True


_FILTER = _AccountantOrders()


def summarise_accountant() -> None:
    """Drops the accountant's per-order warnings from the ``absl`` logger, counting them."""
    logger = logging.getLogger("absl")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def accountant_note() -> str | None:
    """One sentence for the end of a command, or None if no order was left out."""
    if not _FILTER.count:
        return None
    return (f"dp-accounting's RDP accountant could not evaluate {_FILTER.count} fractional "
            "orders and left them out of the minimum over orders (this can only raise the "
            "reported epsilon: it stays an upper bound)")
