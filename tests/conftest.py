"""Shared fixtures: small uneven federations and Hydra-composed configs."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# The tests check this checkout's fedbench, whatever an (editable) install elsewhere points at.
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))

from fedbench.dataset.federated import from_client_arrays  # noqa: E402

#: JAX's persistent compilation cache for the whole test session, shared by the xdist workers
#: and by the commands the tests start (environment variables): tests build many simulators
#: of the same few configs, and each new simulator's program is the same executable
#: (benchmarks/NOTES.md, "Test time": the suite's wall time, cache off against on). Results are
#: unchanged: a cached executable is the one XLA would compile. Tests that check what
#: compilation itself does (cross-process determinism) start their commands without it
#: (:func:`without_compilation_cache`).
CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": None, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
    if not hasattr(config, "workerinput") and "FEDBENCH_TEST_JAX_CACHE" not in os.environ:
        path = tempfile.mkdtemp(prefix="fedbench-test-jax-cache-")  # workers inherit it
        os.environ["FEDBENCH_TEST_JAX_CACHE"] = config._fedbench_jax_cache = path
    path = os.environ.get("FEDBENCH_TEST_JAX_CACHE")
    if not path or os.environ.get("FEDBENCH_TEST_NO_JAX_CACHE"):
        return
    import jax

    os.environ.update({**CACHE_ENV, "JAX_COMPILATION_CACHE_DIR": path})
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    path = getattr(config, "_fedbench_jax_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def without_compilation_cache(env: dict) -> dict:
    """``env`` for a command that must compile for itself (no persistent cache)."""
    return {k: v for k, v in env.items() if k not in CACHE_ENV}


def make_uneven_data(sizes=(3, 17, 8, 25, 1, 12), features=4, classes=3, seed=0,
                     storage="padded"):
    """Clients of very different sizes with a learnable linear labelling (``storage``:
    ``padded`` FederatedData or ``flat`` FlatFederatedData of the same arrays)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(features, classes))
    xs, ys, txs, tys = [], [], [], []
    for n in sizes:
        x = rng.normal(size=(n, features)).astype(np.float32)
        xs.append(x)
        ys.append(np.argmax(x @ w, axis=1).astype(np.int32))
        tx = rng.normal(size=(max(1, n // 3), features)).astype(np.float32)
        txs.append(tx)
        tys.append(np.argmax(tx @ w, axis=1).astype(np.int32))
    if storage == "flat":
        from fedbench.dataset.flat import flat_from_client_arrays

        return flat_from_client_arrays(xs, ys, txs, tys, classes)
    return from_client_arrays(xs, ys, txs, tys, classes)


@pytest.fixture
def uneven_data():
    return make_uneven_data()


def compose(overrides: list[str]) -> dict:
    """The CLI's config for ``overrides``, resolved to plain containers."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


@contextlib.contextmanager
def mock_tfds(num_examples: int):
    """TFDS serving random examples as if every dataset were prepared as ArrayRecord.

    ``tfds.testing.mock_data`` leaves ``is_prepared`` (False without real files) and
    ``info.file_format`` (TFRecord by default) alone; both are patched so the loader takes the
    path a ``dataset.download=true`` preparation gives: ``as_data_source``, no TensorFlow.
    Nothing downloads.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    array_record = tfds.core.file_adapters.FileFormat.ARRAY_RECORD
    with (
        tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
        mock.patch.object(
            tfds.core.DatasetInfo, "file_format",
            new_callable=mock.PropertyMock, return_value=array_record,
        ),
    ):
        yield
