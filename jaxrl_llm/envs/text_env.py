"""Multi-turn text environments: a single-episode protocol and the batched interface over it.

`TextEnv` is one episode: `reset(seed, task_id) -> observation`, then
`step(action_text) -> (observation, reward, done, info)`. `BatchedTextEnv` runs `B` of them in
lock-step and speaks the shared batched interface (`reset(task_ids, seeds) -> (obs[B], infos[B])`,
`step(actions[B]) -> (obs[B], reward[B] float32, done[B] bool, infos[B])`).

Rules every environment follows:
- State depends only on `(task_id, seed)` (via `np.random.default_rng([seed, task_id])`).
- Sticky done: after `done`, `step` returns the same observation, reward 0 and done True.
- An unparsable or inadmissible action is a no-op with `info["invalid"] = True`.
- `info` carries task_id, task_type, goal, step, admissible_actions, won, score, invalid,
  privileged (strategy text for privileged teachers, never shown to the policy) and
  oracle_action (the next action of a shortest plan, for tests and scripted reflectors). An env
  may add keys (TextHouse's explorer_action: the next action of a player that knows only what it
  has observed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["TextEnv", "BatchedTextEnv", "extract_action", "INFO_KEYS"]

INFO_KEYS: tuple[str, ...] = (
    "task_id",
    "task_type",
    "goal",
    "step",
    "admissible_actions",
    "won",
    "score",
    "invalid",
    "privileged",
    "oracle_action",
)

_ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.DOTALL)


def extract_action(text: str) -> str | None:
    """The text inside the last `<action>...</action>` of a model turn (stripped); a turn with
    no tags is taken as the action itself; None if the result is empty."""
    tagged = _ACTION_TAG.findall(text)
    action = (tagged[-1] if tagged else text).strip()
    return action or None


@runtime_checkable
class TextEnv(Protocol):
    """One episode of a text environment."""

    name: str
    task_types: tuple[str, ...]
    max_steps: int

    def reset(self, seed: int, task_id: int = 0) -> str: ...

    def step(self, action_text: str) -> tuple[str, float, bool, dict[str, Any]]: ...

    @property
    def info(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


class BatchedTextEnv:
    """`B` independent episodes of one environment behind the batched interface.

    Args:
      make_env: builds a fresh single-episode environment (called `B` times per `reset`).
    """

    def __init__(self, make_env: Callable[[], TextEnv]):
        self._make_env = make_env
        probe = make_env()
        self.name = probe.name
        self.task_types = probe.task_types
        self.max_steps = probe.max_steps
        self._describe = probe.describe()
        self._envs: list[TextEnv] = []

    @property
    def batch_size(self) -> int:
        return len(self._envs)

    def reset(
        self, task_ids: Sequence[int], seeds: Sequence[int]
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Starts `B = len(task_ids)` episodes; returns observations `[B]` and infos `[B]`."""
        if len(task_ids) != len(seeds):
            raise ValueError(
                f"seeds must have one entry per task id ({len(task_ids)}); got {len(seeds)}"
            )
        self._envs = [self._make_env() for _ in task_ids]
        obs = [env.reset(int(s), int(t)) for env, t, s in zip(self._envs, task_ids, seeds)]
        return obs, [env.info for env in self._envs]

    def step(
        self, actions: Sequence[str]
    ) -> tuple[list[str], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Steps every episode; returns obs `[B]`, reward `[B]` float32, done `[B]` bool, infos."""
        if not self._envs:
            raise RuntimeError("reset must be called before step")
        if len(actions) != len(self._envs):
            raise ValueError(
                f"actions must have one entry per episode ({len(self._envs)}); got {len(actions)}"
            )
        results = [env.step(a) for env, a in zip(self._envs, actions)]
        obs = [r[0] for r in results]
        reward = np.asarray([r[1] for r in results], dtype=np.float32)
        done = np.asarray([r[2] for r in results], dtype=bool)
        return obs, reward, done, [r[3] for r in results]

    def describe(self) -> str:
        return self._describe
