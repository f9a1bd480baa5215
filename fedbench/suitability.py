"""``fedbench-suitability``: is federated learning worth it for this federation?

One command on a scenario config (the same overrides as ``fedbench``) measures the four
dimensions along which FL's suitability is usually argued, by running the tools that already
measure each of them, and says which way each points (:mod:`fedbench.suitability_report`):

1. Data sensitivity: what an honest-but-curious server recovers without DP
   (:func:`fedbench.audit.run.run_audit`: gradient-inversion quality, label recovery,
   membership-inference AUC) and the accuracy cost of the epsilon the user names (a run with
   ``privacy=<mechanism> privacy.target_epsilon=<epsilon>`` against the non-private run).
2. Dataset size asymmetry: the partition statistics (``summary.json``'s ``partition_stats``),
   the largest site's share and the sites' Shapley values
   (:func:`fedbench.contribution.contribution`; exact up to 10 sites, truncated Monte-Carlo
   beyond, Ghorbani and Zou, ICML 2019).
3. Communication infrastructure: seconds per round and hours to a target accuracy on the
   scenario's link profiles (``links=profiles``; ``metrics.jsonl``'s ``simulated_seconds``),
   dense and with a compressor (default: top-1% with error feedback), plus what-if profiles.
4. Regulatory environment: the epsilon and delta the user names, and what they cost under the
   client-level mechanism that fits the federation (``suitability.mechanism``, :func:`mechanism`):
   DP-FTRL (``privacy=dp_ftrl``) when every site takes part in every round, so no sampling
   amplifies privacy (Kairouz et al. 2021), DP-FedAvg (``privacy=dp_client``, Poisson cohorts)
   when sites are sampled (McMahan et al. 2018).

Plus the FL vs local vs pooled verdicts of :func:`fedbench.compare.compare`, whose federated
run is also the dense non-private run of dimensions 1, 3 and 4.

    fedbench-suitability --out outputs/suit partition=quantity links=profiles \\
        links.profile=rural_4g suitability.epsilon=3
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedbench.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Settings:
    """The ``suitability`` group (``conf/suitability/default.yaml``), checked."""

    epsilon: float = 8.0
    delta: float | None = None
    mechanism: str = "auto"
    target: float | None = None
    max_cost: float = 0.05
    max_hours: float = 24.0
    dominance: float = 0.5
    profiles: tuple[str, ...] = ()
    compressor: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"name": "topk", "fraction": 0.01, "error_feedback": True})
    audit: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    contribution: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {
        "enabled": True, "method": "auto", "permutations": 20, "tolerance": 0.01, "seeds": 1})
    compare: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"bootstrap": 2000, "val_fraction": 0.2})
    render: bool = True


def _number(value: Any, key: str, low: float, high: float | None = None,
            strict: bool = True, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value > low if strict else value >= low) or (
            high is not None and not value <= high):
        bound = f"a number {'>' if strict else '>='} {low:g}" + (
            f" and <= {high:g}" if high is not None else "") + (" or null" if allow_none else "")
        raise ConfigError(f"suitability.{key}", value, bound)
    return float(value)


def parse_settings(raw: Mapping[str, Any] | None, links_cfg: Mapping[str, Any] | None = None
                   ) -> Settings:
    """The checked settings; ``links_cfg`` (the run's ``links``) supplies extra profiles."""
    from fedbench.links import PROFILES

    raw = dict(raw or {})
    base = Settings()
    fields = {f.name for f in dataclasses.fields(Settings)}
    for key in raw:
        if key not in fields | {"name"}:
            raise ConfigError(f"suitability.{key}", raw[key], "a key of conf/suitability/"
                              "default.yaml: " + ", ".join(sorted(fields)))
    eps = _number(raw.get("epsilon", base.epsilon), "epsilon", 0.0)
    mech = raw.get("mechanism", base.mechanism)
    if mech not in MECHANISMS:
        raise ConfigError("suitability.mechanism", mech, "one of: " + ", ".join(MECHANISMS))
    delta = _number(raw.get("delta"), "delta", 0.0, 1.0, allow_none=True)
    if delta is not None and delta >= 1:
        raise ConfigError("suitability.delta", delta, "a number in (0, 1) or null")
    target = _number(raw.get("target"), "target", 0.0, 1.0, allow_none=True)
    max_cost = _number(raw.get("max_cost", base.max_cost), "max_cost", 0.0, 1.0, strict=False)
    max_hours = _number(raw.get("max_hours", base.max_hours), "max_hours", 0.0)
    dominance = _number(raw.get("dominance", base.dominance), "dominance", 0.0, 1.0)
    known = sorted({*PROFILES, *((links_cfg or {}).get("profiles") or {})})
    profiles = raw.get("profiles") or []
    if isinstance(profiles, str) or not isinstance(profiles, (list, tuple)):
        raise ConfigError("suitability.profiles", profiles, "a list of profile names: "
                          + ", ".join(known))
    for name in profiles:
        if name not in known:
            raise ConfigError("suitability.profiles", name, "profiles: " + ", ".join(known))
    compressor = dict(raw.get("compressor") or base.compressor)
    if compressor.get("name", "none") == "none":
        raise ConfigError("suitability.compressor", compressor,
                          "a compression config other than none (conf/compression/*.yaml keys)")
    contrib = {**base.contribution, **dict(raw.get("contribution") or {})}
    for key in contrib:
        if key not in base.contribution:
            raise ConfigError(f"suitability.contribution.{key}", contrib[key],
                              "one of: " + ", ".join(base.contribution))
    if contrib["method"] not in ("auto", "exact", "tmc", "loo"):
        raise ConfigError("suitability.contribution.method", contrib["method"],
                          "one of: auto, exact, tmc, loo")
    for key in ("permutations", "seeds"):
        value = contrib[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"suitability.contribution.{key}", value, "an integer >= 1")
    comp = {**base.compare, **dict(raw.get("compare") or {})}
    for key in comp:
        if key not in base.compare:
            raise ConfigError(f"suitability.compare.{key}", comp[key],
                              "one of: " + ", ".join(base.compare))
    audit = raw.get("audit") or {}
    if not isinstance(audit, Mapping):
        raise ConfigError("suitability.audit", audit, "a mapping of conf/audit keys")
    return Settings(eps, delta, mech, target, max_cost, max_hours, dominance, tuple(profiles),
                    compressor, dict(audit), contrib, comp, bool(raw.get("render", True)))


#: ``suitability.mechanism``: ``auto`` picks by participation (:func:`mechanism`)
MECHANISMS = ("auto", "dp_client", "dp_ftrl", "ddp")


def mechanism(setting: str, base: Mapping[str, Any]) -> str:
    """The client-level mechanism of the regulatory run. ``auto``: ``dp_ftrl`` when every site
    takes part in every round (``clients_per_round == num_clients``, no straggler dropped):
    sampling amplifies nothing there, and DP-FTRL's default BLT noise is never more than
    independent noise for the same epsilon (results/dp_ftrl); ``dp_client`` otherwise (Poisson
    cohorts at rate ``clients_per_round / num_clients``). ``dp_ftrl`` for a sampled cohort is
    refused (it has no sampling; ``privacy.participation=cyclic`` is for ``fedbench``), as is
    ``ddp`` (distributed DP: the sites do not trust the server; every site every round).

    Raises:
      ConfigError: naming ``suitability.mechanism``.
    """
    every_round = (int(base["clients_per_round"]) == int(base["num_clients"])
                   and not float((base.get("stragglers") or {}).get("fraction") or 0))
    if setting == "auto":
        return "dp_ftrl" if every_round else "dp_client"
    if setting in ("dp_ftrl", "ddp") and not every_round:
        raise ConfigError("suitability.mechanism", setting,
                          f"dp_client or auto for clients_per_round={base['clients_per_round']} "
                          f"of num_clients={base['num_clients']} ({setting} takes every site in "
                          "every round, without stragglers)")
    return setting


def _links_default() -> dict[str, Any]:
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "links" / "profiles.yaml"))


