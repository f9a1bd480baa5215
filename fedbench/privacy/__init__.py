"""Differential privacy for fedbench: accounting with dp-accounting and noise calibration.

See :mod:`fedbench.privacy.accounting` for the conventions (noise multiplier, sampling schemes
and their neighbouring relations, accountants, default delta) and the references.
"""

from fedbench.privacy.accounting import (
    ACCOUNTANTS,
    DEFAULT_RDP_ORDERS,
    SAMPLINGS,
    TF_PRIVACY_ORDERS,
    AccountingReport,
    RdpEpsilon,
    account,
    calibrate_noise,
    classic_rdp_epsilon,
    default_delta,
    dp_event,
    epsilon,
    rdp_values,
)

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_RDP_ORDERS",
    "SAMPLINGS",
    "TF_PRIVACY_ORDERS",
    "AccountingReport",
    "RdpEpsilon",
    "account",
    "calibrate_noise",
    "classic_rdp_epsilon",
    "default_delta",
    "dp_event",
    "epsilon",
    "rdp_values",
]
