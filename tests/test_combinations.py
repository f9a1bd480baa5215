"""The combination matrix, generated from the registries: every algorithm (``BUILDERS``), every
compressor (``compression.NAMES``) and every privacy mechanism (``privacy.mechanism.registry``) is checked in
combination by registering, with no test edited (issue "Combinations correct by construction").

Independent expectations, one per row:

* **sweep replica = separate job**: an in-program sweep over ``lr`` and every key the algorithm
  declares (``Algorithm.hyperparameters``), two values each; the last replica (every value
  differs from the first replica's, the one the program is built from) must write the same
  ``metrics.jsonl``, byte for byte, as the ``fedbench`` job with those values on its command line;
* **declared messages = bytes**: that job's ``bytes_up`` / ``bytes_down`` equal the algorithm's
  declared messages counted here from the parameter shapes (4 bytes per float32 entry) times the
  clients that took part (every sampled client, no stragglers);
* **members = restricted data**: ``members=S`` on the full federation ends where the same
  algorithm ends on a dataset holding only the sites in S (full batches, so the cohort's order
  cannot matter; float32 summation order aside);
* **mechanism with no noise and no clipping = no DP** (each mechanism's declared
  ``Mechanism.identity`` settings), or refused with a reason naming the algorithm, before any
  work; every mechanism's module declares what the registry reads;
* **identity compressors = dense**; **error feedback's residual stays bounded** over 50 rounds
  of random updates for every compressor it accepts (and a non-contractive one is refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.algorithm import BUILDERS, algorithm_defaults, build_algorithm
from fedbench.compression import NAMES as COMPRESSORS, build_compression, compression_defaults
from fedbench.compression.compressor import Compressor
from fedbench.dataset.federated import from_client_arrays
from fedbench.errors import ConfigError
from fedbench.model import build_model
from fedbench.privacy import support
from fedbench.privacy.mechanism import mechanism_class, registry
from fedbench.run import build_simulator, run_experiment
from fedbench.simulator import Settings, Simulator

ALGORITHMS = tuple(BUILDERS)
PRIVACY = tuple(registry())  # every conf/privacy/<name>.yaml but none, each with its module
TINY = ["dataset=breast_cancer", "partition=iid", "num_clients=6", "clients_per_round=3",
        "rounds=2", "eval_every=2", "model=mlp", "model.hidden=[8]", "batch_size=32",
        "checkpoint_every=0", "partition.seed=0"]
#: Per-algorithm settings that keep a tiny run meaningful (the rest from its config file).
EXTRA = {"fedbuff": ["algorithm.buffer_size=2", "algorithm.concurrency=3"],
         "ifca": ["algorithm.clusters=2"], "cfl": [],
         "fedbn": ["model.norm=layer"],  # FedBN needs normalisation layers
         "silobn": ["model.norm=batch"]}  # SiloBN: BatchNorm's statistics


def _declared(name: str) -> tuple[str, ...]:
    return build_algorithm({"name": name}, 1).hyperparameters


def _values(name: str, key: str) -> tuple[float, float]:
    """Two values of ``key`` for ``name``: its default and a different one."""
    if key == "lr":
        return 0.05, 0.2
    default = float(algorithm_defaults(name)[key])
    return default, default * 0.5 if default else 0.5


# -- every algorithm x its sweepable keys; its declared messages ----------------------------------
@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_sweep_replica_equals_its_separate_job(tmp_path, name):
    keys = ("lr",) + _declared(name)
    base = TINY + [f"algorithm={name}"] + EXTRA.get(name, [])
    sweep = [f"sweep.{k}=[{','.join(f'{v:g}' for v in _values(name, k))}]" for k in keys]
    summary = run_experiment(compose(base + sweep), tmp_path / "job", progress=None)
    assert summary["timing"]["round_program_traces"] == 1
    last = [(k, _values(name, k)[1]) for k in keys]
    directory = ",".join(f"{k}={v:g}" for k, v in last) + ",seed=0"
    alone = [f"lr={v}" if k == "lr" else f"algorithm.{k}={v}" for k, v in last]
    job = run_experiment(compose(base + alone), tmp_path / "alone", progress=None)
    got = (tmp_path / "job" / directory / "metrics.jsonl").read_bytes()
    assert got == (tmp_path / "alone" / "metrics.jsonl").read_bytes(), directory

    built = build_simulator(compose(base + alone))
    algorithm = built.algorithm
    if algorithm.kind != "federated":
        return  # FedBuff's downloads follow its schedule; the baselines send nothing
    shapes = built.sim.param_shapes()
    messages = algorithm.messages(algorithm, _sent(shapes, algorithm))
    entries = lambda tree: sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree))  # noqa
    clients = 2 * 3  # rounds x clients_per_round, every one kept
    final = job["final"]
    assert final["bytes_up"] == clients * 4 * sum(entries(m) for m in messages.up.values())
    assert final["bytes_down"] == clients * 4 * sum(entries(m) for m in messages.down.values())


def _sent(shapes, algorithm):
    """The parameters that leave a site, found independently: a delta of ones through the
    algorithm's ``shared`` (what it zeroes never leaves)."""
    if algorithm.shared is None:
        return shapes
    ones = jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes)
    kept = jax.tree.map(lambda k: bool(np.any(np.asarray(k))), algorithm.shared(ones))
    return jax.tree.map(lambda s, k: s if k else None, shapes, kept)


