"""Secure aggregation, simulated with its real masks and exact costs (issue 32, item 1).

* :mod:`fedbench.secagg.protocol`: one round of SecAgg (Bonawitz et al., CCS 2017) or SecAgg+
  (Bell et al., CCS 2020) over integer vectors modulo ``2^b``, client by client and message by
  message, with dropouts at any phase and the protocol's abort;
* :mod:`fedbench.secagg.shamir`: ``t``-out-of-``n`` Shamir sharing over ``F_{2^127 - 1}``;
* :mod:`fedbench.secagg.graph`: who masks with whom (complete, or a ``k``-regular graph);
* :mod:`fedbench.secagg.costs`: every phase's messages and bytes, per client and server, and
  the phases' seconds on the sites' links.

The key agreement, encryption and PRG are simulations without security (see
:mod:`fedbench.secagg.protocol`); the masks, the sharing, the dropout recovery and the message
sizes are real.
"""

from fedbench.secagg.costs import PHASES, Sizes, closed_form, phase_seconds
from fedbench.secagg.protocol import (NEVER, ProtocolAborted, Round, Settings, draw_dropouts,
                                      run_round, to_ring, to_signed)

__all__ = ["NEVER", "PHASES", "ProtocolAborted", "Round", "Settings", "Sizes", "closed_form",
           "draw_dropouts", "phase_seconds", "run_round", "to_ring", "to_signed"]
