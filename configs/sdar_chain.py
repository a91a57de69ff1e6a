"""SDAR on ArithChain: the self-teacher reads each response after the first worked step.

    python -m jaxrl_llm.cli rl --config configs/sdar_chain.py

configs/grpo_chain.py (task, hint-reading warm-up) with configs/sdar.py's objective: dual-clip GRPO +
KL 0.01 to the post-warm-up policy + sdar_coef x the gated self-distillation term
(`sdar/gate_mean` is the mean gate). `rl.objective_kwargs.gate=none` is naive GRPO + OPSD
(configs/opsd_chain.py).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_chain.py"))
    c.output_dir = "runs/sdar_chain"
    c.rl.objective = "sdar"
    # The spec's range is sdar_coef 0.01 (released scripts) to 0.1 (code default / paper), beta 5 to 10.
    c.rl.objective_kwargs = ConfigDict({"sdar_coef": 0.1, "gate_beta": 5.0, "kl_coef": 0.01, "gate": "sigmoid"})
    c.rl.teacher.source = "privileged"
    return c
