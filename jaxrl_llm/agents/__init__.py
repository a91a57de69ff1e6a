"""Skill machinery for multi-turn agent RL (host-side Python).

- `skills`: fixed skill libraries per environment task type (SkillC skill blocks, SDAR privileged
  context): `SkillLibrary`, `load_skill_library`, `builtin_skill_library`.
- `skill_bank`: D2Skill's learned dual-granularity skill bank (retrieval, credit, reflection,
  eviction): `SkillBank`, `OracleReflector`, `reflect_step` and the pure scoring functions.
- `map`: MAP's goal-free house explorer and its map block: `explore`, `render_map`, `house_map`.
- `skill1`: Skill1's bank, segment prompts and credits: `Skill1Bank`, `skill1_update` and the pure
  credit functions.

The SkillC curriculum itself is pure JAX and lives in `jaxrl_llm.objectives.skillc`.
"""

from jaxrl_llm.agents.skill_bank import (POOLS, GroupCredit, OracleReflector, Reflection, Reflector, Skill, SkillBank,
                                         Trajectory, Turn, ema_update, embed_text, evict, eviction_keys,
                                         group_credits, intrinsic_rewards, reflect_step, retrieval_scores, retrieve,
                                         select_skills, skill_split, to_ascii)
from jaxrl_llm.agents.map import Exploration, explore, house_map, render_map
from jaxrl_llm.agents.skill1 import (Skill1Bank, Skill1Episodes, Skill1Step, distillation_credit, selection_credit,
                                     skill1_segment_rewards, skill1_update, skill_utility_update)
from jaxrl_llm.agents.skills import BUILTIN_SKILL_ENVS, SkillLibrary, builtin_skill_library, load_skill_library

__all__ = [
    "BUILTIN_SKILL_ENVS", "POOLS", "GroupCredit", "OracleReflector", "Reflection", "Reflector", "Skill", "SkillBank",
    "SkillLibrary", "Trajectory", "Turn", "builtin_skill_library", "ema_update", "embed_text", "evict",
    "eviction_keys", "group_credits", "intrinsic_rewards", "load_skill_library", "reflect_step", "retrieval_scores",
    "retrieve", "select_skills", "skill_split", "to_ascii",
    "Exploration", "explore", "house_map", "render_map",
    "Skill1Bank", "Skill1Episodes", "Skill1Step", "distillation_credit", "selection_credit", "skill1_segment_rewards",
    "skill1_update", "skill_utility_update",
]
