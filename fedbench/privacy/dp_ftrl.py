"""Cross-silo client-level DP without sampling (``privacy=dp_ftrl``): DP-FTRL, the matrix
mechanism on the prefix-sum workload (Kairouz et al. 2021; Choquette-Choo et al. 2023).

Every site takes part in every round (``clients_per_round == num_clients``: no amplification by
sampling). Each site's model delta is clipped to L2 norm ``clip`` (the first update transform);
round ``t``'s clipped sum ``x_t`` is released as ``x_t + sigma * (C^{-1} Z)_t``, where
``A = B C`` factorises the ``T x T`` prefix-sum matrix ``A`` (lower-triangular ones),
``B = A C^{-1}``, ``Z`` is ``T`` independent standard normal draws of the model's shape (one per
round, from the round's DP noise key) and ``sigma = noise_multiplier * clip * sens(C)``. The
model after ``t`` rounds of FedAvg with server learning rate 1 therefore carries the prefix-sum
noise ``sigma * (B Z)_t / num_clients``. The released sequence is a post-processing of
``C x + sigma Z``, one Gaussian mechanism whose L2 sensitivity under adding or removing one site
is ``clip * sens(C)``, with ``sens(C)`` the sensitivity of ``C`` when a site takes part in every
round (min separation 1, ``T`` participations), computed by
``jax_privacy.matrix_factorization.sensitivity.get_min_sep_sensitivity_upper_bound`` (exact
when ``C^T C`` is non-negative, an upper bound otherwise). With ``C`` lower triangular the
guarantee holds for adaptively chosen inputs (Denisov et al. 2022, Theorem 2.1). The whole run is
the Gaussian mechanism with noise multiplier ``z``, i.e. ``1/z``-GDP, accounted by dp-accounting
as ``GaussianDpEvent(z)`` (PLD or RDP accountant, ``privacy.accountant``); the epsilon reported
after any round is the whole horizon's (a bound for the prefix released so far).

``privacy.matrix`` picks ``C`` for the run's ``T = rounds``:

* ``tree``: the binary-tree (Fenwick) factorisation of Kairouz et al. 2021 as a square
  lower-triangular matrix: row ``t`` (1-based) sums the rounds ``(t - lowbit(t), t]``, the tree
  node that completes at round ``t``; ``B`` selects the nodes of ``t``'s binary decomposition.
  jax_privacy has no tree, so this one matrix is built here (:func:`tree_strategy`).
* ``banded``: ``jax_privacy.matrix_factorization.banded.optimize(T, bands=privacy.bands)``
  (column-normalised ``bands``-banded ``C``, Choquette-Choo et al. 2023b), optimised by the
  library for single participation and accounted here for every-round participation.
* ``dense``: ``jax_privacy.matrix_factorization.dense.optimize(T, epochs=T)``: the dense ``C``
  optimised for ``T`` participations with separation 1 (every round), for short runs. Under
  every-round participation this optimum is (near) diagonal: independent noise, DP-FedAvg with
  ``q = 1`` (the known limit of multi-epoch matrix factorisation, Choquette-Choo et al. 2023a).

The noise state (every round's draw ``Z_t``, ``[T, ...]`` per parameter) is
``ServerState.dp_noise``, saved in checkpoints, so a resumed run is bit-exact; it costs ``T``
times the model's memory (a streaming buffer for banded/BLT ``C`` is not implemented). Any
server optimiser (FedAdam's, momentum) is post-processing of the released updates, so privacy
holds for all algorithms ``check_client_dp`` accepts; the prefix-sum noise ``B Z`` is what the
model carries only under plain server SGD (DP-FTRL with momentum, DP-FTRLM, is not modelled).

References:
  P. Kairouz, B. McMahan, S. Song, O. Thakkar, A. Thakurta, Z. Xu. "Practical and Private (Deep)
  Learning without Sampling or Shuffling", ICML 2021.
  S. Denisov, H. B. McMahan, J. Rush, A. Smith, A. Thakurta. "Improved Differential Privacy for
  SGD via Optimal Private Linear Operators on Adaptive Streams", NeurIPS 2022.
  C. A. Choquette-Choo, H. B. McMahan, K. Rush, A. Thakurta. "Multi-Epoch Matrix Factorization
  Mechanisms for Private Machine Learning", ICML 2023 (a).
  C. A. Choquette-Choo et al. "(Amplified) Banded Matrix Factorization", NeurIPS 2023 (b).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench import hparams
from fedbench.algorithm.base import check_client_dp
from fedbench.errors import ConfigError
from fedbench.privacy.mechanism import BuildContext, Mechanism, every_site_every_round
from fedbench.transforms import clip_by_norm

MATRICES = ("tree", "banded", "dense")


def tree_strategy(rounds: int) -> np.ndarray:
    """The binary-tree strategy ``C`` (``rounds x rounds``, 0/1, lower triangular): row ``t``
    (1-based) covers rounds ``t - lowbit(t) + 1 .. t`` (Kairouz et al. 2021's tree node that
    completes at round ``t``)."""
    C = np.zeros((rounds, rounds))
    for t in range(1, rounds + 1):
        C[t - 1, t - (t & -t):t] = 1.0
    return C


@functools.lru_cache(maxsize=16)
def strategy(matrix: str, rounds: int, bands: int) -> np.ndarray:
    """The strategy matrix ``C`` (float64 ``[T, T]``) of ``privacy.matrix``."""
    if matrix == "tree":
        return tree_strategy(rounds)
    from jax_privacy.matrix_factorization import banded, dense

    if matrix == "banded":
        C = banded.optimize(rounds, bands=min(bands, rounds)).materialize()
    else:
        C = dense.optimize(rounds, epochs=rounds)
    return np.asarray(C, np.float64)


@functools.lru_cache(maxsize=16)
def every_round_sensitivity(matrix: str, rounds: int, bands: int) -> float:
    """``sens(C)`` when one site takes part in all ``rounds`` rounds (jax_privacy)."""
    from jax_privacy.matrix_factorization import sensitivity

    C = jnp.asarray(strategy(matrix, rounds, bands))
    return float(sensitivity.get_min_sep_sensitivity_upper_bound(
        C, min_sep=1, max_participations=rounds))


@dataclasses.dataclass(frozen=True)
class DPFTRL(Mechanism):
    """DP-FTRL: clipped sum plus correlated matrix-factorisation noise (module docstring).

    Attributes:
      clip: L2 bound on each site's model delta.
      noise_multiplier: ``z``; the noise std is ``z * clip * sensitivity`` per draw.
      num_clients: sites, all of which take part in every round.
      rounds: the horizon ``T`` the factorisation is built for.
      matrix: ``tree`` | ``banded`` | ``dense``; bands: ``banded``'s bands.
      sensitivity: ``sens(C)`` under every-round participation.
    """

    clip: float
    noise_multiplier: float
    num_clients: int
    rounds: int
    matrix: str
    bands: int
    sensitivity: float

    name = "dp_ftrl"
    unit = "client"
    bounds_messages = True
    identity = {"matrix": "tree", "clip": 1e6, "target_epsilon": None, "noise_multiplier": 0}

    @classmethod
    def check_algorithm(cls, algorithm) -> None:
        check_client_dp(algorithm, "dp_ftrl")

    def bind(self, algorithm, settings, stragglers) -> DPFTRL:
        self.check_algorithm(algorithm)
        every_site_every_round("dp_ftrl", self.num_clients, settings, stragglers,
                               "every site in every round; no participation schema is "
                               "implemented")
        return self

    @property
    def stddev(self) -> float:
        z = self.noise_multiplier
        return z * self.clip * self.sensitivity if z > 0 else 0.0  # z = 0: none, even clip=inf

    def noise_rows(self) -> np.ndarray:
        """``C^{-1}`` (float64 ``[T, T]``): row ``t`` weighs the draws ``Z_0..Z_t``."""
        C = strategy(self.matrix, self.rounds, self.bands)
        return np.linalg.solve(C, np.eye(self.rounds))

    def transforms(self) -> tuple:
        return (clip_by_norm(),)

    def round_info(self, state) -> dict[str, Any]:
        return {"clip": hparams.get(state.hparams, "clip", self.clip)}

    def init_state(self, state, num_clients: int):
        zeros = jax.tree.map(lambda p: jnp.zeros((self.rounds, *p.shape), p.dtype), state.params)
        return state.replace(dp_noise=zeros)

    def aggregate(self, state, uploads, infos, valid, key, algorithm):
        """``(sum of clipped deltas + sigma (C^{-1} Z)_t) / num_clients`` and the noise state
        with this round's draw ``Z_t`` stored at row ``t = state.round``. A site an audit
        marks ``absent`` counts as not taking part (it sends a zero update)."""
        if "absent" in infos:
            valid = valid & ~infos["absent"]
        stddev = hparams.get(state.hparams, "noise_std", self.stddev)
        t = state.round
        row = jnp.asarray(self.noise_rows(), jnp.float32)[t]  # [T], zero beyond t
        weights = valid.astype(jnp.float32)
        total = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), uploads["delta"])
        leaves, treedef = jax.tree.flatten(state.dp_noise)
        keys = jax.random.split(key, len(leaves))
        drawn = [buf.at[t].set(jax.random.normal(k, buf.shape[1:], buf.dtype))
                 for buf, k in zip(leaves, keys)]
        noise_state = jax.tree.unflatten(treedef, drawn)
        mean = jax.tree.map(
            lambda s, buf: (s + stddev * jnp.tensordot(row.astype(buf.dtype), buf, axes=1))
            / self.num_clients, total, noise_state)
        post = algorithm.dp_aggregate
        return ({"delta": mean} if post is None else post({"delta": mean})), {
            "dp_noise": noise_state}

    def carried(self) -> dict[str, float]:
        return {"clip": self.clip, "noise_std": self.stddev}

    def describe(self) -> dict[str, Any]:
        return {"matrix": self.matrix, "bands": self.bands if self.matrix == "banded" else None,
                "horizon": self.rounds, "sensitivity": self.sensitivity,
                "participation": "every site in every round"}

    def report(self, plan, rounds: int, participation, steps):
        """The whole horizon's Gaussian mechanism, ``GaussianDpEvent(z)`` (dp-accounting)."""
        return {"epsilon": _epsilon(self.noise_multiplier, plan.delta, plan.accountant),
                "steps": rounds, "sampling": "none", "unit": "client"}


