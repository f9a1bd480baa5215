"""Client-level DP-FedAvg mechanics against closed forms and statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_uneven_data
from scipy import stats

from fedbench.algorithm import build_algorithm
from fedbench.model import MLP
from fedbench.privacy.mechanisms import clip_to_norm, poisson_buffer_size, poisson_cohort
from fedbench.privacy.dp_client import ClientDP, dp_client_mean
from fedbench.simulator import Settings, Simulator


def test_clipping_bounds_norm_and_leaves_small_deltas_untouched():
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.3, 5.0, 100.0):
        tree = {"a": jnp.asarray(rng.normal(size=(4, 3)) * scale, jnp.float32),
                "b": jnp.asarray(rng.normal(size=7) * scale, jnp.float32)}
        norm = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tree.values()))
        clipped, reported = clip_to_norm(tree, 1.0)
        assert float(reported) == pytest.approx(norm, rel=1e-5)
        new_norm = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in clipped.values()))
        assert new_norm <= 1.0 + 1e-5
        if norm <= 1.0:
            for k in tree:
                np.testing.assert_array_equal(np.asarray(clipped[k]), np.asarray(tree[k]))
        else:
            assert new_norm == pytest.approx(1.0, rel=1e-5)
            # Direction is kept.
            np.testing.assert_allclose(np.asarray(clipped["a"]) * norm, np.asarray(tree["a"]),
                                       rtol=1e-4, atol=1e-5)


def test_noise_std_matches_z_clip_over_denominator():
    z, clip, cohort = 1.3, 0.7, 12.0
    dp = ClientDP(clip=clip, noise_multiplier=z, sampling="fixed", rate=0.1,
                  expected_cohort=cohort, buffer=4)
    deltas = {"w": jnp.zeros((4, 200_000), jnp.float32)}
    out = dp_client_mean(deltas, jnp.ones(4, bool), dp, jax.random.PRNGKey(3))[0]["w"]
    sample = np.asarray(out, np.float64)
    expected = z * clip / cohort
    # The sample variance of n normals: (n - 1) s^2 / sigma^2 ~ chi2(n - 1); 1e-6 two-sided.
    n = sample.size
    lo, hi = stats.chi2.ppf([5e-7, 1 - 5e-7], n - 1)
    assert lo / (n - 1) < sample.var(ddof=1) / expected**2 < hi / (n - 1)
    assert abs(sample.mean()) < 6 * expected / np.sqrt(n)


def test_padded_cohort_slots_do_not_contribute():
    dp = ClientDP(clip=10.0, noise_multiplier=0.0, sampling="poisson", rate=0.5,
                  expected_cohort=2.0, buffer=3)
    deltas = {"w": jnp.asarray([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])}
    out, _ = dp_client_mean(deltas, jnp.asarray([True, True, False]), dp, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(out["w"]), [2.0, 3.0], rtol=1e-6)


def test_dp_fedavg_without_noise_or_clipping_equals_fedavg():
    data = make_uneven_data(sizes=(12, 12, 12, 12, 12), seed=5)  # equal sizes: equal weights
    settings = Settings(clients_per_round=3, local_epochs=2, batch_size=4, lr=0.1,
                        client_axis="vmap")
    dp = ClientDP(clip=float("inf"), noise_multiplier=0.0, sampling="fixed", rate=3 / 5,
                  expected_cohort=3.0, buffer=3)
    plain = Simulator(MLP(3, (8,)), build_algorithm({"name": "fedavg"}), data, settings, 0)
    private = Simulator(MLP(3, (8,)), build_algorithm({"name": "fedavg"}), data, settings, 0,
                        privacy=dp)
    a, b = plain.run(plain.init(), 4).params, private.run(private.init(), 4).params
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_poisson_cohort_rate_and_overflow_flag():
    counts = []
    for r in range(400):
        ids, valid, count = poisson_cohort(jax.random.PRNGKey(r), 50, 0.2, 50)
        chosen = np.asarray(ids)[np.asarray(valid)]
        assert len(set(chosen.tolist())) == int(count) == len(chosen)
        counts.append(int(count))
    # Binomial(50, 0.2): mean 10, sd 2.83; the mean of 400 draws is within 5 standard errors.
    assert abs(np.mean(counts) - 10) < 5 * 2.83 / np.sqrt(400)
    data = make_uneven_data(sizes=(6,) * 8, seed=1)
    dp = ClientDP(clip=1.0, noise_multiplier=0.0, sampling="poisson", rate=0.9,
                  expected_cohort=7.2, buffer=2)
    settings = Settings(clients_per_round=2, local_epochs=1, batch_size=4, lr=0.1)
    sim = Simulator(MLP(3, (4,)), build_algorithm({"name": "fedavg"}), data, settings, 0,
                    privacy=dp)
    assert int(sim.run(sim.init(), 3).overflow) == 3


@pytest.mark.parametrize("num_clients,rate,rounds", [(100, 0.1, 1000), (1000, 0.01, 500), (30, 0.5, 10)])
def test_poisson_buffer_overflow_probability_is_small(num_clients, rate, rounds):
    size = poisson_buffer_size(num_clients, rate, rounds, failure=1e-9)
    assert size <= num_clients
    tail = stats.binom.sf(size, num_clients, rate)  # P[count > size]
    assert tail * rounds < 1e-9
    assert size < num_clients or tail == 0


def test_per_example_clipping_equals_loop_over_examples():
    from fedbench.privacy.dp_sgd import per_example_clipped_sum

    model = MLP(3, (5,))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(9, 4)) * 3, jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 9), jnp.int32)
    valid = jnp.asarray([True] * 7 + [False] * 2)
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)  # noqa: E731
    clip = 0.5
    got, _ = per_example_clipped_sum(apply_fn, params, x, y, valid, clip)
    expected = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    norms = []
    for i in range(7):
        def loss(p):
            logits = apply_fn(p, x[i : i + 1])
            return -jax.nn.log_softmax(logits)[0, y[i]]
        g = jax.grad(loss)(params)
        norm = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(g)))
        norms.append(norm)
        factor = min(1.0, clip / norm)
        expected = jax.tree.map(lambda e, v: e + factor * np.asarray(v, np.float64), expected, g)
    assert max(norms) > clip > min(norms) or max(norms) > clip  # clipping is exercised
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_dp_sgd_without_noise_or_clipping_and_full_sampling_is_gradient_descent(mu):
    import optax

    from fedbench.model import LogReg
    from fedbench.privacy.dp_sgd import make_dp_sgd_local_update

    data = make_uneven_data(sizes=(7, 20), seed=6)
    model = LogReg(3)
    params = model.init(jax.random.PRNGKey(0), data.train_x[0, :1])["params"]
    apply_fn = lambda p, xb: model.apply({"params": p}, xb)  # noqa: E731
    # batch_size >= n: sampling rate 1, every example in every step, 3 epochs = 3 steps.
    update = jax.jit(make_dp_sgd_local_update(apply_fn, lr=0.5, local_epochs=3, batch_size=20,
                                              clip=float("inf"), noise_multiplier=0.0, buffer=20,
                                              prox_mu=mu))
    delta, stats = update(params, data.train_x[0], data.train_y[0], data.train_counts[0],
                          jax.random.PRNGKey(1))
    assert int(stats.num_steps) == 3 and int(stats.overflow) == 0
    x, y = data.client_train(0)
    expected = params
    for _ in range(3):
        g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            apply_fn(p, jnp.asarray(x)), jnp.asarray(y)).mean())(expected)
        expected = jax.tree.map(lambda p, gi, p0: p - 0.5 * (gi + mu * (p - p0)), expected, g, params)
    for a, b in zip(jax.tree.leaves(jax.tree.map(jnp.add, params, delta)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_adaptive_clip_update_rule_and_quantile_tracking():
    """Andrew et al. 2021, Alg. 1 without noise: C <- C exp(-eta (share - gamma)), and the
    bound settles at the gamma-quantile of the delta norms."""
    norms = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    deltas = {"w": jnp.asarray(np.stack([[n, 0.0] for n in norms]), jnp.float32)}
    dp = ClientDP(clip=10.0, noise_multiplier=0.0, sampling="fixed", rate=1.0,
                  expected_cohort=5.0, buffer=5, adaptive=True, target_quantile=0.5,
                  clip_lr=0.2, count_stddev=0.0, delta_noise_multiplier=0.0)
    valid = jnp.ones(5, bool)
    clip = jnp.float32(10.0)
    mean, new = dp_client_mean(deltas, valid, dp, jax.random.PRNGKey(0), clip)
    np.testing.assert_allclose(float(new), 10.0 * np.exp(-0.2 * (1.0 - 0.5)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mean["w"]), [norms.mean(), 0.0], rtol=1e-6)
    for _ in range(200):
        _, clip = dp_client_mean(deltas, valid, dp, jax.random.PRNGKey(0), clip)
    # The share of norms within the bound alternates 0.4 / 0.6 around the median 3.
    assert 2.5 < float(clip) < 3.5


def test_adaptive_clip_keeps_the_accounted_noise_multiplier(tmp_path):
    from conftest import compose

    from fedbench.run import run_experiment

    base = ["model=logreg", "num_clients=20", "clients_per_round=10", "rounds=6",
            "eval_every=3", "privacy=dp_client", "privacy.target_epsilon=8"]
    fixed = run_experiment(compose(base), tmp_path / "fixed", progress=None)
    adaptive = run_experiment(
        compose(base + ["privacy.adaptive_clip.enabled=true",
                        "privacy.adaptive_clip.count_stddev=5"]),
        tmp_path / "adaptive", progress=None)
    assert adaptive["privacy"]["epsilon"] == fixed["privacy"]["epsilon"]
    z = adaptive["privacy"]["noise_multiplier"]
    assert z == fixed["privacy"]["noise_multiplier"]
    # Theorem 1 of Andrew et al.: the two queries compose back to z.
    from fedbench.privacy.dp_client import adaptive as _adaptive

    mech = _adaptive(ClientDP(1.0, z, "poisson", 0.5, 10.0, 20), {"count_stddev": 5.0})
    assert (mech.delta_noise_multiplier**-2 + (2 * 5.0) ** -2) ** -0.5 == pytest.approx(z)
    assert adaptive["final"]["clip"] != 1.0  # the bound moved
    assert "clip" not in fixed["final"]
    # The privacy block reports the initial bound and the one the run ended with.
    assert adaptive["privacy"]["clip"] == 1.0
    assert adaptive["privacy"]["final_clip"] == pytest.approx(adaptive["final"]["clip"])
    assert "final_clip" not in fixed["privacy"]


def test_adaptive_clip_rejects_a_count_noise_that_would_exceed_the_budget(tmp_path):
    from conftest import compose

    from fedbench.errors import ConfigError
    from fedbench.run import run_experiment

    cfg = compose(["model=logreg", "num_clients=20", "clients_per_round=10", "rounds=6",
                   "privacy=dp_client", "privacy.noise_multiplier=3",
                   "privacy.target_epsilon=null", "privacy.adaptive_clip.enabled=true",
                   "privacy.adaptive_clip.count_stddev=1"])
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path, progress=None)
    assert err.value.key == "privacy.adaptive_clip.count_stddev"
