"""Distributed DP (``privacy=ddp``): each site adds its share of discrete noise, the server sees
only the modular sum.

For hospitals that do not trust the server with their clipped updates. Every round, each site
(Kairouz, Liu, Steinke 2021, Algorithm 1; Agarwal, Kairouz, Liu 2021 for Skellam):

1. clips its model delta to L2 norm ``clip`` (the update transform, as ``dp_client``);
2. multiplies it by ``scale``, rotates it with the round's public randomised Hadamard transform
   (zero-padded to ``d = 2^ceil(log2 p)`` for ``p`` parameters) and rounds it to integers
   conditionally on an L2 bound (:mod:`fedbench.privacy.discrete`);
3. adds its noise share, discrete Gaussian ``N_Z(0, s^2)`` or Skellam of variance ``s^2``
   (``privacy.distribution``), and reduces modulo ``2^b`` (``privacy.bits``);

secure aggregation reveals the modular sum (simulated here as that sum: the masks of
:mod:`fedbench.secagg` cancel in it exactly, tested there); the server centres it, unrotates it,
divides by ``scale`` and by the number of sites. The noise of the sum has variance ``n s^2``:
no party but the sum's holder sees less noise than that, and the server never sees a site's
update in the clear.

Settings: ``noise_multiplier`` ``z`` means the sum's noise std is ``z * clip`` (as DP-FedAvg's;
each site ``z clip / sqrt(n)``), or ``target_epsilon`` calibrates ``s``; ``scale`` follows from
the bits so that ``privacy.k_stddevs`` standard deviations of every coordinate of the sum fit
the modulus (:func:`fedbench.privacy.ddp_accounting.scale_for_bits`, iterated with the
calibration). Coordinates of the sum that leave ``[-2^(b-1), 2^(b-1))`` wrap around (modular
clipping): counted in ``ServerState.wraps``, reported as ``modular_wraps`` at every evaluation.

Accounting: :mod:`fedbench.privacy.ddp_accounting` (RDP of the papers' closed forms, composed
over rounds, with the rounding's inflated sensitivity). Every site takes part in every round
(``clients_per_round = num_clients``, no stragglers): the accounting assumes all ``n`` noise
shares, and no sampling amplification is claimed. The neighbouring relation is zero-out (one
site's update replaced by zeros; the site still adds its share).

Not simulated: real cryptography (the masks' key agreement is seeded in :mod:`fedbench.secagg`,
which is not yet wired into this round), site dropouts (a dropped site's noise share would be
missing), Poisson sampling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedbench.algorithm.base import check_client_dp
from fedbench.errors import ConfigError
from fedbench.privacy import ddp_accounting as acc
from fedbench.privacy import discrete
from fedbench.privacy.mechanism import BuildContext, Mechanism, every_site_every_round
from fedbench.transforms import UpdateTransform, clip_by_norm

DISTRIBUTIONS = ("dgauss", "skellam")
SECAGG = ("secagg", "secagg_plus")


@dataclasses.dataclass(frozen=True)
class DistributedDP(Mechanism):
    """Distributed DP with secure aggregation (see the module docstring).

    Attributes:
      clip: L2 bound on each site's model delta (model units).
      distribution: ``dgauss`` or ``skellam``.
      bits: bits per coordinate of the modular sum.
      scale: integer units per model unit.
      local_std: each site's noise std in integer units (0: none).
      num_clients: the sites, all of them in every round.
      dim: parameters of the model; padded: ``d``.
      beta: the conditional rounding's failure probability per try.
      secagg: ``secagg`` (Bonawitz et al. 2017: every pair of sites masks) or ``secagg_plus``
        (Bell et al. 2020: the edges of a ``degree``-regular graph).
      degree: SecAgg+'s ``k`` (None under SecAgg: ``n - 1``).
    """

    clip: float
    distribution: str
    bits: int
    scale: float
    local_std: float
    num_clients: int
    dim: int
    beta: float = discrete.DEFAULT_BETA
    secagg: str = "secagg"
    degree: int | None = None

    name = "ddp"
    unit = "client"
    relation = "zero_out"
    bounds_messages = True  # the sensitivity is the clip: every message keeps it
    encodes_messages = True  # integers modulo 2^b: no compressor composes with it
    # No noise, 32 bits, a clip no update of the matrix's tiny runs reaches: the clipped mean
    # up to the rounding (1 / scale per coordinate of the sum).
    identity = {"clip": 100.0, "target_epsilon": None, "noise_multiplier": 0, "bits": 32}

    @property
    def padded(self) -> int:
        return discrete.padded_dim(self.dim)

    @property
    def noise_multiplier(self) -> float:
        """The sum's noise std over the clip, in model units (``sqrt(n) s / (scale clip)``)."""
        return math.sqrt(self.num_clients) * self.local_std / self.scale / self.clip

    @classmethod
    def check_algorithm(cls, algorithm) -> None:
        check_client_dp(algorithm, "ddp")

    def bind(self, algorithm, settings, stragglers) -> DistributedDP:
        self.check_algorithm(algorithm)
        every_site_every_round("ddp", self.num_clients, settings, stragglers,
                               "every site adds its noise share in every round; sampling and "
                               "dropouts are not accounted")
        return self

    def protocol(self) -> dict[str, dict[str, int]]:
        """Secure aggregation's bytes and messages per phase for one round of the ``n`` sites
        and ``d`` coordinates of ``bits`` bits, none dropping
        (:func:`fedbench.secagg.costs.closed_form`)."""
        from fedbench.secagg.costs import closed_form

        return closed_form(self.num_clients, self.padded, self.bits, self.degree)

    def transforms(self) -> tuple:
        """The clip, then the exact size of what the site sends: secure aggregation's four
        upload messages, its masked vector of ``d`` coordinates of ``bits`` bits included."""
        sent = 8 * self.protocol()["total"]["client_up"]

        def update(delta, state, round_info):
            return delta, state, {"bits": jnp.asarray(sent, jnp.int32)}

        return (clip_by_norm(), UpdateTransform(lambda params: (), update))

    def protocol_down_bits(self) -> int:
        """Secure aggregation's three replies to each site (keys, shares, survivors)."""
        return 8 * self.protocol()["total"]["client_down"]

    def round_info(self, state) -> dict[str, Any]:
        return {"clip": self.clip}

    def init_state(self, state, num_clients: int):
        return state.replace(wraps=jnp.zeros((), jnp.int32))

    def aggregate(self, state, uploads, infos, valid, key, algorithm):
        """The sites' encoded updates summed modulo ``2^b``, decoded, divided by the sites. An
        audit's excluded canary site (``infos["absent"]``) is its zero-out neighbour: its update
        zeroed, its noise share still added (the relation the epsilon is accounted for)."""
        deltas = uploads["delta"]
        if "absent" in infos:
            gone = infos["absent"]
            deltas = jax.tree.map(
                lambda d: jnp.where(gone.reshape((-1,) + (1,) * (d.ndim - 1)), 0.0, d), deltas)
        mean, wrapped = self.noisy_mean(deltas, valid, key)
        private = algorithm.dp_aggregate
        aggregates = {"delta": mean} if private is None else private({"delta": mean})
        return aggregates, {"wraps": state.wraps + wrapped}

    def noisy_mean(self, deltas, valid, key):
        """``(mean, wrapped coordinates)`` of the cohort's clipped ``deltas`` (leading site
        axis) through the distributed mechanism."""
        flat = jax.vmap(lambda t: ravel_pytree(t)[0])(deltas).astype(jnp.float32)
        unravel = ravel_pytree(jax.tree.map(lambda d: d[0], deltas))[1]
        rotation_key, site_key = jax.random.split(key)
        keys = jax.random.split(site_key, flat.shape[0])
        kind = self.distribution if self.local_std > 0 else "none"

        def site(x, k):  # x clipped by the transform; site_integers clips again (exact)
            return discrete.site_integers(
                x, rotation_key, jax.random.fold_in(k, 0), jax.random.fold_in(k, 1),
                clip=self.clip, scale=self.scale, noise_kind=kind, stddev=self.local_std,
                beta=self.beta)[0]

        ints = jnp.where(valid[:, None], jax.vmap(site)(flat, keys), 0)
        total = discrete.modular_sum(discrete.wrap(ints, self.bits), self.bits)
        signed = discrete.centre(total, self.bits).astype(jnp.float32)
        wrapped = jnp.sum(discrete.wrapped(ints, self.bits))
        summed = discrete.unrotate(signed, rotation_key, self.dim) / self.scale
        return unravel(summed / self.num_clients), wrapped.astype(jnp.int32)

    def report(self, plan, rounds: int, participation, steps):
        eps, order = acc.epsilon(self.distribution, rounds, plan.delta,
                                 clip_units=self.clip * self.scale, local_std=self.local_std,
                                 sites=self.num_clients, dim=self.padded, beta=self.beta)
        return {"epsilon": eps, "order": order, "steps": rounds, "sampling": "none",
                "unit": "client"}

    def describe(self) -> dict[str, Any]:
        return {"distributed": {
            "distribution": self.distribution, "bits": self.bits, "scale": self.scale,
            "local_std": self.local_std, "padded_dim": self.padded,
            "secure_aggregation": {"protocol": self.secagg, "degree": self.degree,
                                   **self.protocol()["total"]},
            "trust": "the server sees only the modular sum of the sites' noised updates "
                     "(secure aggregation simulated, not cryptographic)"}}