def test_ifca_declares_every_cluster_model_down_and_fedper_only_its_body_up():
    ifca = build_algorithm({"name": "ifca", "clusters": 4})
    shapes = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32)}}
    assert ifca.messages(ifca, shapes).down["models"]["Dense_0"]["kernel"].shape == (4, 3, 2)
    fedper = build_algorithm({"name": "fedper"})
    shapes = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32)},
              "Dense_1": {"kernel": jax.ShapeDtypeStruct((2, 5), jnp.float32)}}
    up = fedper.messages(fedper, _sent(shapes, fedper)).up["delta"]
    assert [s.shape for s in jax.tree.leaves(up)] == [(3, 2)]  # the head stays at the site


# -- every algorithm: members = the dataset restricted to them -------------------------------------
def _sites(sizes=(12, 7, 15, 9, 11), features=4, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, classes))
    xs = [rng.normal(size=(n, features)).astype(np.float32) for n in sizes]
    txs = [rng.normal(size=(4, features)).astype(np.float32) for _ in sizes]
    return ([x for x in xs], [np.argmax(x @ w, 1).astype(np.int32) for x in xs],
            txs, [np.argmax(x @ w, 1).astype(np.int32) for x in txs], classes)


def _simulator(name, arrays, members_count):
    xs, ys, txs, tys, classes = arrays
    data = from_client_arrays(xs, ys, txs, tys, classes)
    norm = {"fedbn": {"norm": "layer"}, "silobn": {"norm": "batch"}}.get(name, {})
    model = build_model({"name": "mlp", "hidden": [8], **norm}, data.feature_shape, classes,
                        data.task)
    settings = Settings(clients_per_round=members_count, local_epochs=2, batch_size=16, lr=0.1,
                        client_axis="map")
    extra = {"clusters": 2} if name == "ifca" else {}
    return Simulator(model, build_algorithm({"name": name, **extra}, members_count), data,
                     settings, seed=0)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_members_equal_the_dataset_restricted_to_them(name):
    from fedbench.replicas import check_members

    members = [0, 2, 4]
    if build_algorithm({"name": name}, 3).kind != "federated":
        with pytest.raises(ConfigError, match="members"):
            check_members({"num_clients": 5, "algorithm": {"name": name}}, members)
        return
    arrays = _sites()
    full = _simulator(name, arrays, len(members))
    mask = np.zeros(5, np.float32)
    mask[members] = 1.0
    got = full.run(full.init(values={"lr": 0.1, "members": mask}), 3)
    restricted = _simulator(name, tuple([a[i] for i in members] for a in arrays[:4])
                            + (arrays[4],), len(members))
    want = restricted.run(restricted.init(values={"lr": 0.1}), 3)
    close = lambda a, b: np.testing.assert_allclose(  # noqa: E731
        np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
    jax.tree.map(close, got.params, want.params)
    jax.tree.map(close, got.server, want.server)  # SCAFFOLD's c, FedDyn's h: divided by |S|
    if got.store["algorithm"] is not None:
        jax.tree.map(lambda a, b: close(a[np.asarray(members)], b), got.store["algorithm"],
                     want.store["algorithm"])


# -- every algorithm x every mechanism: no noise, no clipping = no DP, or refused -----------------
def _no_noise(mechanism: str) -> list[str]:
    """The mechanism's declared identity settings (``Mechanism.identity``) as overrides."""
    cls = mechanism_class(mechanism)
    assert cls.identity, f"{mechanism} declares no identity settings (Mechanism.identity)"
    return [f"privacy={mechanism}"] + [f"privacy.{k}={'null' if v is None else v}"
                                       for k, v in cls.identity.items()]


@pytest.mark.parametrize("mechanism", PRIVACY)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_mechanism_equals_no_dp_without_noise_or_is_refused(name, mechanism):
    # Equal sites (iid over 6 of 569 examples... 94 or 95 each): example weights all but equal;
    # full batches (a Poisson rate of 1 takes every example, as DP-SGD's sampling does then).
    base = TINY + [f"algorithm={name}", "num_clients=3", "clients_per_round=3",
                   "partition=iid", "batch_size=512"] + EXTRA.get(name, [])
    table = support.cell(name, mechanism)  # docs/privacy.md's cell: None = runs
    try:
        private = build_simulator(compose(base + _no_noise(mechanism)))
    except ConfigError as error:
        assert error.key in ("algorithm.name", "privacy.name", "compression.name",
                             "model.norm"), error
        assert name in str(error) or mechanism in str(error), error
        assert table is not None or error.key == "model.norm", (table, error)
        return
    assert table is None, table  # the table says refused, the run builds
    plain = build_simulator(compose(base))
    got = private.sim.run(private.sim.init(), 2)
    want = plain.sim.run(plain.sim.init(), 2)
    sizes = np.asarray(plain.data.train_counts)
    # DP-FedAvg averages uniformly, FedAvg by examples: equal up to the sites' size spread.
    rtol = 2e-3 if np.ptp(sizes) else 2e-4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=rtol, atol=2e-4),
                 got.params, want.params)


