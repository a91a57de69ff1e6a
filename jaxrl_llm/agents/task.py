"""`data.task = "agent"`: a multi-turn environment seen by the trainers.

The RL trainer steps episodes of the environment turn by turn (`train/agent_step.py`); the SFT
trainer (and the RL warm-up) learns from turn records of the environment's oracle: each record is
one turn prompt (`PromptBuilder`) with the oracle's action as completion. The oracle is followed
with `oracle_noise` probability of a random admissible action instead (the record still teaches the
oracle's action from the state reached), so the records cover recovering from mistakes, which a
policy that makes them needs.

Episodes are `(task_id, seed)` pairs (the env's state is a function of them); a pair belongs to the
eval split iff a stable hash of it falls below `eval_fraction`, so training never sees an eval house.

`context="map"` (MAP, `agents/map.py`): every turn prompt of an episode, SFT record or RL / eval turn,
carries the episode's house map (`context_block(task_id, seed)`) first in its skill block; other skill
blocks (SkillC, D2Skill, Skill1) follow it on the next line. `skill1=True` (`agents/skill1.py`): the
records also teach Skill1's query / rerank / distil formats, and half of the episodes' turn records
show the oracle's skill for the episode's task type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxrl_llm.agents.prompt import PromptBuilder, Turn
from jaxrl_llm.envs.task import Problem, check_split, make_rng, stable_hash
from jaxrl_llm.envs.text_env import extract_action

__all__ = ["AgentTask", "is_agent_task"]

_HASH_BUCKETS = 1_000_000
_MAX_DRAWS = 100_000
_TASK_ID_RANGE = 1 << 20
_SEED_RANGE = 1 << 30
CONTEXTS = ("", "map")
# Whose actions the warm-up records teach: the env's shortest plan from full knowledge ("full"), or a
# player that acts on what it has observed ("explorer": TextHouse's info["explorer_action"]).
ORACLES = {"full": "oracle_action", "explorer": "explorer_action"}
_MAP_CACHE = 4096  # maps kept per task (an RL step needs prompts_per_step of them)
SEGMENT_KEY = "segment"  # a Skill1 segment record's metadata key ("query", "select", "distill")


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
      context: "" or "map" (module docstring; TextHouse only).
      map_budget, map_patience: the MAP explorer's env-step budget E and idle-step patience w.
      skill1: add Skill1's segment records (module docstring).
      oracle: whose actions the warm-up records teach (`ORACLES`): "full", the env's shortest plan,
        which walks straight to hidden objects; "explorer", TextHouse's `explorer_action`, which
        searches unseen storage first, so every action follows from the prompt's observations.
    """

    name = "agent"
    reward_names = ("success",)

    def __init__(self, env: str = "texthouse", env_kwargs: Mapping[str, Any] | None = None, *,
                 history_turns: int = 2, show_actions: bool = True, max_actions: int = 0,
                 action_format: str = "plain", instruction: str = PromptBuilder.instruction,
                 oracle_noise: float = 0.3, eval_fraction: float = 0.1, task_types: tuple = (), context: str = "",
                 map_budget: int = 30, map_patience: int = 3, skill1: bool = False, skill_fraction: float = 0.0,
                 skills: str = "builtin", oracle: str = "full"):
        from jaxrl_llm.envs.env_registry import make_env  # noqa: PLC0415 (the registry imports the envs)

        if not 0.0 <= float(oracle_noise) < 1.0:
            raise ValueError(f"data.task_kwargs.oracle_noise must be in [0, 1); got {oracle_noise}")
        if not 0.0 < float(eval_fraction) < 1.0:
            raise ValueError(f"data.task_kwargs.eval_fraction must be in (0, 1); got {eval_fraction}")
        if not 0.0 <= float(skill_fraction) <= 1.0:
            raise ValueError(f"data.task_kwargs.skill_fraction must be in [0, 1]; got {skill_fraction}")
        self.skill_fraction = float(skill_fraction)
        self.skills = str(skills)
        self.env_name = str(env)
        self.env_kwargs = dict(env_kwargs or {})
        self.builder = PromptBuilder(instruction=str(instruction), history_turns=int(history_turns),
                                     show_actions=bool(show_actions), max_actions=int(max_actions),
                                     action_format=str(action_format))
        self.oracle_noise = float(oracle_noise)
        if oracle not in ORACLES:
            raise ValueError(f"data.task_kwargs.oracle must be one of {sorted(ORACLES)}; got {oracle!r}")
        self.oracle_key = ORACLES[oracle]
        self.eval_fraction = float(eval_fraction)
        self._make = lambda: make_env(self.env_name, self.env_kwargs)
        probe = self._make()
        self.task_types: tuple[str, ...] = tuple(probe.task_types)
        unknown = sorted(set(task_types) - set(self.task_types))
        if unknown:
            raise ValueError(f"data.task_kwargs.task_types {unknown} are not task types of env {self.env_name!r}; "
                             f"it has {list(self.task_types)}")
        self.allowed_types = tuple(task_types) or self.task_types
        # Only the optional key needs a probe episode; every env gives "oracle_action".
        if oracle != "full" and self.oracle_key not in probe.reset([0], [0])[1][0]:
            raise ValueError(f"data.task_kwargs.oracle={oracle!r} reads info[{self.oracle_key!r}], which env "
                             f"{self.env_name!r} does not give")
        self.max_steps = int(probe.max_steps)
        if context not in CONTEXTS:
            raise ValueError(f"data.task_kwargs.context must be one of {CONTEXTS}; got {context!r}")
        if context == "map" and probe.name != "texthouse":
            raise ValueError(f"data.task_kwargs.context='map' reads TextHouse's texts (agents/map.py); env "
                             f"{self.env_name!r} is {probe.name!r}")
        if int(map_budget) < 1 or int(map_patience) < 1:
            raise ValueError(f"data.task_kwargs.map_budget and map_patience must be >= 1; got {map_budget}, "
                             f"{map_patience}")
        self.context, self.map_budget, self.map_patience = str(context), int(map_budget), int(map_patience)
        self.skill1 = bool(skill1)
        self._maps: dict[tuple[int, int], tuple[str, Any]] = {}

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

    # --- MAP context --------------------------------------------------------------------------------
    def _explore(self, task_id: int, seed: int) -> tuple[str, Any]:
        from jaxrl_llm.agents.map import house_map  # noqa: PLC0415
        from jaxrl_llm.envs.env_registry import env_factory  # noqa: PLC0415

        key = (int(task_id), int(seed))
        if key not in self._maps:
            if len(self._maps) >= _MAP_CACHE:
                self._maps.clear()
            # A fresh copy of the episode's house with room for the whole exploration budget.
            kwargs = {**self.env_kwargs, "max_steps": max(self.max_steps, self.map_budget + 1)}
            self._maps[key] = house_map(env_factory(self.env_name)(**kwargs), *key, budget=self.map_budget,
                                        patience=self.map_patience)
        return self._maps[key]

    def context_block(self, task_id: int, seed: int) -> str:
        """The episode's context block: its house map with `context="map"`, else "" (cached per episode)."""
        return self._explore(task_id, seed)[0] if self.context == "map" else ""

    def exploration(self, task_id: int, seed: int) -> Any:
        """The MAP explorer's `agents.map.Exploration` of the episode (its `steps`: env steps spent)."""
        return self._explore(task_id, seed)[1]

    def _oracle_plans(self, episodes: list[tuple[int, int]]) -> list[list[str]]:
        """The noise-free oracle's actions of each episode (Skill1's distil targets)."""
        env = self.make_env()
        _, infos = env.reset([t for t, _ in episodes], [s for _, s in episodes])
        plans: list[list[str]] = [[] for _ in episodes]
        for _ in range(self.max_steps):
            actions = [str(info.get("oracle_action") or "") for info in infos]
            if not any(actions):
                break
            for i, a in enumerate(actions):
                if a:
                    plans[i].append(a)
            _, _, _, infos = env.step(actions)
        return plans

    # --- oracle turn records (SFT) ----------------------------------------------------------------
    def oracle_turns(self, episodes: list[tuple[int, int]], rng: np.random.Generator) -> list[Problem]:
        """Every turn of each episode played by the noisy oracle, as a `Problem` whose reference is the
        oracle's action at that state (metadata: task_type, task_id, seed, turn)."""
        env = self.make_env()
        obs, infos = env.reset([t for t, _ in episodes], [s for _, s in episodes])
        history: list[list] = [[] for _ in episodes]
        done = np.zeros(len(episodes), bool)
        out: list[Problem] = []
        blocks = [self.context_block(t, s) for t, s in episodes]
        if self.skill_fraction > 0:
            # A share of the warm-up episodes reads its type's skill text (the skill library SkillC
            # injects), so skill-injected RL episodes are in the policy's distribution.
            library = self.skill_library()
            for i, info in enumerate(infos):
                if rng.random() < self.skill_fraction:
                    blocks[i] = "\n".join(b for b in (blocks[i], library.text_for(info["task_type"])) if b)
        if self.skill1:
            from jaxrl_llm.agents.skill1 import oracle_skill, parse_skill, segment_records, skill_text  # noqa: PLC0415

            plans = self._oracle_plans(episodes)
            skills = [oracle_skill(info["goal"], plan) for info, plan in zip(infos, plans)]
            typed = [(info["task_type"], sk) for info, sk in zip(infos, skills)]
            for i, info in enumerate(infos):
                for segment, prompt, target in segment_records(info["goal"], info["task_type"], plans[i], typed, rng):
                    out.append(Problem(prompt=prompt, reference=target,
                                       metadata={"task_type": info["task_type"], "task_id": episodes[i][0],
                                                 "seed": episodes[i][1], SEGMENT_KEY: segment}))
                if rng.random() < 0.5:  # the other half learns to act without a skill (an empty bank)
                    blocks[i] = "\n".join(b for b in (blocks[i], skill_text(*parse_skill(skills[i]))) if b)

        for turn in range(self.max_steps):
            if done.all():
                break
            actions = []
            for i, info in enumerate(infos):
                oracle = info.get(self.oracle_key)
                if done[i] or oracle is None:
                    actions.append("")
                    continue
                prompt = self.builder.render(info["goal"], obs[i], history=history[i],
                                             admissible=info["admissible_actions"], skill_block=blocks[i])
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

    def skill_library(self) -> Any:
        """The skill library of `skill_fraction`'s records (`skills`: 'builtin' or a JSON file)."""
        from jaxrl_llm.agents.skills import skill_library_for  # noqa: PLC0415

        return skill_library_for(self.skills, self.env_name)

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
        if self.skill1:
            from jaxrl_llm.agents.skill1 import distil_prompt  # noqa: PLC0415

            texts.append(distil_prompt("", [], False))  # oracle records only show successes
        if self.env_name in BUILTIN_SKILL_ENVS:
            lib = builtin_skill_library(self.env_name)
            texts += [*lib.general, *lib.by_type.values()]
        return texts

    def sft_target(self, problem: Problem) -> str:
        if SEGMENT_KEY in problem.metadata:  # Skill1's query / rerank / distil text, as the policy writes it
            return problem.reference
        return self.builder.response(problem.reference)

    def score(self, problem: Problem, response: str) -> float:
        """1 if the response's action is the oracle's (the SFT records' turn accuracy); for a Skill1
        segment record, if the response text is the target (spaces normalised)."""
        if SEGMENT_KEY in problem.metadata:
            return float(" ".join(response.split()) == problem.reference)
        return float((extract_action(response) or "") == problem.reference)