def check(cfg: Mapping[str, Any], accountant: str) -> None:
    """``distribution``, ``bits``, ``k_stddevs``, ``beta``; the RDP accountant only.

    Raises:
      ConfigError: naming the key.
    """
    if cfg.get("distribution", "dgauss") not in DISTRIBUTIONS:
        raise ConfigError("privacy.distribution", cfg.get("distribution"),
                          "one of: " + ", ".join(DISTRIBUTIONS))
    bits = cfg.get("bits", 16)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= discrete.MAX_BITS:
        raise ConfigError("privacy.bits", bits, f"an integer in [2, {discrete.MAX_BITS}]")
    k = cfg.get("k_stddevs", 4.0)
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise ConfigError("privacy.k_stddevs", k, "a number > 0")
    beta = cfg.get("beta", discrete.DEFAULT_BETA)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ConfigError("privacy.beta", beta, "in [0, 1)")
    if accountant != "rdp":
        raise ConfigError("privacy.accountant", accountant,
                          "rdp with privacy=ddp (the distributed discrete Gaussian's and "
                          "Skellam's bounds are RDP)")
    if cfg.get("secagg", "secagg") not in SECAGG:
        raise ConfigError("privacy.secagg", cfg.get("secagg"), "one of: " + ", ".join(SECAGG))
    degree = cfg.get("secagg_degree")
    if cfg.get("secagg", "secagg") == "secagg_plus" and (
            isinstance(degree, bool) or not isinstance(degree, int) or degree < 1):
        raise ConfigError("privacy.secagg_degree", degree,
                          "an integer >= 1 with privacy.secagg=secagg_plus (the graph's k; "
                          "Bell et al. take k = O(log n))")
    if cfg.get("sampling", "fixed") != "fixed":
        raise ConfigError("privacy.sampling", cfg.get("sampling"),
                          "fixed with privacy=ddp (every site every round)")


