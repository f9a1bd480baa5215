"""Survival analysis: the Cox loss, the C-index, Fed-TCGA-BRCA, and federated Cox training.

Independent expectations: a term-by-term loop for the Breslow partial likelihood, ``lifelines``
for the concordance index and for the Cox fit, FLamby's published federation sizes, and the
sequential reference loop (:mod:`reference`) for federated training with
``local_steps``.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.algorithm import build_algorithm
from fedbench.dataset import load_dataset
from fedbench.dataset.federated import from_client_arrays
from fedbench.dataset.tcga import default_path
from fedbench.errors import ConfigError
from fedbench.model import Cox, build_model
from reference import run_reference
from fedbench.run import run_experiment
from fedbench.simulator import Settings, Simulator
from fedbench.task import concordance_index, cox_loss, cox_terms


def cox_loop(scores, event, time, valid):
    """The Breslow negative log partial likelihood term by term (Breslow 1974, Eq. 12)."""
    rows = [i for i in range(len(scores)) if valid[i]]
    total = 0.0
    for i in rows:
        if event[i]:
            risk = [j for j in rows if time[j] >= time[i]]
            total += np.log(sum(np.exp(scores[j]) for j in risk)) - scores[i]
    return total / len(rows)


def test_cox_loss_matches_loop_with_ties_and_padding():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 12
        scores = rng.normal(size=n)
        event = rng.integers(0, 2, n)
        time = rng.integers(1, 6, n).astype(float)  # many ties
        valid = np.arange(n) < 9  # three padded rows
        target = jnp.asarray(np.stack([event, time], 1), jnp.float32)
        got = float(cox_loss(jnp.asarray(scores, jnp.float32), target, jnp.asarray(valid)))
        np.testing.assert_allclose(got, cox_loop(scores, event, time, valid), rtol=1e-5)
    # Padding rows never contribute, whatever they hold.
    terms = cox_terms(jnp.asarray(scores, jnp.float32), target, jnp.asarray(valid))
    assert np.all(np.asarray(terms)[~valid] == 0)


def test_concordance_index_matches_lifelines():
    from lifelines.utils import concordance_index as lifelines_ci

    rng = np.random.default_rng(1)
    for n in (5, 40, 200):
        time = rng.integers(0, 20, n).astype(float)  # tied times
        event = rng.integers(0, 2, n)
        event[0] = 1
        risk = rng.integers(0, 6, n).astype(float)  # tied scores
        np.testing.assert_allclose(
            concordance_index(time, risk, event), lifelines_ci(time, -risk, event), rtol=1e-12
        )
    assert np.isnan(concordance_index([1.0, 2.0], [0.1, 0.2], [0, 0]))  # no comparable pair


def test_cox_model_fit_matches_lifelines():
    """Minimising our loss over all examples gives lifelines' CoxPHFitter coefficients
    (continuous times: no ties, so Efron's and Breslow's likelihoods coincide)."""
    import pandas as pd
    import scipy.optimize
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(2)
    n, d = 300, 3
    x = rng.normal(size=(n, d))
    beta = np.array([0.8, -0.5, 0.0])
    t_event = rng.exponential(1.0 / np.exp(x @ beta))
    t_censor = rng.exponential(1.5, n)
    time, event = np.minimum(t_event, t_censor), (t_event <= t_censor).astype(float)
    target = jnp.asarray(np.stack([event, time], 1), jnp.float32)
    xs, valid = jnp.asarray(x, jnp.float32), jnp.ones(n, bool)

    def f(b):
        return cox_loss(xs @ b, target, valid)

    grad = jax.jit(jax.value_and_grad(f))
    res = scipy.optimize.minimize(
        lambda b: tuple(np.asarray(v, np.float64) for v in grad(jnp.asarray(b, jnp.float32))),
        np.zeros(d), jac=True, method="BFGS", options={"gtol": 1e-7},
    )
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(T=time, E=event)
    fitted = CoxPHFitter().fit(frame, "T", "E").params_.to_numpy()
    np.testing.assert_allclose(res.x, fitted, atol=2e-3)


def survival_data(sizes=(9, 23, 4), d=3, seed=0):
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=d)
    parts = []
    for n in sizes:
        x = rng.normal(size=(n, d)).astype(np.float32)
        t = rng.exponential(1.0 / np.exp(x @ beta))
        c = rng.exponential(2.0, n)
        parts.append((x, np.stack([(t <= c), np.minimum(t, c)], 1).astype(np.float32)))
    tests = [(x[:2], y[:2]) for x, y in parts]
    return from_client_arrays(
        [p[0] for p in parts], [p[1] for p in parts], [t[0] for t in tests],
        [t[1] for t in tests], 2, task="survival",
    )


@pytest.mark.parametrize("axis", ["vmap", "map"])
@pytest.mark.parametrize("name", ["fedavg", "fedprox", "scaffold"])
def test_federated_cox_with_local_steps_equals_sequential_loop(axis, name):
    data = survival_data()
    algorithm = build_algorithm({"name": name, "mu": 0.1})
    settings = Settings(clients_per_round=2, local_epochs=1, batch_size=4, lr=0.05,
                        client_axis=axis, local_steps=7)
    sim = Simulator(Cox(), algorithm, data, settings, seed=3)
    state = sim.init()
    expected, history = run_reference(
        sim.apply_fn, algorithm, data, state.params, state.key, 3, clients_per_round=2,
        lr=0.05, local_epochs=1, batch_size=4, local_steps=7,
    )
    got = sim.run(state, 3)
    np.testing.assert_allclose(
        np.asarray(got.params["Dense_0"]["kernel"]), np.asarray(expected["Dense_0"]["kernel"]),
        atol=1e-5, rtol=1e-5,
    )
    assert all(s == 7 for rnd in history for s in rnd["steps"])  # every client, any size
    assert float(jnp.abs(got.params["Dense_0"]["kernel"]).max()) > 1e-3


def test_tcga_brca_matches_flamby_federation():
    raw = load_dataset({"name": "tcga_brca"})
    assert raw.x.shape == (1088, 39) and raw.task == "survival"
    assert np.isfinite(raw.x).all() and set(np.unique(raw.y)) == {0, 1}
    train = [int(np.sum((raw.natural_client == k) & ~raw.natural_is_test)) for k in range(6)]
    test = [int(np.sum((raw.natural_client == k) & raw.natural_is_test)) for k in range(6)]
    # FLamby's published split (data README; Ogier du Terrail et al. 2022, Table 1).
    assert train == [248, 156, 164, 129, 129, 40]
    assert test == [63, 40, 42, 33, 33, 11]
    np.testing.assert_array_equal(raw.target[:, 0], raw.y)
    assert len(raw.client_names) == 6


def test_tcga_run_end_to_end_reports_cindex_and_sites(tmp_path):
    cfg = compose([
        "dataset=tcga_brca", "partition=natural", "model=cox", "clients_per_round=6",
        "batch_size=8", "local_steps=20", "rounds=4", "eval_every=2", "lr=0.1",
    ])
    summary = run_experiment(cfg, tmp_path, progress=None)
    final = summary["final"]
    assert summary["status"] == "completed"
    assert 0.55 < final["test_cindex"] <= 1.0  # better than chance after 80 steps
    sites = summary["sites"]
    assert sites["metric"] == "cindex" and sites["test_sizes"] == [63, 40, 42, 33, 33, 11]
    # The pooled-test C-index in the site table is the same number as the metric.
    np.testing.assert_allclose(sites["pooled"], final["test_cindex"])
    assert summary["partition_stats"]["client_names"][0]


def test_tcga_local_site_table_matches_direct_evaluation(tmp_path):
    cfg = compose([
        "dataset=tcga_brca", "partition=natural", "model=cox", "algorithm=local",
        "clients_per_round=6", "batch_size=8", "local_steps=10", "rounds=2", "eval_every=2",
    ])
    summary = run_experiment(cfg, tmp_path, progress=None)
    matrix = np.asarray(summary["sites"]["matrix"])
    assert matrix.shape == (6, 6)
    # The site table (host predictions, every model on every site) agrees with the simulator's
    # evaluation path: each region's own model on its own test split, and on the pooled test set.
    own = np.diag(matrix)
    np.testing.assert_allclose(np.nanmean(own), summary["final"]["client_cindex_mean"], atol=1e-9)
    np.testing.assert_allclose(np.mean(summary["sites"]["pooled_by_model"]),
                               summary["final"]["test_cindex"], atol=1e-9)


def _copy_data(tmp_path):
    dst = tmp_path / "tcga"
    shutil.copytree(default_path(), dst)
    return dst


def test_tcga_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path.*brca.csv"):
        load_dataset({"name": "tcga_brca", "path": str(tmp_path / "nowhere")})
    folder = _copy_data(tmp_path)
    lines = (folder / "brca.csv").read_text().splitlines()
    (folder / "brca.csv").write_text("\n".join(lines[:5] + [lines[5].replace(",", ",x", 3)]) + "\n")
    with pytest.raises(ConfigError, match="brca.csv"):
        load_dataset({"name": "tcga_brca", "path": str(folder)})
    (folder / "brca.csv").write_text("pid,a,b\n1,2,3\n")
    with pytest.raises(ConfigError, match="columns"):
        load_dataset({"name": "tcga_brca", "path": str(folder)})
    (folder / "centers.csv").unlink()
    with pytest.raises(ConfigError, match="missing: centers.csv"):
        load_dataset({"name": "tcga_brca", "path": str(folder)})


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model=cox"], "model.name"),  # cox on a classification dataset
        (["dataset=tcga_brca", "partition=natural", "model=cnn", "clients_per_round=6"], "model.name"),
        (["dataset=tcga_brca", "partition=natural", "model=cox", "clients_per_round=6",
          "privacy=dp_sample", "privacy.noise_multiplier=1.0", "privacy.target_epsilon=null"],
         "privacy.name"),
        (["algorithm=fedsgd", "local_steps=5"], "local_steps"),
        (["local_steps=0"], "local_steps"),
    ],
)
def test_survival_config_errors(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        run_experiment(compose(overrides), tmp_path, progress=None)
    assert err.value.key == key


def test_build_model_for_survival_outputs_one_score():
    model = build_model({"name": "mlp", "hidden": [4]}, (39,), 2, task="survival")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 39)))
    assert model.apply(params, jnp.zeros((3, 39))).shape == (3, 1)
