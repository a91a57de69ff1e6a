"""Naive GRPO + OPSD on ArithChain: configs/sdar_chain.py with SDAR's sigmoid gate off.

    python -m jaxrl_llm.cli rl --config configs/opsd_chain.py

The same teacher signal and coefficient, but each token's weight is the teacher-student gap itself
(`rl.objective_kwargs.gate=none`), so tokens the hinted teacher finds less likely are pushed down.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdar_chain.py"))
    c.output_dir = "runs/opsd_chain"
    c.rl.objective_kwargs.gate = "none"
    return c