def build(cfg: Mapping[str, Any], common: Mapping[str, Any], ctx: BuildContext
          ) -> tuple[DistributedDP, dict[str, Any]]:
    """The mechanism with its scale and noise share: from ``noise_multiplier``, or calibrated to
    ``target_epsilon`` alternately with the scale (three passes; the report accounts the
    final pair, whatever the calibration's convergence)."""
    if ctx.num_params is None:
        raise ConfigError("privacy.name", "ddp", "a run whose model size is known")
    kind, bits = cfg.get("distribution", "dgauss"), int(cfg.get("bits", 16))
    k, beta = float(cfg.get("k_stddevs", 4.0)), float(cfg.get("beta", discrete.DEFAULT_BETA))
    n, clip, dim = ctx.num_clients, common["clip"], int(ctx.num_params)
    if n >= discrete.MAX_SUMMANDS:
        raise ConfigError("data.num_clients", n,
                          f"fewer than {discrete.MAX_SUMMANDS} sites with privacy=ddp (the "
                          "count of wrapped coordinates is exact below that)")
    padded = discrete.padded_dim(dim)
    if common["noise"] is not None:  # the sum's std z * clip, each site's z clip / sqrt(n)
        model_std = common["noise"] * clip / math.sqrt(n)
        scale = acc.scale_for_bits(bits, n, clip, padded, model_std, k)
        local = model_std * scale
    else:
        model_std = (0.0 if math.isinf(common["target"]) else clip / math.sqrt(n))
        for _ in range(3):
            scale = acc.scale_for_bits(bits, n, clip, padded, model_std, k)
            local = acc.calibrate(kind, common["target"], ctx.rounds, common["delta"],
                                  clip_units=clip * scale, sites=n, dim=padded, beta=beta)
            model_std = local / scale
    plus = cfg.get("secagg", "secagg") == "secagg_plus"
    mech = DistributedDP(clip, kind, bits, scale, local, n, dim, beta,
                         "secagg_plus" if plus else "secagg",
                         int(cfg["secagg_degree"]) if plus else None)
    sent = 8 * mech.protocol()["total"]["client_up"]
    if sent >= 2**31:  # info["bits"] is int32 (JAX without x64)
        raise ConfigError("privacy.bits", bits,
                          f"fewer bits or a smaller model: one site's upload of {sent} bits "
                          f"({padded} coordinates) exceeds the int32 bit counter (2^31)")
    return mech, {"sampling": "none"}


