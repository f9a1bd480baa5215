"""The round built from algorithm pieces: new families as one file, the store, DP combinations.

* FedAvgM and FedDyn (added as one file plus one config each, no edit to the round) match the
  sequential reference loop, whose server updates are written from the papers in float64.
* The per-client store: only clients whose update counted are written; padded Poisson slots
  never overwrite a real client; a compact dtype stores entries in bfloat16.
* Every algorithm x privacy mode is refused exactly where the list written from the papers says,
  before any training, with one config error (that the others run: tests/test_combinations.py).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.algorithm import ALGORITHMS, build_algorithm
from fedbench.errors import ConfigError
from fedbench.model import MLP
from reference import run_reference
from fedbench.run import build_simulator, run_experiment
from fedbench.simulator import Settings, Simulator
from fedbench.store import gather, init_store, scatter

REPO = Path(__file__).resolve().parent.parent


def _sim(data, algorithm_cfg, axis="map", **kw):
    settings = Settings(clients_per_round=3, local_epochs=2, batch_size=4, lr=0.1,
                        client_axis=axis)
    return Simulator(MLP(hidden=(8,), num_classes=data.num_classes),
                     build_algorithm(algorithm_cfg), data, settings, seed=0, **kw)


def _close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-4)


@pytest.mark.parametrize("axis", ["vmap", "map"])
@pytest.mark.parametrize("algorithm_cfg", [
    {"name": "fedavgm", "server_lr": 0.7, "momentum": 0.9},
    {"name": "feddyn", "alpha": 0.1},
], ids=lambda c: c["name"])
def test_new_families_equal_the_sequential_reference(uneven_data, algorithm_cfg, axis):
    sim = _sim(uneven_data, algorithm_cfg, axis)
    state = sim.init()
    expected, history = run_reference(
        sim.apply_fn, sim.algorithm, uneven_data, state.params, state.key, 4,
        clients_per_round=3, lr=0.1, local_epochs=2, batch_size=4,
    )
    got = sim.run(state, 4)
    _close(got.params, expected)
    moved = max(float(jnp.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(state.params)))
    assert moved > 1e-3
    if algorithm_cfg["name"] == "feddyn":  # g_k changed exactly for the clients that took part
        sampled = {c for r in history for c in r["kept"]}
        g = got.store["algorithm"]
        for c in range(uneven_data.num_clients):
            size = max(float(jnp.abs(x[c]).max()) for x in jax.tree.leaves(g))
            assert (size > 0) == (c in sampled)


def test_fedavgm_without_momentum_is_fedavg(uneven_data):
    a = _sim(uneven_data, {"name": "fedavgm", "server_lr": 1.0, "momentum": 0.0})
    b = _sim(uneven_data, {"name": "fedavg"})
    _close(a.run(a.init(), 3).params, b.run(b.init(), 3).params, atol=1e-6)


def test_store_scatter_writes_only_counted_clients_and_ignores_padding():
    store = init_store({"c": jnp.zeros((2,))}, 5)
    ids = jnp.array([3, 0, 0, 0])  # a Poisson cohort of 2 padded with id 0
    mask = jnp.array([True, True, False, False])
    new = {"c": jnp.array([[1.0, 1.0], [2.0, 2.0], [9.0, 9.0], [9.0, 9.0]])}
    out = scatter(store, ids, new, mask)
    np.testing.assert_array_equal(out["c"], [[2, 2], [0, 0], [0, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(gather(out, jnp.array([3, 1]))["c"], [[1, 1], [0, 0]])


def test_compact_store_dtype(uneven_data):
    sim = _sim(uneven_data, {"name": "scaffold", "server_lr": 1.0}, store_dtype=jnp.bfloat16)
    state = sim.run(sim.init(), 2)
    leaves = jax.tree.leaves(state.store["algorithm"])
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    assert any(float(jnp.abs(x).max()) > 0 for x in leaves)
    full = _sim(uneven_data, {"name": "scaffold", "server_lr": 1.0})
    _close(state.params, full.run(full.init(), 2).params, atol=1e-2)  # bf16 controls: close


# What each privacy mode allows, from the algorithms' papers and DP-FedAvg's analysis:
# client-level DP privatises one clipped delta per client in a synchronous round; SCAFFOLD also
# releases control deltas, FedNova rescales clipped deltas by data-dependent step ratios, FedDyn
# keeps a server state of raw deltas; q-FFL also sends loss-dependent scalars, its loss computed
# outside DP-SGD; FedPer (and FedBN, its normalisation layers) store heads relative to the
# global head the noise would perturb (Ditto and finetune release only FedAvg's delta); FedBuff
# and the baselines have no synchronous release.
REFUSED = {
    "dp_client": {"scaffold", "fednova", "feddyn", "fedexp", "fedper", "fedbn", "silobn",
                  "fedrep", "ifca", "cfl", "qffl", "fedbuff", "centralized", "local"},
    "dp_sample": {"fedrep", "apfl", "pfedme", "perfedavg", "moon", "silobn", "ifca", "qffl",
                  "fedbuff", "centralized", "local"},
    "none": set(),
}
TINY = ["dataset=breast_cancer", "partition=iid", "model=logreg", "num_clients=4",
        "clients_per_round=2", "rounds=1", "eval_every=1", "batch_size=32"]


def test_every_algorithm_has_a_config_file():
    files = {p.stem for p in (REPO / "conf" / "algorithm").glob("*.yaml")}
    assert files == set(ALGORITHMS)


@pytest.mark.parametrize("privacy", sorted(REFUSED))
def test_each_mechanism_refuses_exactly_the_listed_algorithms_before_any_work(privacy):
    """Which algorithms each privacy mode refuses, against the list above (written from the
    algorithms' papers); building is enough: a refusal comes before any data is trained on.
    That every accepted combination then runs, and equals no DP without noise, is the generated
    matrix's (tests/test_combinations.py)."""
    refused = set()
    for algorithm in sorted(ALGORITHMS):
        overrides = [*TINY, f"algorithm={algorithm}", f"privacy={privacy}"]
        if algorithm == "fedbn":  # it needs normalisation layers
            overrides += ["model=mlp", "model.norm=layer"]
        if algorithm == "silobn":  # BatchNorm, which DP-SGD refuses (naming model.norm)
            overrides += ["model=mlp", "model.norm=batch"]
        if privacy != "none":
            overrides += ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
        try:
            build_simulator(compose(overrides))
        except ConfigError as err:
            assert "\n" not in str(err)
            assert err.key in ("algorithm.name", "privacy.name") or (
                err.key == "model.norm" and privacy == "dp_sample"), err
            refused.add(algorithm)
    assert refused == REFUSED[privacy]


@pytest.mark.slow
@pytest.mark.parametrize("privacy", sorted(p for p in REFUSED if p != "none"))
def test_a_refused_combination_writes_nothing_and_never_trains(privacy, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(Simulator, "run", no_training)
    cfg = compose([*TINY, "algorithm=ifca", f"privacy={privacy}",
                   "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"])
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path, progress=None)
    assert err.value.key == "algorithm.name" and "ifca" in str(err.value)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("algorithm_cfg", [{"name": "fedavg"}, {"name": "scaffold"}],
                         ids=lambda c: c["name"])
def test_the_round_program_takes_the_data_as_an_argument_not_a_constant(algorithm_cfg):
    """A concrete data array touched while tracing (e.g. ``data.train_x[0, :1]``) is baked into
    the program as a constant: megabytes of HLO and seconds of compilation per run."""
    from conftest import make_uneven_data

    data = make_uneven_data(sizes=(400,) * 8, features=512, seed=3)  # train_x: 8 x 400 x 512
    sim = _sim(data, algorithm_cfg)
    state = sim.init()
    text = sim._run.lower(state, sim._payload(), jnp.int32(0)).as_text()
    data_bytes = np.asarray(data.train_x).nbytes
    assert len(text) < data_bytes / 10, (len(text), data_bytes)


def test_finetune_evaluation_takes_the_data_as_an_argument_not_a_constant():
    from conftest import make_uneven_data

    data = make_uneven_data(sizes=(400,) * 8, features=512, seed=3)
    sim = _sim(data, {"name": "finetune", "steps": 2})
    state = sim.init()
    store = None if state.store is None else state.store["algorithm"]
    text = sim.evaluator._client_models.lower(state.params, state.server, store, state.key,
                                              state.round, data).as_text()
    assert len(text) < np.asarray(data.train_x).nbytes / 10


def test_no_module_of_the_package_imports_itself_back():
    """No import cycle between fedbench's modules, counting imports inside functions too (by
    AST: every ``import``/``from ... import`` statement anywhere in a module)."""
    import ast

    package = REPO / "fedbench"
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def imports(name, path):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + [node.module])
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                             for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        # importing a submodule of one's own package is not importing the package back
        return {m for m in found if m in modules and m != name and not name.startswith(m + ".")}

    graph = {name: imports(name, path) for name, path in modules.items()}
    cycles, state = [], {}

    def visit(name, trail):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(trail[trail.index(dep):] + [name, dep])
            elif dep not in state:
                visit(dep, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, cycles
    assert not (package / "reference.py").exists()  # the reference loop is a testing module


@pytest.mark.parametrize("algorithm_cfg", [{"name": "ditto"}, {"name": "ifca", "clusters": 2}],
                         ids=lambda c: c["name"])
def test_the_round_runs_from_its_record_alone(uneven_data, algorithm_cfg):
    """The round is given a RoundPieces record, not the simulator: the record holds no settings
    object, data, model or simulator (not even inside a closure), and one round run from the
    record alone equals the simulator's."""
    import dataclasses

    from fedbench.pieces import RoundPieces
    from fedbench.round import federated_round

    sim = _sim(uneven_data, algorithm_cfg)
    pieces = sim.pieces
    names = {f.name for f in dataclasses.fields(RoundPieces)}
    assert not names & {"settings", "data", "model", "sim", "simulator"}

    def holds_simulator(value, depth=0):
        if isinstance(value, Simulator) or isinstance(getattr(value, "__self__", None), Simulator):
            return True
        cells = getattr(value, "__closure__", None) or ()
        return depth < 3 and any(holds_simulator(c.cell_contents, depth + 1) for c in cells
                                 if not isinstance(c.cell_contents, type))

    assert not [n for n in names if holds_simulator(getattr(pieces, n))]
    state = sim.init()
    alone = jax.jit(lambda s, d: federated_round(pieces, s, d))(state, uneven_data)
    _close(alone.params, sim.run(state, 1).params, atol=1e-6)
