"""Privacy correctness, items 2, 3 and 6: independent DP noise across runs, what epsilon covers
and what a run releases, and stragglers under DP.

Expectations are written out independently: the old (seed, round) key derivation, JAX's normal
draws from keys derived by hand, plain FedAvg without DP, Andrew et al.'s update rule in closed
form, binomial statistics, and dp-accounting called directly.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose, make_uneven_data
from scipy import stats
from test_privacy_correctness import pld_epsilon, worst_client

from fedbench.algorithm import build_algorithm
from fedbench.errors import ConfigError
from fedbench.model import MLP, LogReg
from fedbench.privacy.plan import build_privacy, noise_salt
from fedbench.privacy.dp_client import ClientDP
from fedbench.privacy.dp_sample import SampleDP
from fedbench.simulator import Settings, Simulator, Stragglers, straggler_plan
from fedbench.tracking import Tracker

SMALL = ["model=logreg", "num_clients=20", "clients_per_round=5", "rounds=4", "eval_every=2"]
DP_CLIENT = [*SMALL, "privacy=dp_client"]


def leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


# --------------------------------------------------------------------------------------------
# Item 2: the same seed must not mean the same noise in runs that differ


def test_noise_salt_differs_with_any_setting_and_ignores_what_cannot_change_the_model():
    base = compose(DP_CLIENT + ["privacy.target_epsilon=1"])
    salt = noise_salt(base)
    assert isinstance(salt, int) and 0 <= salt < 2**32
    assert noise_salt(compose(DP_CLIENT + ["privacy.target_epsilon=1"])) == salt  # reproducible
    for other in (["privacy.target_epsilon=4"], ["privacy.target_epsilon=inf"],
                  ["partition.alpha=0.1"], ["lr=0.05"], ["privacy.clip=2"]):
        assert noise_salt(compose(DP_CLIENT + ["privacy.target_epsilon=1", *other])) != salt, other
    # Keys that cannot change the trained model (the seed enters through the run key).
    for same in (["sweep_name=study"], ["tracking=wandb"], ["eval_every=1"],
                 ["seed=3", "partition.seed=0"], ["privacy.release_metrics=false"],
                 ["privacy.shared_noise=true"]):
        assert noise_salt(compose(DP_CLIENT + ["privacy.target_epsilon=1", *same])) == salt, same
    # partition.seed is the partition seed used: null means the seed.
    assert (noise_salt(compose(DP_CLIENT + ["seed=3", "partition.seed=3"]))
            == noise_salt(compose(DP_CLIENT + ["seed=3"])))
    assert (noise_salt(compose(DP_CLIENT + ["seed=3", "partition.seed=0"]))
            != noise_salt(compose(DP_CLIENT + ["seed=3"])))


def client_dp_sim(data, z, salt, sampling="fixed", clients=3, seed=0, **dp):
    settings = Settings(clients_per_round=clients, local_epochs=1, batch_size=4, lr=0.1,
                        client_axis="map")
    mech = ClientDP(clip=dp.pop("clip", 0.5), noise_multiplier=z, sampling=sampling,
                    rate=clients / data.num_clients, expected_cohort=float(clients),
                    buffer=dp.pop("buffer", clients), **dp)
    return Simulator(MLP(data.num_classes, (8,)), build_algorithm({"name": "fedavg"}), data,
                     settings, seed, privacy=mech, noise_salt=salt)


def test_two_noise_levels_of_one_seed_reveal_the_noiseless_update_only_with_shared_noise():
    """One round of FedAvg (server SGD, lr 1): w_z = w_0 + (S + z C n) / m. With one draw n for
    every z, 2 w_1 - w_2 = w_0 + S / m: the noiseless model. With the config salt it is not."""
    data = make_uneven_data(sizes=(12, 9, 15, 11, 8, 14), seed=3)
    noiseless = client_dp_sim(data, 0.0, None)
    target = leaves(noiseless.run(noiseless.init(), 1).params)

    def attack(salt_1, salt_2):
        one, two = client_dp_sim(data, 1.0, salt_1), client_dp_sim(data, 2.0, salt_2)
        w1, w2 = leaves(one.run(one.init(), 1).params), leaves(two.run(two.init(), 1).params)
        return max(float(np.abs(2 * a - b - t).max()) for a, b, t in zip(w1, w2, target))

    assert attack(None, None) < 1e-5  # shared_noise=true: the noiseless update leaks
    salts = [noise_salt(compose(DP_CLIENT + ["privacy.target_epsilon=null",
                                             f"privacy.noise_multiplier={z}"])) for z in (1, 2)]
    assert salts[0] != salts[1]
    # Noise std of the reconstruction per coordinate: 0.5 sqrt(4 + 4) / 3 = 0.47.
    assert attack(*salts) > 0.2


def test_shared_noise_restores_the_seed_and_round_key_and_the_salt_is_folded_into_it():
    data = make_uneven_data(sizes=(12, 9, 15, 11), seed=1)
    shared, salted = client_dp_sim(data, 1.0, None), client_dp_sim(data, 1.0, 1234)
    state = shared.run(shared.init(), 2)
    old = jax.random.fold_in(jax.random.fold_in(state.key, 2), 0x5EED)  # before the salt
    np.testing.assert_array_equal(np.asarray(shared.noise_key(state)), np.asarray(old))
    np.testing.assert_array_equal(np.asarray(salted.noise_key(state)),
                                  np.asarray(jax.random.fold_in(old, 1234)))


def test_the_salt_changes_the_client_level_noise_only_not_the_sampling():
    data = make_uneven_data(sizes=(10,) * 12, seed=4)
    runs = {}
    for z in (0.0, 1.0):
        for salt in (None, 7, 8):
            sim = client_dp_sim(data, z, salt, sampling="poisson", clients=4, buffer=12)
            runs[z, salt] = sim.run(sim.init(), 3)
    for key, state in runs.items():  # the same Poisson cohorts in every run
        np.testing.assert_array_equal(np.asarray(state.participation),
                                      np.asarray(runs[0.0, None].participation), str(key))
    for salt in (7, 8):  # without noise the salt changes nothing
        for a, b in zip(leaves(runs[0.0, salt].params), leaves(runs[0.0, None].params)):
            np.testing.assert_array_equal(a, b)
    for s1, s2 in ((None, 7), (7, 8)):  # with noise each salt draws its own
        assert max(float(np.abs(a - b).max()) for a, b in
                   zip(leaves(runs[1.0, s1].params), leaves(runs[1.0, s2].params))) > 1e-3


def test_dp_sgd_salt_is_folded_into_the_noise_key_only():
    from fedbench.privacy.dp_sgd import dp_sgd_estimator

    data = make_uneven_data(sizes=(23,), seed=2)
    model = LogReg(data.num_classes)
    params = model.init(jax.random.PRNGKey(0), data.train_x[0, :1])["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x, y, count = data.train_x[0], data.train_y[0], data.train_counts[0]
    key, step, clip, z, batch = jax.random.PRNGKey(5), 3, 0.3, 1.7, 6

    def grads(noise_multiplier, salt):
        est = dp_sgd_estimator(apply_fn, batch_size=batch, clip=clip,
                               noise_multiplier=noise_multiplier, buffer=23, noise_salt=salt)
        return leaves(est.grad(params, x, y, count, key, None, step)[1])

    expected_batch = min(1.0, batch / 23) * 23
    clipped_sum = [g * expected_batch for g in grads(0.0, None)]
    for a, b in zip(grads(0.0, 99), grads(0.0, None)):  # the same examples sampled
        np.testing.assert_array_equal(a, b)
    # The noise key written out: split(fold_in(key, s)) -> (sampling, noise); salt folded in;
    # one key per leaf as the Gaussian mechanism splits it.
    _, noise_key = jax.random.split(jax.random.fold_in(key, step))
    for salt, base in ((None, noise_key), (99, jax.random.fold_in(noise_key, 99))):
        keys = jax.random.split(base, len(clipped_sum))
        for g, s, k in zip(grads(z, salt), clipped_sum, keys):
            draw = np.asarray(jax.random.normal(k, g.shape, jnp.float32), np.float64)
            np.testing.assert_allclose(g * expected_batch - s, z * clip * draw, rtol=1e-4,
                                       atol=1e-5)


@pytest.mark.slow
def test_identical_configs_reproduce_and_shared_noise_is_plumbed_end_to_end(tmp_path):
    from fedbench.run import run_experiment

    cfg = DP_CLIENT + ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
    rows = {}
    for name, extra in (("a", []), ("b", []), ("shared", ["privacy.shared_noise=true"])):
        summary = run_experiment(compose(cfg + extra), tmp_path / name, progress=None)
        rows[name] = (tmp_path / name / "metrics.jsonl").read_text()
        assert summary["privacy"]["shared_noise"] is (name == "shared")
    assert rows["a"] == rows["b"]
    assert rows["a"] != rows["shared"]


@pytest.mark.slow
def test_a_dp_seeds_replica_is_the_single_run_of_its_config(tmp_path):
    from fedbench.run import run_experiment

    cfg = DP_CLIENT + ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "seeds=2"]
    summary = run_experiment(compose(cfg), tmp_path / "job", progress=None)
    replica = json.loads((tmp_path / "job" / "seed=1" / "summary.json").read_text())
    run_experiment(replica["config"], tmp_path / "alone", progress=None)
    assert summary["seeds"] == [0, 1]
    assert ((tmp_path / "job" / "seed=1" / "metrics.jsonl").read_text()
            == (tmp_path / "alone" / "metrics.jsonl").read_text())


# --------------------------------------------------------------------------------------------
# Item 3: what epsilon covers, and privacy.release_metrics

#: Everything a run writes that is computed from the clients' data outside the mechanism.
PRIVATE = {"train_loss", "train_accuracy", "client_accuracy_mean", "client_accuracy_p10",
           "client_accuracy_min", "client_accuracy_std", "client_accuracy_p10_skipped",
           "bytes_up", "bytes_down", "simulated_time"}


class RecordingTracker(Tracker):
    def start(self, config, partition_stats):
        self.partition_stats = dict(partition_stats)
        self.rows = []

    def log(self, metrics, round):  # noqa: A002
        self.rows.append(dict(metrics))

    def finish(self, summary, exit_code=0):
        self.summary = summary


@pytest.mark.slow
@pytest.mark.parametrize("release", [True, False])
def test_release_metrics_leaves_out_what_epsilon_does_not_cover(tmp_path, release):
    from fedbench.run import run_experiment

    tracker = RecordingTracker()
    cfg = compose(DP_CLIENT + [f"privacy.release_metrics={str(release).lower()}"])
    summary = run_experiment(cfg, tmp_path, progress=None, tracker=tracker)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    priv = on_disk["privacy"]
    assert priv["covers"].startswith("the released model parameters only")
    assert priv["release_metrics"] is release
    if release:
        for row in rows + tracker.rows + [on_disk["final"]]:
            assert PRIVATE <= set(row)
        assert on_disk["partition_stats"]["client_sizes"] and on_disk["sites"]["own"]
        assert tracker.partition_stats["client_sizes"]
        assert PRIVATE | {"partition_stats", "sites", "test_loss", "test_accuracy"} == set(
            priv["non_private_outputs"])
    else:
        for row in rows + tracker.rows + [on_disk["final"], tracker.summary["final"]]:
            assert set(row) == {"round", "test_loss", "test_accuracy", "epsilon"}
        assert on_disk["partition_stats"] is None and on_disk["sites"] is None
        assert tracker.partition_stats == {}
        assert priv["non_private_outputs"] == ["test_loss", "test_accuracy"]
    assert summary["privacy"] == tracker.summary["privacy"]
    assert [r["epsilon"] for r in rows] == [r["epsilon"] for r in tracker.rows]


def test_dp_sample_lists_its_epsilon_as_not_covered_and_switches_must_be_booleans():
    sizes = np.asarray([10, 30])
    kw = dict(algorithm_kind="federated", num_clients=2, clients_per_round=2, rounds=2,
              local_epochs=1, batch_size=10, client_sizes=sizes)
    plan = build_privacy({"name": "dp_sample", "clip": 1.0, "noise_multiplier": 1.0,
                          "release_metrics": False}, **kw)
    out = plan.disclosure({"final": {"round": 2, "test_accuracy": 0.5, "epsilon": 3.0},
                           "partition_stats": None, "sites": None})
    assert out["non_private_outputs"] == ["test_accuracy", "epsilon",
                                          "worst_client_sampling_rate", "worst_client_steps"]
    assert "one training example of one client" in out["covers"]
    for key in ("release_metrics", "shared_noise"):
        with pytest.raises(ConfigError) as err:
            build_privacy({"name": "dp_sample", "clip": 1.0, "noise_multiplier": 1.0,
                           key: "yes"}, **kw)
        assert err.value.key == f"privacy.{key}"


# --------------------------------------------------------------------------------------------
# Item 6: stragglers under DP


def test_dropped_stragglers_do_not_shrink_the_dp_mean():
    """Equal sizes, no clipping, no noise: DP-FedAvg with dropped stragglers is FedAvg with the
    same stragglers (the mean of the updates that arrived), not (1 - fraction) of it."""
    data = make_uneven_data(sizes=(12,) * 6, seed=5)
    settings = Settings(clients_per_round=4, local_epochs=2, batch_size=4, lr=0.1,
                        client_axis="map")
    drop = Stragglers(0.5, "drop")
    plain = Simulator(MLP(3, (8,)), build_algorithm({"name": "fedavg"}), data, settings, 0,
                      stragglers=drop)
    dp = ClientDP(clip=float("inf"), noise_multiplier=0.0, sampling="fixed", rate=4 / 6,
                  expected_cohort=4.0, buffer=4)
    private = Simulator(MLP(3, (8,)), build_algorithm({"name": "fedavg"}), data, settings, 0,
                        privacy=dp, stragglers=drop)
    a, b = plain.run(plain.init(), 3), private.run(private.init(), 3)
    np.testing.assert_array_equal(np.asarray(a.participation), np.asarray(b.participation))
    for x, y in zip(leaves(a.params), leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_adaptive_clip_counts_against_the_expected_reporting_clients():
    """Every update that arrives is within the bound, so the unclipped share is 1 and the bound
    moves by exp(-eta (1 - gamma)) (Andrew et al. 2021, Alg. 1), stragglers dropped or not."""
    data = make_uneven_data(sizes=(12,) * 6, seed=5)
    for stragglers in (None, Stragglers(0.5, "drop")):
        sim = client_dp_sim(data, 0.0, None, clients=4, clip=1e6, adaptive=True,
                            target_quantile=0.5, clip_lr=0.2, count_stddev=0.0,
                            delta_noise_multiplier=0.0)
        sim = Simulator(sim.model, sim.algorithm, data, sim.settings, 0, privacy=sim.privacy,
                        stragglers=stragglers)
        state = sim.run(sim.init(), 1)
        assert int(state.participation.sum()) == (2 if stragglers else 4)
        np.testing.assert_allclose(float(state.clip), 1e6 * math.exp(-0.2 * 0.5), rtol=1e-5)


def test_independent_stragglers_are_bernoulli_per_slot():
    fraction, cohort = 0.3, 10
    counts = []
    for r in range(400):
        epochs, keep = straggler_plan(jax.random.PRNGKey(r), cohort, 4,
                                      Stragglers(fraction, "drop"), independent=True)
        counts.append(int((~np.asarray(keep)).sum()))
        partial, keep_p = straggler_plan(jax.random.PRNGKey(r), cohort, 4,
                                         Stragglers(fraction, "partial"), independent=True)
        assert np.asarray(keep_p).all()
        np.testing.assert_array_equal(np.asarray(partial) < 4, ~np.asarray(keep))
    counts = np.asarray(counts)
    # Binomial(10, 0.3): every count from 0 to 6 turns up in 400 rounds, mean 3, variance 2.1.
    assert set(range(7)) <= set(counts.tolist())
    assert abs(counts.mean() - 3) < 5 * math.sqrt(2.1 / 400)
    lo, hi = stats.chi2.ppf([1e-6, 1 - 1e-6], 399) / 399
    assert lo < counts.var(ddof=1) / 2.1 < hi


def test_poisson_dp_cohorts_draw_each_clients_straggling_independently():
    """Rate 1 samples every client each round; with a fixed count exactly half of the buffer
    would be dropped every round, with independent drops the kept count is Binomial(20, 1/2)."""
    data = make_uneven_data(sizes=(6,) * 20, features=2, seed=0)
    settings = Settings(clients_per_round=20, local_epochs=1, batch_size=6, lr=0.1,
                        client_axis="map")
    dp = ClientDP(clip=1.0, noise_multiplier=0.0, sampling="poisson", rate=1.0,
                  expected_cohort=20.0, buffer=20)
    sim = Simulator(LogReg(3), build_algorithm({"name": "fedavg"}), data, settings, 0,
                    privacy=dp, stragglers=Stragglers(0.5, "drop"))
    assert sim.privacy.expected_reports == 10.0
    state, kept = sim.init(), []
    for _ in range(80):
        before = int(state.participation.sum())
        state = sim.run(state, 1)
        kept.append(int(state.participation.sum()) - before)
    kept = np.asarray(kept)
    assert len(set(kept.tolist())) > 3
    assert abs(kept.mean() - 10) < 5 * math.sqrt(5 / 80)


@pytest.mark.slow
def test_dp_sample_counts_the_steps_partial_stragglers_took(tmp_path):
    """local_epochs=2 and every client a partial straggler: each runs exactly 1 epoch (uniform on
    1..E-1), so each client's steps are rounds * ceil(n / batch_size)."""
    from fedbench.run import run_experiment

    rounds, batch, z = 2, 10, 1.0
    cfg = compose(["model=logreg", "num_clients=6", "clients_per_round=6", f"rounds={rounds}",
                   "eval_every=2", "local_epochs=2", f"batch_size={batch}",
                   "privacy=dp_sample", "privacy.target_epsilon=null",
                   f"privacy.noise_multiplier={z}", "stragglers.fraction=1.0",
                   "stragglers.policy=partial"])
    summary = run_experiment(cfg, tmp_path, progress=None)
    sizes = summary["partition_stats"]["client_sizes"]
    priv = summary["privacy"]
    expected = worst_client(z, sizes, [rounds] * 6, batch, 1, priv["delta"], pld_epsilon)
    assert priv["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert priv["worst_client_steps"] in {rounds * math.ceil(n / batch) for n in sizes}


def test_dp_steps_counts_only_updates_that_arrived():
    data = make_uneven_data(sizes=(7, 20, 13, 4), seed=3)
    settings = Settings(clients_per_round=4, local_epochs=3, batch_size=5, lr=0.1,
                        client_axis="map")
    dp = SampleDP(clip=1.0, noise_multiplier=1.0, buffer=20)
    steps = np.ceil(np.asarray([7, 20, 13, 4]) / 5)
    for stragglers, epochs in ((None, 3), (Stragglers(1.0, "partial"), None)):
        sim = Simulator(LogReg(3), build_algorithm({"name": "fedavg"}), data, settings, 0,
                        privacy=dp, stragglers=stragglers)
        state = sim.run(sim.init(), 2)
        got = np.asarray(state.dp_steps)
        if epochs is not None:
            np.testing.assert_array_equal(got, 2 * epochs * steps)
        else:  # 1 or 2 epochs in each of the two rounds
            assert ((got >= 2 * steps) & (got <= 4 * steps)).all()
    drop = Simulator(LogReg(3), build_algorithm({"name": "fedavg"}), data, settings, 0,
                     privacy=dp, stragglers=Stragglers(0.5, "drop"))
    state = drop.run(drop.init(), 3)
    np.testing.assert_array_equal(np.asarray(state.dp_steps),
                                  np.asarray(state.participation) * 3 * steps)


# --------------------------------------------------------------------------------------------
# Noise nobody can regenerate (issue "Privacy a hospital can rely on", item 1)

RELEASE = ["dataset=breast_cancer", "partition=iid", "model=logreg", "num_clients=4",
           "clients_per_round=4", "rounds=1", "privacy=dp_client", "privacy.sampling=fixed",
           "privacy.accountant=rdp", "privacy.target_epsilon=null",
           "privacy.noise_multiplier=1.0", "privacy.clip=0.5",
           "batch_size=512"]  # full batches, every site: the noiseless update has no randomness


def _released(monkeypatch, overrides, changed: bool, noise=1.0):
    """The model after one round of the config, on the data as loaded or with one record of
    one site changed (what a re-run after a site's records changed releases)."""
    import fedbench.run as run_module
    from fedbench.dataset import load_dataset
    from fedbench.run import build_simulator

    def loader(cfg):
        raw = load_dataset(cfg)
        if changed:
            raw.x = raw.x.copy()
            raw.x[0] = raw.x[0] + 3.0  # one record of whichever site holds example 0
        return raw

    monkeypatch.setattr(run_module, "load_dataset", loader)
    cfg = compose(RELEASE + overrides + [f"privacy.noise_multiplier={noise}"])
    built = build_simulator(cfg)
    state = built.sim.init()
    return leaves(built.sim.run(state, 1).params)


@pytest.mark.parametrize("mode", ["shared_noise", "reproducible", "secure"])
def test_the_noise_of_a_rerun_on_changed_data_cancels_only_when_it_can_be_regenerated(
        monkeypatch, mode):
    """A site's records change and the same config runs again: the difference of the two
    released models equals the noiseless difference (exposing that site's update change) when
    both runs draw the same noise. Under ``shared_noise`` they do (the hazard it documents);
    reproducible noise also hashes the training data, and secure noise comes from the
    operating system, so there the difference is off by the noise (std sqrt(2) * z * clip / 4
    = 0.18 per coordinate)."""
    overrides = {"shared_noise": ["privacy.shared_noise=true"], "reproducible": [],
                 "secure": ["privacy.noise=secure"]}[mode]
    before = _released(monkeypatch, overrides, changed=False)
    after = _released(monkeypatch, overrides, changed=True)
    clean_before = _released(monkeypatch, overrides, changed=False, noise=0.0)
    clean_after = _released(monkeypatch, overrides, changed=True, noise=0.0)
    gap = max(float(np.abs((b - a) - (cb - ca)).max())
              for a, b, ca, cb in zip(before, after, clean_before, clean_after))
    if mode == "shared_noise":
        assert gap < 1e-5
    else:
        assert gap > 0.1


def test_secure_noise_differs_between_identical_runs_and_its_key_is_in_no_state(monkeypatch):
    """Two runs of one config under ``privacy.noise=secure``: rebuilding the simulator from the
    run's files (config and seed) cannot reproduce the released model, and nothing a checkpoint
    holds (the ServerState) contains the secret key."""
    from fedbench.run import build_simulator

    cfg = compose(RELEASE + ["privacy.noise=secure"])
    one, two = build_simulator(cfg), build_simulator(cfg)
    first = one.sim.run(one.sim.init(), 1)
    second = two.sim.run(two.sim.init(), 1)
    assert max(float(np.abs(a - b).max())
               for a, b in zip(leaves(first.params), leaves(second.params))) > 0.05
    secret = set(int(w) for w in one.sim.secret_key)
    for leaf in jax.tree.leaves(first):
        if np.asarray(leaf).dtype == np.uint32:
            assert not secret & set(int(w) for w in np.ravel(np.asarray(leaf)))
    summary_note = one.privacy.disclosure({"final": {}})
    assert summary_note["noise"] == "secure" and "entropy" in summary_note["noise_note"]
    reproducible = build_simulator(compose(RELEASE)).privacy.disclosure({"final": {}})
    assert "regenerated" in reproducible["noise_note"]
    with pytest.raises(ConfigError, match="privacy.shared_noise"):
        build_simulator(compose(RELEASE + ["privacy.noise=secure", "privacy.shared_noise=true"]))
