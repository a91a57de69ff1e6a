"""Command line: `python -m jaxrl_llm.cli <command> --config FILE [--config.a.b=VALUE ...]`.

`FILE` is a Python file whose `get_config()` returns an `ml_collections.ConfigDict`. Every field can
be overridden with `--config.<dotted.key>=<value>` (or `--config.<key> <value>`); the value is parsed
by the type of the field it replaces. An unknown key or a value of the wrong type fails at once,
naming the key, before anything is built or compiled. Sections whose name ends in `_kwargs`
(`rl.objective_kwargs`, `rl.advantage_kwargs`) also take new keys, so any hyperparameter of the
chosen objective or estimator can be set without editing the file; whether the name is one the
method accepts is checked by the trainer's config check, not here.

`--help` lists the commands and the shipped configs; `<command> --help [--config FILE]` lists
every field of that config (the command's `DEFAULT_CONFIGS` entry without `--config`) with its
default and type.

Commands are looked up in `COMMANDS` (name -> function taking the config and returning a summary
dict; the first sentence of its docstring is its `--help` description), so a new subcommand is one entry.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from ml_collections import ConfigDict

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_HELP_FLAGS = ("-h", "--help")
_PROG = "python -m jaxrl_llm.cli"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


def load_config_file(path: str) -> ConfigDict:
    """Import `path` and return its `get_config()`."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config must be a Python file with get_config(); {path!r} does not exist")
    name = "jaxrl_llm_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} must define get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, ConfigDict):
        raise ConfigError(
            f"get_config() in {path!r} must return an ml_collections.ConfigDict; got {type(cfg).__name__}"
        )
    return cfg


def parse_untyped(raw: str) -> Any:
    """A value with no field type to go by: `true`/`false`, else a Python literal, else the raw string."""
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def parse_value(key: str, raw: str, current: Any) -> Any:
    """Parse the string `raw` as a value of the type of `current` (the field's present value)."""
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"config.{key} expects {expected}; got {raw!r}")

    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise fail("a bool (true/false)")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise fail("an int") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise fail("a float") from None
    if isinstance(current, str):
        return raw
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise fail(f"a {type(current).__name__} literal such as (1, 2)") from None
        if not isinstance(value, (tuple, list)):
            raise fail(f"a {type(current).__name__} literal such as (1, 2)")
        return type(current)(value)
    if current is None:
        return parse_untyped(raw)
    raise ConfigError(f"config.{key} holds a {type(current).__name__}, which cannot be set from the command line")


def _is_open_section(parts: Sequence[str]) -> bool:
    """`parts` names a key directly inside a `*_kwargs` section, which takes keys it does not list."""
    return len(parts) >= 2 and parts[-2].endswith("_kwargs")


def apply_override(cfg: ConfigDict, key: str, raw: str) -> None:
    """Set `cfg.<key>` (dotted) from the string `raw`; unknown keys and bad values raise `ConfigError`.

    A key missing from a `*_kwargs` section is added, its value parsed by `parse_untyped`.
    """
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, ConfigDict) and part not in node and last and _is_open_section(parts):
            try:
                node[part] = parse_untyped(raw)
            except (AttributeError, KeyError) as e:  # a locked section
                raise ConfigError(f"config.{key}: {e}") from None
            return
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:depth]) or "<root>"
            known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            raise ConfigError(f"unknown config field config.{path}; fields under {where}: {known}")
        if not last:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ConfigDict):
        raise ConfigError(f"config.{key} is a section; override one of its fields {sorted(current.keys())}")
    value = parse_value(key, raw, current)
    try:
        node[parts[-1]] = value
    except TypeError as e:
        raise ConfigError(f"config.{key}: {e}") from None