def base_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario without ``suitability``, non-private, one seed, with links (the default
    ``conf/links/profiles.yaml`` shares if the scenario has none)."""
    from fedbench.links import build_links

    base = copy.deepcopy({k: v for k, v in cfg.items() if k != "suitability"})
    if (base.get("seeds") or 1) != 1:
        raise ConfigError("seeds", base["seeds"], "1 for fedbench-suitability (one federation)")
    if any(v for v in (base.get("sweep") or {}).values()):
        raise ConfigError("sweep", base["sweep"], "empty for fedbench-suitability")
    base["privacy"] = {"name": "none"}
    if (base.get("links") or {}).get("name", "none") == "none":
        base["links"] = _links_default()
    build_links(base["links"], int(base["num_clients"]))  # an unknown profile fails here
    return base


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluations of a run (``metrics.jsonl``)."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def metric_key(rows: Sequence[Mapping[str, Any]]) -> str:
    """``test_cindex`` for survival data, else ``test_accuracy``."""
    return "test_cindex" if "test_cindex" in rows[-1] else "test_accuracy"


def time_to_target(rows: Sequence[Mapping[str, Any]], key: str, target: float
                   ) -> tuple[int | None, float | None]:
    """The round and simulated hours of the first evaluation with ``key >= target``."""
    for row in rows:
        if row.get(key) is not None and row[key] >= target:
            return int(row["round"]), float(row["simulated_seconds"]) / 3600.0
    return None, None


def link_row(label: str, run_dir: Path, key: str, target: float) -> dict[str, Any]:
    """Seconds per round, bytes and hours to ``target`` of one run."""
    rows = read_metrics(run_dir)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    last = rows[-1]
    rnd, hours = time_to_target(rows, key, target)
    profiles = (summary.get("links") or {}).get("sites_per_profile")
    return {"run": label, "sites_per_profile": profiles,
            "rounds": int(last["round"]),
            "seconds_per_round": float(last["simulated_seconds"]) / max(1, int(last["round"])),
            "bytes_up_per_round": float(last["bytes_up"]) / max(1, int(last["round"])),
            "final": float(last[key]), "round_to_target": rnd, "hours_to_target": hours,
            "curve": [(float(r["simulated_seconds"]) / 3600.0, r[key]) for r in rows]}


def measure_sensitivity(base: dict[str, Any], settings: Settings, out: Path) -> dict[str, Any]:
    """``fedbench-audit`` on the non-private federation (image classification data only)."""
    from fedbench.audit.run import run_audit

    try:
        result = run_audit({**base, "audit": dict(settings.audit)}, out / "audit")
    except ConfigError as err:
        if err.key != "dataset.name":
            raise
        return {"skipped": f"no gradient-inversion audit: {err.allowed}"}
    rows = [{k: r[k] for k in ("scenario", "defence", "mse", "psnr", "ssim", "label_accuracy")}
            for r in result["inversion"]["rows"] if r["defence"] == "as sent"]
    member = result.get("membership") or {}
    return {"inversion": rows,
            "membership_auc": {k: member[k]["auc"] for k in ("loss_threshold", "lira_offline")
                               if k in member},
            "report": "audit/audit.html"}


def measure_asymmetry(base: dict[str, Any], settings: Settings, summary: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """Partition statistics of the run and the sites' Shapley values."""
    import numpy as np

    stats = summary["partition_stats"]
    sizes = np.asarray(stats["client_sizes"], float)
    out: dict[str, Any] = {
        "client_sizes": [int(s) for s in sizes], "test_sizes": stats.get("test_sizes"),
        "names": stats.get("client_names") or [f"site {j}" for j in range(len(sizes))],
        "largest_share": float(sizes.max() / sizes.sum()), "largest_site": int(sizes.argmax()),
        "size_ratio": float(sizes.max() / max(sizes.min(), 1)),
        "mean_total_variation": stats.get("mean_total_variation")}
    c = settings.contribution
    if c["enabled"]:
        from fedbench.contribution import contribution

        result = contribution(base, c["method"], "pooled", c["seeds"], c["permutations"],
                              c["tolerance"])
        phi = np.asarray(result["shapley"], float)
        positive = phi[phi > 0].sum()
        out["contribution"] = {k: result[k] for k in result if k in (
            "method", "shapley", "shapley_stderr", "leave_one_out", "v_all", "v_empty",
            "coalitions_trained", "seeds", "rounds")}
        out["top_shapley_share"] = float(phi.max() / positive) if positive > 0 else None
        out["top_shapley_site"] = int(phi.argmax())
    return out