@pytest.mark.parametrize("mechanism", PRIVACY)
def test_every_mechanism_module_declares_what_the_registry_reads(mechanism):
    """A mechanism joins by its file and config alone: its module defines the class and the
    build functions, and every key it declares (sweepable, identity) is a key of its config."""
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    module = registry()[mechanism]
    cls = module.MECHANISM
    yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "privacy" / f"{mechanism}.yaml"))
    assert cls.name == yaml["name"] == mechanism
    assert cls.unit in ("client", "example")
    assert all(callable(getattr(module, f)) for f in ("build", "check", "population"))
    assert set(cls.hyperparameters) <= set(yaml) and set(cls.identity) <= set(yaml), (
        set(cls.hyperparameters) | set(cls.identity)) - set(yaml)


def test_the_docs_table_of_algorithms_under_mechanisms_is_the_generated_one():
    """docs/privacy.md's algorithm x mechanism table is what ``python -m
    fedbench.privacy.support`` prints now (regenerate it after registering a new algorithm or
    mechanism); each of its cells is checked against a built run above."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "privacy.md").read_text()
    start = "<!-- generated: python -m fedbench.privacy.support -->\n"
    section = docs[docs.index(start) + len(start):docs.index("<!-- /generated -->")]
    assert section == support.markdown(), "docs/privacy.md: rerun python -m fedbench.privacy.support"


def test_an_own_aggregate_without_a_declaration_is_refused_under_client_dp():
    import dataclasses

    from fedbench.algorithm import check_client_dp

    def exp_step(uploads, weights, stats, valid, num_clients):  # a FedExP-like server step
        del stats, num_clients
        return {"delta": jax.tree.map(lambda d: 2.0 * d.mean(0), uploads["delta"])}

    custom = dataclasses.replace(build_algorithm({"name": "fedavg"}), name="fedexp",
                                 aggregate=exp_step)
    with pytest.raises(ConfigError, match="fedexp has its own aggregate"):
        check_client_dp(custom)
    check_client_dp(dataclasses.replace(custom, dp_aggregate=lambda agg: agg))  # declared


# -- every compressor: identity = dense; error feedback bounded or refused ----------------------
def _compressor_cfgs():
    out = []
    for name in COMPRESSORS:
        if name == "none":
            continue
        cfg = compression_defaults(name)
        out.append(pytest.param({**cfg, "error_feedback": True}, id=f"{name}-ef"))
    return out


@pytest.mark.parametrize("name", [n for n in COMPRESSORS if n not in ("none",)])
def test_identity_settings_equal_dense_or_have_none(name):
    cfg = compression_defaults(name)
    if "fraction" not in cfg:  # a quantiser: no setting sends the values exactly; instead its
        # declared variance bound (what error feedback's refusal rests on) must hold when
        # measured: mean ||Q(x) - x||^2 / ||x||^2 over 200 draws of a 64-entry block.
        compressor = build_compression({**cfg, "error_feedback": False, "bucket_size": None})
        x = jax.random.t(jax.random.PRNGKey(3), 3.0, (64,))
        keys = jax.random.split(jax.random.PRNGKey(4), 200)
        sent = jax.vmap(lambda k: compressor.compress({"x": x}, k)[0]["x"])(keys)
        measured = float(jnp.mean(jnp.sum((sent - x) ** 2, axis=1)) / jnp.sum(x * x))
        if name == "signsgd":  # biased: contractive, 1 - ||x||_1^2 / (n ||x||_2^2) exactly
            assert measured == pytest.approx(1 - float(jnp.sum(jnp.abs(x))) ** 2
                                             / (64 * float(jnp.sum(x * x))), rel=1e-4)
        else:
            assert 0 < measured <= compressor.variance_bound(64) * 1.1, measured
        return
    compressor = build_compression({**cfg, "fraction": 1.0, "error_feedback": False})
    tree = {"a": jnp.arange(12.0).reshape(3, 4) - 5.0, "b": jnp.ones(5) * 0.3}
    sent, _, info = compressor.transform().update(tree, (), {"key": jax.random.PRNGKey(0)})
    jax.tree.map(lambda s, t: np.testing.assert_array_equal(np.asarray(s), np.asarray(t)),
                 sent, tree)
    assert int(info["bits"]) == 32 * 17  # dense float32, no positions


@pytest.mark.parametrize("cfg", _compressor_cfgs())
def test_error_feedback_residual_stays_bounded_or_is_refused(cfg):
    compressor = build_compression(cfg)
    shapes = {"w": jax.ShapeDtypeStruct((40, 10), jnp.float32),
              "b": jax.ShapeDtypeStruct((10,), jnp.float32)}
    try:
        compressor.check_error_feedback(shapes)
    except ConfigError as error:
        assert error.key == "compression.error_feedback" and compressor.contraction(shapes) >= 1
        return
    transform = compressor.transform()
    residual = transform.init(jax.tree.map(lambda s: jnp.zeros(s.shape), shapes))

    @jax.jit
    def step(residual, key):
        k1, k2 = jax.random.split(key)
        delta = {"w": jax.random.normal(k1, (40, 10)), "b": jax.random.normal(k2, (10,))}
        _, residual, _ = transform.update(delta, residual, {"key": jax.random.fold_in(key, 7)})
        return residual

    norms = []
    for r in range(50):
        residual = step(residual, jax.random.PRNGKey(r))
        norms.append(float(jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(residual)))))
    update_norm = np.sqrt(410.0)  # E||delta|| of a standard normal of 410 entries
    # Contraction 1 - d: E||e||^2 <= (1 - d) / d^2 ... bounded; an expansive one grows.
    bound = compressor.contraction(shapes)
    limit = 3 * update_norm * np.sqrt(bound) / max(1 - np.sqrt(bound), 1e-3)
    assert np.isfinite(norms).all() and max(norms[25:]) <= limit, (max(norms), limit)


def test_rescaled_rand_k_is_expansive_and_unscaled_rand_k_contracts():
    shapes = {"w": jax.ShapeDtypeStruct((100,), jnp.float32)}
    ef = build_compression({"name": "randk", "fraction": 0.1, "error_feedback": True})
    assert ef.contraction(shapes) == pytest.approx(0.9)
    x = jnp.ones(100)
    sent, _ = ef.compress({"w": x}, jax.random.PRNGKey(0))
    assert float(jnp.max(sent["w"])) == 1.0  # unscaled under error feedback (Stich et al.)
    plain = build_compression({"name": "randk", "fraction": 0.1})
    sent, _ = plain.compress({"w": x}, jax.random.PRNGKey(0))
    assert float(jnp.max(sent["w"])) == pytest.approx(10.0)  # d / k: unbiased alone
    qsgd = build_compression({"name": "qsgd", "levels": 2, "bucket_size": 512,
                              "error_feedback": True})
    with pytest.raises(ConfigError, match="compression.error_feedback"):
        qsgd.check_error_feedback({"w": jax.ShapeDtypeStruct((1000,), jnp.float32)})


def test_a_sweep_key_the_algorithm_does_not_declare_is_refused():
    with pytest.raises(ConfigError) as error:
        run_experiment(compose(TINY + ["algorithm=fedavg", "sweep.mu=[0,1]"]), Path("/nonexistent"),
                       progress=None)
    assert error.value.key == "sweep.mu" and "fedavg declares none" in str(error.value)
    assert json.dumps(["mu"]) == json.dumps(list(_declared("fedprox")))


# -- every algorithm: values carried as data = the same values as constants -----------------------
@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "fedbuff"])
def test_carried_hyperparameters_equal_their_constants(name):
    """A run's numbers carried in ``state.hparams`` (every ``fedbench`` run) must mean what the
    same numbers mean as constants (a plain ``Simulator``): a piece that takes a carried value for
    another purpose (pFedMe's personal pass took the client ``lr`` for its ``personal_lr``) makes
    the two differ."""
    arrays = _sites()
    algorithm = build_algorithm({"name": name, **({"clusters": 2} if name == "ifca" else {})}, 3)
    carried = {"lr": 0.1, **{k: float(algorithm.settings[k]) for k in algorithm.hyperparameters}}
    plain = _simulator(name, arrays, 3)
    got = plain.run(plain.init(values=carried), 2)
    want = plain.run(plain.init(), 2)
    close = lambda a, b: np.testing.assert_allclose(  # noqa: E731
        np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    jax.tree.map(close, got.params, want.params)
    jax.tree.map(close, got.store, want.store)
    jax.tree.map(close, plain.evaluated_params(got), plain.evaluated_params(want))


@pytest.mark.parametrize("name", [n for n in COMPRESSORS if n != "none"])
def test_each_compressor_declares_truly_whether_it_can_raise_the_norm(name):
    """The declaration client-level DP relies on (``Compressor.raises_norm``), checked on random
    updates: a compressor declared safe never sends more than the norm it was given (20 draws,
    heavy-tailed too); one declared unsafe does exceed it on some draw (the refusal is not
    merely cautious). Then ``dp_client`` accepts exactly the safe ones."""
    cfg = {**compression_defaults(name), "error_feedback": False}
    compressor = build_compression(cfg)
    ratios = []
    for seed in range(20):
        key = jax.random.PRNGKey(seed)
        x = {"w": jax.random.t(key, 3.0, (30, 7)), "b": jax.random.normal(key, (7,))}
        sent, _ = compressor.compress(x, jax.random.fold_in(key, 1))
        norm = lambda t: float(jnp.sqrt(sum(jnp.sum(v * v) for v in jax.tree.leaves(t))))  # noqa
        ratios.append(norm(sent) / norm(x))
    if compressor.raises_norm is None:
        assert max(ratios) <= 1 + 1e-6, ratios
        build_compression(cfg, privacy="dp_client")  # accepted
    else:
        assert max(ratios) > 1, ratios
        with pytest.raises(ConfigError, match="privacy=dp_client"):
            build_compression(cfg, privacy="dp_client")
