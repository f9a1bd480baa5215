"""Flat client storage (#14 item 4): one array plus offsets, the cohort gathered each round.

Independent expectations: the padded layout (the same run must train the same parameters bit
for bit), plain NumPy indexing and counting, the synthetic generator's closed-form moments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose, make_uneven_data

from fedbench.dataset import load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.errors import ConfigError
from fedbench.partition import natural
from fedbench.run import build_simulator, run_experiment

SIZES = (3, 17, 8, 25, 1, 12, 40, 2)


def test_cohort_gather_equals_padded_indexing():
    padded = make_uneven_data(sizes=SIZES, seed=3)
    flat = make_uneven_data(sizes=SIZES, seed=3, storage="flat")
    ids = np.array([6, 0, 4, 6, 1], np.int32)  # repeated ids occur in padded cohorts
    x, y = flat.cohort(ids)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(padded.train_x)[ids])
    np.testing.assert_array_equal(np.asarray(y), np.asarray(padded.train_y)[ids])
    np.testing.assert_array_equal(np.asarray(flat.pooled_test_x), np.asarray(padded.pooled_test_x))
    for c in range(len(SIZES)):
        for a, b in zip(flat.client_train(c), padded.client_train(c)):
            np.testing.assert_array_equal(a, b)
    segments = np.asarray(flat.train_segments())
    np.testing.assert_array_equal(segments, np.repeat(np.arange(len(SIZES)), SIZES))


def test_heavy_tailed_clients_take_memory_of_their_examples_not_of_the_largest():
    sizes = [5] * 199 + [2000]  # one large site among many small ones
    flat = make_uneven_data(sizes=sizes, storage="flat")
    padded = make_uneven_data(sizes=sizes)
    rows = sum(sizes)
    assert flat.rows_x.nbytes == rows * 4 * 4  # [rows, 4 features] float32
    assert padded.train_x.nbytes == len(sizes) * 2000 * 4 * 4
    assert padded.train_x.nbytes > 50 * flat.rows_x.nbytes


@pytest.mark.parametrize("axis", ["map", "vmap"])
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold", "fedbuff"])
def test_flat_storage_trains_the_same_parameters_as_padded(axis, algorithm):
    runs = {}
    for storage in ("padded", "flat"):
        cfg = compose([f"algorithm={algorithm}", f"client_axis={axis}",
                       f"client_storage={storage}", "num_clients=12", "clients_per_round=4"])
        built = build_simulator(cfg)
        state = built.sim.run(built.sim.init(), 4)
        runs[storage] = (built.sim, state)
    (sim_p, st_p), (sim_f, st_f) = runs["padded"], runs["flat"]
    for a, b in zip(jax.tree.leaves(st_p.params), jax.tree.leaves(st_f.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ev_p, ev_f = sim_p.evaluate(st_p), sim_f.evaluate(st_f)
    assert ev_p.keys() == ev_f.keys()
    for key in ev_p:  # the same sums in another order: equal up to float32 rounding
        np.testing.assert_allclose(ev_f[key], ev_p[key], rtol=1e-5, err_msg=key)
    sites_p, sites_f = sim_p.site_results(st_p), sim_f.site_results(st_f)
    np.testing.assert_allclose(sites_f["own"], sites_p["own"], rtol=1e-6)
    assert sites_f["test_sizes"] == sites_p["test_sizes"]


def test_natural_partition_is_each_clients_indices_in_order():
    rng = np.random.default_rng(0)
    client = rng.integers(0, 9, 5000)
    parts = natural(client, 9)
    for c, part in enumerate(parts):
        np.testing.assert_array_equal(part, np.flatnonzero(client == c))


def test_vectorised_synthetic_has_the_papers_moments_and_split():
    cfg = {"name": "synthetic", "iid": True, "num_clients": 3000, "size_mean": 3,
           "size_sigma": 1, "size_offset": 5, "generator": "vectorised", "seed": 1}
    raw = load_dataset(cfg)
    sizes = np.bincount(raw.natural_client, minlength=3000)
    # n_k = int(lognormal(3, 1)) + 5: median int(e^3) + 5 = 25 (up to sampling)
    assert sizes.min() >= 5 and 22 <= np.median(sizes) <= 28
    tests = np.bincount(raw.natural_client, weights=raw.natural_is_test, minlength=3000)
    np.testing.assert_array_equal(tests, sizes - (0.9 * sizes).astype(int))
    # Synthetic-IID with beta = 0: x ~ N(0, diag(j^-1.2)), j = 1..60.
    var = raw.x.astype(np.float64).var(axis=0)
    expected = np.arange(1, 61, dtype=np.float64) ** -1.2
    np.testing.assert_allclose(var, expected, rtol=0.03)
    assert np.abs(raw.x.mean(axis=0)).max() < 0.01
    # The labels are one shared linear model's argmax: a linear classifier fits them.
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4, max_iter=2000).fit(raw.x[:20000], raw.y[:20000])
    assert fit.score(raw.x[:20000], raw.y[:20000]) > 0.97


def test_non_iid_vectorised_clients_differ_and_size_options_are_checked():
    cfg = {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "num_clients": 200,
           "generator": "vectorised", "size_mean": 3, "size_sigma": 1, "size_offset": 5}
    raw = load_dataset(cfg)
    means = np.stack([raw.x[raw.natural_client == c].mean(axis=0) for c in range(200)])
    # v_k ~ N(B_k, 1) per client with B_k ~ N(0, 1): client means spread by about sqrt(2).
    assert 1.0 < means[:, 0].std() < 2.0
    data, _ = build_federated(raw, {"name": "natural"}, 200, 0, storage="flat")
    assert data.num_clients == 200 and int(data.train_counts.sum()) + int(
        data.test_counts.sum()) == raw.x.shape[0]
    with pytest.raises(ConfigError, match="dataset.size_sigma"):
        load_dataset({**cfg, "size_sigma": -1})
    with pytest.raises(ConfigError, match="dataset.generator"):
        load_dataset({**cfg, "generator": "fast"})


def test_flat_storage_refuses_what_it_does_not_serve(tmp_path):
    with pytest.raises(ConfigError, match="client_storage.*per-client models"):
        build_simulator(compose(["algorithm=ditto", "client_storage=flat"]))
    with pytest.raises(ConfigError, match="client_storage.*survival"):
        build_simulator(compose(["dataset=tcga_brca", "client_storage=flat"]))
    with pytest.raises(ConfigError, match="client_storage"):
        build_simulator(compose(["client_storage=sparse"]))


def test_a_flat_run_writes_its_results(tmp_path):
    cfg = compose(["client_storage=flat", "rounds=4", "eval_every=2", "checkpoint_every=0"])
    final = run_experiment(cfg, str(tmp_path), progress=None)["final"]
    assert np.isfinite(final["train_loss"]) and 0 <= final["test_accuracy"] <= 1


@pytest.mark.parametrize("axis", ["map", "vmap"])
def test_cohorts_padded_to_their_own_bucket_train_as_the_padded_layout(axis):
    from fedbench.algorithm import build_algorithm
    from fedbench.model import MLP
    from fedbench.simulator import Settings, Simulator

    sizes = (3, 17, 8, 25, 1, 12, 40, 2, 6, 9)
    settings = Settings(clients_per_round=2, local_epochs=2, batch_size=4, lr=0.1,
                        client_axis=axis)
    runs = {}
    for storage in ("padded", "flat"):
        data = make_uneven_data(sizes=sizes, seed=4, storage=storage)
        sim = Simulator(MLP(3, (8,)), build_algorithm({"name": "scaffold"}, 2), data, settings,
                        seed=0)
        runs[storage] = (sim, sim.run(sim.init(), 12))
    flat_sim, _ = runs["flat"]
    assert flat_sim.data.bucket_lengths() == (40, 20, 10)
    # The short branch is taken: some sampled pairs hold no client over 10 examples.
    state = flat_sim.init()
    largest = [int(np.max(np.asarray(sizes)[np.asarray(flat_sim.sample_cohort(
        flat_sim.round_keys(state.replace(round=r))[0])[0])])) for r in range(12)]
    assert min(largest) <= 10 < max(largest), largest
    for a, b in zip(jax.tree.leaves(runs["padded"][1].params),
                    jax.tree.leaves(runs["flat"][1].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_epoch_orders_and_dp_sgd_samples_do_not_depend_on_the_padded_length():
    from fedbench.local import epoch_order
    from fedbench.privacy.dp_sgd import sample_examples

    key = jax.random.PRNGKey(5)
    for count in (1, 7, 10):
        short, long = epoch_order(key, count, 10), epoch_order(key, count, 40)
        np.testing.assert_array_equal(np.asarray(short[:count]), np.asarray(long[:count]))
        a = sample_examples(key, jax.numpy.int32(count), 10, 4)
        b = sample_examples(key, jax.numpy.int32(count), 40, 4)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b[:10]))
        assert not np.asarray(b[10:]).any()


def test_padding_that_would_not_fit_in_memory_is_refused_naming_flat(monkeypatch):
    """W5 typed as a user would (100,000 clients, padded storage) used to end in NumPy's
    allocation error after the set-up; now the padded layout's size is compared with the
    machine's memory first. Here the machine is made small instead of the federation large:
    expected size counted by hand from the digits federation."""
    import fedbench.dataset.pipeline as pipeline

    cfg = compose(["dataset=digits"])
    raw = load_dataset(cfg["dataset"])
    flat, _ = build_federated(raw, cfg["partition"], cfg["num_clients"], seed=0, storage="flat")
    counts = np.asarray(flat.train_counts)
    needed_at_least = cfg["num_clients"] * int(counts.max()) * 64 * 4  # 8x8 float32 pixels
    monkeypatch.setattr(pipeline, "physical_memory", lambda: needed_at_least)  # half is short
    with pytest.raises(ConfigError) as err:
        build_federated(raw, cfg["partition"], cfg["num_clients"], seed=0, storage="padded")
    assert err.value.key == "client_storage" and "client_storage=flat" in str(err.value)
    build_federated(raw, cfg["partition"], cfg["num_clients"], seed=0, storage="flat")  # fits
    monkeypatch.setattr(pipeline, "physical_memory", lambda: 64 * needed_at_least)
    build_federated(raw, cfg["partition"], cfg["num_clients"], seed=0, storage="padded")


def test_auto_storage_is_flat_only_where_padding_would_not_fit_and_flat_serves(monkeypatch):
    """``client_storage=auto`` (the default): the padded layout where it fits in half the
    memory, flat storage where it does not (W5 typed without ``client_storage=flat``), and the
    padded layout for runs flat storage does not serve (personalised algorithms), whose
    refusal then says why flat storage cannot help either. The machine is made small instead of
    the federation large (sizes as in the test above)."""
    from fedbench.dataset.flat import FlatFederatedData
    from fedbench.dataset.federated import FederatedData
    import fedbench.dataset.pipeline as pipeline

    assert compose([])["client_storage"] == "auto"
    small = ["dataset=digits", "num_clients=10", "clients_per_round=3", "rounds=1"]
    built = build_simulator(compose(small))
    assert isinstance(built.data, FederatedData)
    assert built.partition_stats["client_storage"] == "padded"
    padded = built.data.num_clients * (built.data.train_x.shape[1]
                                       + built.data.test_x.shape[1]) * 64 * 4  # 8x8 float32
    monkeypatch.setattr(pipeline, "physical_memory", lambda: padded)  # half of it is short
    built = build_simulator(compose(small))
    assert isinstance(built.data, FlatFederatedData)
    assert built.partition_stats["client_storage"] == "flat"
    with pytest.raises(ConfigError) as err:  # too large to pad, and flat cannot serve Ditto
        build_simulator(compose(small + ["algorithm=ditto"]))
    assert err.value.key == "client_storage" and "smaller federation" in str(err.value)
    assert "client_storage=flat is refused for per-client models" in str(err.value)
    monkeypatch.setattr(pipeline, "physical_memory", lambda: 2 * padded)  # exactly half: fits
    assert isinstance(build_simulator(compose(small)).data, FederatedData)


@pytest.mark.parametrize("length", [1, 9, 511, 512, 513, 1028, 2056])
def test_epoch_order_is_the_stable_argsort_of_the_uniforms(length):
    """``epoch_order`` sorts one packed uint32 key per slot (up to 512 real examples) instead
    of argsorting the uniforms; the reference is NumPy's stable argsort of the same uniforms
    (``jax.random.uniform``), padding at ``+inf``, for counts below, at and above 512 and at
    the edges of the padded length."""
    from fedbench.local import epoch_order

    order = jax.jit(epoch_order, static_argnums=2)
    counts = {1, 2, 17, 511, 512, 513, length // 2, length - 1, length}
    for count in sorted(c for c in counts if 1 <= c <= length):
        key = jax.random.PRNGKey(1000 * length + count)
        got = np.asarray(order(key, jnp.int32(count), length))
        u = np.asarray(jax.random.uniform(key, (length,)))
        want = np.argsort(np.where(np.arange(length) < count, u, np.inf), kind="stable")
        np.testing.assert_array_equal(got, want, err_msg=f"count {count} of {length}")


def test_distinct_uniform_draws_distinct_clients_uniformly():
    """The cohort draw above 2^15 clients (``lax.top_k`` of random scores): distinct ids in
    range, each client in a cohort with probability k / n and in each position of it with
    probability 1 / n (chi-squared against those closed forms over 4,000 draws of 3 of 10),
    and the score map is monotone and one-to-one (checked against NumPy's uint32 order)."""
    from scipy import stats

    from fedbench.pieces import distinct_uniform

    n, k, draws = 10, 3, 4000
    cohorts = np.asarray(jax.jit(jax.vmap(lambda key: distinct_uniform(key, n, k)))(
        jax.random.split(jax.random.PRNGKey(3), draws)))
    assert cohorts.min() >= 0 and cohorts.max() < n
    assert all(len(set(c)) == k for c in cohorts)
    inclusion = np.bincount(cohorts.ravel(), minlength=n)
    assert stats.chisquare(inclusion, np.full(n, draws * k / n)).pvalue > 1e-3
    first = np.bincount(cohorts[:, 0], minlength=n)
    assert stats.chisquare(first, np.full(n, draws / n)).pvalue > 1e-3

    bits = np.array([0, 1, 2, 3, 2**30 - 1, 2**31, 2**32 - 4, 2**32 - 1, 12345678], np.uint32)
    scores = np.asarray(jax.lax.bitcast_convert_type(
        (jnp.asarray(bits) >> 2) + jnp.uint32(0x00800000), jnp.float32))
    assert np.isfinite(scores).all() and (scores > 0).all()
    np.testing.assert_array_equal(np.argsort(scores, kind="stable"),
                                  np.argsort(bits >> 2, kind="stable"))


def test_large_federations_sample_by_top_k_and_small_ones_by_choice(monkeypatch):
    """Above ``TOP_K_SAMPLING_ABOVE`` the simulator's cohort is ``distinct_uniform``'s; at or
    below it, and in a DP run at any size, ``jax.random.choice``'s (the stream every committed
    result and the DP accounting's checks were run with)."""
    import fedbench.pieces as pieces
    from fedbench.algorithm import build_algorithm
    from fedbench.model import MLP
    from fedbench.simulator import Settings, Simulator

    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 40, 2, 6, 9), seed=4, storage="flat")
    sim = Simulator(MLP(3, (8,)), build_algorithm({"name": "fedavg"}, 3), data,
                    Settings(clients_per_round=3, local_epochs=1, batch_size=4, lr=0.1), seed=0)
    key = jax.random.PRNGKey(7)
    choice = np.asarray(jax.random.choice(key, 10, (3,), replace=False))
    np.testing.assert_array_equal(np.asarray(sim.pieces.sample_clients(key)), choice)
    monkeypatch.setattr(pieces, "TOP_K_SAMPLING_ABOVE", 9)
    np.testing.assert_array_equal(np.asarray(sim.pieces.sample_clients(key)),
                                  np.asarray(pieces.distinct_uniform(key, 10, 3)))
    private = build_simulator(compose(["dataset=digits", "num_clients=10", "clients_per_round=3",
                                       "privacy=dp_client", "privacy.sampling=fixed",
                                       "privacy.accountant=rdp",
                                       "privacy.noise_multiplier=1.0",
                                       "privacy.target_epsilon=null"])).sim
    np.testing.assert_array_equal(np.asarray(private.pieces.sample_clients(key)), choice)


