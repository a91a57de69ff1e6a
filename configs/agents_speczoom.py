"""Spec-o3 on SpecZoom: a cold-start SFT on the scripted expert's zoom trajectories, then GRPO through the
agent loop, with Spec-o3's reward (acc + 0.2 * format; -1 format on any format error).

    python -m jaxrl_llm.cli rl --config configs/agents_speczoom.py

Each episode is one synthetic spectrum; the agent zooms (`zoom[lmin,lmax]` returns a 32-digit strip)
for at most 8 turns and answers `<answer>\\boxed{YES}</answer>` or `NO` (envs/spec_zoom.py). The
episode reward is the env's signed return (`agent.reward = "return"`), KL 0 as in the Spec-o3 code.
The strips are digit strings, so the tokenizer is the character one.
"""

import os

from jaxrl_llm.cli import load_config_file


def get_config():
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents_house_grpo.py"))
    c.output_dir = "runs/agents_speczoom"
    c.data.tokenizer = "char"  # a strip like 44454444... is one word: the word vocabulary cannot cover them
    c.model.vocab_size = 128
    c.data.task_kwargs.env = "speczoom"
    c.data.task_kwargs.instruction = ""
    c.data.task_kwargs.skill_fraction = 0.0  # no built-in skill library for SpecZoom
    c.data.seq_len = 512
    c.agent.max_turns = 0  # the env's 8
    c.agent.max_prompt_tokens = 448
    c.agent.reward = "return"
    c.rl.max_new_tokens = 32  # "<answer>\\boxed{YES}</answer>" is 27 characters
    c.eval.max_new_tokens = 32
    return c
