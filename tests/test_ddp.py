"""Distributed DP, ``privacy=ddp`` (issue 32 items 2-3): accounting and the mechanism.

* Accounting against dp-accounting: with a discrete Gaussian share large enough that the
  ``tau`` terms vanish (Kairouz et al. 2021, Prop. 14's first term), ``rounds`` rounds spend
  exactly what dp-accounting's RDP accountant gives ``rounds`` Gaussian mechanisms of the same
  noise over the rounded sensitivity; the Skellam bound (Agarwal et al. 2021) exceeds that
  Gaussian's and tends to it as the variance grows; a small discrete Gaussian share spends more
  than its continuous counterpart (tau > 0).
* The calibration meets the target and is tight to its tolerance.
* The mechanism: the decoded mean's noise has the variance of ``n`` shares; without noise it is
  the clipped mean up to the rounding; the scale chosen for the bits keeps the modular sum from
  wrapping, and a too-small headroom makes it wrap (counted).
* Bytes up and down are secure aggregation's messages, counted by hand (SecAgg and SecAgg+);
  compressors are refused (the mechanism quantises).
* Bad settings name their key; a partial cohort is refused.
"""

from __future__ import annotations

import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.errors import ConfigError
from fedbench.privacy import ddp_accounting as acc
from fedbench.privacy.ddp import DistributedDP
from fedbench.run import build_simulator

DELTA = 1e-5
TINY = ["dataset=breast_cancer", "partition=iid", "model=logreg", "rounds=1", "eval_every=1",
        "batch_size=32", "checkpoint_every=0"]


