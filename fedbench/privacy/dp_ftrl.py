"""Cross-silo client-level DP without sampling (``privacy=dp_ftrl``): DP-FTRL, the matrix
mechanism on the prefix-sum workload (Kairouz et al. 2021; Choquette-Choo et al. 2023).

Participation is fixed in advance, never sampled (no amplification by sampling),
``privacy.participation``:

* ``every_round``: every site takes part in every round (``clients_per_round == num_clients``).
* ``cyclic`` with ``privacy.cycle = b``: the sites are split into ``b`` fixed groups, site ``i``
  in group ``i mod b`` (by index, no randomness), and round ``t`` (0-based) is the round of
  group ``t mod b`` (:func:`cyclic_group`). ``num_clients`` must be a multiple of ``b`` (equal
  groups; unequal ones are refused, not padded, so the denominator is every round's cohort) and
  ``clients_per_round`` must be the group size ``num_clients / b``. A site takes part
  ``ceil(T/b)`` or ``floor(T/b)`` times, always exactly ``b`` rounds apart: the ``(k, b)``
  fixed-epoch-order participation of Choquette-Choo et al. 2023a (Sec. 2) with
  ``k = ceil(T/b)`` participations, hence also ``b``-min-separated (Choquette-Choo et al.
  2023b). ``every_round`` is ``cyclic`` with ``b = 1``.

Each site's model delta is clipped to L2 norm ``clip`` (the first update transform); round
``t``'s clipped sum ``x_t`` (over the round's cohort) is released as ``x_t + sigma (C^{-1} Z)_t``,
where ``A = B C`` factorises the ``T x T`` prefix-sum matrix ``A`` (lower-triangular ones),
``B = A C^{-1}``, ``Z`` is ``T`` independent standard normal draws of the model's shape (one per
round, from the round's DP noise key) and ``sigma = noise_multiplier * clip * sens(C)``. The
model after ``t`` rounds of FedAvg with server learning rate 1 therefore carries the prefix-sum
noise ``sigma (B Z)_t / m``, ``m`` the cohort (``num_clients``, or ``num_clients / b``). The
released sequence is a post-processing of ``C x + sigma Z``, one Gaussian mechanism whose L2
sensitivity to one site's updates (its group being a fixed public attribute of the site) is
``clip * sens(C)``, with ``sens(C)`` the largest over the participation patterns the schema
allows (Choquette-Choo et al. 2023b, Eq. 5): ``sqrt(max_P sum_{i, j in P} |(C^T C)_ij|)``,
exact when ``(C^T C)_{P,P}`` is non-negative or diagonal. ``every_round``:
``jax_privacy.matrix_factorization.sensitivity.get_min_sep_sensitivity_upper_bound(C,
min_sep=1, max_participations=T)`` (the one pattern "all rounds"). ``cyclic``: the ``b``
cyclic patterns, ``sensitivity.fixed_epoch_sensitivity_for_X`` on ``C^T C`` padded with zero
rounds to ``k b`` (:func:`fedbench.privacy.factorisation.cyclic_sensitivity`); the library's
``b``-min-separation bound ``get_min_sep_sensitivity_upper_bound(C, min_sep=b,
max_participations=k)``, which allows
patterns the schedule never produces, is never smaller and is reported beside it
(``describe()["min_sep_sensitivity"]``): equal for ``tree``, ``banded`` and independent noise,
about 10% above for ``dense`` (T = 20, b = 3, 4, 5). With ``C`` lower triangular the guarantee
holds for adaptively chosen inputs (Denisov et al. 2022, Theorem 2.1). The whole run is the
Gaussian mechanism with noise multiplier ``z``, i.e. ``1/z``-GDP, accounted by dp-accounting as
``GaussianDpEvent(z)`` (PLD or RDP accountant, ``privacy.accountant``), whatever the
participation: epsilon depends on ``z`` only, the schema changes ``sens(C)`` and so the noise
``sigma``; the epsilon reported after any round is the whole horizon's (a bound for the prefix
released so far).

``privacy.matrix`` picks ``C`` for the run's ``T = rounds``: ``tree``, ``banded``, ``blt`` or
``dense``, built and measured in :mod:`fedbench.privacy.factorisation` (with the prefix-sum error
of each under each participation schema).

The noise state is ``ServerState.dp_noise``, saved in checkpoints, so a resumed run is bit-exact:
for ``blt`` the streaming state of ``C^{-1}`` (jax_privacy's
``BufferedToeplitz.inverse_as_streaming_matrix``, its parameters cast to float32: ``C^{-1}`` of
a BLT is a BLT, so round ``t``'s noise ``(C^{-1} Z)_t`` needs only ``Z_t`` and a few buffers,
McMahan, Xu, Zhang et al. 2024, Sec. 3); for ``tree``, ``banded`` and ``dense`` every round's
draw ``Z_t`` (``[T, ...]`` per parameter, ``T`` times the model's memory). Any
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
  C. A. Choquette-Choo, A. Ganesh, R. McKenna, H. B. McMahan, K. Rush, A. Thakurta, Z. Xu.
  "(Amplified) Banded Matrix Factorization: A unified approach to private training",
  NeurIPS 2023 (b).
  H. B. McMahan, Z. Xu, Y. Zhang et al. "A Hassle-free Algorithm for Private Learning in
  Practice: Don't Use Tree Aggregation, Use BLTs", 2024.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench import hparams
from fedbench.algorithm.base import check_client_dp
from fedbench.errors import ConfigError
from fedbench.privacy.factorisation import (MATRICES, blt_noise_stream, blt_strategy,
                                            min_sep_sensitivity, participations,
                                            schema_sensitivity, strategy)
from fedbench.privacy.mechanism import BuildContext, Mechanism, every_site_every_round
from fedbench.transforms import clip_by_norm

PARTICIPATIONS = ("every_round", "cyclic")


def cyclic_group(round, num_clients: int, cycle: int) -> jax.Array:
    """The sites of round ``round``'s group under cyclic participation (int32
    ``[num_clients / cycle]``, increasing): site ``i`` is in group ``i mod cycle`` and round
    ``t`` is group ``t mod cycle``'s (Choquette-Choo et al. 2023a, Sec. 2, ``(k, b)``
    fixed-epoch order with ``b = cycle``). ``round`` may be traced."""
    group = jnp.asarray(round, jnp.int32) % cycle
    return (group + cycle * jnp.arange(num_clients // cycle, dtype=jnp.int32)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class DPFTRL(Mechanism):
    """DP-FTRL: clipped sum plus correlated matrix-factorisation noise (module docstring).

    Attributes:
      clip: L2 bound on each site's model delta.
      noise_multiplier: ``z``; the noise std is ``z * clip * sensitivity`` per draw.
      num_clients: sites in the federation.
      rounds: the horizon ``T`` the factorisation is built for.
      matrix: ``tree`` | ``banded`` | ``blt`` | ``dense``; bands: ``banded``'s bands.
      sensitivity: ``sens(C)`` under the participation schema.
      participation: ``every_round`` | ``cyclic``; cycle: the groups ``b`` (1: every round).
    """

    clip: float
    noise_multiplier: float
    num_clients: int
    rounds: int
    matrix: str
    bands: int
    sensitivity: float
    participation: str = "every_round"
    cycle: int = 1

    name = "dp_ftrl"
    unit = "client"
    hyperparameters = ("noise_multiplier", "clip", "target_epsilon")
    alternatives = (("target_epsilon", "noise_multiplier"),)  # either one sets the noise
    bounds_messages = True
    identity = {"matrix": "tree", "clip": 1e6, "target_epsilon": None, "noise_multiplier": 0}

    @classmethod
    def check_algorithm(cls, algorithm) -> None:
        check_client_dp(algorithm, "dp_ftrl")

    def bind(self, algorithm, settings, stragglers) -> DPFTRL:
        self.check_algorithm(algorithm)
        if self.participation == "every_round":
            every_site_every_round("dp_ftrl", self.num_clients, settings, stragglers,
                                   "privacy.participation=every_round: every site in every "
                                   "round; privacy.participation=cyclic for a cohort of "
                                   "num_clients / privacy.cycle")
            return self
        check_cyclic_cohort(self.num_clients, settings.clients_per_round, self.cycle)
        if stragglers is not None and stragglers.fraction > 0:
            raise ConfigError("stragglers.fraction", stragglers.fraction,
                              "0 with privacy=dp_ftrl (every site of the round's group sends "
                              "its update)")
        return self

    @property
    def cohort(self) -> int:
        """Sites per round, the fixed denominator: ``num_clients / cycle``."""
        return self.num_clients // self.cycle

    def sample_cohort(self, key, num_clients: int, round=None):
        """Under ``cyclic`` the round's group (:func:`cyclic_group`), all valid, no overflow;
        under ``every_round`` None (the simulator's cohort: every site)."""
        if self.participation == "every_round":
            return None
        if round is None:
            raise NotImplementedError(
                "privacy.participation=cyclic needs the round index in "
                "Mechanism.sample_cohort(key, num_clients, round); this simulator does not "
                "pass it")
        ids = cyclic_group(round, num_clients, self.cycle)
        return ids, jnp.ones(ids.shape, bool), jnp.zeros((), jnp.int32)

    @property
    def stddev(self) -> float:
        z = self.noise_multiplier
        return z * self.clip * self.sensitivity if z > 0 else 0.0  # z = 0: none, even clip=inf

    def noise_rows(self) -> np.ndarray:
        """``C^{-1}`` (float64 ``[T, T]``): row ``t`` weighs the draws ``Z_0..Z_t``."""
        C = strategy(self.matrix, self.rounds, self.bands, self.cycle)
        return np.linalg.solve(C, np.eye(self.rounds))

    def transforms(self) -> tuple:
        return (clip_by_norm(),)

    def round_info(self, state) -> dict[str, Any]:
        return {"clip": hparams.get(state.hparams, "clip", self.clip)}

    @property
    def streamed(self) -> bool:
        """``blt``: the noise state is the inverse BLT's buffers (module docstring)."""
        return self.matrix == "blt"

    @property
    def independent(self) -> bool:
        """A BLT without buffers: ``C = I``, each round's draw is its noise, no state (the
        optimum every round; zero-size arrays have no place in a checkpoint)."""
        return self.streamed and blt_strategy(self.rounds, self.cycle).buf_decay.shape[0] == 0

    def init_state(self, state, num_clients: int):
        if self.independent:
            return state.replace(dp_noise=None)
        if self.streamed:
            shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), state.params)
            buffers = blt_noise_stream(self.rounds, self.cycle).init_multiply(shapes)
            return state.replace(dp_noise=buffers)
        zeros = jax.tree.map(lambda p: jnp.zeros((self.rounds, *p.shape), p.dtype), state.params)
        return state.replace(dp_noise=zeros)

    def _correlated(self, state, key):
        """This round's ``(C^{-1} Z)_t`` per parameter (unit variance draws ``Z_t``, one key per
        leaf) and the next noise state."""
        leaves, treedef = jax.tree.flatten(state.params)
        keys = jax.random.split(key, len(leaves))
        draws = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype)
                                             for p, k in zip(leaves, keys)])
        if self.independent:
            return draws, None
        if self.streamed:
            return blt_noise_stream(self.rounds, self.cycle).multiply_next(draws, state.dp_noise)
        t = state.round
        row = jnp.asarray(self.noise_rows(), jnp.float32)[t]  # [T], zero beyond t
        stored = jax.tree.map(lambda buf, z: buf.at[t].set(z), state.dp_noise, draws)
        noise = jax.tree.map(lambda buf: jnp.tensordot(row.astype(buf.dtype), buf, axes=1),
                             stored)
        return noise, stored

    def aggregate(self, state, uploads, infos, valid, key, algorithm):
        """``(sum of clipped deltas + sigma (C^{-1} Z)_t) / cohort`` and the next noise state
        (:meth:`_correlated`: this round's draw stored at row ``t = state.round``, or the BLT's
        buffers moved on). A site an audit
        marks ``absent`` counts as not taking part (it sends a zero update)."""
        if "absent" in infos:
            valid = valid & ~infos["absent"]
        stddev = hparams.get(state.hparams, "noise_std", self.stddev)
        weights = valid.astype(jnp.float32)
        total = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), uploads["delta"])
        noise, noise_state = self._correlated(state, key)
        mean = jax.tree.map(lambda s, n: (s + stddev * n) / self.cohort, total, noise)
        post = algorithm.dp_aggregate
        return ({"delta": mean} if post is None else post({"delta": mean})), {
            "dp_noise": noise_state}

    def carried(self) -> dict[str, float]:
        return {"clip": self.clip, "noise_std": self.stddev}

    def describe(self) -> dict[str, Any]:
        cyclic = self.participation == "cyclic"
        k = participations(self.rounds, self.cycle)
        return {"matrix": self.matrix, "bands": self.bands if self.matrix == "banded" else None,
                "horizon": self.rounds, "sensitivity": self.sensitivity,
                "participation": (f"cyclic: site i in group i mod {self.cycle}, round t is "
                                  f"group t mod {self.cycle}'s; at most {k} rounds per site, "
                                  f"{self.cycle} apart") if cyclic
                else "every site in every round",
                "min_sep_sensitivity": min_sep_sensitivity(
                    strategy(self.matrix, self.rounds, self.bands, self.cycle), self.cycle)
                if cyclic else self.sensitivity}

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
    """``matrix``, ``bands``, ``participation``, ``cycle``; no sampling; no secure noise (the
    noise state is checkpointed)."""
    matrix = cfg.get("matrix", "blt")
    if matrix not in MATRICES:
        raise ConfigError("privacy.matrix", matrix, "one of: " + ", ".join(MATRICES))
    bands = cfg.get("bands", 4)
    if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
        raise ConfigError("privacy.bands", bands, "an integer >= 1")
    participation = cfg.get("participation", "every_round")
    if participation not in PARTICIPATIONS:
        raise ConfigError("privacy.participation", participation,
                          "one of: " + ", ".join(PARTICIPATIONS))
    cycle = cfg.get("cycle")
    if participation == "every_round" and cycle is not None:
        raise ConfigError("privacy.cycle", cycle,
                          "null with privacy.participation=every_round (set "
                          "privacy.participation=cyclic for groups)")
    if participation == "cyclic":
        if isinstance(cycle, bool) or not isinstance(cycle, int) or cycle < 1:
            raise ConfigError("privacy.cycle", cycle,
                              "an integer >= 1 with privacy.participation=cyclic (the number "
                              "of groups b; round t is group t mod b's)")
        if matrix == "banded" and bands > cycle:
            raise ConfigError("privacy.bands", bands,
                              f"at most privacy.cycle={cycle} with privacy.matrix=banded and "
                              "privacy.participation=cyclic (bands <= the separation: "
                              "sensitivity sqrt(k), Choquette-Choo et al. 2023b)")
    if cfg.get("sampling") not in (None, "none"):
        raise ConfigError("privacy.sampling", cfg["sampling"],
                          "unset with privacy=dp_ftrl (participation is fixed, not sampled)")
    if cfg.get("noise", "reproducible") == "secure":
        raise ConfigError("privacy.noise", "secure",
                          "reproducible with privacy=dp_ftrl (its noise state is checkpointed)")


