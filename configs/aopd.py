"""AOPD (arXiv 2605.06387): policy gradient where the teacher endorses a token, a local KL elsewhere.

    python -m jaxrl_llm.cli sft --config configs/sft_tiny.py --config.export.hf_dir=runs/teacher_hf
    python -m jaxrl_llm.cli rl --config configs/aopd.py --config.rl.teacher.source=hf:runs/teacher_hf

Tokens with A_t = log pi_T - log pi_old > 0 get the clipped PG term; the others the forward KL to
the teacher on its top-k support (`rl.teacher.topk`, computed chunk-wise: no [B, T, V] teacher logits).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/aopd"
    c.rl.objective = "aopd"
    c.rl.objective_kwargs = ConfigDict({"clip": 0.2, "beta_f": 1.0, "kl_direction": "forward"})
    c.rl.teacher.source = "hf:runs/teacher_hf"
    c.rl.teacher.topk = 32
    c.rl.reuse_epochs = 1
    return c
