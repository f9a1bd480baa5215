"""The ``audit`` config group (``conf/audit/default.yaml``), checked before any work."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedbench.audit.attack import ATTACKS
from fedbench.errors import ConfigError

DEFENCES = ("noise", "prune", "quantize")


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    client: int = 0
    trials: int = 3
    iterations: int = 300
    attack: str = "cosine"
    local_steps: int = 5
    defences: tuple[tuple[str, float], ...] = (("noise", 1e-2), ("prune", 0.7))
    membership: bool = True
    shadows: int = 8
    shadow_epochs: float | None = None
    shadow_kind: str = "central"
    canaries: int = 1000
    significance: float = 0.05
    run_canaries: int | None = None  # canary sites through whole runs (None: half the sites)
    run_records: int | None = None  # canary records under dp_sample (None: records.default)
    canary_runs: int = 4
    canary_kind: str = "gradient"
    sites: bool = False
    site_shadows: int = 16


def _int(cfg: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        bound = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise ConfigError(f"audit.{key}", value, bound)
    return value


def parse_audit(cfg: Mapping[str, Any] | None, num_clients: int) -> AuditSettings:
    """The audit settings, each checked (``ConfigError`` naming ``audit.<key>``)."""
    cfg = dict(cfg or {})
    base = AuditSettings()
    known = ({f.name for f in dataclasses.fields(AuditSettings)}
             - {"site_shadows", "run_canaries", "run_records", "canary_runs", "canary_kind",
                "shadow_kind"}
             ) | {"name", "membership", "epsilon"}
    for key in cfg:
        if key not in known:
            raise ConfigError(f"audit.{key}", cfg[key], "one of the keys of conf/audit/default.yaml: "
                              + ", ".join(sorted(known)))
    merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(AuditSettings)}
    merged.update({k: v for k, v in cfg.items()
                   if k in merged and k not in ("membership", "sites")})
    if merged["attack"] not in ATTACKS:
        raise ConfigError("audit.attack", merged["attack"], "one of: " + ", ".join(ATTACKS))
    _int(merged, "client", 0, num_clients - 1)
    for key in ("trials", "iterations", "local_steps"):
        _int(merged, key, 1)
    defences = []
    for entry in merged["defences"] or ():
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] not in DEFENCES
                or isinstance(entry[1], bool) or not isinstance(entry[1], (int, float))):
            raise ConfigError("audit.defences", entry,
                              "a list of [name, strength] pairs, name one of: "
                              + ", ".join(DEFENCES))
        name, strength = entry
        if (name == "prune" and not 0 <= strength < 1) or (name == "noise" and strength < 0) or (
                name == "quantize" and not (strength == int(strength) and 1 <= strength <= 16)):
            raise ConfigError("audit.defences", entry, "prune in [0, 1), noise variance >= 0, "
                              "quantize bits in 1..16")
        defences.append((str(name), float(strength)))
    merged["defences"] = tuple(defences)
    member = dict(cfg.get("membership") or {})
    merged["membership"] = bool(member.get("enabled", True))
    merged["shadows"] = _int({"membership.shadows": member.get("shadows", base.shadows)},
                             "membership.shadows", 4)
    epochs = member.get("shadow_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float))
                               or epochs <= 0):
        raise ConfigError("audit.membership.shadow_epochs", epochs, "null or a number > 0")
    merged["shadow_epochs"] = epochs
    kind = member.get("shadow_kind", base.shadow_kind)
    if kind not in ("central", "federations"):
        raise ConfigError("audit.membership.shadow_kind", kind, "one of: central, federations")
    merged["shadow_kind"] = kind
    eps = dict(cfg.get("epsilon") or {})
    for key in eps:
        if key not in ("canaries", "significance", "run"):
            raise ConfigError(f"audit.epsilon.{key}", eps[key], "one of: canaries, significance, run")
    run = dict(eps.get("run") or {})
    for key in run:
        if key not in ("sites", "runs", "kind", "records"):
            raise ConfigError(f"audit.epsilon.run.{key}", run[key],
                              "one of: sites, runs, kind, records")
    if run.get("kind", base.canary_kind) not in ("gradient", "input"):
        raise ConfigError("audit.epsilon.run.kind", run["kind"], "one of: gradient, input")
    merged["canary_kind"] = run.get("kind", base.canary_kind)
    sites_in_run = run.get("sites")
    if sites_in_run is not None and (isinstance(sites_in_run, bool) or not isinstance(
            sites_in_run, int) or not 0 <= sites_in_run < num_clients or sites_in_run == 1):
        raise ConfigError("audit.epsilon.run.sites", sites_in_run,
                          f"null (half the sites), 0 (no run audit) or an integer in "
                          f"[2, {num_clients - 1}]")
    merged["run_canaries"] = num_clients // 2 if sites_in_run is None else sites_in_run
    records = run.get("records")
    if records is not None and (isinstance(records, bool) or not isinstance(records, int)
                                or records < 2):
        raise ConfigError("audit.epsilon.run.records", records,
                          "null (100, or a tenth of the training examples) or an integer >= 2")
    merged["run_records"] = records
    merged["canary_runs"] = _int({"epsilon.run.runs": run.get("runs", base.canary_runs)},
                                 "epsilon.run.runs", 1)
    merged["canaries"] = _int({"epsilon.canaries": eps.get("canaries", base.canaries)},
                              "epsilon.canaries", 10)
    significance = eps.get("significance", base.significance)
    if isinstance(significance, bool) or not isinstance(significance, (int, float)) or not (
            0 < significance < 1):
        raise ConfigError("audit.epsilon.significance", significance, "a number in (0, 1)")
    merged["significance"] = float(significance)
    if not isinstance(cfg.get("sites") or {}, Mapping):
        raise ConfigError("audit.sites", cfg["sites"], "a mapping with keys enabled, shadows")
    sites = dict(cfg.get("sites") or {})
    for key in sites:
        if key not in ("enabled", "shadows"):
            raise ConfigError(f"audit.sites.{key}", sites[key], "one of: enabled, shadows")
    merged["sites"] = bool(sites.get("enabled", False))
    shadows = sites.get("shadows", base.site_shadows)
    if isinstance(shadows, bool) or not isinstance(shadows, int) or shadows < 6 or shadows % 2:
        raise ConfigError("audit.sites.shadows", shadows, "an even integer >= 6")
    merged["site_shadows"] = shadows
    return AuditSettings(**merged)
