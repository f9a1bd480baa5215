"""``fedbench -m ... sweep_group=true``: a Hydra multirun whose vectorisable axes run in-program.

A multirun over ``lr``, ``algorithm.server_lr``, ``algorithm.mu``, ``algorithm.alpha``, ``privacy.noise_multiplier``, ``privacy.clip``,
``privacy.target_epsilon``, ``partition.alpha`` (and ``seed`` when the partition is pinned) does not need a separate
process, data load and compilation per value: those values are data of one compiled program
(:mod:`fedbench.replicas`). With ``sweep_group=true`` the command line is rewritten before Hydra
sees it: each such comma-separated sweep becomes the matching ``sweep.<name>=[...]`` list, a
consecutive ``seed=a,a+1,...`` becomes ``seed=a seeds=n``; every other sweep (model, dataset,
num_clients, partition, algorithm: keys that change shapes or the program) stays a Hydra axis, one
job per value, each job running its replicas in one program. A grouped sweep the program cannot
hold (e.g. ``partition.alpha`` under DP) ends with the error naming its ``sweep.*`` key. Every replica still writes its own
run directory, ``config.yaml`` and ``summary.json`` (``<name>=<value>,seed=<s>/`` inside the job's
directory), which ``fedbench-collect`` reads as it reads separate jobs.

``seed`` is grouped only with ``partition.seed`` set on the command line: in-program seeds share
one partition, whereas separate jobs ``seed=0,1,2`` re-partition per seed unless it is pinned, so
grouping them otherwise would change what is measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedbench.errors import ConfigError

# command-line key -> the in-program sweep key (fedbench.sweep_config.SWEEP_KEYS); an algorithm's
# own keys, ``algorithm.<key>`` -> ``<key>``, are those it declares (Algorithm.hyperparameters),
# a privacy mechanism's, ``privacy.<key>`` -> ``<key>``, likewise (Mechanism.hyperparameters).
GROUPABLE = {
    "lr": "lr",
    "partition.alpha": "partition_alpha",  # partitions as replicas (fedbench/replica_data.py)
}
FLAG = "sweep_group"


def _split(arg: str) -> tuple[str, str] | None:
    if "=" not in arg or arg.startswith("-"):
        return None
    key, value = arg.split("=", 1)
    return key.lstrip("+~"), value


def _simple_list(value: str) -> list[str] | None:
    """The items of a plain comma-separated sweep (no brackets, quotes or Hydra functions)."""
    if "," not in value or any(c in value for c in "[]{}()'\"\\ "):
        return None
    return value.split(",")


def _flag(argv: Sequence[str]) -> bool:
    for arg in argv:
        kv = _split(arg)
        if kv and kv[0] == FLAG:
            if kv[1].lower() not in ("true", "false"):
                raise ConfigError(FLAG, kv[1], "true or false")
            return kv[1].lower() == "true"
    return False


def group_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(new argv, notes)``: ``argv`` with its groupable sweeps moved in-program when it is a
    multirun with ``sweep_group=true`` (else unchanged, no notes).

    Raises:
      ConfigError: ``sweep_group`` without ``-m``, or a key swept both ways.
    """
    argv = list(argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    grouped = _flag(argv)
    argv = [a for a in argv if not (_split(a) or ("",))[0] == FLAG]  # a flag, not a config key
    if not grouped:
        return argv, []
    if not multirun:
        raise ConfigError(FLAG, True, "only with -m (--multirun): it groups a sweep's values")
    given = {kv[0]: kv[1] for kv in map(_split, argv) if kv}
    from fedbench.privacy.mechanism import declared_hyperparameters
    from fedbench.sweep_config import algorithm_hyperparameters

    algorithm = given.get("algorithm", "fedavg")  # conf/config.yaml's default
    # privacy=a,b (a Hydra axis): the keys every listed mechanism declares.
    mechanisms = [declared_hyperparameters({"name": name})
                  for name in given.get("privacy", "none").split(",")]
    private = [key for key in mechanisms[0] if all(key in keys for keys in mechanisms)]
    groupable = {**GROUPABLE, **{f"algorithm.{key}": key for key in
                                 algorithm_hyperparameters({"name": algorithm})},
                 **{f"privacy.{key}": key for key in private}}
    out, notes = [], []
    for arg in argv:
        kv = _split(arg)
        items = _simple_list(kv[1]) if kv else None
        if kv and items and kv[0] in groupable:
            name = groupable[kv[0]]
            if f"sweep.{name}" in given:
                raise ConfigError(f"sweep.{name}", given[f"sweep.{name}"],
                                  f"unset when {kv[0]} is swept with {FLAG}=true")
            out.append(f"sweep.{name}=[{','.join(items)}]")
            notes.append(f"{arg} -> sweep.{name}=[{','.join(items)}] (in-program)")
        elif kv and items and kv[0] == "seed":
            seeds = [int(v) for v in items] if all(v.lstrip("-").isdigit() for v in items) else []
            consecutive = seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds)))
            pinned = given.get("partition.seed", "null") not in ("null", "None")
            if consecutive and pinned and "seeds" not in given:
                out += [f"seed={seeds[0]}", f"seeds={len(seeds)}"]
                notes.append(f"{arg} -> seed={seeds[0]} seeds={len(seeds)} (in-program)")
            else:
                out.append(arg)
                why = ("set partition.seed to group seeds (separate jobs re-partition per seed)"
                       if not pinned else "seeds are grouped only when consecutive, without seeds=")
                notes.append(f"{arg} stays separate jobs: {why}")
        else:
            out.append(arg)
    return out, notes
