"""``fedbench-release RUN_DIR OUT``: the part of a DP run that epsilon covers, as a bundle.

``OUT/`` holds ``model.npz`` (the final model parameters, the last checkpoint's ``params``, one
array per leaf named by its path: ``params/Dense_0/kernel``), ``metrics.jsonl`` (every row of
the run's with only the keys epsilon covers: :data:`~fedbench.privacy.release.COVERED_METRICS`
less the run's ``non_private_outputs``), ``privacy.json`` (the accounting: epsilon, delta, the
protected unit, the neighbouring relation, the accountant, the noise, ``covers``,
``assumes_public``, warnings), ``MANIFEST.json`` (the files' SHA-256, the model's leaves, every
file of ``RUN_DIR`` and every metric key left out, each with why) and ``README.md`` (the same
in words).

Checkpoints are secret: they hold the run key (with it reproducible DP noise, the Poisson
cohorts and DP-SGD's samples can be regenerated), the exact cohorts and every site's state (e.g.
Ditto's non-DP personal models); under ``privacy.noise=reproducible`` the config and the seed
too. Refused with one line and exit status 2, writing nothing: no ``summary.json``, a job of
replicas (release one of its runs), a run that did not complete, no DP or an infinite epsilon,
no checkpoint of the final model, non-finite parameters, an ``OUT`` that is not empty or lies
inside ``RUN_DIR``. ``OUT`` is written as a temporary folder beside it, then renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedbench.atomic import json_ready
from fedbench.privacy.release import COVERED_METRICS, PRIVATE_METRICS, PRIVATE_SUMMARY, TEST_METRICS

REFUSED = 2  # the exit status of a refusal (as argparse's usage errors)
#: Keys of ``summary.json``'s ``privacy`` block copied to ``privacy.json`` (an allow-list; a key
#: the block lists in ``non_private_outputs`` is left out, except ``epsilon`` itself).
ACCOUNTING_KEYS = (
    "mechanism", "epsilon", "delta", "unit", "protected_unit", "neighboring_relation", "covers",
    "assumes_public", "accountant", "conversion", "noise_multiplier", "clip", "final_clip",
    "adaptive_clip", "target_epsilon", "sampling", "sampling_rate", "steps", "population",
    "cohort", "optimal_order", "noise", "noise_note", "shared_noise", "warnings")
CONFIG_WHY = {
    "reproducible": "secret: the run's config and seed; under privacy.noise=reproducible they "
                    "and the training data regenerate the DP noise, and the noise subtracted "
                    "from the released model leaves the noiseless update",
    "secure": "the run's config and seed (settings, data paths): not outputs epsilon covers, "
              "and not needed to use the model (its architecture is in MANIFEST.json)",
}
#: Why a file of the run directory is left out, by its first path component (``.hydra``:
#: :data:`CONFIG_WHY`, ``*.log``: :data:`LOG_WHY`, any other: :data:`OTHER_WHY`).
FILE_WHY = {
    "checkpoints": "secret: the whole server state at each checkpoint: the run key (with it the "
                   "DP noise, the Poisson cohorts and DP-SGD's samples can be regenerated), the "
                   "exact cohorts (participation, downloads), every site's per-client state "
                   "(e.g. Ditto's non-DP personal models), the noise salt and the metrics "
                   "history; only the final model parameters are released (model.npz)",
    "summary.json": "the run's summary: its config and seed (as .hydra/), the final metrics, "
                    "partition_stats and sites (client sizes, label histograms, per-site "
                    "metrics) when released, timing and the machine; its accounting is "
                    "privacy.json",
    "metrics.jsonl": "rewritten as metrics.jsonl with only the keys epsilon covers (the keys "
                     "left out: metrics_left_out)",
    "error.json": "an error report of the run",
    "wandb": "experiment tracking: the config and every metric",
    "results.parquet": "a results table (fedbench-collect): the config and every metric",
    "results.csv": "a results table (fedbench-collect): the config and every metric",
}
LOG_WHY = "the run's console log: its progress lines print metrics epsilon does not cover"
OTHER_WHY = "not an output epsilon is known to cover"
#: Why a block of ``summary.json`` is withheld (``privacy``: copied to ``privacy.json``).
SUMMARY_BLOCK_WHY = {"final": "the last metrics row: every metric, covered or not",
                     **PRIVATE_SUMMARY}


class Refusal(Exception):
    """Why a run directory cannot be released (one line)."""


# -- what is covered ---------------------------------------------------------------------------
def covered_keys(row: Mapping[str, Any], privacy: Mapping[str, Any]) -> list[str]:
    """The keys of a ``metrics.jsonl`` row that epsilon covers: :data:`COVERED_METRICS` less
    the run's ``non_private_outputs`` (``epsilon`` under ``dp_sample``)."""
    uncovered = set(privacy.get("non_private_outputs") or ())
    return [k for k in row if k in COVERED_METRICS and k not in uncovered]


