"""The RL loop: prompts -> n samples each -> rewards -> advantages -> K DGG-gated updates -> log/checkpoint.

`run_rl(cfg)` (the `rl` CLI command) optionally warms a model up with the SFT trainer, then runs
`cfg.rl.steps` RL iterations. One iteration (`rl_step`):

1. the step's prompts (`prompts_for_step`, a pure function of seed and step);
2. `n` samples per prompt from `jaxrl_llm.rollout.generate` (on quantized weights if
   `rl.rollout_quant`), with a key folded from the state's RNG and the step;
3. task rewards, then advantages from the registered estimator;
4. the learner's own log-probs of the sampled tokens (`old_logprobs`; QaRL-aligned if `rl.qarl`)
   and, with `rl.kl_coef > 0`, the frozen reference's (`ref_logprobs`);
5. one jitted `rl_update` (K reuse epochs, DGG gate inside).

Every step is logged to `metrics.jsonl` / TensorBoard. Held-out evaluation runs at step 0, every
`eval.every` steps and at the end: `eval/accuracy` is the policy's accuracy, the mean reward of
`eval.samples_per_prompt` samples per held-out prompt at the rollout temperature (the quantity RL
maximises; the same key at every evaluation, so successive evaluations share their randomness),
and `eval/greedy_accuracy` is greedy exact match. Since prompts and sampling keys depend only on
(seed, step) and the state, resuming from a checkpoint replays the run exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import ConfigDict

from jaxrl_llm.envs.rewards import overlong_penalty, prefix_step_labels
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.models.hf import load_pretrained
from jaxrl_llm.objectives.registry import objective_spec
from jaxrl_llm.parallel.distributed import is_primary_process
from jaxrl_llm.parallel.init import abstract_model, split_module
from jaxrl_llm.rollout.prompts import left_pad
from jaxrl_llm.rollout.sampler import FINISH_STOP, SamplingConfig
from jaxrl_llm.train.builders import build_policy, build_tokenizer, task_from_config
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.evaluate import exact_match_accuracy, greedy_completions, make_greedy_generate
from jaxrl_llm.train.loop import drive
from jaxrl_llm.train.metrics import MetricsWriter, read_jsonl
from jaxrl_llm.train.optim import make_optimizer
from jaxrl_llm.train.rl_batch import assemble_token_arrays, response_to_token_axis, token_rewards
from jaxrl_llm.train.rl_plot import plot_rl_curves
from jaxrl_llm.train.rl_rollout import (
    build_rollout_batch,
    concat_rollouts,
    condition_flags,
    decode_responses,
    encode_prompts,
    encode_texts,
    estimate,
    pick_groups,
    privileged_prompts,
    prompts_for_step,
    sample_responses,
    score_responses,
    score_with,
    select_rows,
)
from jaxrl_llm.train.rl_update import RLUpdateOptions, make_logprob_fn, make_pass_fn, make_rl_update, rl_optimizer
from jaxrl_llm.train.roles import check_roles, needs_reference, needs_student_logits
from jaxrl_llm.train.sft_run import setup_sft, train_loop
from jaxrl_llm.train.state import TrainState, create_train_state


def update_options(cfg: Any) -> RLUpdateOptions:
    """`RLUpdateOptions` from the `rl` section (the KL coefficient joins the objective's kwargs)."""
    rl = cfg.rl
    kwargs = dict(rl.objective_kwargs)
    if float(rl.kl_coef):
        kwargs["kl_coef"] = float(rl.kl_coef)
    spec = objective_spec(rl.objective)
    supplied = spec.supplied
    hparams = {**(spec.hparams or {}), **kwargs}
    if hparams.get("loss_agg_mode") == "seq-mean-token-sum-norm" and hparams.get("norm_length") is None:
        # Dr.GRPO's constant L_norm is the longest generation, not the padded bucket's width.
        kwargs["norm_length"] = float(rl.max_new_tokens)
    return RLUpdateOptions(objective=rl.objective, objective_kwargs=tuple(sorted(kwargs.items())),
                           reuse_epochs=int(rl.reuse_epochs), minibatches=int(rl.minibatches),
                           dgg=bool(rl.dgg.enabled), dgg_tau=float(rl.dgg.tau), dgg_window=int(rl.dgg.window),
                           dgg_statistic=rl.dgg.statistic,
                           logprob_chunk=int(rl.logprob_chunk), qarl_format=rl.rollout_quant if rl.qarl else "",
                           temperature=float(rl.temperature), student_logits=needs_student_logits(rl),
                           critic=bool(rl.critic.enabled), critic_coef=float(rl.critic.coef),
                           critic_clip=float(rl.critic.clip),
                           num_groups=int(rl.prompts_per_step) if "num_groups" in supplied else 0)


def sampling_config(cfg: Any, tokenizer: Any) -> SamplingConfig:
    rl = cfg.rl
    return SamplingConfig(max_new_tokens=int(rl.max_new_tokens), temperature=float(rl.temperature),
                          top_k=int(rl.top_k), top_p=float(rl.top_p), n=int(rl.samples_per_prompt),
                          stop_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)


def check_rl_config(cfg: Any) -> None:
    """Fail before anything is built or compiled when a field is out of range or the configured roles
    cannot produce what the objective and estimator read (`train/roles.py`), naming the field."""
    rl = cfg.rl
    for name in ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens"):
        if int(rl[name]) < 1:
            raise ValueError(f"rl.{name} must be >= 1; got {rl[name]}")
    if int(rl.samples_per_prompt) < 2 and rl.advantage in ("grpo", "drgrpo", "rloo", "skillc", "rdpo"):
        raise ValueError(f"rl.samples_per_prompt must be >= 2 for the group estimator {rl.advantage!r}")
    rows = int(rl.prompts_per_step) * int(rl.samples_per_prompt)
    if rows % int(rl.minibatches):
        raise ValueError(f"rl.minibatches={rl.minibatches} must divide prompts_per_step x samples_per_prompt = {rows}")
    if int(rl.dynamic_sampling.max_rounds) < 0:
        raise ValueError(f"rl.dynamic_sampling.max_rounds must be >= 0; got {rl.dynamic_sampling.max_rounds}")
    if not 0 <= int(rl.overlong.cache_length) <= int(rl.max_new_tokens):
        raise ValueError(f"rl.overlong.cache_length must be in [0, rl.max_new_tokens={rl.max_new_tokens}]; "
                         f"got {rl.overlong.cache_length}")
    if rl.qarl and not rl.rollout_quant:
        raise ValueError("rl.qarl needs rl.rollout_quant ('int8', 'int4' or 'fp8'): the format to align with")
    if int(cfg.eval.samples_per_prompt) < 0:
        raise ValueError(f"eval.samples_per_prompt must be >= 0 (0: greedy only); got {cfg.eval.samples_per_prompt}")
    if int(rl.dgg.window) < 2:
        raise ValueError(f"rl.dgg.window must be >= 2; got {rl.dgg.window}")
    check_roles(cfg)  # the objective's and estimator's inputs and hyperparameters against the roles
    if rl.teacher.source == "privileged" or rl.condition.source == "privileged":
        privileged_prompts(task_from_config(cfg.data), [])  # the task must provide privileged prompts
    if rl.teacher.source.startswith("hf:") and not os.path.isdir(rl.teacher.source[3:]):
        raise ValueError(f"rl.teacher.source={rl.teacher.source!r}: no such checkpoint directory")
    update_options(cfg)  # validates reuse and gate fields


def policy_model_section(cfg: Any) -> ConfigDict:
    """`cfg.model`, with the value head switched on when the RL critic is (`rl.critic.enabled`)."""
    model = copy.deepcopy(cfg.model)
    if cfg.get("rl", {}).get("critic", {}).get("enabled", False):
        model.value_head = True
    return model


def sft_warmup_config(cfg: Any) -> ConfigDict:
    """The SFT trainer's config for the warm-up, written under `<output_dir>/sft`.

    `cfg.sft` embeds the SFT config's `train` and `optimizer` sections as they are; the model, mesh,
    multi-host and data sections are this run's own (the warm-up trains the policy RL starts from).
    """
    c = ConfigDict()
    c.seed = int(cfg.seed)
    c.output_dir = os.path.join(cfg.output_dir, "sft")
    for section in ("mesh", "distributed", "data"):
        c[section] = copy.deepcopy(cfg[section])
    c.model = policy_model_section(cfg)
    c.train = copy.deepcopy(cfg.sft.train)
    c.optimizer = copy.deepcopy(cfg.sft.optimizer)
    c.eval = ConfigDict({"num_problems": 0, "batch_size": int(cfg.eval.batch_size),
                         "max_new_tokens": int(cfg.eval.max_new_tokens)})
    c.checkpoint = ConfigDict({"every": 0, "max_to_keep": 1, "resume": False})
    return c


def initial_policy(cfg: Any, *, warm_up: bool) -> tuple[Any, Any, Any, Any, Any]:
    """`(mesh, parts, params, rest, params_shardings)`: after the SFT warm-up, or freshly initialised."""
    if warm_up and int(cfg.sft.train.steps) > 0:
        sft_cfg = sft_warmup_config(cfg)
        setup = setup_sft(sft_cfg)
        primary = is_primary_process()
        writer = MetricsWriter(sft_cfg.output_dir, tensorboard=False) if primary else None
        try:
            state, _ = train_loop(setup.state, setup.step_fn, setup.iterator, int(sft_cfg.train.steps),
                                  writer=writer, log_every=int(sft_cfg.train.log_every),
                                  progress=primary and bool(sft_cfg.train.progress_bar), phase="warm-up")
        finally:
            if writer is not None:
                writer.close()
        shardings = jax.tree.map(lambda x: x.sharding, state.params)
        return setup.mesh, setup.parts, state.params, setup.rest, shardings
    return build_policy(cfg, model_cfg=policy_model_section(cfg))


@dataclasses.dataclass
class Teacher:
    """A separate teacher model (`rl.teacher.source = "hf:PATH"`): its parts, params and jitted pass."""

    parts: Any
    params: Any
    rest: Any
    pass_fn: Any


@dataclasses.dataclass
class RLSetup:
    """Everything an RL run needs, built from one config."""

    cfg: Any
    mesh: Any
    tokenizer: Any
    task: Any
    parts: Any
    rest: Any
    state: TrainState
    update_fn: Any
    logprob_fn: Any
    sampling: SamplingConfig
    ref_params: Any
    eval_problems: list
    eval_generate: Any
    teacher: Teacher | None = None
    teacher_fn: Any = None  # the actor's own pass on privileged prompts (rl.teacher.source = "privileged")
    values_fn: Any = None  # the critic's pass before the update


def load_teacher(cfg: Any, mesh: Any, tokenizer: Any) -> Teacher:
    """The `hf:PATH` teacher, sharded on `mesh`; its vocabulary must cover the tokenizer's."""
    path = cfg.rl.teacher.source[3:]
    model, config = load_pretrained(path, mesh=mesh)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"rl.teacher.source={cfg.rl.teacher.source!r}: the teacher's vocab_size {config.vocab_size} "
                         f"is smaller than the tokenizer's {tokenizer.vocab_size}")
    parts = abstract_model(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    params, rest = split_module(model)
    fn = make_pass_fn(parts, chunk_size=int(cfg.rl.logprob_chunk), temperature=float(cfg.rl.temperature),
                      topk=int(cfg.rl.teacher.topk))
    return Teacher(parts, params, rest, fn)


def setup_rl(cfg: Any, *, warm_up: bool = True, initial: tuple | None = None) -> RLSetup:
    """Validate `cfg`, get the initial policy, build the RL `TrainState` and the jitted functions.

    `initial`: a ready `initial_policy(...)` tuple (its params are copied), e.g. one warm-up
    shared by several runs; otherwise `initial_policy(cfg, warm_up=warm_up)` is called. The
    reference policy (when the objective reads `ref_logp`) is the initial policy, i.e. the
    warmed-up model.
    """
    check_rl_config(cfg)
    tokenizer = build_tokenizer(cfg.data)
    task = task_from_config(cfg.data)
    if initial is None:
        mesh, parts, params, rest, shardings = initial_policy(cfg, warm_up=warm_up)
    else:
        mesh, parts, params, rest, shardings = initial
        params = jax.tree.map(lambda x: x.copy(), params)  # the new state is donated; keep the caller's
    options = update_options(cfg)
    rl = cfg.rl
    total = int(rl.steps) * options.reuse_epochs * options.minibatches
    optimizer = rl_optimizer(make_optimizer(rl.optimizer, total), options)
    ref_params = jax.tree.map(lambda x: x.copy(), params) if needs_reference(rl) else None
    state = create_train_state(params, optimizer, mesh, shardings, seed=int(cfg.seed))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    update_fn = make_rl_update(parts, optimizer, options, rest=rest, mesh=mesh, state_shardings=state_shardings)
    logprob_fn = make_logprob_fn(parts, chunk_size=options.logprob_chunk, qarl_format=options.qarl_format,
                                 temperature=options.temperature)
    eval_problems = task.eval_set(int(cfg.eval.num_problems), seed=int(cfg.seed)) if int(cfg.eval.num_problems) else []
    eval_generate = make_greedy_generate(parts, int(cfg.eval.max_new_tokens), valid_vocab_size=tokenizer.vocab_size)
    setup = RLSetup(cfg, mesh, tokenizer, task, parts, rest, state, update_fn, logprob_fn,
                    sampling_config(cfg, tokenizer), ref_params, eval_problems, eval_generate)
    if rl.teacher.source.startswith("hf:"):
        setup.teacher = load_teacher(cfg, mesh, tokenizer)
    elif rl.teacher.source == "privileged":
        setup.teacher_fn = make_pass_fn(parts, chunk_size=options.logprob_chunk, temperature=options.temperature,
                                        topk=int(rl.teacher.topk))
    if options.critic:
        setup.values_fn = make_pass_fn(parts, chunk_size=options.logprob_chunk, qarl_format=options.qarl_format,
                                       temperature=options.temperature, values=True)
    return setup


_EVAL_KEY_SALT = 2**31 - 1  # eval sampling keys never coincide with a training step's key


def evaluate_policy(setup: RLSetup, params: Any) -> dict[str, float]:
    """Held-out `eval/accuracy` (sampled, see the module docstring) and `eval/greedy_accuracy`."""
    cfg = setup.cfg
    problems = setup.eval_problems
    completions = greedy_completions(setup.eval_generate, params, setup.rest, setup.tokenizer,
                                     [p.prompt for p in problems], batch_size=int(cfg.eval.batch_size))
    greedy = exact_match_accuracy(setup.task, problems, completions)
    n = int(cfg.eval.samples_per_prompt)
    if n == 0:
        return {"eval/accuracy": greedy, "eval/greedy_accuracy": greedy}
    config = dataclasses.replace(setup.sampling, n=n, max_new_tokens=int(cfg.eval.max_new_tokens))
    key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _EVAL_KEY_SALT)
    rollout = sample_responses(setup.parts, params, setup.rest, encode_prompts(setup.tokenizer, problems), key=key,
                               config=config, quant_format=cfg.rl.rollout_quant, mesh=setup.mesh)
    rewards = score_responses(setup.task, problems, decode_responses(setup.tokenizer, rollout), n)
    return {"eval/accuracy": float(np.mean(rewards >= 1.0)), "eval/greedy_accuracy": greedy}


