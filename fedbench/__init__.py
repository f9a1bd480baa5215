"""fedbench: a JAX-accelerated benchmark suite for federated learning in healthcare AI.

The pieces mirror the Hydra config groups in ``conf/``: :mod:`fedbench.dataset`,
:mod:`fedbench.partition`, :mod:`fedbench.model`, :mod:`fedbench.algorithm`; the vectorised round
loop is :mod:`fedbench.simulator` and the sequential reference it is tested against is
``tests/reference.py`` (a testing module, outside the package).
:func:`fedbench.run.run_experiment` runs one configured experiment.
"""

__version__ = "0.1.0"
