"""Command-line overrides checked before Hydra composes the run.

``fedbench`` calls :func:`check_command_line` before it hands the command line to Hydra, so a
misspelt key (``rouns=5``), a value of the wrong type (``rounds=abc``), an unknown group option
(``dataset=nope``) or an override Hydra cannot parse ends the command at once with one line that
names the key and what would be accepted (the nearest valid key, by :mod:`difflib`), and exit
status 2, instead of Hydra's multi-line report and exit status 1. A sweep (``-m``) is checked
once, for every combination of the group options it sweeps over, before any job starts.

The checks follow Hydra's own rules: ``+key=value`` adds a key and ``++key=value`` sets or adds
one (neither is checked for existence), ``~key`` deletes, ``hydra.*`` settings are left to Hydra.
A key's type is the type of its value in the composed config (``rounds: 100`` takes integers,
``lr: 0.1`` any number, ``partition.balance: true`` true or false); ``null`` is always accepted
and keys whose default is ``null`` take any type (their builders check them, with
:class:`~fedbench.errors.ConfigError`, before any training).
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fedbench.errors import ConfigError

#: Beyond this many combinations of swept group options, each group's options are checked with
#: the other groups at their first option (Hydra still composes every job before launching).
MAX_COMBINATIONS = 64

_MISSING = object()


class OverrideError(ConfigError):
    """A command-line override that names no config key, or that Hydra cannot use.

    Unlike a plain :class:`ConfigError` the message is free text: it names the key and the
    nearest valid one, or repeats Hydra's complaint on one line.
    """

    def __init__(self, key: str, value: Any, message: str):
        ValueError.__init__(self, message)
        self.key = key
        self.value = value
        self.allowed = message


def check_command_line(
    argv: Sequence[str], conf_dir: str | Path, config_name: str = "config",
    check_settings: bool = False,
) -> None:
    """Checks the overrides of a ``fedbench`` command line (``sys.argv[1:]``).

    Command lines that ask Hydra for help or information, or point it at other configs
    (``--config-dir``, ``--config-name``, ``hydra.searchpath``), are left to Hydra.

    The run directory (``hydra.run.dir``; a sweep's ``hydra.sweep.dir``) must be one fedbench
    can write to, before Hydra writes its logs there
    (:func:`fedbench.checkpoint.check_writable`). ``check_settings``: the composed run's
    settings too (:func:`fedbench.checked.check_config`), so that no run folder is created for a
    config that would be refused.

    Raises:
      ConfigError: (or its :class:`OverrideError`) naming the first bad override, or an
        unwritable run directory.
      SystemExit: with status 2 from :mod:`argparse` for options Hydra does not know.
    """
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.config_path
            or args.config_name or args.config_dir or args.experimental_rerun):
        return
    cfg = check_overrides(args.overrides, conf_dir, config_name=config_name,
                          multirun=args.multirun)
    if cfg is not None:
        if check_settings:  # before the run folder is made (the writability check makes it)
            _check_settings(cfg)
        _check_output_dir(cfg, args.multirun)


def _check_settings(cfg: DictConfig) -> None:
    """The run's settings through :func:`fedbench.checked.check_config`, before Hydra creates
    the run folder (a range error such as ``lr=-1`` leaves nothing behind). In a sweep this is
    its first job's config (each sweep at its first value); the other jobs are checked as they
    start. A config that only Hydra's running app can resolve is left to the run's own check."""
    from fedbench.checked import check_config
    from fedbench.distributed import initialize

    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        resolved = OmegaConf.to_container(plain, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} interpolations: the run checks them
        return
    # Several processes: joined before the check counts devices (``devices=all`` means every
    # process's), since jax.distributed.initialize must precede any use of JAX's backend.
    initialize(resolved)
    check_config(resolved)


def check_overrides(
    overrides: Sequence[str],
    conf_dir: str | Path,
    config_name: str = "config",
    multirun: bool = False,
) -> None:
    """Checks Hydra overrides against the config they would compose.

    Args:
      overrides: e.g. ``["algorithm=fedprox", "algorithm.mu=1", "seed=0,1"]``.
      conf_dir: the primary config directory (``conf/``).
      config_name: the primary config.
      multirun: whether the overrides are those of a sweep (``-m``); without it a sweep
        override (``seed=0,1``) is an error.

    Returns:
      The composed config with Hydra's settings (each sweep at its first value), or ``None``
      where the overrides name other config sources (left to Hydra).

    Raises:
      ConfigError: (or its :class:`OverrideError`) naming the first bad override.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    parsed = [_parse(line) for line in overrides]
    seen: dict[str, str] = {}
    for o in parsed:  # lr=0.1 lr=0.2: Hydra keeps the last silently
        key = o.key_or_group
        if key in seen and not o.is_delete():
            raise OverrideError(key, o.input_line,
                                f"{key} is given twice ({seen[key]} and {o.input_line}): give "
                                "it once")
        seen[key] = o.input_line
    multirun = multirun or any(
        o.key_or_group == "hydra.mode" and str(o.value()).upper() == "MULTIRUN" for o in parsed
    )
    if any(o.key_or_group.startswith("hydra.searchpath") for o in parsed):
        return  # other config sources: Hydra's own checks
    for o in parsed:
        if o.is_sweep_override() and not multirun:
            raise OverrideError(
                o.key_or_group, o.input_line,
                f"{o.input_line} is a sweep: add -m (--multirun) to run one job per value, or "
                f"write {o.get_key_element()}=[...] for a list",
            )

    conf_dir = Path(conf_dir).resolve()
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        groups, values, structural = [], [], []
        for o in parsed:
            if o.is_delete():
                structural.append(o)
            elif loader.repository.group_exists(o.key_or_group):
                groups.append((o, _group_choices(o, loader.get_group_options(o.key_or_group))))
            elif o.is_add() or o.is_force_add() or o.is_hydra_override():
                structural.append(o)
            else:
                values.append(o)

        fixed = [_first(o) for o in structural if not o.is_interval_sweep()]
        checked_keys: set[str] = set()
        for combination in _combinations(groups):
            choice_lines = [f"{o.get_key_element()}={choice}" for o, choice in combination]
            try:
                cfg = compose(config_name, overrides=choice_lines + fixed, return_hydra_config=True)
            except Exception as err:  # noqa: BLE001 - Hydra's and OmegaConf's errors, on one line
                raise _one_line(err, choice_lines + fixed) from None
            choices = dict(cfg.hydra.runtime.choices)
            for o in values:
                repeat = o.key_or_group in checked_keys
                _check_value_override(o, cfg, choices, conf_dir, repeat=repeat)
                checked_keys.add(o.key_or_group)
        # Everything together, once (first value of every sweep): whatever Hydra would still
        # refuse (e.g. a dict assigned to a number) is reported on one line too.
        first_choice = {
            id(o): f"{o.get_key_element()}={choices[0]}" for o, choices in groups if choices
        }
        everything = [
            first_choice.get(id(o)) or _first(o) for o in parsed if not o.is_interval_sweep()
        ]
        try:
            return compose(config_name, overrides=everything, return_hydra_config=True)
        except Exception as err:  # noqa: BLE001
            raise _one_line(err, everything) from None


# ------------------------------------------------------------------------------ helpers


def _check_output_dir(cfg: DictConfig, multirun: bool) -> None:
    """The run (or sweep) directory Hydra is about to write to must be writable."""
    from fedbench.checkpoint import check_writable

    mode = str(OmegaConf.select(cfg, "hydra.mode", default=None) or "")
    key = "hydra.sweep.dir" if multirun or mode.endswith("MULTIRUN") else "hydra.run.dir"
    try:
        path = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - interpolations only Hydra's run can resolve: its checks
        return
    if path:
        check_writable(path, key)


def _parse(line: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([line])[0]
    except Exception as err:  # noqa: BLE001 - OverrideParseException and friends
        reason = " ".join(part.strip() for part in str(err).splitlines()[:1])
        raise OverrideError(line, line, f"cannot parse the override {line!r}: {reason}") from None


def _first(o) -> str:
    """The override as a command-line string, a sweep replaced by its first value."""
    if not o.is_sweep_override():
        return o.input_line
    return f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"


def _group_choices(o, options: list[str]) -> list[str]:
    """The options a group override selects (every one of a sweep), each checked to exist."""
    if o.is_delete():
        return []
    value = o.value()
    if type(value).__name__ == "Glob":
        chosen = value.filter(options)
    elif o.is_sweep_override():
        chosen = list(o.sweep_string_iterator())
    else:
        chosen = [o.get_value_element_as_str()]
    for choice in chosen:
        if choice not in options and choice != "null":
            near = difflib.get_close_matches(choice, options, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(o.key_or_group, choice, "one of: " + ", ".join(options) + hint)
    return chosen


def _combinations(groups: list[tuple[Any, list[str]]]) -> Iterable[list[tuple[Any, str]]]:
    """Every combination of the chosen group options; one group at a time if there are many."""
    if not groups:
        yield []
        return
    sizes = [len(choices) for _, choices in groups]
    count = 1
    for size in sizes:
        count *= size
    if count <= MAX_COMBINATIONS:
        for combo in itertools.product(*(choices for _, choices in groups)):
            yield [(o, choice) for (o, _), choice in zip(groups, combo)]
        return
    base = [(o, choices[0]) for o, choices in groups]
    yield base
    for i, (o, choices) in enumerate(groups):
        for choice in choices[1:]:
            yield base[:i] + [(o, choice)] + base[i + 1:]


def _one_line(err: Exception, lines: list[str]) -> OverrideError:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return OverrideError(" ".join(lines), None, text or type(err).__name__)


def _children(node: Any) -> list[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys() if k != "hydra"]
    if isinstance(node, ListConfig):
        return [str(i) for i in range(len(node))]
    return []


def _check_value_override(o, cfg: DictConfig, choices: dict[str, Any], conf_dir: Path,
                          repeat: bool) -> None:
    """Checks that a ``key=value`` override names an existing key and fits its type."""
    key = o.key_or_group
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if part not in _children(node):
            raise _unknown_key(o, cfg, node, parts, depth, choices, conf_dir)
        node = node[int(part)] if isinstance(node, ListConfig) else node._get_node(part)
    if repeat:
        return  # the type of each value was checked with the first combination
    try:
        default = OmegaConf.to_container(node, resolve=True) if isinstance(
            node, (DictConfig, ListConfig)) else OmegaConf.select(cfg, key)
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve here
        return
    if o.is_interval_sweep():
        new_values = [o.value().start, o.value().end]
    elif o.is_sweep_override():
        new_values = list(o.sweep_iterator())
    else:
        new_values = [o.value()]
    for value in new_values:
        if isinstance(value, str) and value in WORDS.get(key, ()):
            continue
        expected = _type_problem(default, value)
        if expected is not None:
            shown = "" if isinstance(default, (list, dict)) else (
                f" ({key} is {OmegaConf.to_yaml({'v': default})[3:].strip()} by default)")
            raise ConfigError(key, value, expected + shown)


#: Words a key takes besides values of its default's type (``devices=all`` beside integers).
WORDS: dict[str, tuple[str, ...]] = {"devices": ("all",)}


def _type_problem(default: Any, value: Any) -> str | None:
    """What ``value`` should be, given the key's default; ``None`` when it fits."""
    if value is None or default is None:
        return None
    if isinstance(value, str) and "${" in value:
        return None  # an interpolation: resolved later
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "a number"
    if isinstance(default, str):
        return None if not isinstance(value, (list, dict)) else "a single value"
    if isinstance(default, list):
        return None if isinstance(value, list) else "a list, e.g. [1,2]"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "a mapping, e.g. {a:1}"
    return None


def _unknown_key(o, cfg: DictConfig, parent: Any, parts: list[str], depth: int,
                 choices: dict[str, Any], conf_dir: Path) -> OverrideError:
    """The error for ``parts[depth]`` missing under ``parts[:depth]``: nearest key, other options.
    """
    key = o.key_or_group
    prefix = ".".join(parts[:depth])
    siblings = _children(parent)
    near = difflib.get_close_matches(parts[depth], siblings, n=1, cutoff=0.6)
    message = f"{o.input_line}: unknown key {key!r}"
    group = parts[0]
    if depth >= 1 and group in choices:
        message += f" with {group}={choices[group]}"
        elsewhere = _options_with_key(conf_dir, group, parts[1:], choices[group])
    else:
        elsewhere = []
    if near:
        suggestion = ".".join([*parts[:depth], near[0], *parts[depth + 1:]])
        if OmegaConf.select(cfg, suggestion, default=_MISSING,
                            throw_on_resolution_failure=False) is _MISSING:
            suggestion = ".".join([*parts[:depth], near[0]])
        message += f"; did you mean {suggestion!r}?"
    elif elsewhere:
        message += f"; it exists with {group}=" + ", ".join(elsewhere)
    elif siblings:
        where = f"under {prefix!r}" if prefix else "at the top level"
        message += f"; the keys {where} are: " + ", ".join(siblings)
    if near and elsewhere:
        message += f" (or {key} with {group}=" + ", ".join(elsewhere) + ")"
    if not (near or elsewhere):
        message += f" (+{o.input_line} adds a new key)"
    return OverrideError(key, o.value(), message)


def _options_with_key(conf_dir: Path, group: str, rest: list[str], chosen: Any) -> list[str]:
    """The other options of ``group`` whose own file sets ``group.<rest>``."""
    found = []
    for path in sorted((conf_dir / group).glob("*.yaml")):
        if path.stem == chosen:
            continue
        try:
            text = path.read_text()
            node = OmegaConf.load(path)
        except Exception:  # noqa: BLE001 - a file we cannot read gives no hint
            continue
        if "@package _global_" in text:
            node = node.get(group)
        if isinstance(node, DictConfig) and OmegaConf.select(
            node, ".".join(rest), default=_MISSING, throw_on_resolution_failure=False
        ) is not _MISSING:
            found.append(path.stem)
    return found
