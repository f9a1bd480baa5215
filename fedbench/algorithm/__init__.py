"""Federated algorithms: one family per file, each a small set of pure functions.

An :class:`~fedbench.algorithm.base.Algorithm` says what a client adds to its local gradient,
what it sends, how the server aggregates and updates, and what per-client and server state it
keeps; the round (:mod:`fedbench.round`) is built from these pieces and tests no algorithm name.
A new algorithm is one new file here (a builder ``name(cfg) -> Algorithm``) plus its
``conf/algorithm/<name>.yaml``, registered in :data:`BUILDERS`. It declares what it is beside
its code: the keys a sweep may vary (``hyperparameters``), its messages (``messages``), what
leaves a site (``shared``) and how it runs under each privacy mechanism (``dp_aggregate``,
``dp_client``, ``dp_sample``); ``tests/test_combinations.py`` and ``tests/test_resume_matrix.py``
then check it in every combination with no test edited (``docs/architecture.md``).

References:
  FedSGD, FedAvg: H. B. McMahan et al., AISTATS 2017, Algorithm 1.
  FedProx: T. Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. (2).
  FedAdagrad, FedAdam, FedYogi: S. J. Reddi et al., "Adaptive Federated Optimization", ICLR
  2021, Algorithm 2.
  FedAvgM: T.-M. H. Hsu, H. Qi, M. Brown, arXiv:1909.06335, 2019.
  SCAFFOLD: S. P. Karimireddy et al., ICML 2020, Algorithm 1 (option II control variates).
  FedNova: J. Wang et al., NeurIPS 2020, Eq. 6-7.
  FedDyn: D. A. E. Acar et al., ICLR 2021, Algorithm 1.
  FedBuff: J. Nguyen et al., AISTATS 2022, Algorithm 1.
  Ditto: T. Li, S. Hu, A. Beirami, V. Smith, ICML 2021, Algorithm 1.
  FedPer: M. G. Arivazhagan et al., arXiv:1912.00818, 2019.
  FedRep: L. Collins et al., ICML 2021, Algorithm 1.
  semifed: FedPer's mechanism for any model parts (model.local), e.g. per-site input encoders
  (cf. LG-FedAvg, P. P. Liang et al., arXiv:2001.01523, 2020).
  pFedMe: C. T. Dinh, N. H. Tran, T. D. Nguyen, NeurIPS 2020, Algorithm 1.
  APFL: Y. Deng, M. M. Kamani, M. Mahdavi, arXiv:2003.13461, 2020, Algorithm 1.
  IFCA: A. Ghosh, J. Chung, D. Yin, K. Ramchandran, NeurIPS 2020, Algorithm 2.
  CFL: F. Sattler, K.-R. Müller, W. Samek, IEEE TNNLS 32(8), 2021, Algorithm 3.
  q-FFL (q-FedAvg): T. Li, M. Sanjabi, A. Beirami, V. Smith, ICLR 2020, Algorithm 2.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from fedbench.algorithm import (
    apfl, baselines, clustered, fedavg, fedavgm, fedbn, fedbuff, feddyn, fedexp, fednova, fedopt,
    moon, perfedavg, personalised, pfedme, qffl, scaffold,
)
from fedbench.algorithm.base import Algorithm, check_client_dp, weighted_mean
from fedbench.algorithm.fednova import fednova_mean
from fedbench.algorithm.fedopt import FedOptState, scale_by_fedopt
from fedbench.errors import ConfigError

BUILDERS: dict[str, Callable[..., Algorithm]] = {
    "fedsgd": fedavg.fedsgd,
    "fedavg": fedavg.fedavg,
    "fedprox": fedavg.fedprox,
    "fedadam": fedopt.fedadam,
    "fedyogi": fedopt.fedyogi,
    "fedadagrad": fedopt.fedadagrad,
    "fedavgm": fedavgm.fedavgm,
    "fedexp": fedexp.fedexp,
    "qffl": qffl.qffl,
    "scaffold": scaffold.scaffold,
    "fednova": fednova.fednova,
    "feddyn": feddyn.feddyn,
    "moon": moon.moon,
    "fedbuff": fedbuff.fedbuff,
    "ditto": personalised.ditto,
    "fedper": personalised.fedper,
    "fedbn": fedbn.fedbn,
    "silobn": fedbn.silobn,
    "finetune": personalised.finetune,
    "fedrep": personalised.fedrep,
    "semifed": personalised.semifed,
    "pfedme": pfedme.pfedme,
    "perfedavg": perfedavg.perfedavg,
    "apfl": apfl.apfl,
    "ifca": clustered.ifca,
    "cfl": clustered.cfl,
    "centralized": baselines.centralized,
    "local": baselines.local,
}
ALGORITHMS = tuple(BUILDERS)
FEDOPT = ("fedadam", "fedyogi", "fedadagrad")

__all__ = ["ALGORITHMS", "BUILDERS", "FEDOPT", "Algorithm", "FedOptState", "build_algorithm",
           "check_client_dp", "fednova_mean", "scale_by_fedopt", "weighted_mean"]


def algorithm_defaults(name: str) -> dict[str, Any]:
    """The settings of ``conf/algorithm/<name>.yaml``: the one source of every default.

    :func:`build_algorithm` fills keys a config leaves out from here, so a config built in code
    (``{"name": "fedprox"}``) runs what ``fedbench algorithm=fedprox`` runs.
    """
    return copy.deepcopy(_yaml_defaults(name))


@functools.cache
def _yaml_defaults(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    path = CONF_DIR / "algorithm" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("algorithm.name", name, f"an algorithm with a config file ({path} is missing)")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def build_algorithm(cfg: Mapping[str, Any], clients_per_round: int | None = None) -> Algorithm:
    """Builds the algorithm named by ``cfg["name"]``, validating its settings.

    Keys ``cfg`` leaves out take their values from ``conf/algorithm/<name>.yaml``
    (:func:`algorithm_defaults`); the code holds no defaults of its own.

    Raises:
      ConfigError: unknown name or an out-of-range setting.
    """
    name = cfg.get("name")
    if name not in BUILDERS:
        raise ConfigError("algorithm.name", name, "one of: " + ", ".join(ALGORITHMS))
    speed = cfg.get("site_speed", 0.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed >= 0:
        raise ConfigError("site_speed", speed, "a number >= 0 (lognormal sigma)")
    builder = BUILDERS[name]
    cfg = {**algorithm_defaults(name), **cfg}
    algorithm = builder(cfg, clients_per_round) if name == "fedbuff" else builder(cfg)
    return dataclasses.replace(algorithm, site_speed=float(speed))
