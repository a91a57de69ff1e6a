"""Pure pieces of three short-spec methods: Skill1 credits, HeavySkill aggregation, Spec-o3 reward.

- Skill1 (arXiv 2605.06130): one policy retrieves, re-ranks, uses and distils skills from a single
  outcome r in {0, 1}. Skill utility is an EMA, U_s <- (1 - 0.05) U_s + 0.05 r; selection credit
  r_sel = U_selected - mean_j U_j over the re-ranked candidates; distillation credit
  r_dist = r - max_j U_j over the retrieved skills; segment rewards exec r, select r + 0.3 r_sel,
  distil r + 0.3 r_dist (each segment then gets its own GRPO advantage).
- HeavySkill (arXiv 2605.02396): K parallel solutions, each trimmed to (ctx - prompt - reserve) / K
  tokens (tail kept, where the answer is), several deliberations over them, final answer = majority of
  the deliberations; RL on deliberations with reward = correctness.
- Spec-o3: r = acc + 0.2 * format, with format = -1 unless the response holds exactly one
  `<answer>...</answer>` whose content has a `\\boxed{c}`, and acc = 1[c = truth].
"""

from __future__ import annotations


from jaxrl_llm.envs.spec_zoom import SPECO3_FORMAT_WEIGHT, SpecO3Reward, speco3_reward  # noqa: F401
# Skill1's credits have one home, jaxrl_llm/agents/skill1.py (with the bank, segment prompts and RL glue).
from jaxrl_llm.agents.skill1 import (SKILL1_EMA_RATE, SKILL1_LAMBDA, Skill1Rewards, distillation_credit,  # noqa: F401
                                     selection_credit, skill1_segment_rewards, skill_utility_update)
# HeavySkill's pieces have one home, jaxrl_llm/agents/heavyskill.py (with its prompt layout and RL glue).
from jaxrl_llm.agents.heavyskill import (HeavySkillResult, any_correct, deliberation_advantages,  # noqa: F401
                                         heavyskill_aggregate, heavyskill_solution_budget,
                                         majority_answer_normalized, trim_to_tail)

__all__ = [
    "SKILL1_EMA_RATE",
    "SKILL1_LAMBDA",
    "SPECO3_FORMAT_WEIGHT",
    "HeavySkillResult",
    "Skill1Rewards",
    "SpecO3Reward",
    "any_correct",
    "deliberation_advantages",
    "distillation_credit",
    "heavyskill_aggregate",
    "heavyskill_solution_budget",
    "majority_answer_normalized",
    "selection_credit",
    "skill1_segment_rewards",
    "skill_utility_update",
    "speco3_reward",
    "trim_to_tail",
]



# ----------------------------------------------------------------------------- HeavySkill

# Re-exported from jaxrl_llm/agents/heavyskill.py (see the imports).


# Spec-o3's reward is re-exported from jaxrl_llm/envs/spec_zoom.py (its env; see the imports).

