"""RL quickstart on CPU: a short SFT warm-up of a tiny decoder on 2-digit addition, then GRPO with
DGG-gated sample reuse (K = 4). Prints held-out accuracy (sampled and greedy) before and after RL.

    python -m jaxrl_llm.cli rl --config configs/quickstart.py
    python -m jaxrl_llm.cli rl --config configs/quickstart.py --config.rl.steps=40 --config.output_dir=runs/q

Writes under `output_dir`: `sft/` (the warm-up's metrics and checkpoint), `metrics.jsonl` (one line
per RL step; `eval/accuracy` at step 0, every `eval.every` steps and at the end), `tensorboard/`,
`rl.png` (reward, accuracy, gate events vs step) and `checkpoints/`.
"""

import copy
import os

from ml_collections import ConfigDict

from jaxrl_llm.cli import load_config_file


def get_config() -> ConfigDict:
    # Model, mesh, multi-host and task sections are the SFT quickstart's (configs/sft_tiny.py).
    base = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_tiny.py"))
    c = ConfigDict()
    c.seed = 0
    c.output_dir = "runs/quickstart"
    for section in ("model", "mesh", "distributed", "data"):
        c[section] = copy.deepcopy(base[section])

    # SFT warm-up (0 steps: start RL from the random init). The first 450 steps of a 1000-step
    # schedule, stopped while the learning rate is still high: every seed has the answer format and
    # a middling accuracy (about 13-40% sampled, 20-55% greedy), so RL has room to help. A warm-up
    # decayed to its end instead is all-or-nothing per seed (this tiny model learns carries abruptly).
    # The SFT config's own `train` and `optimizer` sections (configs/sft_tiny.py), embedded as is:
    # the warm-up runs the SFT trainer with them on this config's model, mesh and data.
    c.sft = ConfigDict()
    c.sft.train = copy.deepcopy(base.train)
    c.sft.train.steps = 450  # 0: no warm-up
    c.sft.train.log_every = 20
    c.sft.optimizer = copy.deepcopy(base.optimizer)
    c.sft.optimizer.decay_steps = 1000  # > steps: the schedule is cut off at steps

    c.rl = ConfigDict()
    c.rl.steps = 40
    c.rl.prompts_per_step = 128  # many prompts per step: a low-noise gradient generalises to new prompts
    c.rl.samples_per_prompt = 8  # group size n
    c.rl.max_new_tokens = 5  # 3 answer digits + eos, with one spare
    c.rl.temperature = 1.0
    c.rl.top_k = 0
    c.rl.top_p = 1.0
    c.rl.objective = "grpo"  # any registered objective: grpo, dapo, gspo, tbpo, sdar, opd, aopd, ...
    # Passed to the objective (its own defaults otherwise, e.g. clip_low=0.2 for grpo); any of its
    # hyperparameters can be added from the command line: --config.rl.objective_kwargs.clip_low=0.1
    # (`python -m jaxrl_llm.cli rl --help` lists them). Checked against the objective before anything runs.
    c.rl.objective_kwargs = ConfigDict()  # e.g. {"entropy_coef": 0.01}: the objective's own defaults otherwise
    c.rl.advantage = "grpo"  # any registered estimator: grpo, drgrpo, rloo, gae, rdpo, skillc
    c.rl.advantage_kwargs = ConfigDict()
    # Roles of the step (docs/rl.md). Scorers: one gives rewards [B], several give [B, R] (rdpo).
    c.rl.scorers = ("task",)  # registered scorers: task, eos, brevity
    c.rl.teacher = ConfigDict()
    c.rl.teacher.source = ""  # "" (none), "privileged" (the actor on the task's privileged prompt), "hf:PATH"
    c.rl.teacher.topk = 0  # > 0: the teacher's top-k log-probs per token too (aopd, opd_full)
    c.rl.teacher.max_prompt_tokens = 0  # privileged prompts are left-truncated to this many tokens (0: no limit)
    c.rl.critic = ConfigDict()
    c.rl.critic.enabled = False  # a value head on the decoder: values / old_values / returns (PPO with gae)
    c.rl.critic.coef = 0.5  # weight of the clipped value loss added to the objective
    c.rl.critic.clip = 0.2
    c.rl.condition = ConfigDict()
    c.rl.condition.source = ""  # "privileged": a share of each group sees the privileged prompt (cond = 1)
    c.rl.condition.fraction = 0.5
    c.rl.dynamic_sampling = ConfigDict()
    c.rl.dynamic_sampling.enabled = False  # DAPO: refill the step with groups whose rewards differ
    c.rl.dynamic_sampling.max_rounds = 4  # refill draws of rl.prompts_per_step fresh prompts at most
    c.rl.overlong = ConfigDict()
    c.rl.overlong.cache_length = 0  # > 0: DAPO's soft overlong penalty over the last this many tokens
    c.rl.overlong.filter = False  # truncated responses (no eos) leave the loss
    c.rl.step_labels = ConfigDict()
    c.rl.step_labels.enabled = False  # step_id / step_ok (bcpg_nsa): the task's step checker, else the reference prefix
    c.rl.step_labels.delimiter = ""  # a step ends at a token containing this ("" = every token)
    # A task with its own step checker (task.step_labels, e.g. arith_chain) labels the steps instead
    # of the reference-prefix rule. PRM-style consensus hook: a step scorer registered with
    # envs.step_labels.register_step_scorer must also score the step >= prm_threshold ("" = off;
    # "prm_head": the trained PRM head of train/prm_run.py, configs/bcpg_offline_prm.py).
    c.rl.step_labels.prm = ""
    c.rl.step_labels.prm_threshold = 0.5
    # Simulation: the first judge calls a wrong step correct with this probability (an erring judge,
    # as an LLM judge is; envs/step_labels.py: with_judge_false_positives). 0 = the checker as it is.
    c.rl.step_labels.judge_false_positive = 0.0
    # LANG's decaying prompt hints (train/rl_hints.py; the task needs hinted_prompt(problem, fraction)):
    # the first floor(p_t L) trace words after the question, p_t decaying over decay_steps (0: rl.steps),
    # and a per-resource-group switch that turns a group's hints off once EMA(alpha) of its share of
    # prompts with a positive-advantage rollout reaches tau.
    c.rl.hints = ConfigDict()
    c.rl.hints.enabled = False
    c.rl.hints.schedule = "cosine"  # or "linear"
    c.rl.hints.decay_steps = 0
    c.rl.hints.alpha = 0.9
    c.rl.hints.tau = 0.6
    c.rl.hints.switch = True  # False: hints only decay (never switched off early)
    # HeavySkill (agents/heavyskill.py, configs/heavyskill.py): per problem, K solutions from the policy (not
    # trained on), each trimmed to (context - template - reserve) // K tokens (tail + answer kept), go into a
    # deliberation prompt padded to context - reserve; the rl.samples_per_prompt samples are deliberations on it
    # and GRPO trains on them alone (reward = the task's correctness).
    c.rl.heavyskill = ConfigDict()
    c.rl.heavyskill.enabled = False
    c.rl.heavyskill.num_solutions = 8  # K parallel solutions per problem
    c.rl.heavyskill.summary_k = 4  # deliberations voted on at evaluation (tools/exp_heavyskill.py)
    c.rl.heavyskill.context = 0  # tokens a deliberation row holds (prompt + response); 0: data.seq_len
    c.rl.heavyskill.reserve = 0  # tokens kept for the deliberation itself; 0: rl.max_new_tokens
    c.rl.prompt_bucket = 0  # > 0: left-pad the batch's prompts to a multiple of this (fewer update compiles)
    c.rl.reuse_epochs = 4  # K: optimizer passes over each rollout batch
    c.rl.minibatches = 1  # optimizer steps per pass
    # Gradient accumulation: each minibatch in this many strided micro-batches (must divide its rows);
    # the same gradient as one pass for every objective, one extra forward per micro-batch.
    c.rl.micro_batches = 1
    # "auto": with one optimizer step per batch (reuse_epochs = minibatches = 1), unquantized or QaRL-aligned
    # rollouts, top_k = 0, top_p = 1 and no LoRA or critic, the sampler's log-probs are the proximal ones and
    # the learner's pass runs only on proximal_check_rows rows (for rollout/mismatch_abs_logp); "always": every row.
    c.rl.proximal_pass = "auto"
    c.rl.proximal_check_rows = 8
    # Dispatch the proximal / reference / teacher / critic passes before the host scores the rollout, so
    # scoring overlaps them (off, or with dynamic sampling whose rows depend on the rewards: after it).
    c.rl.overlap_scoring = True
    c.rl.kl_coef = 0.0  # > 0: KL to the frozen post-warm-up policy (k3); the reference pass then runs
    c.rl.logprob_chunk = 8192
    # Stop when the mean |sampler - learner| log-prob of the rollout's tokens exceeds this (nats per
    # token; 0: off). About 1e-6 in fp32 and with the QaRL-aligned learner, ~0.06 for int4 rollouts with
    # an unaligned learner: 1.0 only trips on a broken setup.
    c.rl.max_mismatch = 1.0
    c.rl.rollout_quant = ""  # "", "int8", "int4", "fp8": sample with quantized weights
    c.rl.qarl = False  # learner forward through the rollout's quantized weights (QaRL)
    c.rl.dgg = ConfigDict()
    c.rl.dgg.enabled = True
    c.rl.dgg.tau = 1.0
    c.rl.dgg.window = 20
    c.rl.dgg.statistic = "delta"
    c.rl.optimizer = ConfigDict()
    c.rl.optimizer.learning_rate = 3e-4
    # Adam's first steps move every weight by about the learning rate whatever the gradient: ramp
    # up over 5 RL steps (20 optimizer steps) so the first batches do not knock the policy over.
    c.rl.optimizer.warmup_steps = 20
    c.rl.optimizer.decay_steps = 0  # 0: rl.steps * reuse_epochs * minibatches optimizer steps
    c.rl.optimizer.end_learning_rate_ratio = 1.0  # constant
    c.rl.optimizer.b1 = 0.9
    c.rl.optimizer.b2 = 0.98
    c.rl.optimizer.eps = 1e-8
    c.rl.optimizer.weight_decay = 0.0
    c.rl.optimizer.grad_clip_norm = 1.0
    c.rl.optimizer.state_dtype = ""  # "" = the params' dtype, "float32": fp32 Adam moments
    c.rl.optimizer.master_weights = False  # an fp32 copy of the params in the optimizer state (bf16 params)
    c.rl.log_every = 1
    c.rl.progress_bar = True

    # Held-out evaluation: eval/accuracy = mean reward of samples_per_prompt samples per problem at
    # rl.temperature (0: greedy only); eval/greedy_accuracy = greedy exact match.
    c.eval = ConfigDict()
    c.eval.num_problems = 200
    c.eval.samples_per_prompt = 8
    c.eval.batch_size = 200
    c.eval.max_new_tokens = 5
    c.eval.every = 10  # RL steps; also at step 0 and at the end
    # With samples_per_prompt > 1 also eval/pass@n and eval/maj@n; with samples, eval/mean_length and
    # eval/truncated. The `eval` command on this config: k = samples_per_prompt at the rl.* knobs.
    c.eval.output = ""  # eval command's JSON; "" = <output_dir>/eval.json
    c.eval.checkpoint = ""  # eval command: "" = the config's model, else a run directory (latest step)

    # After training, also write the policy as a Hugging Face checkpoint (with the tokenizer files) here.
    c.export = copy.deepcopy(base.export)

    c.checkpoint = ConfigDict()
    c.checkpoint.every = 10  # RL steps; 0: only at the end
    c.checkpoint.max_to_keep = 2
    c.checkpoint.resume = False  # continue the run in output_dir (its saved config.json must agree)
    c.checkpoint.fallback = False  # resuming: if the newest checkpoint is damaged, use the newest intact one
    return c