def run(base: dict[str, Any], out: Path, allow: tuple[str, ...] = ("completed",)
        ) -> dict[str, Any]:
    """One run of ``base`` into ``out`` (``fedbench.run.run_experiment``); its summary."""
    from fedbench.run import run_experiment

    summary = run_experiment(base, out, progress=None)
    if summary["status"] not in allow:
        raise RuntimeError(f"{out} did not complete: {summary['status']}")
    return summary


def suitability(cfg: Mapping[str, Any], out_dir: str | Path, progress: bool = True
                ) -> dict[str, Any]:
    """Measures the four dimensions of ``cfg``'s federation into ``out_dir``; returns what is
    written to ``suitability.json`` (and as ``suitability.md`` / ``.html``).

    Raises:
      ConfigError: a bad ``suitability.*`` setting or scenario setting, before any training.
    """
    from fedbench.compare import compare
    from fedbench.suitability_report import write_report

    import time

    start = time.perf_counter()

    def say(text: str) -> None:
        seconds[text] = time.perf_counter()
        if progress:
            print(f"fedbench-suitability: {text}", flush=True)

    seconds: dict[str, float] = {}
    out = Path(out_dir)
    base = base_config(cfg)
    settings = parse_settings(cfg.get("suitability"), base["links"])
    private_name = mechanism(settings.mechanism, base)  # refused before any work
    alg, seed = base["algorithm"]["name"], int(base["seed"])
    say("FL vs local vs pooled (fedbench-compare; its federated run is the dense baseline)")
    compare(base, out / "compare", None, [seed], n_boot=int(settings.compare["bootstrap"]),
            val_fraction=float(settings.compare["val_fraction"]))
    verdicts = json.loads((out / "compare" / "verdicts.json").read_text())
    dense_dir = out / "compare" / alg / f"seed={seed}"
    dense_rows = read_metrics(dense_dir)
    summary = json.loads((dense_dir / "summary.json").read_text())
    key = metric_key(dense_rows)
    best = max(float(r[key]) for r in dense_rows)
    target = settings.target if settings.target is not None else 0.95 * best
    links = [link_row("scenario links, dense float32", dense_dir, key, target)]
    comp_name = settings.compressor["name"]
    say(f"communication: the scenario with {comp_name}")
    run({**base, "compression": dict(settings.compressor)}, out / "compressed")
    links.append(link_row(f"scenario links, {comp_name}", out / "compressed", key, target))
    for name in settings.profiles:
        say(f"communication: every site on {name}")
        what_if = {**base["links"], "profile": name, "sites": None}
        run({**base, "links": what_if}, out / f"profile={name}" / "dense")
        links.append(link_row(f"all {name}, dense float32", out / f"profile={name}" / "dense",
                              key, target))
        run({**base, "links": what_if, "compression": dict(settings.compressor)},
            out / f"profile={name}" / "compressed")
        links.append(link_row(f"all {name}, {comp_name}", out / f"profile={name}" / "compressed",
                              key, target))
    say(f"regulatory: client-level DP ({private_name}) at epsilon {settings.epsilon:g}")
    dp_cfg = {**base, "privacy": {**_privacy_default(private_name),
                                  "target_epsilon": settings.epsilon, "delta": settings.delta}}
    dp_summary = run(dp_cfg, out / "dp", allow=("completed", "diverged"))
    dp_rows = [r for r in read_metrics(out / "dp") if r.get(key) is not None]
    diverged = dp_summary["status"] == "diverged"
    private = dp_summary.get("privacy") or {}
    regulatory = {
        "mechanism": private_name, "matrix": private.get("matrix"),
        "sensitivity": private.get("sensitivity"),
        "epsilon_required": settings.epsilon, "delta_required": settings.delta,
        "delta_used": private.get("delta"), "epsilon_spent": private.get("epsilon"),
        "noise_multiplier": private.get("noise_multiplier"), "clip": private.get("clip"),
        "metric": key, "non_private": float(dense_rows[-1][key]), "dp_status": dp_summary["status"],
        "private": None if diverged else float(dp_rows[-1][key]),
        "client_mean_non_private": dense_rows[-1].get(key.replace("test_", "client_") + "_mean"),
        "client_mean_private": None if diverged else dp_rows[-1].get(
            key.replace("test_", "client_") + "_mean"),
        "private_reaches_target": time_to_target(dp_rows, key, target)[0] is not None}
    regulatory["cost"] = None if diverged else regulatory["non_private"] - regulatory["private"]
    regulatory["curves"] = {name: [(int(r["round"]), float(r[key])) for r in rows]
                            for name, rows in (("non-private", dense_rows), ("DP", dp_rows))}
    say("data sensitivity: fedbench-audit without DP")
    sensitivity = measure_sensitivity(base, settings, out)
    sensitivity["dp_cost"] = regulatory["cost"]
    say("size asymmetry: partition statistics and Shapley values")
    asymmetry = measure_asymmetry(base, settings, summary)
    result = {"settings": dataclasses.asdict(settings), "metric": key, "target": target,
              "target_rule": "given" if settings.target is not None else
              f"95% of the non-private run's best ({best:.4f})",
              "rounds": int(base["rounds"]), "num_clients": int(base["num_clients"]),
              "sensitivity": sensitivity, "asymmetry": asymmetry,
              "communication": {"rows": links, "max_hours": settings.max_hours},
              "regulatory": regulatory, "compare": verdicts}
    stamps = sorted(seconds.items(), key=lambda kv: kv[1]) + [("end", time.perf_counter())]
    result["wall_seconds"] = {name: round(stamps[i + 1][1] - at, 1)
                              for i, (name, at) in enumerate(stamps[:-1])}
    result["wall_seconds"]["total"] = round(stamps[-1][1] - start, 1)
    write_report(result, out, settings.render)
    return result


