"""PRM head on ArithChain: a tiny decoder plus a scalar step head learns which steps are right.

    python -m jaxrl_llm.cli prm --config configs/prm_arith_chain.py
    python -m jaxrl_llm.cli prm --config configs/prm_arith_chain.py --config.prm.labels=first_error \
        --config.output_dir=runs/prm_arith_chain_fe
    python -m jaxrl_llm.cli prm --config configs/prm_arith_chain.py --config.model.init_from=orbax:runs/bcpg_offline/sft \
        --config.prm.source=policy --config.prm.train_trunk=false   # head on a frozen policy, its own samples

Training responses are ArithChain worked solutions with one injected error (error propagation),
a share of them fixed by the next step (cessation); labels are `analysis.prm.label_steps` of the
truth tags (`prm.labels`). Writes `metrics.jsonl`, `checkpoints/`, `prm_head.json` (what the
"prm_head" step scorer loads: `configs/bcpg_offline_prm.py`) and `prm_report.json` (step
P/R/F1, AUC and PRM@4/8 on held-out traces) under `output_dir`.
"""

import copy
import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Model, mesh, multi-host and optimizer sections are the SFT quickstart's (configs/sft_tiny.py).
    base = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_tiny.py"))
    c = ConfigDict()
    c.seed = 0
    c.output_dir = "runs/prm_arith_chain"
    for section in ("model", "mesh", "distributed", "data", "optimizer"):
        c[section] = copy.deepcopy(base[section])
    # The task of configs/bcpg_offline.py: 1-digit chains of 3 or 4 operands (2 or 3 steps).
    c.data.task = "arith_chain"
    c.data.task_kwargs = ConfigDict({"num_operands": (3, 4), "num_digits": 1})
    c.data.seq_len = 48  # bos + prompt (8) + a response with an injected error (<= 36 characters)

    c.prm = ConfigDict()
    c.prm.labels = "propagation"  # propagation (error propagation + cessation) | first_error | monte_carlo
    c.prm.source = "traces"  # traces (injected errors) | policy (samples of the trunk, model.init_from)
    c.prm.train_trunk = True  # False: the decoder is frozen, only the head (w, b) trains
    c.prm.num_train = 4000  # training problems
    c.prm.samples_per_prompt = 1  # responses per training problem
    c.prm.max_steps = 8  # step slots per training row (steps past it carry no loss)
    c.prm.temperature = 1.0  # policy samples and Monte-Carlo completions
    c.prm.max_new_tokens = 40
    c.prm.mc_samples = 8  # Monte-Carlo labels: completions per prefix (the paper's 8)
    c.prm.traces = ConfigDict()
    c.prm.traces.error_prob = 0.6  # share of traces with one wrong step
    c.prm.traces.fix_prob = 0.3  # share of those whose next step restarts from the true value
    c.prm.traces.max_delta = 9  # the wrong result is off by 1..max_delta
    c.prm.head_path = ""  # a finished prm run's output_dir: evaluate it, no training
    c.prm.eval = ConfigDict()
    c.prm.eval.num_problems = 200  # held-out problems, max(n) responses each
    c.prm.eval.n = (4, 8)  # PRM@N
    c.prm.eval.threshold = 0.5  # a step is predicted correct iff its score >= threshold
    c.prm.eval.output = ""  # "" = <output_dir>/prm_report.json

    c.train = ConfigDict()
    c.train.steps = 600
    c.train.batch_size = 64
    c.train.log_every = 20
    c.train.progress_bar = True
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 50

    c.checkpoint = ConfigDict()
    c.checkpoint.every = 0  # 0: only at the end
    c.checkpoint.max_to_keep = 1
    c.checkpoint.resume = False
    return c