def summary_why(key: str, noise: str) -> str:
    """Why a block of ``summary.json`` is withheld."""
    if key == "config":
        return CONFIG_WHY.get(noise, CONFIG_WHY["reproducible"])
    return SUMMARY_BLOCK_WHY.get(key, "run bookkeeping (status, timing, versions, machine): "
                                      "not an output epsilon covers")


def metric_why(key: str, privacy: Mapping[str, Any]) -> str:
    """Why a ``metrics.jsonl`` key is withheld."""
    if key in PRIVATE_METRICS:
        return "computed from the clients' data outside the DP mechanism: " + PRIVATE_METRICS[key]
    if key in TEST_METRICS:
        return ("computed on the pooled test set (the clients' held-out test splits) outside "
                "the DP mechanism (with personalised algorithms: from non-DP personal models)")
    if key in (privacy.get("non_private_outputs") or ()):
        return ("listed in the run's non_private_outputs (under dp_sample the worst client's "
                "epsilon, from every client's size; privacy.json states it, assuming sizes "
                "public)")
    return OTHER_WHY


def accounting(privacy: Mapping[str, Any], rounds: int) -> dict[str, Any]:
    """``privacy.json``: the :data:`ACCOUNTING_KEYS` of the run's ``privacy`` block (those in
    its ``non_private_outputs`` left out, ``epsilon`` kept) and the rounds run."""
    uncovered = set(privacy.get("non_private_outputs") or ()) - {"epsilon"}
    out = {k: privacy[k] for k in ACCOUNTING_KEYS if k in privacy and k not in uncovered}
    return {**out, "rounds": rounds}


def file_why(rel: Path, noise: str) -> str:
    """Why the file ``rel`` (relative to the run directory) is left out of the bundle."""
    top = rel.parts[0]
    if top == ".hydra":
        return CONFIG_WHY.get(noise, CONFIG_WHY["reproducible"])
    if rel.suffix == ".log":
        return LOG_WHY
    return FILE_WHY.get(top, OTHER_WHY)


def left_out_files(run_dir: Path, noise: str) -> list[dict[str, str]]:
    """Every file under ``run_dir``, each with why it is left out, sorted by path."""
    files = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if not p.is_dir())
    return [{"path": rel.as_posix(), "why": file_why(rel, noise)} for rel in files]


# -- the run directory -------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise Refusal(f"{path} is unreadable ({err})") from None


