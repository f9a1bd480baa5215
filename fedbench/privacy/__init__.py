"""Differential privacy for fedbench: accounting with dp-accounting and noise calibration.

See :mod:`fedbench.privacy.accounting` for the accountants and the references, and
:mod:`fedbench.privacy.events` for the conventions (noise multiplier, sampling schemes and their
neighbouring relations, default delta).
"""

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


def __getattr__(name: str):
    """The accounting names, imported on first use: dp-accounting (and SciPy's statistics,
    about 1.5 s) loads only in runs that account for privacy."""
    if name in __all__:
        from fedbench.privacy import accounting

        return getattr(accounting, name)
    raise AttributeError(f"module 'fedbench.privacy' has no attribute {name!r}")
