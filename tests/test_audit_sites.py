"""Site-level membership inference (fedbench/audit/sites.py): LiRA over shadow federations."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose

from fedbench.audit import membership
from fedbench.audit.settings import parse_audit
from fedbench.audit.sites import balanced_masks, site_membership, site_scores
from fedbench.errors import ConfigError


def test_every_site_is_in_half_of_the_shadow_federations():
    masks = balanced_masks(np.random.default_rng(0), 10, 7)
    assert masks.shape == (10, 7) and np.all(masks.sum(axis=0) == 5)


def _synthetic(shift: float, shadows: int = 12, sites: int = 10, width: int = 6, seed: int = 0):
    """phi ~ N(0, 1), raised by ``shift`` for the examples of a site in the federation; the
    last site has only 3 real examples (the rest is padding that must be ignored)."""
    rng = np.random.default_rng(seed)
    masks = balanced_masks(rng, shadows, sites)
    phi = rng.normal(size=(shadows, sites, width)) + shift * masks[:, :, None]
    counts = np.full(sites, width)
    counts[-1] = 3
    phi[:, -1, 3:] = 1e6 * (rng.random((shadows, width - 3)) - 0.5)  # padding garbage
    return phi, counts, masks


def test_scores_separate_members_when_membership_shows_and_guess_when_not():
    phi, counts, masks = _synthetic(shift=1.5)
    for name, s in site_scores(phi, counts, masks).items():
        assert s.shape == masks.shape and np.all(np.isfinite(s))
        assert membership.auc(s[masks], s[~masks]) > 0.9, name
    phi, counts, masks = _synthetic(shift=0.0, shadows=20, sites=30)
    for name, s in site_scores(phi, counts, masks).items():
        assert abs(membership.auc(s[masks], s[~masks]) - 0.5) < 0.1, name


def test_site_settings_are_checked():
    assert parse_audit({"sites": {"enabled": True, "shadows": 8}}, 4).site_shadows == 8
    for bad, key in [({"shadows": 7}, "audit.sites.shadows"), ({"shadow": 8}, "audit.sites.shadow")]:
        with pytest.raises(ConfigError) as err:
            parse_audit({"sites": bad}, 4)
        assert err.value.key == key
    with pytest.raises(ConfigError) as err:
        site_membership(compose(["privacy=dp_client", "rounds=2"]), shadows=8)
    assert err.value.key == "privacy.name"


def test_shadow_federations_reveal_site_membership_on_digits():
    """8 shadow federations of 8x8 digits' 20 sites, trained 20 rounds as simulator replicas:
    knowing a site's data, LiRA tells whether it took part better than guessing."""
    out = site_membership(compose(["rounds=20", "eval_every=10"]), shadows=8)
    assert out["decisions"] == 8 * 20
    assert out["lira_online"]["members"] == out["lira_online"]["nonmembers"] == 80
    assert out["shadow_test_accuracy"] > 0.5  # the shadow federations did learn
    assert out["lira_online"]["auc"] > 0.6 and out["lira_offline"]["auc"] > 0.6
