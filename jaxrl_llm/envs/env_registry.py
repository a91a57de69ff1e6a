"""The environment registry: a name (or "package.module:ClassName") -> a multi-turn text env.

    from jaxrl_llm.envs import register_env, make_env
    register_env("my_env", MyEnv)            # then --config.data.task_kwargs.env=my_env
    envs = make_env("texthouse", {"max_steps": 20})   # a BatchedTextEnv

A factory is a class or a callable returning one single-episode environment (`text_env.TextEnv`:
`reset(seed, task_id)`, `step(action_text)`, `info`, `describe()`, `name`, `task_types`,
`max_steps`). Its keyword arguments come from the config; unknown keys are rejected with the
factory's accepted names before anything is built. Besides registered names, "package.module:Name"
imports the factory. Built-ins: "textshop" (`TextShop`) and "texthouse" (`TextHouse`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from jaxrl_llm.envs.text_env import BatchedTextEnv

__all__ = ["ENVS", "register_env", "env_factory", "env_names", "env_parameters", "make_env"]

ENVS: dict[str, Callable[..., Any]] = {}

# The config field that names the env (the `agent` task's argument); error messages cite it.
ENV_FIELD = "data.task_kwargs.env"

_REQUIRED_METHODS = ("reset", "step", "describe")
_REQUIRED_ATTRIBUTES = ("name", "task_types", "max_steps", "info")


def register_env(name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> Callable[..., Any]:
    """Registers `factory` (a class or callable returning a `TextEnv`) under `name`; returns it."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"env name must be a non-empty string without ':' (that marks an import path); "
                         f"got {name!r}")
    if not callable(factory):
        raise TypeError(f"env factory for {name!r} must be callable; got {type(factory).__name__}")
    _register_builtins()
    if name in ENVS and not overwrite and ENVS[name] is not factory:
        raise ValueError(f"env {name!r} is already registered; pass overwrite=True to replace it")
    ENVS[name] = factory
    return factory


def _import_factory(path: str, field: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{field}={path!r}: an import path must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{field}={path!r}: cannot import module {module_name!r} ({e})") from e
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"{field}={path!r}: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise TypeError(f"{field}={path!r}: {attr!r} is a {type(factory).__name__}, not a class or callable")
    return factory


def env_factory(name: str, *, field: str = ENV_FIELD) -> Callable[..., Any]:
    """The factory registered as `name`, or imported from "package.module:ClassName"."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{field} must be an env name or 'package.module:ClassName'; got {name!r}")
    if ":" in name:
        return _import_factory(name, field)
    _register_builtins()
    if name not in ENVS:
        raise ValueError(f"{field}: agent env {name!r} is not registered; registered: {sorted(ENVS)} "
                         "(envs.register_env adds one, or give 'package.module:ClassName')")
    return ENVS[name]


def env_names() -> list[str]:
    """Registered env names, sorted (built-ins included)."""
    _register_builtins()
    return sorted(ENVS)


def _keywords(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    # ({keyword: default}, whether it takes **kwargs)
    params = inspect.signature(factory).parameters.values()
    named = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def env_parameters(name: str, *, field: str = ENV_FIELD) -> dict[str, Any]:
    """`{keyword: default}` of the factory's keyword arguments (`inspect.Parameter.empty` if required)."""
    return _keywords(env_factory(name, field=field))[0]


def _missing_members(env: Any) -> list[str]:
    # getattr_static: reading `info` on an env that was never reset may raise.
    absent = object()
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(env, m, None))]
    return missing + [a for a in _REQUIRED_ATTRIBUTES if inspect.getattr_static(env, a, absent) is absent]


def make_env(name: str, kwargs: Mapping[str, Any] | None = None, *, field: str = ENV_FIELD) -> BatchedTextEnv:
    """A `BatchedTextEnv` of the env `name` built with `kwargs` (checked against its signature)."""
    factory = env_factory(name, field=field)
    kwargs = dict(kwargs or {})
    accepted, takes_any = _keywords(factory)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(f"{field}={name!r}: {unknown} are not arguments of this env; it takes "
                         f"{sorted(accepted)}")
    missing = sorted(k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in kwargs)
    if missing:
        raise ValueError(f"{field}={name!r} needs the arguments {missing}")
    try:
        probe = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field}={name!r} with {kwargs}: {e}") from e
    missing = _missing_members(probe)
    if missing:
        raise TypeError(f"{field}={name!r} built a {type(probe).__name__}, which is not a TextEnv: it lacks "
                        f"{missing} (a TextEnv has reset(seed, task_id), step(action_text), info, "
                        "describe(), name, task_types and max_steps)")
    return BatchedTextEnv(functools.partial(factory, **kwargs))


_BUILTINS_DONE = False


def _register_builtins() -> None:
    # Lazy, as in registry.py: the env modules stay independent of this one.
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    _BUILTINS_DONE = True
    from jaxrl_llm.envs.text_house import TextHouse
    from jaxrl_llm.envs.text_shop import TextShop

    ENVS.setdefault("textshop", TextShop)
    ENVS.setdefault("texthouse", TextHouse)
    from jaxrl_llm.envs.spec_zoom import SpecZoom

    ENVS.setdefault("speczoom", SpecZoom)
