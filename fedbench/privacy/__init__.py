"""Differential privacy for fedbench: accounting with dp-accounting and noise calibration.

See :mod:`fedbench.privacy.accounting` for the accountants and the references, and
:mod:`fedbench.privacy.events` for the conventions (noise multiplier, sampling schemes and their
neighbouring relations, default delta).
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
    calibrate_noise_worst,
    classic_rdp_epsilon,
    default_delta,
    dp_event,
    epsilon,
    rdp_values,
    worst_account,
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
    "calibrate_noise_worst",
    "classic_rdp_epsilon",
    "default_delta",
    "dp_event",
    "epsilon",
    "rdp_values",
    "worst_account",
]