def _epsilon(z: float, delta: float, accountant: str) -> float:
    import dp_accounting

    from fedbench.privacy.accounting import epsilon

    if z <= 0:
        return math.inf
    return epsilon(dp_accounting.GaussianDpEvent(z), delta, accountant)


def calibrate(target: float, delta: float, accountant: str) -> float:
    """The smallest ``z`` (to 1e-4 relative) whose one Gaussian mechanism spends ``target``."""
    if math.isinf(target):
        return 0.0
    low, high = 0.0, 1.0
    while _epsilon(high, delta, accountant) > target:
        low, high = high, 2 * high
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        low, high = (mid, high) if _epsilon(mid, delta, accountant) > target else (low, mid)
    return high


def check(cfg: Mapping[str, Any], accountant: str) -> None:
    """``matrix``, ``bands``; no sampling; no secure noise (the noise state is checkpointed)."""
    matrix = cfg.get("matrix", "banded")
    if matrix not in MATRICES:
        raise ConfigError("privacy.matrix", matrix, "one of: " + ", ".join(MATRICES))
    bands = cfg.get("bands", 4)
    if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
        raise ConfigError("privacy.bands", bands, "an integer >= 1")
    if cfg.get("sampling") not in (None, "none"):
        raise ConfigError("privacy.sampling", cfg["sampling"],
                          "unset with privacy=dp_ftrl (every site in every round)")
    if cfg.get("noise", "reproducible") == "secure":
        raise ConfigError("privacy.noise", "secure",
                          "reproducible with privacy=dp_ftrl (its noise state is checkpointed)")


def build(cfg: Mapping[str, Any], common: Mapping[str, Any], ctx: BuildContext):
    matrix, bands = cfg.get("matrix", "banded"), int(cfg.get("bands", 4))
    noise = common["noise"]
    if noise is None:
        noise = calibrate(common["target"], common["delta"], common["accountant"])
    sens = every_round_sensitivity(matrix, ctx.rounds, bands)
    mech = DPFTRL(common["clip"], noise, ctx.num_clients, ctx.rounds, matrix, bands, sens)
    return mech, {"sampling": "none"}


def population(ctx: BuildContext) -> int:
    return ctx.num_clients


MECHANISM = DPFTRL