def population(ctx: BuildContext) -> int:
    return ctx.num_clients


MECHANISM = DistributedDP


def bits_table(num_params: int = 55_210, sites: int = 20, rounds: int = 100,
               target: float = 8.0, delta: float = 1e-5, bits=(20, 18, 16, 14, 12, 10)
               ) -> list[tuple[int, str, float]]:
    """``(bits, distribution, noise multiplier of the sum)`` calibrated to ``target`` over
    ``rounds`` rounds of ``sites`` sites, for a model of ``num_params`` parameters (default: the
    default run's 2NN on digits); the cost of distributed DP against central DP's multiplier."""
    ctx = BuildContext(sites, sites, rounds, 1, 1, None, num_params)
    common = {"clip": 1.0, "noise": None, "target": target, "delta": delta, "accountant": "rdp"}
    return [(b, kind, build({"distribution": kind, "bits": b}, common, ctx)[0].noise_multiplier)
            for b in bits for kind in DISTRIBUTIONS]


if __name__ == "__main__":  # docs/privacy.md's table
    import dp_accounting

    def _central(z):
        rdp = dp_accounting.rdp.RdpAccountant(list(acc.ORDERS))
        rdp.compose(dp_accounting.GaussianDpEvent(z), 100)
        return rdp.get_epsilon(1e-5)

    low, high = 0.1, 100.0
    while high - low > 1e-4 * high:
        low, high = ((low + high) / 2, high) if _central((low + high) / 2) > 8 else (
            low, (low + high) / 2)
    print(f"central (dp_client, every site, RDP): noise multiplier {high:.3f}")
    for b, kind, z in bits_table():
        print(f"bits {b:2d}  {kind:8s} noise multiplier {z:.3f}  ({z / high:.2f}x central)")