def split_config_args(args: Sequence[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """`["--config", FILE, "--config.a.b=1", ...]` -> `(FILE or None, [("a.b", "1"), ...])`."""
    path: str | None = None
    overrides: list[tuple[str, str]] = []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                path = arg.split("=", 1)[1]
            elif i + 1 < len(args):
                i += 1
                path = args[i]
            else:
                raise ConfigError("--config needs a file path")
        elif arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" in body:
                key, raw = body.split("=", 1)
            elif i + 1 < len(args):
                i += 1
                key, raw = body, args[i]
            else:
                raise ConfigError(f"{arg} needs a value")
            overrides.append((key, raw))
        else:
            raise ConfigError(f"unrecognised argument {arg!r}; expected --config FILE and --config.<field>=VALUE")
        i += 1
    return path, overrides


def load_with_overrides(path: str, overrides: Sequence[tuple[str, str]]) -> ConfigDict:
    cfg = load_config_file(path)
    for key, raw in overrides:
        apply_override(cfg, key, raw)
    return cfg


def parse_config_args(args: Sequence[str]) -> ConfigDict:
    """`["--config", FILE, "--config.a.b=1", ...]` -> the overridden `ConfigDict`."""
    path, overrides = split_config_args(args)
    if path is None:
        raise ConfigError("--config FILE is required")
    return load_with_overrides(path, overrides)


def _sft(cfg: ConfigDict) -> dict[str, Any]:
    """Supervised fine-tuning, then held-out greedy exact-match evaluation."""
    from jaxrl_llm.train.sft_run import run_sft

    return run_sft(cfg)


def _rl(cfg: ConfigDict) -> dict[str, Any]:
    """RL post-training (optional SFT warm-up, rollouts, a registered objective) with held-out evaluation."""
    from jaxrl_llm.train.rl import run_rl
    from jaxrl_llm.train.rl_offline import run_offline_rl

    offline = cfg.rl.get("offline", {}).get("enabled", False)  # a fixed dataset (BCPG-NSA offline)
    summary = run_offline_rl(cfg) if offline else run_rl(cfg)
    return {k: v for k, v in summary.items() if k not in ("records", "final_state")}


# Subcommand name -> runner(config) -> summary dict; the runner's docstring's first sentence is its help line.
def _dpo(cfg: ConfigDict) -> dict[str, Any]:
    """Offline preference training (DPO on JSONL or built-in-task pairs) with held-out preference accuracy."""
    from jaxrl_llm.train.preference import run_dpo

    return run_dpo(cfg)


def _dpo_vp(cfg: ConfigDict) -> dict[str, Any]:
    """Iterative DPO on verifier-labelled pairs of the policy's own samples (DPO-VP), reference reset each round."""
    from jaxrl_llm.train.dpo_vp import run_dpo_vp

    return run_dpo_vp(cfg)


def _export(cfg: ConfigDict) -> dict[str, Any]:
    """Writes the model of `model.init_from` (orbax:RUN_DIR or hf:PATH) to `export.hf_dir` as a Hugging Face checkpoint."""
    from jaxrl_llm.train.export import run_export

    return run_export(cfg)


def _eval(cfg: ConfigDict) -> dict[str, Any]:
    """Held-out evaluation of a model or a run's checkpoint (eval.checkpoint): greedy accuracy, pass@k,
    maj@k and response lengths, as JSON and a table."""
    from jaxrl_llm.train.eval_run import run_eval

    return run_eval(cfg)


def _hcc(cfg: ConfigDict) -> dict[str, Any]:
    """Scores SFT records (hcc.input) with a model and cuts their harmful continuation (HCC): writes the
    edited records (hcc.output) and a report (hcc.report)."""
    from jaxrl_llm.train.hcc_run import run_hcc

    return run_hcc(cfg)


def _prm(cfg: ConfigDict) -> dict[str, Any]:
    """Trains a process reward model head (per-step BCE) and writes its step P/R/F1 and PRM@N report (prm.eval.output)."""
    from jaxrl_llm.train.prm_run import run_prm

    return run_prm(cfg)


COMMANDS: dict[str, Callable[[ConfigDict], dict[str, Any]]] = {"sft": _sft, "rl": _rl, "dpo": _dpo,
                                                               "dpo_vp": _dpo_vp, "export": _export,
                                                               "eval": _eval, "hcc": _hcc, "prm": _prm}

# Config a command's `--help` describes when no --config is given, relative to the repo root.
DEFAULT_CONFIGS: dict[str, str] = {"sft": "configs/sft_tiny.py", "rl": "configs/quickstart.py",
                                   "dpo": "configs/dpo_tiny.py", "dpo_vp": "configs/dpo_vp.py",
                                   "export": "configs/sft_tiny.py", "eval": "configs/sft_tiny.py",
                                   "hcc": "configs/hcc_arith_chain.py", "prm": "configs/prm_arith_chain.py"}


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line (docstrings wrap mid-sentence)."""
    paragraph = " ".join((doc or "").strip().split("\n\n", 1)[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _display_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def repo_roots() -> list[str]:
    """Where `configs/` may live: the working directory, then the directory above the package."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots: list[str] = []
    for root in (os.getcwd(), package_parent):
        if os.path.realpath(root) not in map(os.path.realpath, roots):
            roots.append(root)
    return roots


def shipped_configs() -> list[tuple[str, str]]:
    """`(path, first docstring sentence)` of each `configs/*.py` under `repo_roots()`.

    The docstring is read from the source, not by importing, so listing runs no config code.
    """
    found = []
    for root in repo_roots():
        folder = os.path.join(root, "configs")
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".py") or name.startswith("_"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                try:
                    doc = ast.get_docstring(ast.parse(f.read()))
                except SyntaxError:
                    doc = None
            found.append((_display_path(path), first_sentence(doc)))
    return found


def default_config_path(command: str) -> str | None:
    """The first existing `DEFAULT_CONFIGS[command]` under `repo_roots()`, or None."""
    rel = DEFAULT_CONFIGS.get(command)
    if rel is None:
        return None
    for root in repo_roots():
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            return _display_path(path)
    return None


def _usage() -> str:
    return f"usage: {_PROG} {{{','.join(COMMANDS)}}} --config FILE [--config.<field>=VALUE ...]"


def main_help() -> str:
    """`--help`: the commands and the shipped configs."""
    width = max(map(len, COMMANDS), default=0)
    lines = [_usage(), "", "commands:"]
    lines += [f"  {name:<{width}}  {first_sentence(fn.__doc__)}" for name, fn in COMMANDS.items()]
    configs = shipped_configs()
    if configs:
        cwidth = max(len(p) for p, _ in configs)
        lines += ["", "shipped configs:"]
        lines += [f"  {path:<{cwidth}}  {doc}" for path, doc in configs]
    lines += ["", f"'{_PROG} <command> --help [--config FILE]' lists a config's fields and defaults."]
    return "\n".join(lines)


def config_fields(cfg: ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf of `cfg` as `(dotted key, value)`; an empty section is one entry holding it."""
    fields: list[tuple[str, Any]] = []
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, ConfigDict) and len(value):
            fields += config_fields(value, dotted + ".")
        else:
            fields.append((dotted, value))
    return fields


def format_field(key: str, value: Any) -> str:
    """`rl.reuse_epochs = 4 (int)`; an empty section reads `rl.advantage_kwargs = {} (section)`."""
    if isinstance(value, ConfigDict):
        return f"{key} = {{}} (section)"
    return f"{key} = {value!r} ({type(value).__name__})"


def _open_sections(cfg: ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        if isinstance(value, ConfigDict):
            dotted = f"{prefix}{key}"
            out += [dotted] if key.endswith("_kwargs") else []
            out += _open_sections(value, dotted + ".")
    return out


def _spec_of(name: str, spec_fn: Callable[[str], Any] | None) -> Any:
    """`spec_fn(name)`, or None where the registry declares no spec for `name`."""
    if spec_fn is None:
        return None
    try:
        return spec_fn(name)
    except (KeyError, ValueError):
        return None


def registry_entry(name: str, spec: Any) -> str | None:
    """`  name: hparam=default, ...` from `spec.hparams` (None: any keyword); None without a declaration."""
    if spec is None or not hasattr(spec, "hparams"):
        return None
    hparams = spec.hparams
    if hparams is None:
        body = "any keyword"
    elif not hparams:
        body = "no hyperparameters"
    else:
        body = ", ".join(f"{k}={v!r}" for k, v in hparams.items())
    trainer = getattr(spec, "trainer", "rl")
    if trainer != "rl":
        body += f" [trained by '{trainer}']"
    inputs = getattr(spec, "inputs", None)
    if inputs:
        extra = [" or ".join("+".join(g) for g in getattr(spec, "any_of", ()))] if getattr(spec, "any_of", ()) else []
        body += f"; reads {', '.join([*inputs, *extra])}"
    return textwrap.fill(f"{name}: {body}", width=100, initial_indent="  ",
                         subsequent_indent=" " * (len(name) + 4), break_on_hyphens=False)


def registry_lines(names: Sequence[str], spec_fn: Callable[[str], Any] | None) -> list[str]:
    """One entry per name with its hyperparameter defaults, or the bare names wrapped when none are declared."""
    entries = {name: registry_entry(name, _spec_of(name, spec_fn)) for name in names}
    if not any(entries.values()):
        return textwrap.wrap(", ".join(names), width=100, initial_indent="  ", subsequent_indent="  ")
    return [entry or f"  {name}" for name, entry in entries.items()]


def registry_help() -> list[str]:
    """The registered objectives and advantage estimators, with hyperparameters where declared."""
    from jaxrl_llm.objectives import registry

    lines = []
    for title, names, spec_name in (
        ("registered objectives (rl.objective; hyperparameters go in rl.objective_kwargs):",
         registry.list_objectives(), "objective_spec"),
        ("registered advantage estimators (rl.advantage; hyperparameters go in rl.advantage_kwargs):",
         registry.list_advantages(), "advantage_spec"),
    ):
        lines += ["", title] + registry_lines(names, getattr(registry, spec_name, None))
    return lines


def task_help() -> list[str]:
    """The registered tasks (data.task) with their arguments (data.task_kwargs)."""
    import inspect

    from jaxrl_llm.envs.registry import TASKS, task_factory, task_parameters

    task_factory("arithmetic")  # registers the built-ins
    lines = ["", "registered tasks (data.task; arguments go in data.task_kwargs):"]
    for name in sorted(TASKS):
        args = ", ".join(k if d is inspect.Parameter.empty else f"{k}={d!r}" for k, d in task_parameters(name).items())
        lines.append(f"  {name}({args})")
    return lines


def command_help(command: str, cfg: ConfigDict, config_path: str) -> str:
    """`<command> --help`: every field of `cfg` with its value and type, and how to override it."""
    lines = [f"usage: {_PROG} {command} --config FILE [--config.<field>=VALUE ...]", ""]
    description = first_sentence(COMMANDS[command].__doc__)
    lines += [description, ""] if description else []
    lines.append(f"fields of {config_path} (value (type)):")
    lines += [f"  {format_field(k, v)}" for k, v in config_fields(cfg)]
    lines += [
        "",
        "override any field with --config.<field>=VALUE (or --config.<field> VALUE); the value is parsed",
        "by the field's type: bool true/false, int, float, str as typed, tuple/list as a literal (1, 2).",
    ]
    sections = _open_sections(cfg)
    if sections:
        example = ("rl.objective_kwargs.clip_low=0.1" if "rl.objective_kwargs" in sections
                   else f"{sections[0]}.<name>=VALUE")
        lines += [
            f"sections ending in _kwargs ({', '.join(sections)}) also take keys they do not list,",
            f"e.g. --config.{example} (a Python literal, true/false, or else a string).",
        ]
    data = cfg.get("data")
    if isinstance(data, ConfigDict) and "task" in data:
        lines += task_help()
    rl = cfg.get("rl")
    if isinstance(rl, ConfigDict) and ("objective" in rl or "advantage" in rl):
        lines += registry_help()
    return "\n".join(lines)


def _help_for(command: str, args: Sequence[str]) -> str:
    """The help text of `command` for its remaining (non-help) `args`; raises `ConfigError`."""
    path, overrides = split_config_args(args)
    path = path or default_config_path(command)
    if path is None:
        raise ConfigError(f"{command} has no default config; pass --config FILE to list its fields")
    return command_help(command, load_with_overrides(path, overrides), path)


# (label, summary key stem, count key, count unit) of held-out accuracies a run may report as
# `<stem>_after` (and `<stem>_before`; None when the run resumed past its first evaluation).
_ACCURACIES = (
    ("sampled accuracy", "accuracy", "eval_num_problems", "problems"),  # RL: mean reward at rl.temperature
    ("greedy accuracy", "greedy_accuracy", "eval_num_problems", "problems"),
    ("step accuracy", "step_accuracy", "eval_num_problems", "problems"),  # offline BCPG-NSA: correct steps
    ("preference accuracy", "pref_accuracy", "eval_num_pairs", "pairs"),
)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable closing lines of a run summary, labelled by what was measured."""
    lines = []
    for label, stem, count_key, unit in _ACCURACIES:
        if summary.get(f"{stem}_after") is None:
            continue
        before, after = summary.get(f"{stem}_before"), summary[f"{stem}_after"]
        count = f"{summary[count_key]} {unit}" if summary.get(count_key) is not None else ""
        if before is None:
            lines.append(f"held-out {label}: {after:.3f}" + (f" ({count})" if count else ""))
        else:
            detail = ", ".join(x for x in (f"{100 * (after - before):+.1f} points", count) if x)
            lines.append(f"held-out {label} before: {before:.3f}, after: {after:.3f} ({detail})")
    if not lines and "eval_accuracy" in summary:  # SFT: greedy decoding, exact match
        n = summary.get("eval_num_problems")
        lines.append(f"held-out greedy exact-match accuracy: {summary['eval_accuracy']:.3f}"
                     + (f", {n} problems" if n is not None else ""))
    if "wall_time_s" in summary:
        lines.append(f"wall time {summary['wall_time_s']:.1f} s")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in _HELP_FLAGS:
        print(main_help())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}; known: {sorted(COMMANDS)}\n{_usage()}", file=sys.stderr)
        return 2
    try:
        if any(a in _HELP_FLAGS for a in rest):
            print(_help_for(command, [a for a in rest if a not in _HELP_FLAGS]))
            return 0
        cfg = parse_config_args(rest)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    summary = COMMANDS[command](cfg)
    printable = {k: v for k, v in summary.items() if k != "eval_examples"}
    for prompt, reference, completion in summary.get("eval_examples", []):
        print(f"  {prompt}{completion!r:<8} (reference {reference})")
    print(json.dumps(printable, indent=2, default=str))
    for line in summary_lines(summary):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