def _gaussian_epsilon(z: float, rounds: int) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(list(acc.ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize("sites, rounds", [(1, 1), (10, 50), (100, 200)])
def test_large_discrete_gaussian_shares_spend_the_gaussian_epsilon(sites, rounds):
    clip_units, dim, local = 500.0, 1024, 40.0  # tau = 10 sum exp(-2 pi^2 1600 k/(k+1)) = 0
    assert acc.tau(local, sites) == 0.0
    l2, _ = acc.sensitivities(clip_units, dim)
    assert clip_units < l2 < clip_units + math.sqrt(dim)  # the rounding's inflation
    got, _ = acc.epsilon("dgauss", rounds, DELTA, clip_units=clip_units, local_std=local,
                         sites=sites, dim=dim)
    assert got == pytest.approx(_gaussian_epsilon(math.sqrt(sites) * local / l2, rounds),
                                rel=1e-9)


def test_small_shares_spend_more_than_the_continuous_gaussian():
    clip_units, dim, sites, rounds = 20.0, 4096, 50, 100
    local = 0.4  # tau about 10 sum exp(-3.2 k/(k+1)) > 0.4: the sum is not a discrete Gaussian
    assert acc.tau(local, sites) > 0.1 and acc.tau(local, 1) == 0.0
    l2, _ = acc.sensitivities(clip_units, dim)
    got, _ = acc.epsilon("dgauss", rounds, DELTA, clip_units=clip_units, local_std=local,
                         sites=sites, dim=dim)
    assert got > _gaussian_epsilon(math.sqrt(sites) * local / l2, rounds)


def test_skellam_tends_to_the_gaussian_of_its_variance():
    dim, sites, rounds = 1024, 20, 100
    gaps = []
    for clip_units, local in ((10.0, 3.0), (100.0, 30.0), (1e4, 3e3)):
        l2, _ = acc.sensitivities(clip_units, dim)
        gauss = _gaussian_epsilon(math.sqrt(sites) * local / l2, rounds)
        sk, _ = acc.epsilon("skellam", rounds, DELTA, clip_units=clip_units, local_std=local,
                            sites=sites, dim=dim)
        assert sk >= gauss
        gaps.append(sk / gauss - 1)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


@pytest.mark.parametrize("kind", ["dgauss", "skellam"])
def test_calibration_meets_the_target_tightly(kind):
    kw = dict(clip_units=300.0, sites=16, dim=2048)
    local = acc.calibrate(kind, 4.0, 30, DELTA, **kw, rtol=1e-3)
    assert acc.epsilon(kind, 30, DELTA, local_std=local, **kw)[0] <= 4.0
    assert acc.epsilon(kind, 30, DELTA, local_std=local * (1 - 2e-3), **kw)[0] > 4.0
    assert acc.calibrate(kind, math.inf, 30, DELTA, **kw) == 0.0


def _mechanism(sites=8, dim=1000, bits=16, local=0.0, scale=None, k=4.0, clip=1.0,
               kind="dgauss"):
    padded = 1 << (dim - 1).bit_length()
    if scale is None:
        scale = acc.scale_for_bits(bits, sites, clip, padded, local, k)
        local = local * scale
    return DistributedDP(clip, kind, bits, scale, local, sites, dim)


def _deltas(sites, dim, norm, seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed), (sites, dim))
    return {"w": x / jnp.linalg.norm(x, axis=1, keepdims=True) * norm}


@pytest.mark.parametrize("kind", ["dgauss", "skellam"])
def test_the_noise_of_the_mean_is_n_shares(kind):
    sites, dim, local, scale = 8, 4096, 50.0, 10.0
    mech = _mechanism(sites, dim, bits=20, local=local, scale=scale, kind=kind)
    mean, wraps = mech.noisy_mean({"w": jnp.zeros((sites, dim))}, jnp.ones(sites, bool),
                                  jax.random.PRNGKey(1))
    want = sites * local**2 / scale**2 / sites**2  # the sum's variance n s^2, over n^2
    assert int(wraps) == 0
    assert float(jnp.var(mean["w"])) == pytest.approx(want, rel=0.08)  # 4096 coordinates


def test_without_noise_it_is_the_clipped_mean_up_to_the_rounding():
    sites, dim = 6, 777
    mech = _mechanism(sites, dim, bits=24, clip=1.0)
    deltas = _deltas(sites, dim, norm=np.linspace(0.5, 3.0, sites)[:, None])
    valid = jnp.array([True] * 5 + [False])
    mean, wraps = mech.noisy_mean(deltas, valid, jax.random.PRNGKey(2))
    norms = jnp.linalg.norm(deltas["w"], axis=1, keepdims=True)
    clipped = deltas["w"] * jnp.minimum(1.0, 1.0 / norms)
    want = jnp.sum(clipped[:5], axis=0) / sites  # the fixed denominator: every site
    assert int(wraps) == 0
    # each coordinate of the sum is off by the rounding of 5 sites: at most about 5 / scale
    assert float(jnp.max(jnp.abs(mean["w"] - want))) < 5 / mech.scale / sites * 4
    assert float(jnp.max(jnp.abs(mean["w"] - want))) > 0  # rounded, not exact


def test_the_scale_for_the_bits_keeps_the_sum_in_range():
    sites, dim, bits = 10, 2048, 10
    deltas = _deltas(sites, dim, norm=1.0)  # every site at the clip, all alike in sign
    deltas = {"w": jnp.abs(deltas["w"])}
    ok = _mechanism(sites, dim, bits=bits, local=0.05, k=4.0)
    tight = _mechanism(sites, dim, bits=bits, local=0.05, k=0.5)
    _, fine = ok.noisy_mean(deltas, jnp.ones(sites, bool), jax.random.PRNGKey(3))
    _, wrapped = tight.noisy_mean(deltas, jnp.ones(sites, bool), jax.random.PRNGKey(3))
    assert int(fine) == 0 and int(wrapped) > 0


@pytest.mark.parametrize("override, key", [
    ("privacy.accountant=pld", "privacy.accountant"),
    ("privacy.bits=1", "privacy.bits"),
    ("privacy.distribution=laplace", "privacy.distribution"),
    ("privacy.k_stddevs=0", "privacy.k_stddevs"),
    ("privacy.sampling=poisson", "privacy.sampling"),
    ("clients_per_round=2", "clients_per_round"),
    ("privacy.secagg=secagg_plus", "privacy.secagg_degree"),
    ("privacy.secagg=shamir", "privacy.secagg"),
])
def test_bad_settings_name_the_key(override, key):
    base = TINY + ["num_clients=3", "clients_per_round=3", "privacy=ddp"]
    with pytest.raises(ConfigError) as err:
        build_simulator(compose(base + [override]))
    assert err.value.key == key


def test_a_run_reports_zero_out_and_its_wraps(tmp_path):
    from fedbench.run import run_experiment

    cfg = compose(TINY + ["num_clients=3", "clients_per_round=3", "privacy=ddp", "rounds=2",
                          "privacy.bits=12", "privacy.target_epsilon=4"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    privacy = summary["privacy"]
    assert privacy["neighboring_relation"] == "zero_out" and privacy["epsilon"] <= 4.0
    assert privacy["distributed"]["bits"] == 12 and "modular_wraps" in summary["final"]


@pytest.mark.parametrize("protocol, degree", [("secagg", None), ("secagg_plus", 2)])
def test_bytes_are_secure_aggregations_messages(tmp_path, protocol, degree):
    """Each site's upload per round: its masked vector of d coordinates of b bits plus the
    protocol's keys (2K), encrypted share pairs routed to d neighbours (d (I + 2I + 2F + E)) and
    unmasking shares (d + 1)(I + F); its download adds d (I + 2K) + d (3I + 2F + E) + d I
    (Bonawitz et al. 2017; K = 32, F = 16, I = 4, E = 28 bytes; d = n - 1 or SecAgg+'s k)."""
    from fedbench.run import run_experiment

    sites, bits, rounds = 4, 12, 2
    extra = [] if degree is None else [f"privacy.secagg_degree={degree}"]
    cfg = compose(TINY + [f"num_clients={sites}", f"clients_per_round={sites}", "privacy=ddp",
                          f"rounds={rounds}", f"privacy.bits={bits}", f"privacy.secagg={protocol}",
                          "privacy.target_epsilon=8"] + extra)
    plain = compose(TINY + [f"num_clients={sites}", f"clients_per_round={sites}",
                            f"rounds={rounds}"])
    got = run_experiment(cfg, tmp_path / "ddp", progress=None)["final"]
    dense = run_experiment(plain, tmp_path / "plain", progress=None)["final"]
    d = sites - 1 if degree is None else degree
    model = dense["bytes_up"] // (sites * rounds)  # logreg on breast_cancer: 62 float32
    padded = 64
    up = -(-padded * bits // 8) + 2 * 32 + d * (4 + 2 * 4 + 2 * 16 + 28) + (d + 1) * (4 + 16)
    down = model + d * (4 + 2 * 32) + d * (3 * 4 + 2 * 16 + 28) + d * 4
    assert model == 62 * 4
    assert got["bytes_up"] == sites * rounds * up
    assert got["bytes_down"] == sites * rounds * down


def test_compressors_are_refused():
    with pytest.raises(ConfigError) as err:
        build_simulator(compose(TINY + ["num_clients=3", "clients_per_round=3", "privacy=ddp",
                                        "compression=topk"]))
    assert err.value.key == "compression.name" and "ddp" in str(err.value)


def test_an_absent_site_is_its_zero_out_neighbour():
    """An audit's excluded canary site (infos["absent"]) sends a zero update but still adds its
    noise share: the two worlds differ by exactly that site's update (zero-out), so with the
    same randomness the means differ by its rounded update over n."""
    from types import SimpleNamespace

    sites, dim = 4, 64
    mech = _mechanism(sites, dim, bits=24, local=0.01)
    deltas = _deltas(sites, dim, norm=0.5)
    state = SimpleNamespace(wraps=jnp.zeros((), jnp.int32))
    algorithm = SimpleNamespace(dp_aggregate=None)
    valid, key = jnp.ones(sites, bool), jax.random.PRNGKey(5)
    absent = jnp.array([False, False, True, False])
    present, _ = mech.aggregate(state, {"delta": deltas}, {}, valid, key, algorithm)
    zeroed, _ = mech.aggregate(state, {"delta": deltas}, {"absent": absent}, valid, key,
                               algorithm)
    gap = np.asarray(present["delta"]["w"] - zeroed["delta"]["w"]) * sites
    np.testing.assert_allclose(gap, np.asarray(deltas["w"][2]), atol=4 / mech.scale)


def test_an_upload_beyond_the_int32_bit_counter_is_refused():
    """A site's message of ``D`` coordinates of 32 bits, ``D = 2^26``, is ``2^31`` bits and
    more: ``info["bits"]`` (int32) cannot hold it, so the build names ``privacy.bits``."""
    from fedbench.privacy import ddp
    from fedbench.privacy.mechanism import BuildContext

    common = {"clip": 1.0, "noise": 1.0, "target": math.inf, "delta": DELTA, "accountant": "rdp"}
    ok, _ = ddp.build({"bits": 16}, common, BuildContext(3, 3, 1, 1, 1, None, 2 ** 26))
    assert ok.padded == 2 ** 26
    with pytest.raises(ConfigError) as err:
        ddp.build({"bits": 32}, common, BuildContext(3, 3, 1, 1, 1, None, 2 ** 26))
    assert err.value.key == "privacy.bits"


def test_an_unreachable_target_names_the_mechanism_and_distribution():
    with pytest.raises(ConfigError) as err:
        acc.calibrate("dgauss", 1e-4, 1000, DELTA, clip_units=1.0, sites=1, dim=2 ** 20)
    assert err.value.key == "privacy.target_epsilon"
    assert "privacy=ddp" in str(err.value) and "privacy.distribution=dgauss" in str(err.value)


def test_the_wrap_count_is_exact_up_to_its_summand_limit_and_refused_beyond():
    """``discrete.wrapped`` sums 16-bit halves in int32: exact for ``2^15 - 1`` extreme
    summands (checked against Python's integers), refused at ``2^15`` (a ``ValueError``), and a
    ``privacy=ddp`` federation of ``2^15`` sites is refused at build, naming ``data.num_clients``."""
    from fedbench.privacy import ddp, discrete
    from fedbench.privacy.mechanism import BuildContext

    n = discrete.MAX_SUMMANDS - 1
    rng = np.random.default_rng(0)
    top, bottom = 2 ** 31 - 1, -2 ** 31
    cols = np.stack([np.full(n, top), np.full(n, bottom), rng.choice([top, bottom], n),
                     np.where(np.arange(n) % 2 == 0, top, bottom)], axis=1).astype(np.int64)
    for bits in (16, 31, 32):
        half = 1 << (bits - 1)
        expected = [not (-half <= int(sum(map(int, cols[:, j]))) < half) for j in range(4)]
        got = np.asarray(discrete.wrapped(jnp.asarray(cols, jnp.int32), bits))
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError):
        discrete.wrapped(jnp.zeros((n + 1, 2), jnp.int32), 16)
    common = {"clip": 1.0, "noise": 1.0, "target": math.inf, "delta": DELTA, "accountant": "rdp"}
    with pytest.raises(ConfigError) as err:
        ddp.build({"bits": 16}, common, BuildContext(n + 1, n + 1, 1, 1, 1, None, 100))
    assert err.value.key == "data.num_clients"
