"""Skill1 (arXiv 2605.06130) on TextHouse: one policy writes a skill query, re-ranks the bank's top 3,
solves the episode with the picked skill in its prompts and distils a new skill for the bank.

    python -m jaxrl_llm.cli rl --config configs/agents_house_skill1.py

The warm-up also teaches the three segment formats (`data.task_kwargs.skill1`): the query is the goal's
key words, the rerank the number of the candidate of the episode's task type, the distil
"<key words>: <the oracle plan's verbs>"; half of the turn records show that skill. RL: the execution
rows carry the episode reward r, the query rows r, the rerank rows r + 0.3 (U_picked - mean U), the
distil rows r + 0.3 (r - max U), each segment group-normalised on its own; the picked skill's utility
moves by 0.05 r. The bank starts empty and is saved as `<output_dir>/skill1_bank.json` every step.
Metrics: `skill1/bank_size`, `skill1/mean_utility`, `skill1/selection_accuracy`, `skill1/success`;
`eval/success_with_skills` runs the four segments greedily.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents_house_grpo.py"))
    c.output_dir = "runs/agents_house_skill1"
    c.data.task_kwargs.skill1 = True
    c.agent.skill1.enabled = True
    c.rl.max_new_tokens = 16  # a distilled skill ("put two bowls shelf: take, put, take, put") is ~14 tokens
    return c
