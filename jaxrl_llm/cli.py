"""Command line: `python -m jaxrl_llm.cli <command> --config FILE [--config.a.b=VALUE ...]`.

`FILE` is a Python file whose `get_config()` returns an `ml_collections.ConfigDict`. Every field can
be overridden with `--config.<dotted.key>=<value>` (or `--config.<key> <value>`); the value is parsed
by the type of the field it replaces. An unknown key or a value of the wrong type fails at once,
naming the key, before anything is built or compiled.

Commands are looked up in `COMMANDS` (name -> function taking the config and returning a summary
dict), so a new subcommand is one entry.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ml_collections import ConfigDict

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


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
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    raise ConfigError(f"config.{key} holds a {type(current).__name__}, which cannot be set from the command line")


def apply_override(cfg: ConfigDict, key: str, raw: str) -> None:
    """Set `cfg.<key>` (dotted) from the string `raw`; unknown keys and bad values raise `ConfigError`."""
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:depth]) or "<root>"
            known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            raise ConfigError(f"unknown config field config.{path}; fields under {where}: {known}")
        if depth < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ConfigDict):
        raise ConfigError(f"config.{key} is a section; override one of its fields {sorted(current.keys())}")
    value = parse_value(key, raw, current)
    try:
        node[parts[-1]] = value
    except TypeError as e:
        raise ConfigError(f"config.{key}: {e}") from None


def parse_config_args(args: Sequence[str]) -> ConfigDict:
    """`["--config", FILE, "--config.a.b=1", ...]` -> the overridden `ConfigDict`."""
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
    if path is None:
        raise ConfigError("--config FILE is required")
    cfg = load_config_file(path)
    for key, raw in overrides:
        apply_override(cfg, key, raw)
    return cfg


def _sft(cfg: ConfigDict) -> dict[str, Any]:
    from jaxrl_llm.train.sft_run import run_sft

    return run_sft(cfg)


def _rl(cfg: ConfigDict) -> dict[str, Any]:
    from jaxrl_llm.train.rl import run_rl

    summary = run_rl(cfg)
    return {k: v for k, v in summary.items() if k not in ("records", "final_state")}


# Subcommand name -> runner(config) -> summary dict.
COMMANDS: dict[str, Callable[[ConfigDict], dict[str, Any]]] = {"sft": _sft, "rl": _rl}


def _usage() -> str:
    return f"usage: python -m jaxrl_llm.cli {{{','.join(COMMANDS)}}} --config FILE [--config.<field>=VALUE ...]"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}; known: {sorted(COMMANDS)}\n{_usage()}", file=sys.stderr)
        return 2
    try:
        cfg = parse_config_args(rest)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    summary = COMMANDS[command](cfg)
    printable = {k: v for k, v in summary.items() if k != "eval_examples"}
    for prompt, reference, completion in summary.get("eval_examples", []):
        print(f"  {prompt}{completion!r:<8} (reference {reference})")
    print(json.dumps(printable, indent=2, default=str))
    if "eval_accuracy" in summary:
        print(f"held-out exact-match accuracy: {summary['eval_accuracy']:.3f} "
              f"({summary['eval_num_problems']} problems); wall time {summary['wall_time_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