def rollout_prompts(setup: RLSetup, problems: list) -> tuple[list[list[int]], np.ndarray | None]:
    """Prompt ids per rollout row and the condition flags `cond [B]` (None when off).

    Without condition flags: one prompt per problem (the sampler draws `n` samples of each). With
    `rl.condition.source = "privileged"`: one prompt per sample, the privileged one where cond = 1.
    """
    rl = setup.cfg.rl
    if not rl.condition.source:
        return encode_prompts(setup.tokenizer, problems), None
    n = int(rl.samples_per_prompt)
    cond = condition_flags(len(problems), n, float(rl.condition.fraction))
    plain = encode_prompts(setup.tokenizer, problems)
    hinted = encode_texts(setup.tokenizer, privileged_prompts(setup.task, problems))
    return [hinted[i // n] if c else plain[i // n] for i, c in enumerate(cond)], cond


def teacher_pass(setup: RLSetup, state: TrainState, batch: Any, rollout: Any, problems: list) -> dict[str, Any]:
    """`teacher_logprobs [B, T]` (and `teacher_topk_idx/logp [B, T, k]`) for the sampled responses.

    "privileged": the actor at rollout parameters reads each response after the task's privileged
    prompt (re-tokenised, left-truncated to `rl.teacher.max_prompt_tokens`), response tokens
    unchanged; "hf:PATH": the separate teacher reads the same rows as the learner.
    """
    rl = setup.cfg.rl
    n = int(rl.samples_per_prompt)
    width = rollout.prompt_width
    mask = batch.loss_mask
    if setup.teacher is not None:
        out = setup.teacher.pass_fn(setup.teacher.params, setup.teacher.rest, batch.tokens, batch.positions,
                                    batch.segment_ids)
        out = {k: np.asarray(v) for k, v in out.items()}
        response = {k: v[:, width:] for k, v in out.items()}
    else:
        texts = privileged_prompts(setup.task, problems)
        ids = encode_texts(setup.tokenizer, texts, max_tokens=int(rl.teacher.max_prompt_tokens))
        pad = setup.tokenizer.pad_id
        prompt, prompt_lengths = left_pad([ids[i // n] for i in range(batch.shape[0])], pad_id=pad)
        t_width = prompt.shape[1]
        arrays = assemble_token_arrays(prompt, prompt_lengths, np.asarray(rollout.response),
                                       np.asarray(rollout.lengths), pad)
        out = setup.teacher_fn(state.params, setup.rest, arrays["tokens"], arrays["positions"], arrays["segment_ids"])
        response = {k: np.asarray(v)[:, t_width:] for k, v in out.items()}
    fields = {"teacher_logprobs": response_to_token_axis(response["logp"], width, mask)}
    if "topk_idx" in response:
        fields["teacher_topk_idx"] = response_to_token_axis(response["topk_idx"], width, mask)
        fields["teacher_topk_logp"] = response_to_token_axis(response["topk_logp"], width, mask)
    return fields


def step_label_fields(setup: RLSetup, rollout: Any, problems: list, mask: np.ndarray) -> dict[str, Any]:
    """`step_id [B, T]` (-1 off the response) and `step_ok [B, N]` from `prefix_step_labels`."""
    rl, tok = setup.cfg.rl, setup.tokenizer
    n = int(rl.samples_per_prompt)
    pieces = []
    for row, length in zip(np.asarray(rollout.response), np.asarray(rollout.lengths)):
        ids = [int(t) for t in row[:length] if int(t) != tok.eos_id]
        pieces.append([tok.decode([t]) if 0 <= t < tok.vocab_size else "\ufffd" for t in ids])
    step_id, step_ok = prefix_step_labels(pieces, [problems[i // n].reference for i in range(len(pieces))],
                                          delimiter=str(rl.step_labels.delimiter),
                                          num_steps=rollout.response.shape[1])
    return {"step_id": response_to_token_axis(step_id, rollout.prompt_width, mask, fill=-1), "step_ok": step_ok}


def mixed_groups(rewards: np.ndarray, n: int) -> np.ndarray:
    """`[G]` bool: the groups of `n` consecutive rows whose rewards are not all equal."""
    grouped = np.asarray(rewards).reshape(-1, n)
    return grouped.max(1) > grouped.min(1)


def sample_round(setup: RLSetup, state: TrainState, step: int, round_index: int) -> dict[str, Any]:
    """One draw of `rl.prompts_per_step` prompts and their samples, scored.

    Round 0 is the step's batch; refill rounds (dynamic sampling) use fresh prompts and keys.
    Returns `problems`, `rollout`, `cond` (or None), `rewards` (`[B]` or `[B, R]`, overlong
    shaping added to the first column) and `task_reward` (the first scorer's, unshaped).
    """
    cfg, rl = setup.cfg, setup.cfg.rl
    n = int(rl.samples_per_prompt)
    problems = prompts_for_step(setup.task, int(rl.prompts_per_step), int(cfg.seed), step, round_index)
    prompt_ids, cond = rollout_prompts(setup, problems)
    sampling = setup.sampling if cond is None else dataclasses.replace(setup.sampling, n=1)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
    if round_index:
        key = jax.random.fold_in(key, round_index)
    rollout = sample_responses(setup.parts, state.params, setup.rest, prompt_ids, key=key, config=sampling,
                               quant_format=rl.rollout_quant, mesh=setup.mesh)
    lengths = np.asarray(rollout.lengths)
    texts = decode_responses(setup.tokenizer, rollout)
    finished = np.asarray(rollout.finish_reasons) == FINISH_STOP
    rewards = score_with(tuple(rl.scorers), setup.task, problems, texts, n, lengths=lengths, finished=finished,
                         max_length=int(rl.max_new_tokens))
    task_reward = (rewards if rewards.ndim == 1 else rewards[:, 0]).copy()
    if int(rl.overlong.cache_length):
        # DAPO's soft overlong punishment, with L_max = rl.max_new_tokens.
        penalty = overlong_penalty(lengths, max_length=int(rl.max_new_tokens),
                                   cache_length=int(rl.overlong.cache_length)).astype(np.float32)
        rewards = rewards.copy()
        if rewards.ndim == 1:
            rewards += penalty
        else:
            rewards[:, 0] += penalty  # the shaping goes into the first scorer's column
    return {"problems": problems, "rollout": rollout, "cond": cond, "rewards": rewards, "task_reward": task_reward}


def collect_rollout_batch(setup: RLSetup, state: TrainState) -> tuple[Any, dict[str, float]]:
    """Stages 1-5 of an iteration: the `RolloutBatch` for step `state.step` and rollout metrics.

    prompts -> rollout -> scorers -> proximal / reference / teacher / critic passes -> advantages.
    """
    rl = setup.cfg.rl
    step = int(state.step)
    n_prompts, n = int(rl.prompts_per_step), int(rl.samples_per_prompt)
    t0 = time.perf_counter()
    drawn = [sample_round(setup, state, step, 0)]
    if rl.dynamic_sampling.enabled:
        # DAPO: groups whose rewards are all equal carry no advantage; draw fresh prompts until the
        # step has `prompts_per_step` informative groups (or `max_rounds` refills were drawn).
        while (sum(int(mixed_groups(d["task_reward"], n).sum()) for d in drawn) < n_prompts
               and len(drawn) <= int(rl.dynamic_sampling.max_rounds)):
            drawn.append(sample_round(setup, state, step, len(drawn)))
    rollout_s = time.perf_counter() - t0
    informative = np.concatenate([mixed_groups(d["task_reward"], n) for d in drawn])
    groups, kept = (pick_groups(informative, n_prompts) if rl.dynamic_sampling.enabled
                    else (np.arange(n_prompts), np.ones(n_prompts, bool)))
    rows = (groups[:, None] * n + np.arange(n)[None, :]).reshape(-1)
    rollout = select_rows(concat_rollouts([d["rollout"] for d in drawn], setup.tokenizer.pad_id), rows)
    all_problems = [p for d in drawn for p in d["problems"]]
    problems = [all_problems[g] for g in groups]
    pick = {k: np.concatenate([d[k] for d in drawn])[rows] for k in ("rewards", "task_reward")}
    rewards, task_reward = pick["rewards"], pick["task_reward"]
    cond = None if drawn[0]["cond"] is None else np.concatenate([d["cond"] for d in drawn])[rows]
    lengths = np.asarray(rollout.lengths)
    truncated = np.asarray(rollout.finish_reasons) != FINISH_STOP
    group_ids = np.repeat(np.arange(n_prompts, dtype=np.int32), n)
    batch = build_rollout_batch(rollout, rewards, group_ids, np.zeros(len(rows), np.float32),
                                pad_id=setup.tokenizer.pad_id)
    if rl.dynamic_sampling.enabled or rl.overlong.filter:
        # Filled-up uninformative groups and (overlong filtering) truncated responses leave the loss.
        drop = ~np.repeat(kept, n) | (truncated if rl.overlong.filter else False)
        batch = batch.replace(loss_mask=np.where(drop[:, None], 0.0, batch.loss_mask).astype(np.float32))
    arrays = (batch.tokens, batch.positions, batch.segment_ids)
    mask = batch.loss_mask
    old, _ = setup.logprob_fn(state.params, setup.rest, *arrays)
    batch = batch.replace(old_logprobs=np.asarray(old) * mask, cond=cond)
    if setup.ref_params is not None:
        ref, _ = setup.logprob_fn(setup.ref_params, setup.rest, *arrays)
        batch = batch.replace(ref_logprobs=np.asarray(ref) * mask)
    if setup.teacher is not None or setup.teacher_fn is not None:
        batch = batch.replace(**teacher_pass(setup, state, batch, rollout, problems))
    if setup.values_fn is not None:
        values = np.asarray(setup.values_fn(state.params, setup.rest, *arrays)["values"]) * mask
        batch = batch.replace(old_values=values)
    if rl.step_labels.enabled:
        batch = batch.replace(**step_label_fields(setup, rollout, problems, mask))
    scalar = rewards if rewards.ndim == 1 else rewards[:, 0]
    fields = {"rewards": rewards, "group_ids": group_ids, "cond": cond, "mask": mask,
              "token_rewards": token_rewards(scalar, mask), "values": batch.old_values}
    advantages, returns, adv_metrics = estimate(rl.advantage, fields, n_prompts, **dict(rl.advantage_kwargs))
    batch = batch.replace(advantages=advantages, returns=returns if rl.critic.enabled else None)
    if rl.critic.enabled and returns is None:
        # A critic without GAE regresses on the outcome reward at every response token.
        batch = batch.replace(returns=np.where(mask > 0, scalar[:, None], 0.0).astype(np.float32))
    grouped = scalar.reshape(n_prompts, n)
    metrics = {
        "reward/mean": float(scalar.mean()), "reward/std": float(scalar.std()),
        "accuracy": float((task_reward >= 1.0).mean()),
        "reward/mixed_groups": float(np.mean(grouped.max(1) > grouped.min(1))),
        "response_length": float(lengths.mean()),
        "rollout/mismatch_abs_logp": float(np.sum(np.abs(batch.old_logprobs - batch.rollout_logprobs) * mask)
                                           / max(mask.sum(), 1.0)),
        "rollout/tokens": float(lengths.sum()),
        "rollout/tokens_per_s": float(lengths.sum() / max(rollout_s, 1e-9)),
        "rollout/time_s": rollout_s,
        **{f"advantage/{k}": v for k, v in adv_metrics.items()},
    }
    if rewards.ndim == 2:
        metrics.update({f"reward/{name}": float(rewards[:, i].mean()) for i, name in enumerate(rl.scorers)})
    if rl.dynamic_sampling.enabled:
        metrics.update({"dapo/rounds": float(len(drawn)), "dapo/kept_groups": float(kept.sum()),
                        "rollout/drawn_samples": float(len(drawn) * n_prompts * n),
                        "dapo/informative_first_round": float(informative[:n_prompts].mean())})
    if float(rl.overlong.cache_length) or rl.overlong.filter:
        metrics["overlong/truncated"] = float(truncated.mean())
    if cond is not None:
        metrics["reward/cond1"] = float(scalar[cond == 1].mean())
        metrics["reward/cond0"] = float(scalar[cond == 0].mean())
    return batch, metrics


def rl_step(setup: RLSetup, state: TrainState) -> tuple[TrainState, dict[str, float]]:
    """One full iteration (see the module docstring); returns the new state and its flat record."""
    batch, record = collect_rollout_batch(setup, state)
    t0 = time.perf_counter()
    state, metrics = setup.update_fn(state, batch)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    update_s = time.perf_counter() - t0
    b, t = batch.shape
    record.update(metrics)
    record["update/tokens_per_s"] = b * t * max(metrics["reuse/epochs_used"], 1.0) / max(update_s, 1e-9)
    record["update/time_s"] = update_s
    return state, record


def rl_train_loop(setup: RLSetup, state: TrainState, num_steps: int, *, writer: MetricsWriter | None = None,
                  checkpointer: Checkpointer | None = None, progress: bool = False) -> tuple[TrainState, list[dict]]:
    """Run `num_steps` iterations from `state` (`train/loop.py: drive`); returns the final state and
    the per-step records. Raises `NonFiniteLossError` on a non-finite loss or gradient."""
    cfg = setup.cfg
    last = int(cfg.rl.steps)
    eval_every, ckpt_every = int(cfg.eval.every), int(cfg.checkpoint.every)

    def step(state):
        state, record = rl_step(setup, state)
        return state, record, int(record["rollout/tokens"])

    def after_step(state, record):
        at = int(state.step)
        if setup.eval_problems and ((eval_every and at % eval_every == 0) or at == last):
            record.update(evaluate_policy(setup, state.params))

    def bar_fields(record):
        return {"reward": record["reward/mean"], "acc": record["accuracy"], "eval_acc": record.get("eval/accuracy")}

    return drive(state, step, num_steps, phase="RL", progress=progress, total=min(last, int(state.step) + num_steps),
                 writer=writer, log_every=int(cfg.rl.log_every), checkpointer=checkpointer,
                 checkpoint_at=lambda s: (bool(ckpt_every) and s % ckpt_every == 0) or s == last,
                 after_step=after_step, bar_fields=bar_fields)


def _save_reference(path: str, params: Any) -> None:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()


def _restore_reference(path: str, like: Any) -> Any:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    return ocp.StandardCheckpointer().restore(path, abstract)


def run_rl(cfg: Any, *, stop_after: int | None = None, initial: tuple | None = None) -> dict[str, Any]:
    """A full RL run per `cfg` (see the module docstring); returns a summary dict.

    `stop_after` ends the run after that many iterations of this call (the schedule still spans
    `rl.steps`), which is how a run is split into resumable parts. `initial` replaces the warm-up
    (see `setup_rl`). Summary keys: accuracy_before, accuracy_after (held-out `eval/accuracy`),
    greedy_accuracy_before, greedy_accuracy_after, eval_accuracy, steps, records (per-step
    dicts), final_state, wall_time_s, run_dir, plot, checkpoint_dir.
    """
    t0 = time.perf_counter()
    run_dir = os.path.abspath(cfg.output_dir)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    resume = bool(cfg.checkpoint.resume) and os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))
    if not resume and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints; set checkpoint.resume=true to continue "
                              "that run or choose another output_dir")
    setup = setup_rl(cfg, warm_up=not resume, initial=None if resume else initial)
    primary = is_primary_process()
    checkpointer = Checkpointer(ckpt_dir, max_to_keep=int(cfg.checkpoint.max_to_keep))
    ref_path = os.path.join(run_dir, "reference")
    state = setup.state
    if resume:
        state = checkpointer.restore(state)
        if setup.ref_params is not None:
            setup.ref_params = _restore_reference(ref_path, setup.ref_params)
    elif setup.ref_params is not None and primary:
        _save_reference(ref_path, setup.ref_params)
    writer = MetricsWriter(run_dir, tensorboard=primary) if primary else None
    jsonl = os.path.join(run_dir, "metrics.jsonl")
    summary: dict[str, Any] = {"run_dir": run_dir}
    try:
        if int(state.step) == 0 and setup.eval_problems:
            first = evaluate_policy(setup, state.params)
            if writer is not None:
                writer.write(0, first)
        remaining = max(int(cfg.rl.steps) - int(state.step), 0)
        n = remaining if stop_after is None else min(remaining, int(stop_after))
        state, records = rl_train_loop(setup, state, n, writer=writer, checkpointer=checkpointer,
                                       progress=primary and bool(cfg.rl.progress_bar))
        if int(state.step) not in checkpointer.all_steps():
            checkpointer.save(int(state.step), state, force=True)
    finally:
        if writer is not None:
            writer.close()
        checkpointer.close()
    summary.update(steps=int(state.step), records=records, final_state=state)
    evals = [r for r in read_jsonl(jsonl) if "eval/accuracy" in r] if os.path.exists(jsonl) else []
    if evals:
        at_start = evals[0]["step"] == 0
        summary["accuracy_before"] = evals[0]["eval/accuracy"] if at_start else None
        summary["greedy_accuracy_before"] = evals[0]["eval/greedy_accuracy"] if at_start else None
        summary["accuracy_after"] = summary["eval_accuracy"] = evals[-1]["eval/accuracy"]
        summary["greedy_accuracy_after"] = evals[-1]["eval/greedy_accuracy"]
        summary["eval_num_problems"] = len(setup.eval_problems)
    if primary and os.path.exists(jsonl):
        summary["plot"] = plot_rl_curves(jsonl, os.path.join(run_dir, "rl.png"))
    summary["checkpoint_dir"] = ckpt_dir
    summary["wall_time_s"] = time.perf_counter() - t0
    return summary
