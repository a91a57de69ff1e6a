"""LANG (arXiv 2605.22567): decaying in-language hints, a per-resource-group switch, conjunctive reward.

    python -m jaxrl_llm.cli rl --config configs/lang.py
    python -m jaxrl_llm.cli rl --config configs/lang.py --config.rl.hints.enabled=false   # LC-GRPO
    python -m jaxrl_llm.cli rl --config configs/lang.py --config.rl.hints.enabled=false \\
        --config.rl.scorers="('lang_acc',)"                                                 # mGRPO

The task is the built-in `lang_arith` (number-word arithmetic in en/de/fr/es, vi, sw/id: the high,
mid and low resource groups). The warm-up SFT covers every language; part of the mid / low
problems reason in English there (`data.task_kwargs.sft_english_share`), the drift RL must undo.
Each RL prompt carries the first floor(p_t L) words of its in-language trace (cosine p_t over
rl.steps) until its group's switch fires; the reward is R_lc * R_format * R_acc (the task's score).
Per-group metrics: `lang/<group>/{lc,format,acc,lc_acc}` (training rollouts), `eval/lang/...`
(sampled held-out), `eval/greedy/lang/...`, `hints/{fraction,usefulness,ema,off}/<group>`.
"""

import os

from ml_collections import ConfigDict

import jaxrl_llm.envs.lang_arith  # noqa: F401  (registers the task and the `lang_acc` scorer)
from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Everything else is the RL quickstart's (configs/quickstart.py): model, mesh, optimizer, gate.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/lang"
    c.data.task = "lang_arith"
    # Operands and results 0..10 (max_value=20 is the task's full range: longer words, longer runs);
    # a 20% held-out share leaves about 170 distinct eval problems (of about 900).
    c.data.task_kwargs = ConfigDict({"max_value": 10, "sft_english_share": (0.0, 0.3, 0.7)})
    c.data.eval_fraction = 0.2
    c.data.seq_len = 72  # the longest question + warm-up target is 66 characters, plus bos / eos
    c.data.num_train = 20000
    c.sft.train.steps = 400
    c.sft.train.batch_size = 32
    c.sft.train.log_every = 50
    c.sft.optimizer.decay_steps = 800  # cut off while the learning rate is still up, as the quickstart
    c.rl.steps = 12
    c.rl.prompts_per_step = 16
    c.rl.samples_per_prompt = 8
    c.rl.max_new_tokens = 48  # the longest worked solution is 46 characters, then eos
    c.rl.reuse_epochs = 2
    c.rl.prompt_bucket = 16  # hinted prompts vary in length: a few batch shapes, a few compiles
    c.rl.optimizer.warmup_steps = 4
    c.rl.scorers = ("task",)  # the task's score is the conjunctive reward R_lc * R_format * R_acc
    c.rl.hints.enabled = True
    c.rl.hints.schedule = "cosine"
    c.rl.hints.alpha = 0.9  # not in the paper's readable text (docs/rl.md): config values
    c.rl.hints.tau = 0.6
    c.eval.num_problems = 140  # about 20 per language (drawn uniformly)
    c.eval.samples_per_prompt = 4
    c.eval.batch_size = 140
    c.eval.max_new_tokens = 48
    c.eval.every = 10
    c.checkpoint.every = 0
    return c
