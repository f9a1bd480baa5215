"""Hospital network links and compute speeds: the ``links`` config group, the clock in seconds.

Each site gets an uplink and a downlink bandwidth and a round-trip time from a named profile
(:data:`PROFILES`, or profiles of the config's own), assigned per site (``sites``: one name per
site) or by ``shares`` (e.g. 70% ``hospital_dsl``, 30% ``rural_4g``), plus a compute time of
``step_seconds`` per local minibatch step (times the site's lognormal ``site_speed`` factor).

A client's time in a round (:func:`client_seconds`) is::

    rtt + bits_down / downlink  +  steps * step_seconds * speed  +  rtt + bits_up / uplink

one round trip per transfer (the request and its acknowledgement) plus the bits at the link's
rate. ``bits_down`` is the model (and any other state the algorithm sends, e.g. SCAFFOLD's
control variate) as dense float32; ``bits_up`` is the message's exact encoded size
(:mod:`fedbench.compression`), or dense float32. A synchronous round lasts as long as its slowest
kept client; FedBuff's arrival schedule uses the same per-client durations. Without links
(``links=none``) the clock counts compute only, in local steps of a speed-1 site.

The profiles are planning assumptions, not measurements; their rates are the nominal downstream
/ upstream rates of the access technology (sources in :data:`PROFILES`); real throughput is
usually lower, so the seconds computed are optimistic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

#: name -> (downlink Mbit/s, uplink Mbit/s, round-trip ms, source)
PROFILES: dict[str, tuple[float, float, float, str]] = {
    "fibre": (1000.0, 1000.0, 5.0,
              "1 Gbit/s symmetric fibre (GPON/XGS-PON business service, ITU-T G.984/G.9807)"),
    "hospital_dsl": (20.0, 5.0, 30.0,
                     "20/5 Mbit/s business DSL (ADSL2+/VDSL2 range, ITU-T G.992.5/G.993.2)"),
    "rural_4g": (10.0, 2.0, 60.0,
                 "10/2 Mbit/s LTE at the cell edge (well below LTE category 4's 150/50 peak)"),
    "satellite": (25.0, 3.0, 600.0,
                  "25/3 Mbit/s geostationary satellite; ~600 ms round trip from the ~35,786 km "
                  "orbit (4 x 35,786 km / c = 477 ms of propagation alone)"),
}

_PROFILE_KEYS = ("down_mbps", "up_mbps", "rtt_ms")


@dataclasses.dataclass(frozen=True)
class Links:
    """Per-site links (``[num_clients]`` arrays) and the compute time of one local step.

    Attributes:
      names: each site's profile name.
      down_bps, up_bps: downlink / uplink rate in bits per second.
      rtt_s: round-trip time in seconds.
      step_seconds: seconds one local minibatch step takes at a speed-1 site.
    """

    names: tuple[str, ...]
    down_bps: np.ndarray
    up_bps: np.ndarray
    rtt_s: np.ndarray
    step_seconds: float

    def summary(self) -> dict[str, Any]:
        """The sites per profile and the step time (for ``summary.json``)."""
        counts: dict[str, int] = {}
        for name in self.names:
            counts[name] = counts.get(name, 0) + 1
        return {"sites_per_profile": counts, "step_seconds": self.step_seconds}


def client_seconds(links: Links | None, xp, ids, steps, speeds, bits_down, bits_up):
    """Seconds each client of ``ids`` needs for a round (module docstring); ``xp``: numpy or
    ``jax.numpy``. Without links: ``steps * speeds`` (the clock in local steps)."""
    compute = steps.astype(xp.float32) * speeds
    if links is None:
        return compute
    rtt = xp.asarray(links.rtt_s, xp.float32)[ids]
    down = xp.asarray(links.down_bps, xp.float32)[ids]
    up = xp.asarray(links.up_bps, xp.float32)[ids]
    return (2.0 * rtt + xp.asarray(bits_down, xp.float32) / down
            + compute * links.step_seconds + xp.asarray(bits_up, xp.float32) / up)


def _number(value, key, low=0.0, strict=True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value > low if strict else value >= low):
        raise ConfigError(key, value, f"a number {'>' if strict else '>='} {low:g}")
    return float(value)


def _profiles(cfg: Mapping[str, Any]) -> dict[str, tuple[float, float, float]]:
    table = {name: spec[:3] for name, spec in PROFILES.items()}
    for name, spec in (cfg.get("profiles") or {}).items():
        if not isinstance(spec, Mapping) or set(spec) != set(_PROFILE_KEYS):
            raise ConfigError(f"links.profiles.{name}", spec,
                              "a mapping with exactly " + ", ".join(_PROFILE_KEYS))
        table[name] = tuple(_number(spec[k], f"links.profiles.{name}.{k}", strict=k != "rtt_ms")
                            for k in _PROFILE_KEYS)
    return table


def _by_shares(shares: Mapping[str, Any], names, num_sites: int, seed: int) -> list[str]:
    """Largest-remainder counts of each profile, in a random (seeded) order of the sites."""
    if not isinstance(shares, Mapping) or not shares:
        raise ConfigError("links.shares", shares, "a mapping of profile name to share")
    shares = {name: _number(share, f"links.shares.{name}", strict=False)
              for name, share in shares.items()}
    for name in shares:
        if name not in names:
            raise ConfigError("links.shares", name, "profiles: " + ", ".join(names))
    total = sum(shares.values())
    if total <= 0:
        raise ConfigError("links.shares", dict(shares), "shares with a positive sum")
    exact = {name: share / total * num_sites for name, share in shares.items()}
    counts = {name: int(np.floor(v)) for name, v in exact.items()}
    by_remainder = sorted(exact, key=lambda n: (-(exact[n] - counts[n]), list(exact).index(n)))
    for name in by_remainder[: num_sites - sum(counts.values())]:
        counts[name] += 1
    assigned = [name for name in shares for _ in range(counts[name])]
    order = np.random.default_rng([seed, 0x11A6]).permutation(num_sites)
    return [assigned[i] for i in order]


def build_links(cfg: Mapping[str, Any] | None, num_sites: int) -> Links | None:
    """The :class:`Links` of a ``links`` config (``conf/links/*.yaml``); None for ``none``.

    Raises:
      ConfigError: an unknown key or profile, a ``sites`` list of the wrong length, shares or
        rates that are not positive numbers.
    """
    if not cfg or cfg.get("name", "none") == "none":
        return None
    allowed = ("name", "profile", "shares", "sites", "profiles", "step_seconds", "seed")
    for key, value in cfg.items():
        if key not in allowed:
            raise ConfigError(f"links.{key}", value, "a key of conf/links: " + ", ".join(allowed))
    table = _profiles(cfg)
    names = sorted(table)
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("links.seed", seed, "an integer")
    if cfg.get("sites") is not None:
        sites = list(cfg["sites"])
        if len(sites) != num_sites:
            raise ConfigError("links.sites", f"{len(sites)} names",
                              f"one profile name per site ({num_sites})")
        for name in sites:
            if name not in table:
                raise ConfigError("links.sites", name, "profiles: " + ", ".join(names))
    elif cfg.get("profile") is not None:
        if cfg["profile"] not in table:
            raise ConfigError("links.profile", cfg["profile"], "profiles: " + ", ".join(names))
        sites = [cfg["profile"]] * num_sites
    else:
        sites = _by_shares(cfg.get("shares"), table, num_sites, seed)
    spec = np.array([table[name] for name in sites], np.float64)
    return Links(
        names=tuple(sites),
        down_bps=spec[:, 0] * 1e6,
        up_bps=spec[:, 1] * 1e6,
        rtt_s=spec[:, 2] / 1e3,
        step_seconds=_number(cfg.get("step_seconds"), "links.step_seconds"),
    )
