"""Verifiable tasks, rewards and multi-turn text environments (host-side Python, no JAX).

- `task`: the `VerifiableTask` / `TrainerTask` interfaces, `Problem`, and `DrawnTask` (a task from
  `draw` and `score`).
- `registry`: `register_task` / `build_task`: `data.task` names a registered task.
- `arithmetic`: built-in arithmetic tasks with graded difficulty and disjoint splits.
- `math_answer`: `\\boxed{}` / final-number extraction and exact numeric answer checking.
- `math_task`: a verifiable task over in-memory (question, answer) records.
- `rewards`: correctness, format and overlong-length rewards, `[B, R]` reward vectors.
- `thinking`: `</think>` split, no-think detection, degenerate repetition, AutoThink base reward.
- `autothink_mix`: easy and hard +/- chains behind AutoThink's ellipsis prompt (think or not).
- `autothink_reward`: the `autothink` scorer (base reward + staged batch shaping, mode metrics).
- `text_env`: the multi-turn `TextEnv` protocol and `BatchedTextEnv`.
- `text_shop`: TextShop, a small WebShop-like environment.
- `text_house`: TextHouse, a small ALFWorld-like household environment.
- `env_registry`: `register_env` / `make_env`: a name (or "package.module:Class") -> a batched env.
"""

from jaxrl_llm.envs.arithmetic import ARITHMETIC_LEVELS, ArithmeticLevel, ArithmeticTask
from jaxrl_llm.envs.autothink_mix import AutoThinkMixTask
from jaxrl_llm.envs.autothink_reward import autothink_scorer  # registers the `autothink` scorer
from jaxrl_llm.envs.math_answer import check_answer, extract_answer, normalize_answer
from jaxrl_llm.envs.math_task import MathAnswerTask
from jaxrl_llm.envs.rewards import (
    DEFAULT_REWARD_SPEC,
    RewardSpec,
    combine_rewards,
    conjunctive_reward,
    correctness_rewards,
    format_rewards,
    overlong_penalty,
    reward_vectors,
    score_batch,
)
from jaxrl_llm.envs.registry import build_task, register_task
from jaxrl_llm.envs.task import DrawnTask, Problem, TrainerTask, VerifiableTask
from jaxrl_llm.envs.text_env import BatchedTextEnv, TextEnv, extract_action
from jaxrl_llm.envs.text_shop import TextShop
from jaxrl_llm.envs.text_house import TextHouse
from jaxrl_llm.envs.env_registry import env_names, make_env, register_env

__all__ = [
    "ARITHMETIC_LEVELS",
    "ArithmeticLevel",
    "ArithmeticTask",
    "AutoThinkMixTask",
    "BatchedTextEnv",
    "DEFAULT_REWARD_SPEC",
    "DrawnTask",
    "MathAnswerTask",
    "Problem",
    "RewardSpec",
    "TextEnv",
    "TextHouse",
    "TextShop",
    "TrainerTask",
    "VerifiableTask",
    "autothink_scorer",
    "check_answer",
    "build_task",
    "combine_rewards",
    "conjunctive_reward",
    "correctness_rewards",
    "extract_action",
    "extract_answer",
    "env_names",
    "format_rewards",
    "normalize_answer",
    "make_env",
    "overlong_penalty",
    "register_env",
    "register_task",
    "reward_vectors",
    "score_batch",
]
