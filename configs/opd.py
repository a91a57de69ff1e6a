"""On-policy distillation (GKD arXiv 2306.13649): the student samples, a teacher scores each token.

    python -m jaxrl_llm.cli sft --config configs/sft_tiny.py --config.export.hf_dir=runs/teacher_hf
    python -m jaxrl_llm.cli rl --config configs/opd.py --config.rl.teacher.source=hf:runs/teacher_hf

The per-token advantage is log pi_T(y_t) - log pi_old(y_t) (minus the sampled reverse KL). The
teacher is any Hugging Face checkpoint with the student's tokenizer, e.g. the fully trained SFT
model exported by the first command (the student starts from the shorter quickstart warm-up).
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, warm-up, task, eval.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/opd"
    c.rl.objective = "opd"
    c.rl.objective_kwargs = ConfigDict({"kl_coef": 1.0})
    c.rl.teacher.source = "hf:runs/teacher_hf"
    c.rl.reuse_epochs = 1
    return c
