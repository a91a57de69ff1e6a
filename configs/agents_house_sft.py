"""The cold-start SFT of the agent recipes on its own: oracle turn records of TextHouse (noisy oracle
episodes, each turn's prompt with the oracle's action), the same model, data and schedule as the
warm-up of configs/agents_house_grpo.py. The greedy eval is turn-level action accuracy.

    python -m jaxrl_llm.cli sft --config configs/agents_house_sft.py

Start an RL run from it with `--config.model.init_from=orbax:runs/agents_house_sft --config.sft.train.steps=0`.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file
from jaxrl_llm.train.rl import sft_warmup_config


def get_config() -> ConfigDict:
    rl = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "agents_house_grpo.py"))
    c = sft_warmup_config(rl)  # the warm-up's own config: model, data, train, optimizer sections
    c.output_dir = "runs/agents_house_sft"
    c.eval.num_problems = 200
    c.checkpoint.every = 0
    return c
