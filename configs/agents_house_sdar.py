"""SDAR (arXiv 2605.15155), multi-turn: GRPO on TextHouse plus the sigmoid-gated self-distillation term,
the teacher being the same actor reading each turn behind the privileged skill block.

    python -m jaxrl_llm.cli rl --config configs/agents_house_sdar.py

Teacher prompt = "[Privileged Skill Information]\\n" + general skills + the task type's skill + "\\n\\n" +
the turn prompt (agents/prompt.py: privileged_prompt), response tokens unchanged; the teacher runs at
the rollout parameters without gradient. `warmdown_steps` > 0 decays the term's weight linearly to 0
(the SkillSD variant).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents_house_grpo.py"))
    c.output_dir = "runs/agents_house_sdar"
    c.agent.skills = "builtin"
    c.rl.objective = "sdar"
    # kl_coef 0: the released script's KL to a reference needs one more forward per step on CPU.
    c.rl.objective_kwargs = ConfigDict({"sdar_coef": 0.01, "gate_beta": 5.0, "kl_coef": 0.0, "warmdown_steps": 0})
    c.rl.teacher.source = "privileged"
    c.rl.teacher.max_prompt_tokens = 256  # the turn prompt plus the skill block (left-truncated past this)
    return c
