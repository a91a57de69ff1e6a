"""The task registry: `data.task` names a registered factory, `data.task_kwargs` holds its arguments.

    from jaxrl_llm.envs import register_task
    register_task("parity", ParityTask)       # then --config.data.task=parity

A factory is any callable returning a task (`envs/task.py: TrainerTask`): a class or a function.
Its keyword arguments come from `data.task_kwargs`, and also from the `data` fields of the same
name (`data.level`, `data.eval_fraction`), so the built-in arithmetic task keeps its flat fields.
Unknown keys are rejected with the factory's accepted names, before anything compiles.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["TASKS", "register_task", "task_factory", "task_parameters", "build_task"]

TASKS: dict[str, Callable[..., Any]] = {}


def register_task(name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> Callable[..., Any]:
    """Registers `factory` under `name`; returns it (usable as a decorator via functools.partial)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"task name must be a non-empty string; got {name!r}")
    if not callable(factory):
        raise TypeError(f"task factory for {name!r} must be callable; got {type(factory).__name__}")
    if name in TASKS and not overwrite and TASKS[name] is not factory:
        raise ValueError(f"task {name!r} is already registered; pass overwrite=True to replace it")
    TASKS[name] = factory
    return factory


def task_factory(name: str) -> Callable[..., Any]:
    _register_builtins()
    if name not in TASKS:
        raise ValueError(f"data.task={name!r} is not a registered task; registered: {sorted(TASKS)} "
                         "(envs.register_task adds one)")
    return TASKS[name]


def task_parameters(name: str) -> dict[str, Any]:
    """`{keyword: default}` of the factory's keyword arguments (`inspect.Parameter.empty` if required)."""
    params = inspect.signature(task_factory(name)).parameters
    return {k: p.default for k, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_task(data_cfg: Mapping[str, Any]) -> Any:
    """The task named by `data.task`, built with `data.task_kwargs` (and same-named `data` fields)."""
    name = data_cfg["task"]
    factory = task_factory(name)
    accepted = task_parameters(name)
    explicit = dict(data_cfg.get("task_kwargs", None) or {})
    unknown = sorted(set(explicit) - set(accepted))
    if unknown:
        raise ValueError(f"data.task_kwargs {unknown} are not arguments of task {name!r}; it takes "
                         f"{sorted(accepted)}")
    kwargs = {k: data_cfg[k] for k in accepted if k in data_cfg and k not in explicit}
    kwargs.update(explicit)
    missing = sorted(k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in kwargs)
    if missing:
        raise ValueError(f"task {name!r} needs {missing}: set data.task_kwargs.{missing[0]}")
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data.task={name!r} with {kwargs}: {e}") from e


_BUILTINS_DONE = False


def _register_builtins() -> None:
    # Lazy: the task modules import this one's users, not the other way round.
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    _BUILTINS_DONE = True
    from jaxrl_llm.envs.arith_chain import ArithChainTask
    from jaxrl_llm.envs.arithmetic import ArithmeticTask
    from jaxrl_llm.envs.lang_arith import LangArithTask
    from jaxrl_llm.envs.autothink_mix import AutoThinkMixTask

    def arithmetic(level: int = 1, eval_fraction: float = 0.1) -> ArithmeticTask:
        return ArithmeticTask(int(level), eval_fraction=float(eval_fraction))

    TASKS.setdefault("arithmetic", arithmetic)
    TASKS.setdefault("arith_chain", ArithChainTask)
    register_task("lang_arith", LangArithTask)
    TASKS.setdefault("autothink_mix", AutoThinkMixTask)
    from jaxrl_llm.envs.dataset_task import DatasetTask

    TASKS.setdefault("dataset", DatasetTask)  # prompts from a file (data/datasets.py)
    from jaxrl_llm.agents.task import AgentTask  # episodes of a multi-turn env (agents/task.py)

    TASKS.setdefault("agent", AgentTask)