def test_flat_site_accuracies_are_the_per_site_metric_exactly():
    """Flat storage's per-site accuracies (one ``bincount`` over the pooled rows) equal
    ``metric_of`` on each site's rows, value for value, empty sites NaN as there."""
    from fedbench.evaluation_metrics import metric_of, site_table

    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 40, 2, 6, 9), seed=4, storage="flat")
    counts = np.asarray(data.test_counts)
    y = np.asarray(data.pooled_test_y)
    outputs = np.random.default_rng(0).normal(size=(len(y), 3)).astype(np.float32)
    got = site_table(outputs, outputs, data, per_client=False)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    want = [metric_of(outputs[s:s + m], y[s:s + m], "classification")
            for s, m in zip(starts, counts)]
    np.testing.assert_array_equal(np.asarray(got["own"]), np.asarray(want))
    assert got["pooled"] == metric_of(outputs, y, "classification")


@pytest.mark.parametrize("chunk", [1, 5, 23, 64])
def test_flat_sums_in_chunks_equal_numpy_per_segment_sums(chunk):
    """``flat_sums`` walks the rows in chunks of ``chunk`` (the last one ending at the last row,
    overlapping the one before) and sums per segment; against NumPy on the whole array."""
    from fedbench.dataset.flat import flat_sums

    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 4)).astype(np.float32)
    y = rng.integers(0, 3, 23).astype(np.int32)
    segments = np.sort(rng.integers(0, 6, 23)).astype(np.int32)
    w = rng.normal(size=(4, 3)).astype(np.float32)

    def per_example(logits, labels):
        return logits[jnp.arange(labels.shape[0]), labels], jnp.argmax(logits, -1) == labels

    loss, correct = flat_sums(lambda p, a: a @ p, jnp.asarray(w), jnp.asarray(x), jnp.asarray(y),
                              jnp.asarray(segments), 7, chunk, per_example)
    logits = x @ w
    want_loss = np.bincount(segments, weights=logits[np.arange(23), y], minlength=7)
    want_correct = np.bincount(segments, weights=np.argmax(logits, -1) == y, minlength=7)
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(correct), want_correct.astype(np.int32))


def test_flat_sums_of_no_rows_are_zero():
    """No rows to evaluate (a federation without test rows): zero sums, not an error."""
    from fedbench.dataset.flat import flat_sums

    loss, correct = flat_sums(lambda p, a: a @ p, jnp.ones((4, 3)), jnp.zeros((0, 4)),
                              jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.int32), 5, 8,
                              lambda out, y: (out[:, 0], jnp.argmax(out, -1) == y))
    assert np.asarray(loss).tolist() == [0.0] * 5 and np.asarray(correct).tolist() == [0] * 5
