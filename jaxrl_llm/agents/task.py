"""`data.task = "agent"`: a multi-turn environment seen by the trainers.

The RL trainer steps episodes of the environment turn by turn (`train/agent_step.py`); the SFT
trainer (and the RL warm-up) learns from turn records of the environment's oracle: each record is
one turn prompt (`PromptBuilder`) with the oracle's action as completion. The oracle is followed
with `oracle_noise` probability of a random admissible action instead (the record still teaches the
oracle's action from the state reached), so the records cover recovering from mistakes, which a
policy that makes them needs.

Episodes are `(task_id, seed)` pairs (the env's state is a function of them); a pair belongs to the
eval split iff a stable hash of it falls below `eval_fraction`, so training never sees an eval house.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxrl_llm.agents.prompt import PromptBuilder
from jaxrl_llm.envs.task import Problem, check_split, make_rng, stable_hash
from jaxrl_llm.envs.text_env import extract_action

__all__ = ["AgentTask", "is_agent_task"]

_HASH_BUCKETS = 1_000_000
_MAX_DRAWS = 100_000
_TASK_ID_RANGE = 1 << 20
_SEED_RANGE = 1 << 30


def is_agent_task(task: Any) -> bool:
    """Whether the trainers should run `task` as episodes of a multi-turn environment."""
    return isinstance(task, AgentTask)


class AgentTask:
    """Episodes of a registered environment (`envs/env_registry.py`) behind the trainers' task interface.

    Args:
      env: a registered env name or "package.module:ClassName".
      env_kwargs: the env's constructor arguments.
      history_turns, show_actions, max_actions, action_format, instruction: the `PromptBuilder`'s.
      oracle_noise: the probability that an SFT record's episode takes a random admissible action
        instead of the oracle's (the record still teaches the oracle's action).
      eval_fraction: share of `(task_id, seed)` pairs held out.
      task_types: restrict episodes to these task types of the env (() = all).
    """

    name = "agent"
    reward_names = ("success",)

    def __init__(self, env: str = "texthouse", env_kwargs: Mapping[str, Any] | None = None, *,
                 history_turns: int = 2, show_actions: bool = True, max_actions: int = 0,
                 action_format: str = "plain", instruction: str = PromptBuilder.instruction,
                 oracle_noise: float = 0.3, eval_fraction: float = 0.1, task_types: tuple = ()):
        from jaxrl_llm.envs.env_registry import make_env  # noqa: PLC0415 (the registry imports the envs)

        if not 0.0 <= float(oracle_noise) < 1.0:
            raise ValueError(f"data.task_kwargs.oracle_noise must be in [0, 1); got {oracle_noise}")
        if not 0.0 < float(eval_fraction) < 1.0:
            raise ValueError(f"data.task_kwargs.eval_fraction must be in (0, 1); got {eval_fraction}")
        self.env_name = str(env)
        self.env_kwargs = dict(env_kwargs or {})
        self.builder = PromptBuilder(instruction=str(instruction), history_turns=int(history_turns),
                                     show_actions=bool(show_actions), max_actions=int(max_actions),
                                     action_format=str(action_format))
        self.oracle_noise = float(oracle_noise)
        self.eval_fraction = float(eval_fraction)
        self._make = lambda: make_env(self.env_name, self.env_kwargs)
        probe = self._make()
        self.task_types: tuple[str, ...] = tuple(probe.task_types)
        unknown = sorted(set(task_types) - set(self.task_types))
        if unknown:
            raise ValueError(f"data.task_kwargs.task_types {unknown} are not task types of env {self.env_name!r}; "
                             f"it has {list(self.task_types)}")
        self.allowed_types = tuple(task_types) or self.task_types
        self.max_steps = int(probe.max_steps)

    # --- episodes ---------------------------------------------------------------------------------
    def make_env(self) -> Any:
        """A fresh batched environment (`envs.text_env.BatchedTextEnv`)."""
        return self._make()

    def split_of(self, task_id: int, seed: int) -> str:
        bucket = stable_hash(f"{int(task_id)}/{int(seed)}", self.env_name) % _HASH_BUCKETS
        return "eval" if bucket < self.eval_fraction * _HASH_BUCKETS else "train"

    def _draw_episode(self, rng: np.random.Generator, split: str) -> tuple[int, int]:
        num_types = len(self.task_types)
        allowed = [self.task_types.index(t) for t in self.allowed_types]
        for _ in range(_MAX_DRAWS):
            # task_id % num_types is the task type (the envs' convention); the rest varies the house.
            task_id = int(rng.integers(_TASK_ID_RANGE // num_types)) * num_types + int(rng.choice(allowed))
            seed = int(rng.integers(_SEED_RANGE))
            if self.split_of(task_id, seed) == split:
                return task_id, seed
        raise RuntimeError(f"no {split!r} episode found in {_MAX_DRAWS} draws (eval_fraction={self.eval_fraction})")

    def episodes(self, n: int, seed: int, split: str = "train") -> list[tuple[int, int]]:
        """`n` episodes `(task_id, seed)` of `split`, deterministic in `seed`."""
        rng = make_rng(int(seed), 7, check_split(split))
        return [self._draw_episode(rng, split) for _ in range(int(n))]

    def eval_episodes(self, n: int, seed: int = 0) -> list[tuple[int, int]]:
        """`n` distinct held-out episodes."""
        rng = make_rng(int(seed), 11, check_split("eval"))
        seen: dict[tuple[int, int], None] = {}
        while len(seen) < int(n):
            seen.setdefault(self._draw_episode(rng, "eval"), None)
        return list(seen)

    # --- oracle turn records (SFT) ----------------------------------------------------------------
    def oracle_turns(self, episodes: list[tuple[int, int]], rng: np.random.Generator) -> list[Problem]:
        """Every turn of each episode played by the noisy oracle, as a `Problem` whose reference is the
        oracle's action at that state (metadata: task_type, task_id, seed, turn)."""
        env = self.make_env()
        obs, infos = env.reset([t for t, _ in episodes], [s for _, s in episodes])
        history: list[list] = [[] for _ in episodes]
        done = np.zeros(len(episodes), bool)
        out: list[Problem] = []
        from jaxrl_llm.agents.prompt import Turn  # noqa: PLC0415

        for turn in range(self.max_steps):
            if done.all():
                break
            actions = []
            for i, info in enumerate(infos):
                oracle = info.get("oracle_action")
                if done[i] or oracle is None:
                    actions.append("")
                    continue
                prompt = self.builder.render(info["goal"], obs[i], history=history[i],
                                             admissible=info["admissible_actions"])
                out.append(Problem(prompt=prompt, reference=str(oracle),
                                   metadata={"task_type": info["task_type"], "task_id": episodes[i][0],
                                             "seed": episodes[i][1], "turn": turn}))
                choices = [a for a in info["admissible_actions"] if "..." not in a]
                take = (str(rng.choice(choices)) if choices and rng.random() < self.oracle_noise else str(oracle))
                actions.append(take)
            new_obs, _, new_done, new_infos = env.step(actions)
            for i in range(len(episodes)):
                if not done[i]:
                    history[i].append(Turn(obs[i], actions[i]))
            done |= np.asarray(new_done, bool)
            obs, infos = list(new_obs), list(new_infos)
        return out

    def sample_batch(self, n: int, seed: int, split: str = "train") -> list[Problem]:
        """`n` oracle turn records of `split` episodes (deterministic in `seed`)."""
        rng = make_rng(int(seed), 13, check_split(split))
        records: list[Problem] = []
        while len(records) < int(n):
            eps = [self._draw_episode(rng, split) for _ in range(8)]
            records.extend(self.oracle_turns(eps, rng))
        order = rng.permutation(len(records))[:int(n)]
        return [records[i] for i in order]

    def sample(self, seed: int | np.random.Generator, split: str = "train") -> Problem:
        rng = make_rng(seed, 17, check_split(split)) if not isinstance(seed, np.random.Generator) else seed
        return self.sample_batch(1, int(rng.integers(1 << 31)), split)[0]

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]:
        """`n` held-out oracle turn records (the SFT trainer's greedy action accuracy)."""
        return self.sample_batch(n, int(seed) + 1, "eval")

    def vocabulary_texts(self, num_records: int = 3000) -> list[str]:
        """Texts the word tokenizer's vocabulary is built from (`data.tokenizer = "word"`): oracle turn
        records of both splits with their responses, the env's description, the built-in skill library
        (when the env has one) and the phrases the trainers add (SDAR's header, D2Skill's reflections)."""
        from jaxrl_llm.agents.prompt import PRIVILEGED_HEADER  # noqa: PLC0415
        from jaxrl_llm.agents.rollout import NO_ACTION  # noqa: PLC0415
        from jaxrl_llm.agents.skills import BUILTIN_SKILL_ENVS, builtin_skill_library  # noqa: PLC0415

        texts = [self.make_env().describe(), PRIVILEGED_HEADER, NO_ACTION, self.builder.response("x"),
                 "Task-level experience:\nStep-level experience:\n- When , do , not . Plan: then"]
        for split, n in (("train", num_records), ("eval", num_records // 4)):
            for p in self.sample_batch(n, 0, split):
                texts += [p.prompt, self.sft_target(p)]
        if self.env_name in BUILTIN_SKILL_ENVS:
            lib = builtin_skill_library(self.env_name)
            texts += [*lib.general, *lib.by_type.values()]
        return texts

    def sft_target(self, problem: Problem) -> str:
        return self.builder.response(problem.reference)

    def score(self, problem: Problem, response: str) -> float:
        """1 if the response's action is the oracle's (the SFT records' turn accuracy)."""
        return float((extract_action(response) or "") == problem.reference)
