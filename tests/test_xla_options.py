"""``cpu_fusions`` (fedbench/xla_options.py): which programs ask XLA:CPU for YNNPACK's matrix
products only, that the compiled program then has them (and no YNNPACK convolution), and that
training equals XLA's default program up to float rounding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

from fedbench.errors import ConfigError
from fedbench.model import CNN, LogReg
from fedbench.run import build_simulator
from fedbench.xla_options import YNN_DOTS, compiler_options, ynn_dots_available


def test_rules_per_value_model_and_backend():
    cnn, logreg = CNN(num_classes=10, conv_impl="hybrid"), LogReg(num_classes=10)
    assert compiler_options("xla", cnn, "cpu") == {}
    assert compiler_options("auto", logreg, "cpu") == {}  # no gain measured: XLA's default
    for value in ("auto", "dots"):  # the option concerns XLA:CPU only
        assert compiler_options(value, cnn, "gpu") == {}
    if ynn_dots_available():
        assert compiler_options("auto", cnn, "cpu") == YNN_DOTS
        assert compiler_options("dots", logreg, "cpu") == YNN_DOTS


def test_unknown_value_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as err:
        compiler_options("mkl", LogReg(num_classes=2), "cpu")
    assert err.value.key == "cpu_fusions" and "mkl" in str(err.value) and "dots" in str(err.value)
    with pytest.raises(ConfigError) as err:  # the config path refuses it before any build
        build_simulator(compose(["cpu_fusions=fast"]))
    assert err.value.key == "cpu_fusions" and "fast" in str(err.value)


def _library_fusions(hlo: str) -> list[set[str]]:
    """The operations inside each YNNPACK fusion of a compiled program's text."""
    out = []
    for called in re.findall(r"%ynn_fusion[.\d]* = .*?calls=(%[\w.]+)", hlo):
        body = re.search(re.escape(called) + r" \(.*?\{\n(.*?)\n\}", hlo, re.S).group(1)
        out.append(set(re.findall(r"= \S+ ([a-z][\w-]*)\(", body)))
    return out


@pytest.mark.skipif(jax.default_backend() != "cpu" or not ynn_dots_available(),
                    reason="an XLA:CPU option this XLA lacks")
def test_cnn_program_gets_ynnpack_dots_and_trains_as_xla_default():
    sims = {v: build_simulator(compose(["model=cnn", "num_clients=6", "clients_per_round=3",
                                        "batch_size=16", f"cpu_fusions={v}"])).sim
            for v in ("auto", "xla")}
    assert sims["auto"].compiler_options == YNN_DOTS and sims["xla"].compiler_options == {}
    states = {}
    for value, sim in sims.items():
        state = sim.init()
        compiled = sim._run.lower(state, sim._payload(), jnp.int32(2)).compile()
        fusions = _library_fusions(compiled.as_text())
        if value == "auto":  # its YNNPACK fusions are matrix products, none a convolution
            assert fusions and all("dot" in ops and "convolution" not in ops for ops in fusions)
        states[value] = compiled(state, sim._payload(), jnp.int32(2))  # the program inspected
    pairs = list(zip(jax.tree.leaves(states["auto"].params), jax.tree.leaves(states["xla"].params)))
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    assert not all(np.array_equal(a, b) for a, b in pairs)  # really another program
