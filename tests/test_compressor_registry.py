"""Every registered compressor piece (``fedbench.compression.registry.COMPRESSORS``), checked by
registering, with no test edited (issue "Combinations correct by construction", item 4):

* **declarations**: each piece declares its role, ``uses_key``, ``raises_norm``, ``downlink``,
  its bits, its settings' checks and whether it is contractive, lives in its own file
  ``fedbench/compression/<name>.py`` as ``PIECE``, and has ``conf/compression/<name>.yaml``
  with ``name`` equal to its key; its ``uses_key`` is true (two keys give two messages, or the
  same one); its ``check`` accepts its own defaults;
* **bits**: the built-in pieces' declared bits equal sizes counted here by hand (``HAND``, written
  from the papers' encodings; a new piece is checked against its declaration below);
* **declared messages = bytes**: a 2-round run's ``bytes_up`` equals, counted here from the
  parameter shapes, the algorithm's declared upload messages with the delta encoded at the
  piece's declared bits (per tensor: positions and values, 32 bits a value unquantised) and
  the other messages dense, times the clients that took part. To keep CI cheap (one compiled
  round per pair, ~1 s each on 2 cores), every compressor runs with FedAvg and every federated
  algorithm with top-k; the full product is checked one message per pair, without a round
  (the transforms' reported bits against the declared messages);
* **the worked example** ``docs/examples/compressor.py`` (TernGrad), registered at run time:
  unbiased within the statistical bound of its closed-form variance, its variance within its
  declared ``omega``, its bits, and its declarations read by DP, chains and the downlink.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from test_combinations import _sent  # what leaves a site, found independently
from fedbench.algorithm import BUILDERS, build_algorithm
from fedbench.compression import build_compression, compression_defaults, registry
from fedbench.compression.downlink import build_downlink
from fedbench.compression.piece import Quantizer, Sparsifier
from fedbench.compression.traffic import traffic
from fedbench.dataset.federated import from_client_arrays
from fedbench.errors import ConfigError
from fedbench.model import build_model
from fedbench.simulator import Settings, Simulator

REPO = Path(__file__).resolve().parent.parent
PIECES = tuple(registry.COMPRESSORS)
FEDERATED = tuple(n for n in BUILDERS if build_algorithm({"name": n, **(
    {"clusters": 2} if n == "ifca" else {})}, 4).kind == "federated")
#: Per-algorithm settings a tiny run needs (the rest from its config file).
EXTRA = {"ifca": {"clusters": 2}}
#: Model settings an algorithm needs (FedBN: normalisation layers to keep at the site).
MODEL_EXTRA = {"fedbn": {"norm": "layer"}, "silobn": {"norm": "batch"}}


def _model(data, algorithm_name: str):
    return build_model({"name": "mlp", "hidden": [5], **MODEL_EXTRA.get(algorithm_name, {})},
                       data.feature_shape, data.num_classes, data.task)
ROUNDS, CLIENTS = 2, 4


def _width(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def _kept(cfg, n):
    return min(cfg["k"], n) if cfg["k"] is not None else min(n, max(1, math.floor(
        cfg["fraction"] * n + 0.5)))


#: Bits of a block of ``n`` entries, counted by hand: a sparsifier's positions (``k`` indices
#: of ``ceil(log2 n)`` bits or an ``n``-bit bitmap, whichever is smaller; none if all are kept)
#: and a quantiser's encoding of ``n`` values (Suresh et al. 2017: ``b`` bits each and a float32
#: scale per bucket; QSGD: a sign bit and ``ceil(log2(s + 1))`` level bits each and a float32
#: norm per bucket; scaled sign: 1 bit each and a float32 scale per bucket).
HAND = {
    "topk": lambda c, n: 0 if _kept(c, n) >= n else min(_kept(c, n) * _width(n), n),
    "randk": lambda c, n: 0 if _kept(c, n) >= n else min(_kept(c, n) * _width(n), n),
    "quantize": lambda c, n: c["bits"] * n + 32 * _buckets(c, n),
    "qsgd": lambda c, n: (1 + math.ceil(math.log2(c["levels"] + 1))) * n + 32 * _buckets(c, n),
    "signsgd": lambda c, n: n + 32 * _buckets(c, n),
}


def _buckets(cfg, n):
    return 1 if cfg["bucket_size"] is None else math.ceil(n / cfg["bucket_size"])


# -- declarations ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PIECES)
def test_every_piece_declares_what_the_registry_reads(name):
    piece = registry.COMPRESSORS[name]
    assert piece.name == name
    assert isinstance(piece, (Sparsifier, Quantizer)) and piece.role in ("sparsifier",
                                                                         "quantizer")
    assert isinstance(piece.uses_key, bool) and isinstance(piece.downlink, bool)
    assert piece.raises_norm is None or (isinstance(piece.raises_norm, str) and piece.raises_norm)
    assert callable(piece.bits) and callable(piece.check) and callable(piece.configure)
    if piece.role == "sparsifier":
        assert callable(piece.kept) and callable(piece.select) and callable(piece.rescale)
    else:  # contractive by its omega (unbiased) or by its own bound (biased): one of the two
        assert callable(piece.encode)
        assert (piece.variance_bound is None) != (piece.contraction is None)
    # One file each, and one config whose name is the key.
    source = REPO / "fedbench" / "compression" / f"{name}.py"
    assert source.exists()
    spec = importlib.util.find_spec(f"fedbench.compression.{name}")
    assert spec is not None and importlib.import_module(spec.name).PIECE is piece
    yaml = REPO / "conf" / "compression" / f"{name}.yaml"
    assert yaml.exists(), yaml
    defaults = OmegaConf.to_container(OmegaConf.load(yaml))
    assert defaults["name"] == name
    assert {"per_tensor", "error_feedback", "then", "downlink"} <= set(defaults)
    assert yaml.read_text().startswith("#")  # the config says what it is and how to run it
    piece.check(defaults, "compression")  # its own defaults pass its own rules


@pytest.mark.parametrize("name", PIECES)
def test_uses_key_is_declared_truly(name):
    """A piece declared random sends different messages under two keys (a 64-entry block of
    distinct magnitudes, 10% or 4 bits kept); a deterministic one the same message."""
    cfg = {**compression_defaults(name), "error_feedback": False}
    if registry.COMPRESSORS[name].role == "sparsifier":
        cfg["fraction"], cfg["k"] = 0.1, None
    compressor = build_compression(cfg)
    x = {"w": jnp.linspace(-1.0, 1.0, 64) ** 3 + 0.01}
    one, _ = compressor.compress(x, jax.random.PRNGKey(0))
    two, _ = compressor.compress(x, jax.random.PRNGKey(1))
    same = np.array_equal(np.asarray(one["w"]), np.asarray(two["w"]))
    assert same != registry.COMPRESSORS[name].uses_key


@pytest.mark.parametrize("name", [n for n in PIECES if n in HAND])
def test_declared_bits_equal_the_hand_counted_ones(name):
    piece = registry.COMPRESSORS[name]
    base = compression_defaults(name)
    variants = [base]
    if piece.role == "sparsifier":
        variants += [{**base, "fraction": f, "k": None} for f in (0.01, 0.3, 0.5, 1.0)]
        variants += [{**base, "k": k} for k in (1, 7, 10_000)]
    else:
        variants += [{**base, "bucket_size": b} for b in (None, 1, 16, 100)]
        if "bits" in base:
            variants += [{**base, "bits": b} for b in (1, 3, 16)]
        if "levels" in base:
            variants += [{**base, "levels": s} for s in (1, 2, 3, 4, 255, 2**16)]
    for cfg in variants:
        for n in (1, 2, 3, 7, 64, 300, 1000):
            assert piece.bits(cfg, n) == HAND[name](cfg, n), (cfg, n)
            if piece.role == "sparsifier":
                assert piece.kept(cfg, n) == _kept(cfg, n), (cfg, n)


# -- declared messages = bytes -----------------------------------------------------------------
def _data():
    rng = np.random.default_rng(0)
    features, classes = 4, 3
    w = rng.normal(size=(features, classes))
    xs = [rng.normal(size=(n, features)).astype(np.float32) for n in (9, 6, 11, 8)]
    ys = [np.argmax(x @ w, 1).astype(np.int32) for x in xs]
    return from_client_arrays(xs, ys, xs, ys, classes)


def _expected_delta_bits(cfg, sizes):
    """One client's compressed delta from the pieces' declared bits, per block."""
    chain = [cfg] + ([] if cfg.get("then") is None else [{**compression_defaults(
        cfg["then"]), "per_tensor": cfg["per_tensor"], "error_feedback": cfg["error_feedback"]}])
    blocks = sizes if cfg["per_tensor"] else [sum(sizes)]
    total = 0
    for n in blocks:
        kept = n
        quantized = False
        for piece_cfg in chain:
            piece = registry.COMPRESSORS[piece_cfg["name"]]
            if piece.role == "sparsifier":
                kept = piece.kept(piece_cfg, n)
                total += piece.bits(piece_cfg, n)
            else:
                total += piece.bits(piece_cfg, kept)
                quantized = True
        if not quantized:
            total += 32 * kept  # float32 values
    return total


def _pairs():
    pairs = [("fedavg", name) for name in PIECES]
    pairs += [(algorithm, "topk") for algorithm in FEDERATED if algorithm != "fedavg"]
    pairs += [("fedavg", {"name": "topk", "then": "quantize"}),
              ("scaffold", {"name": "randk", "then": "signsgd", "per_tensor": False})]
    return [pytest.param(a, c, id=f"{a}-{c if isinstance(c, str) else c['name'] + '+' + c['then']}")
            for a, c in pairs]


@pytest.mark.parametrize("algorithm_name, compression", _pairs())
def test_bytes_up_equal_the_declared_messages(algorithm_name, compression):
    cfg = {"name": compression} if isinstance(compression, str) else dict(compression)
    cfg = {**compression_defaults(cfg["name"]), **cfg}
    algorithm = build_algorithm({"name": algorithm_name, **EXTRA.get(algorithm_name, {})},
                                CLIENTS)
    compressor = build_compression(cfg, None, algorithm.kind)
    data = _data()
    model = _model(data, algorithm_name)
    settings = Settings(clients_per_round=CLIENTS, local_epochs=1, batch_size=16, lr=0.1,
                        client_axis="map")
    sim = Simulator(model, algorithm, data, settings, seed=0,
                    transforms=(compressor.transform(),))
    shapes = sim.param_shapes()
    compressor.check_error_feedback(_sent(shapes, algorithm))
    state = sim.run(sim.init(), ROUNDS)

    uploads = ROUNDS * CLIENTS  # full cohorts, no stragglers
    assert int(np.asarray(state.participation).sum()) == uploads
    messages = algorithm.messages(algorithm, _sent(shapes, algorithm))
    entries = lambda tree: [int(np.prod(s.shape)) for s in jax.tree.leaves(tree)]  # noqa: E731
    delta = _expected_delta_bits(cfg, entries(messages.up["delta"]))
    others = sum(32 * sum(entries(m)) for key, m in messages.up.items() if key != "delta")
    dense = 32 * sum(sum(entries(m)) for m in messages.up.values())
    got = traffic(state, dense, others)["bytes_up"]
    assert got == math.ceil(uploads * (delta + others) / 8), (got, delta, others)


@pytest.mark.parametrize("name", PIECES)
def test_every_algorithm_sends_its_declared_messages_at_the_pieces_bits(name):
    """The full algorithm x compressor product, one message each (no round compiled: the test
    above runs the round's count for a row and a column of the product). Each federated
    algorithm's simulator with the piece: the bits its transforms report for one client's
    delta equal the declared upload message (``_sent``, found independently) at the piece's
    declared bits, and the rest of the upload (SCAFFOLD's control variate) is counted dense."""
    cfg = {**compression_defaults(name), "name": name}
    data = _data()
    settings = Settings(clients_per_round=CLIENTS, local_epochs=1, batch_size=16, lr=0.1,
                        client_axis="map")
    key = jax.random.PRNGKey(3)
    for algorithm_name in FEDERATED:
        algorithm = build_algorithm({"name": algorithm_name, **EXTRA.get(algorithm_name, {})},
                                    CLIENTS)
        compressor = build_compression(cfg, None, algorithm.kind)
        sim = Simulator(_model(data, algorithm_name), algorithm, data, settings, seed=0,
                        transforms=(compressor.transform(),))
        shapes = sim.param_shapes()
        sent = _sent(shapes, algorithm)
        messages = algorithm.messages(algorithm, sent)
        sizes = [int(np.prod(s.shape)) for s in jax.tree.leaves(messages.up["delta"])]
        delta = jax.tree.map(lambda s: jax.random.normal(key, s.shape, s.dtype), shapes)
        if algorithm.shared is not None:  # what the round hands the transforms
            delta = algorithm.shared(delta)
        _, _, info = sim.transform.update(  # eager: no program compiled per pair
            delta, sim.store_template["transforms"], {"run_key": key, "key": key, "client": 0})
        others = sum(32 * int(np.prod(s.shape)) for k, m in messages.up.items() if k != "delta"
                     for s in jax.tree.leaves(m))
        assert int(info["bits"]) == _expected_delta_bits(cfg, sizes), algorithm_name
        assert sim.other_up_bits == others, algorithm_name


# -- the worked example ----------------------------------------------------------------------------
def _example(name):
    path = REPO / "docs" / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def terngrad():
    example = _example("compressor")
    example.register()
    try:
        yield example
    finally:
        registry.unregister("terngrad")
    assert "terngrad" not in registry.COMPRESSORS


def test_the_terngrad_example_is_unbiased_and_counts_its_bits(terngrad):
    """Wen et al. 2017, Eq. 3-4: ``E[Q(x)] = x``, ``Var Q(x)_i = s |x_i| - x_i^2``; 2 bits per
    value and one float32 scale per bucket."""
    compressor = build_compression({"name": "terngrad"})
    assert compressor.quantizer == "terngrad" and compressor.needs_key
    rng = np.random.default_rng(7)
    tree = {"w": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)}
    x = np.asarray(tree["w"], np.float64).ravel()
    n = 20_000
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    samples = np.asarray(jax.jit(jax.vmap(lambda k: compressor.compress(tree, k)[0]["w"]))(keys),
                         np.float64).reshape(n, -1)
    s = np.max(np.abs(x))
    assert set(np.unique(np.round(np.abs(samples) / s, 5))) <= {0.0, 1.0}  # ternary
    variance = s * np.abs(x) - x**2
    bound = 6 * np.sqrt(variance / n) + 1e-6  # CLT, 6 standard deviations per entry
    assert np.all(np.abs(samples.mean(0) - x) <= bound)
    assert np.max(bound) < 0.1 * s  # not vacuous
    measured = np.mean(np.sum((samples - x) ** 2, axis=1)) / np.sum(x**2)
    assert measured == pytest.approx((s * np.sum(np.abs(x)) - np.sum(x**2)) / np.sum(x**2),
                                     rel=0.05)
    assert measured <= compressor.variance_bound(40)

    params = {"kernel": jnp.zeros((10, 30)), "bias": jnp.zeros((30,))}
    assert compressor.message_bits(params) == (2 * 300 + 32) + (2 * 30 + 32)
    buckets = build_compression({"name": "terngrad", "bucket_size": 64})
    assert buckets.message_bits(params) == (2 * 300 + 5 * 32) + (2 * 30 + 32)
    chained = build_compression({"name": "topk", "then": "terngrad", "fraction": 0.1})
    assert chained.message_bits(params) == (270 + 2 * 30 + 32) + (15 + 2 * 3 + 32)


def test_the_terngrad_example_declarations_are_read(terngrad):
    with pytest.raises(ConfigError, match="privacy=dp_client") as error:
        build_compression({"name": "terngrad"}, privacy="dp_client")
    assert error.value.key == "compression.name"
    with pytest.raises(ConfigError) as error:
        build_compression({"name": "terngrad", "bucket_size": 0})
    assert error.value.key == "compression.bucket_size"
    down = build_downlink({"name": "none", "downlink": {"name": "terngrad", "bucket_size": 8}})
    assert down.quantizer == "terngrad" and down.bucket_size == 8
    # Error feedback only where omega = sqrt(n) - 1 < 1: refused on a 64-entry tensor.
    ef = build_compression({"name": "terngrad", "error_feedback": True})
    with pytest.raises(ConfigError, match="compression.error_feedback"):
        ef.check_error_feedback({"w": jax.ShapeDtypeStruct((64,), jnp.float32)})
    ef.check_error_feedback({"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