def _privacy_default(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "privacy" / f"{name}.yaml"))


def with_group(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with the suitability group added (``suitability=X`` -> ``+suitability=X``)."""
    out = [("+" + a if a.startswith("suitability=") else a) for a in overrides]
    chosen = any(a.startswith("+suitability=") for a in out)
    return out if chosen else out + ["+suitability=default"]


def compose(overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved config of ``overrides`` with the ``suitability`` group."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR
    from fedbench.config_check import check_command_line

    argv = with_group(overrides)
    check_command_line(argv, CONF_DIR)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return OmegaConf.to_container(hydra_compose(config_name="config", overrides=argv),
                                      resolve=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedbench-suitability",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for fedbench, and "
                        "suitability.* (conf/suitability/default.yaml)")
    parser.add_argument("--out", default="outputs/suitability", help="output directory")
    args = parser.parse_args(argv)
    from fedbench.logs import accountant_note, summarise_accountant

    summarise_accountant()  # one line at the end instead of one per skipped RDP order
    try:
        cfg = compose(args.overrides)
        result = suitability(cfg, args.out)
    except ConfigError as err:
        print(f"fedbench-suitability: config error: {err}", file=sys.stderr)
        return 2
    from fedbench.suitability_report import summary_lines

    print("\n".join(summary_lines(result)))
    print(f"fedbench-suitability: wrote {Path(args.out) / 'suitability.html'}")
    if accountant_note():
        print(f"fedbench-suitability: note: {accountant_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