def check_cyclic_cohort(num_clients: int, clients_per_round: int, cycle: int,
                        rounds: int | None = None) -> None:
    """Cyclic participation needs equal groups (``num_clients`` a multiple of ``cycle``; not
    padded, so every round releases a sum over the same number of sites), a cohort of one group
    and, given ``rounds``, at most ``rounds`` groups (a later group would never take part).

    Raises:
      ConfigError: naming ``privacy.cycle`` or ``clients_per_round``.
    """
    if num_clients % cycle:
        raise ConfigError("privacy.cycle", cycle,
                          f"a divisor of num_clients={num_clients} with "
                          "privacy.participation=cyclic (equal groups; site i is in group "
                          "i mod cycle)")
    if rounds is not None and cycle > rounds:
        raise ConfigError("privacy.cycle", cycle,
                          f"at most rounds={rounds} with privacy.participation=cyclic (group "
                          "t takes part first in round t)")
    if clients_per_round != num_clients // cycle:
        raise ConfigError("clients_per_round", clients_per_round,
                          f"num_clients / privacy.cycle = {num_clients} / {cycle} = "
                          f"{num_clients // cycle} with privacy=dp_ftrl and "
                          "privacy.participation=cyclic (one group per round)")


def build(cfg: Mapping[str, Any], common: Mapping[str, Any], ctx: BuildContext):
    matrix, bands = cfg.get("matrix", "blt"), int(cfg.get("bands", 4))
    participation = cfg.get("participation", "every_round")
    cycle = 1 if participation == "every_round" else int(cfg["cycle"])
    if participation == "cyclic":
        check_cyclic_cohort(ctx.num_clients, ctx.clients_per_round, cycle, ctx.rounds)
    noise = common["noise"]
    if noise is None:
        noise = calibrate(common["target"], common["delta"], common["accountant"])
    sens = schema_sensitivity(matrix, ctx.rounds, bands, cycle)
    mech = DPFTRL(common["clip"], noise, ctx.num_clients, ctx.rounds, matrix, bands, sens,
                  participation, cycle)
    return mech, {"sampling": "none"}


def population(ctx: BuildContext) -> int:
    return ctx.num_clients


MECHANISM = DPFTRL

