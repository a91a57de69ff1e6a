"""QaRL / TBPO on long responses: int4 rollouts on ArithChain, a rollout-aligned learner, the trust-band loss.

    python -m jaxrl_llm.cli rl --config configs/qarl_chain.py
    python -m jaxrl_llm.cli rl --config configs/qarl_chain.py --config.rl.qarl=false          # naive learner
    python -m jaxrl_llm.cli rl --config configs/qarl_chain.py --config.rl.rollout_quant="" \\
        --config.rl.qarl=false --config.rl.objective=grpo                                     # fp32 reference

The quickstart's model on 4-operand, 1-digit +/- chains solved step by step
(`"3+7=10;10-5=5;5+2=7;#7"`, 23 characters on average, at most 30): long enough for
quantization error to compound along the response, short enough for the warm-up to learn the
arithmetic (0.76-0.77 sampled accuracy after 800 steps; 2-digit chains,
`data.task_kwargs.num_digits=2`, give about 34 characters but only 3-5% accuracy, too few
rewarded samples for RL to move). `rl.steps` is the quickstart's 40; the experiments in
benchmarks/RESULTS.md ran 8-20 (`tools/exp_qarl_chain.py`).
Besides `rollout/mismatch_abs_logp` (learner vs sampler log-prob gap) the run logs
`rollout/error_token_rate` and `eval/error_token_rate`, the share of response tokens after a
response leaves the chain grammar (`envs/error_tokens.py`), and `*/garbled_frac`.
"""

import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # The RL quickstart (configs/quickstart.py) with the chain task and the lengths it needs.
    c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
    c.output_dir = "runs/qarl_chain"
    c.data.task = "arith_chain"
    c.data.task_kwargs = ConfigDict({"num_operands": 4, "num_digits": 1})
    c.data.seq_len = 64  # bos + prompt (<= 8) + worked solution (<= 30) + eos; 2-digit chains need 12 + 41
    # Warm-up: 800 SFT steps on worked solutions, the schedule decayed to its end. The format is
    # learnt (7-8% error tokens held out) and the arithmetic (0.76-0.77 sampled accuracy).
    c.sft.train.steps = 800
    c.sft.train.log_every = 100
    c.sft.optimizer.decay_steps = 0  # 0: over sft.train.steps
    c.rl.max_new_tokens = 48  # the longest worked solution (41) + eos, with spare for garbled tails
    c.rl.prompts_per_step = 16  # 16 x 8 = 128 rows of up to 48 tokens: a CPU-sized step
    c.rl.objective = "tbpo"
    c.rl.objective_kwargs = ConfigDict()
    c.rl.rollout_quant = "int4"
    c.rl.qarl = True
    # K = 2 passes per batch without the DGG gate: the trust band (TBPO) or the clip (GRPO) is the
    # only brake on reuse, so naive / aligned learners differ only in the log-probs they compute.
    c.rl.reuse_epochs = 2
    c.rl.dgg.enabled = False
    c.rl.optimizer.warmup_steps = 4  # a short ramp: short runs of 2 optimizer steps per RL step
    # 1e-4, not the quickstart's 3e-4: with 16 prompts a step and this ramp, 3e-4 collapsed every
    # variant, fp32 GRPO included (0.77 -> 0.60-0.68 held-out in 10 steps; benchmarks/RESULTS.md).
    c.rl.optimizer.learning_rate = 1e-4
    c.eval.num_problems = 100
    c.eval.batch_size = 100
    c.eval.samples_per_prompt = 4
    c.eval.max_new_tokens = 48
    return c
