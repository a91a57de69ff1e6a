"""SDAR (arXiv 2605.15155), single-turn: GRPO plus a sigmoid-gated self-distillation term.

    python -m jaxrl_llm.cli rl --config configs/sdar.py

The teacher is the actor at rollout parameters reading each response after the task's privileged
prompt (a worked copy of the same problem); the gate g = sigmoid(beta (teacher - student)) pushes
up the student's tokens that the teacher endorses. KL to the post-warm-up policy at 0.01.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/sdar"
    c.rl.objective = "sdar"
    c.rl.objective_kwargs = ConfigDict({"sdar_coef": 0.01, "gate_beta": 5.0, "kl_coef": 0.01})
    c.rl.advantage = "grpo"
    c.rl.teacher.source = "privileged"
    return c