def check_summary(summary: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The run's ``privacy`` block, or :class:`Refusal`: a job of replicas, a run that did not
    complete, no DP, an epsilon that is not finite."""
    if "replicas" in summary:
        names = summary["replicas"]
        raise Refusal(f"{run_dir} is a job of {len(names)} replicas; release one of its runs, "
                      f"e.g. fedbench-release {run_dir / names[0]} OUT")
    if summary.get("status") != "completed":
        raise Refusal(f"the run's status is {summary.get('status')!r}, not 'completed': a "
                      "diverged or unfinished model has nothing to release")
    privacy = summary.get("privacy")
    if not privacy:
        raise Refusal("the run has no DP (privacy=none): epsilon covers nothing, so nothing "
                      "can be released under a guarantee")
    eps = privacy.get("epsilon")
    if eps is None or not math.isfinite(float(eps)):
        raise Refusal(f"the run's epsilon is {eps} (no noise): nothing is protected")
    return privacy


def checkpoint_of(run_dir: Path) -> tuple[Path, int, int | None]:
    """``(state folder, round, replica index)`` of the latest checkpoint holding the run's
    model: the run's own, or for a replica of a ``seeds``/sweep job the job's stacked one."""
    own, index = run_dir / "checkpoints", None
    if not own.is_dir() and (run_dir.parent / "summary.json").is_file():
        job = read_json(run_dir.parent / "summary.json")
        if run_dir.name in (job.get("replicas") or ()):
            own, index = run_dir.parent / "checkpoints", job["replicas"].index(run_dir.name)
    steps = sorted(int(p.name) for p in own.iterdir() if p.name.isdigit()) if own.is_dir() else []
    if not steps:
        raise Refusal(f"no checkpoint in {own}: the run kept no final model (checkpoint_every=0)"
                      ", so there is no model to release")
    return own / str(steps[-1]) / "state", steps[-1], index


def flatten(tree: Any) -> dict[str, Any]:
    """A pytree of arrays as ``{"a/b/c": numpy array}`` (NumPy's own dtypes; others float32)."""
    import jax
    import numpy as np

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                        for k in path)
        array = np.asarray(leaf)
        out[name] = array if array.dtype.type.__module__ == "numpy" else array.astype(np.float32)
    return out


def final_params(run_dir: Path, final_round: int) -> tuple[dict[str, Any], int, bool]:
    """The run's final model parameters, flattened (:func:`flatten`), their round, and
    whether they came from a job's stacked checkpoints (a replica)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    state_dir, step, index = checkpoint_of(run_dir)
    if step != final_round:
        raise Refusal(f"the latest checkpoint is of round {step}, the run ended at round "
                      f"{final_round}: it is not the final model")
    params = ocp.StandardCheckpointer().restore(state_dir.resolve())["params"]
    if index is not None:  # a replica of the job's stacked states
        params = jax.tree.map(lambda leaf: leaf[index], params)
    params = params if "params" in params else {"params": params}  # flax's collection
    flat = flatten(params)
    if not all(np.isfinite(a).all() for a in flat.values() if a.dtype.kind == "f"):
        raise Refusal("the final model has non-finite parameters: nothing to release")
    return flat, step, index is not None


def check_out(out: Path, run_dir: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Refusal(f"{out} exists and is not empty: choose a new folder")
    if out.resolve().is_relative_to(run_dir.resolve()):
        raise Refusal(f"{out} lies inside the run directory, beside its secret checkpoints")


# -- the bundle --------------------------------------------------------------------------------
def notes(privacy: Mapping[str, Any], replica: bool) -> list[str]:
    """What a reader of the bundle must know: the noise mode, shared noise, warnings."""
    out = [privacy.get("noise_note", "")] if privacy.get("noise_note") else []
    if privacy.get("shared_noise"):
        out.append("privacy.shared_noise=true: never release this model together with a run "
                   "that differs only in its noise multiplier (together they reveal the "
                   "noiseless update)")
    if replica:
        out.append("the model came from the job's stacked checkpoints (../checkpoints), which "
                   "are as secret as this run's own would be")
    return out + list(privacy.get("warnings") or ())


def readme(manifest: Mapping[str, Any]) -> str:
    """``README.md``: the manifest in words, left-out files grouped by first path component."""
    acc = manifest["accounting"]
    lines = [f"# Release of {manifest['source']}: epsilon = {acc['epsilon']}, delta = "
             f"{acc['delta']} ({acc.get('protected_unit', acc.get('unit'))})", "",
             f"Epsilon covers {acc.get('covers', 'the released model parameters only')}.", "",
             "## Files", ""]
    lines += [f"- `{f['path']}`: {f['what']}" for f in manifest["files"]]
    lines += ["- `MANIFEST.json`: these files' SHA-256, the model's leaves and config, every "
              "file and metric left out, each with why"]
    lines += ["", "## Left out of the run directory", ""]
    groups: dict[str, list[str]] = {}
    for item in manifest["left_out"]:
        top = item["path"].split("/")[0] + ("/" if "/" in item["path"] else "")
        groups.setdefault(top, [item["why"], 0])[1] += 1
    lines += [f"- `{top}` ({n} file{'s' * (n != 1)}): {why}" for top, (why, n) in groups.items()]
    withheld = ", ".join(f"`{k}`" for k in manifest["metrics_left_out"]) or "none"
    lines += ["", f"Metric keys withheld (why: MANIFEST.json, metrics_left_out): {withheld}.", "",
              "## Must stay secret", ""] + [f"- {s}" for s in manifest["secret"]]
    if manifest["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in manifest["notes"]]
    return "\n".join(lines) + "\n"


def secrets(noise: str, replica: bool) -> list[str]:
    """What must stay secret once the bundle is out, for the run's ``privacy.noise``."""
    out = ["the checkpoints (" + ("../checkpoints, the job's" if replica else "checkpoints/")
           + "): they hold the run key, the exact cohorts and every site's per-client state"]
    if noise != "secure":
        out.append("the run's config, seed and training data: under privacy.noise=reproducible "
                   "they regenerate the DP noise (use privacy.noise=secure for a model that "
                   "leaves the institution)")
    return out + ["every output left out of this bundle that is computed from the clients' data"]


def bundle(run_dir: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The bundle's files (name -> bytes, MANIFEST.json and README.md included) and its
    manifest, or :class:`Refusal`. Reads ``run_dir`` only."""
    import io

    import numpy as np

    summary = read_json(run_dir / "summary.json")
    privacy = check_summary(summary, run_dir)
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    if not rows:
        raise Refusal(f"{path} is missing or empty: the run never evaluated")
    final_round = int((summary.get("final") or rows[-1])["round"])
    params, step, replica = final_params(run_dir, final_round)
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    kept = [{k: row[k] for k in covered_keys(row, privacy)} for row in rows]
    names = list(dict.fromkeys(k for r in kept for k in r))
    files = {
        "model.npz": (buffer.getvalue(), f"the final model parameters (round {step}), one array "
                      "per leaf named by its path (numpy.load)"),
        "metrics.jsonl": ("".join(json.dumps(json_ready(r)) + "\n" for r in kept).encode(),
                          "each evaluation's metrics, only the keys epsilon covers: "
                          + ", ".join(names)),
        "privacy.json": (json.dumps(json_ready(accounting(privacy, final_round)), indent=2)
                         .encode() + b"\n", "the accounting: what epsilon covers and for whom"),
    }
    noise, config = privacy.get("noise", "reproducible"), summary.get("config") or {}
    manifest = {
        "format": 1,
        "source": run_dir.resolve().name,
        "accounting": accounting(privacy, final_round),
        "files": [{"path": n, "sha256": hashlib.sha256(b).hexdigest(), "what": w}
                  for n, (b, w) in files.items()],
        "model": {"round": step, "config": config.get("model"),
                  "dataset": (config.get("dataset") or {}).get("name"),
                  "leaves": {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                             for k, a in params.items()}},
        "metrics_kept": names,
        "metrics_left_out": {k: metric_why(k, privacy) for row in rows for k in row
                             if k not in names},
        "summary_left_out": {k: summary_why(k, noise) for k in summary if k != "privacy"},
        "left_out": left_out_files(run_dir, noise),
        "secret": secrets(noise, replica),
        "notes": notes(privacy, replica),
    }
    out = {name: data for name, (data, _) in files.items()}
    out["MANIFEST.json"] = json.dumps(json_ready(manifest), indent=2).encode() + b"\n"
    out["README.md"] = readme(manifest).encode()
    return out, manifest


def write_folder(out: Path, files: Mapping[str, bytes]) -> None:
    """Writes ``files`` into a temporary folder beside ``out`` (each flushed to disk) and
    renames it to ``out`` (absent or an empty folder): ``out`` is whole or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o777 & ~umask)  # as a folder made by mkdir (mkdtemp's is 0700)
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, out)  # onto an empty folder too; a non-empty one fails
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Refusal(f"could not write {out} ({err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def release(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Writes the release bundle of ``run_dir`` to ``out`` and returns its manifest.

    Raises:
      Refusal: see the module docstring; nothing is written.
    """
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "summary.json").is_file():
        raise Refusal(f"{run_dir / 'summary.json'} not found: not the directory of a finished "
                      "fedbench run")
    check_out(out, run_dir)
    files, manifest = bundle(run_dir)
    write_folder(out, files)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``fedbench-release``."""
    from fedbench.cli_help import version_line

    parser = argparse.ArgumentParser(
        prog="fedbench-release",
        description="Copy only what epsilon covers out of a finished DP run: the final model "
                    "(model.npz), the covered metrics, the accounting (privacy.json), and a "
                    "MANIFEST.json and README.md of everything left out and why. Checkpoints, "
                    "the config and the seed stay behind (secret). A run without DP, one that "
                    "did not complete, or an OUT that is not empty is refused (exit status 2).",
        epilog="example: fedbench privacy=dp_client privacy.noise=secure hydra.run.dir=run && "
               "fedbench-release run release")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="the run directory (holds summary.json)")
    parser.add_argument("out", type=Path, metavar="OUT", help="the bundle's folder: new, or empty")
    parser.add_argument("-V", "--version", action="version",
                        version=version_line("fedbench-release"))
    args = parser.parse_args(argv)
    try:
        manifest = release(args.run_dir, args.out)
    except Refusal as err:
        print(f"fedbench-release: refused: {err}", file=sys.stderr)
        return REFUSED
    acc = manifest["accounting"]
    print(f"fedbench-release: {args.out}: model of round {manifest['model']['round']}, "
          f"epsilon {acc['epsilon']:.4g} at delta {acc['delta']:.3g} "
          f"({acc.get('protected_unit', acc.get('unit'))}); {len(manifest['left_out'])} files "
          "of the run left out (MANIFEST.json)")
    for note in manifest["notes"]:
        print(f"fedbench-release: note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
