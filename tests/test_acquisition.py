"""Scanner shift, ``partition=acquisition`` (issue 33 item 3; FedBN's feature shift).

With ``labels: iid`` the scenario draws the same partition and train/test split as
``partition=iid`` with the same seed, so each site's images can be checked image by image
against their unshifted selves: each step of a protocol against its closed form written here
(an affine map with the pooled pixel mean and std of the raw dataset; block means; a Gaussian
kernel convolved by hand), train and test split alike, and sites of one scanner alike.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedbench.dataset import load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.errors import ConfigError

OFF = {"name": "acquisition", "intensity": 0.0, "contrast": 0.0, "blur": 0.0, "noise": 0.0,
       "resolution": [1]}


@pytest.fixture(scope="module")
def digits():
    return load_dataset({"name": "digits"})


def _build(raw, partition, num_clients=8, seed=3):
    return build_federated(raw, partition, num_clients, seed=seed, test_fraction=0.2,
                           normalization="none")


def _pairs(plain, shifted):
    """``(site, split, unshifted [n, H, W, C], shifted)`` for every site and split."""
    for split in ("train", "test"):
        counts = np.asarray(getattr(plain, f"{split}_counts"))
        np.testing.assert_array_equal(counts, np.asarray(getattr(shifted, f"{split}_counts")))
        np.testing.assert_array_equal(np.asarray(getattr(plain, f"{split}_y")),
                                      np.asarray(getattr(shifted, f"{split}_y")))
        x0, x1 = (np.asarray(getattr(d, f"{split}_x"), np.float64) for d in (plain, shifted))
        for c, n in enumerate(counts):
            yield c, split, x0[c, :n], x1[c, :n]


def test_contrast_and_intensity_are_the_affine_map(digits):
    plain, _ = _build(digits, {"name": "iid"})
    shifted, stats = _build(digits, {**OFF, "contrast": 0.4, "intensity": 0.8, "scanners": 4})
    m, s = float(digits.x.mean()), float(digits.x.std())  # every image is at some site
    protocols = stats["groups"]["protocols"]
    assert shifted.client_groups == (0, 0, 1, 1, 2, 2, 3, 3)
    assert len({(p["contrast"], p["intensity"]) for p in protocols}) == 4
    for c, _, x0, x1 in _pairs(plain, shifted):
        p = protocols[c // 2]
        np.testing.assert_allclose(x1, m + p["contrast"] * (x0 - m) + p["intensity"] * s,
                                   atol=1e-4)


def test_resolution_averages_pixel_blocks(digits):
    plain, _ = _build(digits, {"name": "iid"})
    shifted, stats = _build(digits, {**OFF, "resolution": [1, 2, 4]})
    factors = [p["resolution"] for p in stats["groups"]["protocols"]]
    assert set(factors) > {1}  # some site is coarser
    for c, _, x0, x1 in _pairs(plain, shifted):
        f = factors[c]
        for i in range(0, 8, f):
            for j in range(0, 8, f):
                block0, block1 = x0[:, i:i + f, j:j + f], x1[:, i:i + f, j:j + f]
                np.testing.assert_allclose(block1, np.broadcast_to(
                    block0.mean(axis=(1, 2), keepdims=True), block1.shape), atol=1e-4)


def _gauss_blur(x, sigma):
    """Separable Gaussian filter over height and width: weights exp(-k^2 / (2 sigma^2)) for
    |k| <= round(4 sigma), normalised; edge pixels repeated beyond the border."""
    r = int(4 * sigma + 0.5)
    w = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    w /= w.sum()
    out = x
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        out = sum(w[k] * np.take(padded, np.arange(k, k + size), axis=axis)
                  for k in range(2 * r + 1))
    return out


def test_blur_is_a_gaussian_filter(digits):
    plain, _ = _build(digits, {"name": "iid"})
    shifted, stats = _build(digits, {**OFF, "blur": 2.0})
    sigmas = [p["blur"] for p in stats["groups"]["protocols"]]
    assert min(sigmas) >= 0 and max(sigmas) > 0.5
    for c, _, x0, x1 in _pairs(plain, shifted):
        np.testing.assert_allclose(x1, _gauss_blur(x0, sigmas[c]), atol=1e-3)


def test_noise_has_the_sites_level(digits):
    plain, _ = _build(digits, {"name": "iid"}, num_clients=4)
    shifted, stats = _build(digits, {**OFF, "noise": 1.0}, num_clients=4)
    s = float(digits.x.std())
    residuals = {}
    for c, split, x0, x1 in _pairs(plain, shifted):
        residuals.setdefault(c, []).append((x1 - x0).ravel())
        if split == "test":  # train and test draws differ (the site's generator runs on)
            assert not np.allclose(x1 - x0, residuals[c][0][: x1.size].reshape(x1.shape))
    for c, parts in residuals.items():
        r = np.concatenate(parts)  # about 29,000 pixels: the std within 2%
        level = stats["groups"]["protocols"][c]["noise"] * s
        assert abs(r.mean()) < 0.05 * s and r.std() == pytest.approx(level, rel=0.02)


def test_all_steps_off_is_the_plain_partition(digits):
    for labels, plain_cfg in (("iid", {"name": "iid"}),
                              ("dirichlet", {"name": "dirichlet", "alpha": 0.3})):
        plain, _ = _build(digits, plain_cfg)
        same, stats = _build(digits, {**OFF, "labels": labels, "alpha": 0.3})
        for _, _, x0, x1 in _pairs(plain, same):
            np.testing.assert_array_equal(x0, x1)
        assert stats["groups"]["client_groups"] == list(range(8))  # one scanner per site


def test_label_skew_combines_with_the_scanners(digits):
    """labels=dirichlet: the Dirichlet split's labels, then the scanners' protocols."""
    plain, _ = _build(digits, {"name": "dirichlet", "alpha": 0.1})
    shifted, _ = _build(digits, {**OFF, "labels": "dirichlet", "alpha": 0.1, "intensity": 1.0})
    for _, _, x0, x1 in _pairs(plain, shifted):  # labels asserted equal inside
        offset = (x1 - x0).mean()
        np.testing.assert_allclose(x1 - x0, offset, atol=1e-4)


@pytest.mark.parametrize("partition, key", [
    ({"resolution": [3]}, "partition.resolution"),
    ({"resolution": []}, "partition.resolution"),
    ({"blur": -1}, "partition.blur"),
    ({"noise": math.inf}, "partition.noise"),
    ({"labels": "shards"}, "partition.labels"),
    ({"scanners": 0}, "partition.scanners"),
    ({"scanners": 9}, "partition.scanners"),
    ({"scaner": 2}, "partition.scaner"),
    ({"labels": "dirichlet", "alpha": 0}, "partition.alpha"),
])
def test_config_errors_name_the_key(partition, key, digits):
    with pytest.raises(ConfigError) as err:
        _build(digits, {"name": "acquisition", **partition})
    assert err.value.key == key


def test_needs_images():
    with pytest.raises(ConfigError, match=r"\[H, W, C\] images"):
        _build(load_dataset({"name": "breast_cancer"}), {"name": "acquisition"}, 4)
