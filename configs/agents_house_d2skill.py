"""D2Skill (arXiv 2603.28716) on TextHouse: a task- and step-level skill bank that grows by reflection on
failed episodes, retrieved by similarity and utility, credited against the group's skill-free half.

    python -m jaxrl_llm.cli rl --config configs/agents_house_d2skill.py

The first half of each group sees the retrieved skills ("Task-level experience" once per episode,
"Step-level experience" every turn); utilities are EMAs of the success over the skill-free half's
baseline, the intrinsic reward kappa (s_i - b_g) joins the episode reward, the CPU reflector writes a
step skill from the first action that left the oracle's plan, and the bank (saved as
`<output_dir>/skill_bank.json` every step) is evicted at evaluation steps. `eval/accuracy` is
skill-free success; `eval/success_with_skills` uses the bank.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents_house_grpo.py"))
    c.output_dir = "runs/agents_house_d2skill"
    c.agent.d2skill.enabled = True
    return c
