"""The RL loop: prompts -> n samples each -> rewards -> advantages -> K DGG-gated updates -> log/checkpoint.

`run_rl(cfg)` (the `rl` CLI command) checks the config against the roles the objective and
estimator read (`train/roles.py`), optionally warms a model up with the SFT trainer, then runs
`cfg.rl.steps` iterations of `train/rl_step.py`: the step's prompts (a pure function of seed,
step and refill round), `n` samples each (on quantized weights if `rl.rollout_quant`), the
scorers, the proximal / reference / teacher / critic passes, advantages from the registered
estimator, and one jitted `rl_update` (K reuse epochs, DGG gate inside).

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
from ml_collections import ConfigDict

from jaxrl_llm.data.tokenizer import stop_ids_of
from jaxrl_llm.envs.error_tokens import error_token_metrics, has_error_definition
from jaxrl_llm.envs.step_labels import has_step_labels, step_accuracy
from jaxrl_llm.objectives.registry import objective_spec
from jaxrl_llm.parallel.batch import row_shards
from jaxrl_llm.parallel.distributed import initialize_distributed, is_primary_process
from jaxrl_llm.parallel.mesh import mesh_from_config
from jaxrl_llm.rollout.sampler import SamplingConfig
from jaxrl_llm.train.builders import (build_model, build_policy, build_tokenizer, policy_model_section,
                                      task_from_config)
from jaxrl_llm.train.export import export_run
from jaxrl_llm.train.init_from import check_init_from
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.eval_run import eval_key, evaluate, warn_truncated
from jaxrl_llm.train.evaluate import make_greedy_generate
from jaxrl_llm.train.loop import drive
from jaxrl_llm.train.lora import check_lora_rl
from jaxrl_llm.train.metrics import MetricsWriter, read_jsonl
from jaxrl_llm.train.run_dir import open_run_dir, truncate_metrics
from jaxrl_llm.train.optim import make_optimizer, optimizer_dtypes
from jaxrl_llm.train.rl_plot import plot_rl_curves
from jaxrl_llm.train.rl_rollout import privileged_prompts, response_pieces
from jaxrl_llm.train.rl_hints import check_hints_config, hints_config, initial_extras
from jaxrl_llm.train.agent_step import (agent_extras, agent_rows, check_agent_config, evaluate_agent,
                                       make_agent_runtime)
from jaxrl_llm.agents.task import is_agent_task
from jaxrl_llm.agents.heavyskill import (HeavySkillTask, deliberation_prompt, heavyskill_settings,
                                      heavyskill_solution_budget)
from jaxrl_llm.train.proximal import check_proximal_config
from jaxrl_llm.train.rl_step import collect_rollout_batch, mixed_groups, rl_step  # noqa: F401  (public names)
from jaxrl_llm.train.rl_update import (
    RLUpdateOptions,
    make_logprob_fn,
    make_pass_fn,
    make_rl_update,
    rl_optimizer,
)
from jaxrl_llm.train.roles import check_roles, configured_objective_kwargs, needs_reference, needs_student_logits
from jaxrl_llm.train.sft_run import check_sft_config, setup_sft, train_loop
from jaxrl_llm.train.state import TrainState, create_train_state


def update_options(cfg: Any) -> RLUpdateOptions:
    """`RLUpdateOptions` from the `rl` section (the KL coefficient joins the objective's kwargs)."""
    rl = cfg.rl
    kwargs = configured_objective_kwargs(rl)
    spec = objective_spec(rl.objective)
    supplied = spec.supplied
    hparams = {**(spec.hparams or {}), **kwargs}
    if hparams.get("loss_agg_mode") == "seq-mean-token-sum-norm" and hparams.get("norm_length") is None:
        # Dr.GRPO's constant L_norm is the longest generation, not the padded bucket's width.
        kwargs["norm_length"] = float(rl.max_new_tokens)
    return RLUpdateOptions(objective=rl.objective, objective_kwargs=tuple(sorted(kwargs.items())),
                           reuse_epochs=int(rl.reuse_epochs), minibatches=int(rl.minibatches),
                           micro_batches=int(rl.get("micro_batches", 1)),
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
                          stop_ids=stop_ids_of(tokenizer), pad_id=tokenizer.pad_id)


def check_micro_batches(rows: int, minibatches: int, micro_batches: Any, shards: int) -> None:
    """`rl.micro_batches` must be an integer >= 1 dividing the rows of a minibatch, each micro-batch
    a multiple of the mesh's row shards (otherwise its rows would be replicated, not split)."""
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, (int, np.integer)) or micro_batches < 1:
        raise ValueError(f"rl.micro_batches must be an integer >= 1; got {micro_batches!r}")
    per_minibatch = rows // minibatches
    if per_minibatch % micro_batches:
        raise ValueError(f"rl.micro_batches={micro_batches} must divide the rows per minibatch: prompts_per_step x "
                         f"samples_per_prompt / rl.minibatches = {rows} / {minibatches} = {per_minibatch}")
    if (per_minibatch // micro_batches) % shards:
        raise ValueError(f"rows per minibatch / rl.micro_batches = {per_minibatch} / {micro_batches} = "
                         f"{per_minibatch // micro_batches} rows must be a multiple of the mesh's {shards} row shards "
                         "(mesh.data x mesh.fsdp)")


def check_rl_config(cfg: Any) -> None:
    """Fail before anything is built or compiled when a field is out of range or the configured roles
    cannot produce what the objective and estimator read (`train/roles.py`), naming the field."""
    initialize_distributed(cfg.distributed)  # before the first device query (the mesh check below)
    rl = cfg.rl
    for name in ("steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens"):
        if int(rl[name]) < 1:
            raise ValueError(f"rl.{name} must be >= 1; got {rl[name]}")
    rows = int(rl.prompts_per_step) * int(rl.samples_per_prompt)
    agent_task = task_from_config(cfg.data) if cfg.data.task == "agent" else None
    if agent_task is not None:
        check_agent_config(cfg, agent_task)
        rows = agent_rows(cfg, agent_task)  # one row per turn: episodes x agent.max_turns
    if rows % int(rl.minibatches):
        raise ValueError(f"rl.minibatches={rl.minibatches} must divide prompts_per_step x samples_per_prompt"
                         f"{' x agent.max_turns' if agent_task is not None else ''} = {rows}")
    if int(rl.dynamic_sampling.max_rounds) < 0:
        raise ValueError(f"rl.dynamic_sampling.max_rounds must be >= 0; got {rl.dynamic_sampling.max_rounds}")
    if not 0 <= int(rl.overlong.cache_length) <= int(rl.max_new_tokens):
        raise ValueError(f"rl.overlong.cache_length must be in [0, rl.max_new_tokens={rl.max_new_tokens}]; "
                         f"got {rl.overlong.cache_length}")
    if rl.qarl and not rl.rollout_quant:
        raise ValueError("rl.qarl needs rl.rollout_quant ('int8', 'int4' or 'fp8'): the format to align with")
    if rl.rollout_quant not in ("", "int8", "int4", "fp8"):
        raise ValueError(f"rl.rollout_quant must be '', 'int8', 'int4' or 'fp8'; got {rl.rollout_quant!r}")
    if not float(rl.optimizer.learning_rate) > 0:
        raise ValueError(f"rl.optimizer.learning_rate must be > 0; got {rl.optimizer.learning_rate}")
    optimizer_dtypes(rl.optimizer, "rl.optimizer")
    if int(cfg.sft.train.steps) > 0:
        check_sft_config(sft_warmup_config(cfg))  # the warm-up's fields fail now, not after it ran
    shards = row_shards(mesh_from_config(cfg.mesh))
    if (rows // int(rl.minibatches)) % shards:
        raise ValueError(f"prompts_per_step x samples_per_prompt / rl.minibatches = {rows // int(rl.minibatches)} rows "
                         f"must be a multiple of the mesh's {shards} row shards (mesh.data x mesh.fsdp)")
    check_micro_batches(rows, int(rl.minibatches), rl.get("micro_batches", 1), shards)
    check_proximal_config(rl)  # rl.proximal_pass, rl.proximal_check_rows (train/proximal.py)
    if not isinstance(rl.get("overlap_scoring", True), bool):
        raise ValueError(f"rl.overlap_scoring must be true or false; got {rl.overlap_scoring!r}")
    if int(cfg.eval.samples_per_prompt) < 0:
        raise ValueError(f"eval.samples_per_prompt must be >= 0 (0: greedy only); got {cfg.eval.samples_per_prompt}")
    if not float(rl.get("max_mismatch", 0.0)) >= 0:
        raise ValueError(f"rl.max_mismatch must be >= 0 nats/token (0: the guard is off); got {rl.max_mismatch}")
    if int(rl.get("prompt_bucket", 0)) < 0:
        raise ValueError(f"rl.prompt_bucket must be >= 0 (0: no padding); got {rl.prompt_bucket}")
    if int(rl.dgg.window) < 2:
        raise ValueError(f"rl.dgg.window must be >= 2; got {rl.dgg.window}")
    check_roles(cfg)  # the objective's and estimator's inputs and hyperparameters against the roles
    if (rl.teacher.source == "privileged" or rl.condition.source == "privileged") and agent_task is None:
        # (an agent run's privileged prompts come from its skill library: check_agent_config)
        privileged_prompts(task_from_config(cfg.data), [])  # the task must provide privileged prompts
    if rl.step_labels.get("prm", "") and not has_step_labels(task_from_config(cfg.data)):
        raise ValueError(f"rl.step_labels.prm={rl.step_labels.prm!r} scores the task's own steps, but data.task="
                         f"{cfg.data.task!r} has no step_labels(problem, response)")
    check_init_from(cfg.model)
    check_lora_rl(cfg)  # model.lora: its fields, and DGG off (the adapters freeze the lm_head it gates on)
    if rl.teacher.source not in ("", "privileged"):
        check_init_from({"init_from": rl.teacher.source}, "rl.teacher.source")
    if hints_config(rl) is not None:
        check_hints_config(rl, task_from_config(cfg.data))  # LANG's hint schedule and switch
    check_heavyskill_config(cfg)
    update_options(cfg)  # validates reuse and gate fields


def check_heavyskill_config(cfg: Any) -> None:
    """`rl.heavyskill` (agents/heavyskill.py): K, summary_k, context and reserve in range, a single-turn task
    without other prompt rewriters, and room for K trimmed solutions in one train problem's prompt."""
    heavy = heavyskill_settings(cfg)
    if heavy is None:
        return
    rl = cfg.rl
    for name in ("num_solutions", "summary_k"):
        if getattr(heavy, name) < 1:
            raise ValueError(f"rl.heavyskill.{name} must be >= 1; got {getattr(heavy, name)}")
    for name in ("context", "reserve"):
        if int(rl.heavyskill.get(name, 0)) < 0:
            raise ValueError(f"rl.heavyskill.{name} must be >= 0 (0: the default); got {rl.heavyskill[name]}")
    if heavy.reserve < int(rl.max_new_tokens):
        raise ValueError(f"rl.heavyskill.reserve={heavy.reserve} must be >= rl.max_new_tokens={rl.max_new_tokens}: "
                         "the deliberation is generated inside the context")
    if cfg.data.task == "agent" or rl.condition.source or rl.teacher.source == "privileged" or hints_config(rl):
        raise ValueError("rl.heavyskill.enabled rewrites every prompt into a deliberation prompt: it needs a "
                         "single-turn task and rl.condition.source='', rl.teacher.source != 'privileged', "
                         "rl.hints.enabled=False")
    task = task_from_config(cfg.data)
    if isinstance(task, HeavySkillTask) and task.num_solutions != heavy.num_solutions:
        raise ValueError(f"data.task_kwargs.num_solutions={task.num_solutions} (the warm-up's deliberation records) "
                         f"must equal rl.heavyskill.num_solutions={heavy.num_solutions}")
    problem = task.sample_batch(1, int(cfg.seed), "train")[0]
    overhead = len(build_tokenizer(cfg.data).encode_prompt(deliberation_prompt(problem.prompt,
                                                                                 [""] * heavy.num_solutions)))
    try:
        heavyskill_solution_budget(heavy.context, overhead, heavy.reserve, heavy.num_solutions)
    except ValueError as e:
        raise ValueError(f"rl.heavyskill.context={heavy.context} (0: data.seq_len): {e}; raise data.seq_len or "
                         "rl.heavyskill.context") from None


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
        # The warm-up's final state is kept as `sft/checkpoints/<steps>`: a start point for other RL runs.
        checkpointer = Checkpointer(os.path.join(sft_cfg.output_dir, "checkpoints"), max_to_keep=1)
        try:
            state, _ = train_loop(setup.state, setup.step_fn, setup.iterator, int(sft_cfg.train.steps),
                                  writer=writer, log_every=int(sft_cfg.train.log_every),
                                  progress=primary and bool(sft_cfg.train.progress_bar), phase="warm-up")
            if int(state.step) not in checkpointer.all_steps():
                checkpointer.save(int(state.step), state, setup.iterator, force=True)
        finally:
            if writer is not None:
                writer.close()
            checkpointer.close()
        shardings = jax.tree.map(lambda x: x.sharding, state.params)
        return setup.mesh, setup.parts, state.params, setup.rest, shardings
    return build_policy(cfg, model_cfg=policy_model_section(cfg))


@dataclasses.dataclass
class Teacher:
    """A separate teacher model (`rl.teacher.source = "hf:PATH" / "orbax:PATH"`): its parts, params and pass."""

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
    agent: Any = None  # train/agent_step.py: AgentRuntime, for data.task = "agent" (episodes turn by turn)


def teacher_model_section(cfg: Any) -> ConfigDict:
    """The teacher's model section: `rl.teacher.source` ("hf:PATH" or "orbax:PATH") as its `init_from`,
    with the policy's compute dtype; an orbax run without a saved config has the policy's architecture."""
    model = copy.deepcopy(cfg.model)
    model.init_from = cfg.rl.teacher.source
    for key in ("value_head", "lora"):
        if key in model:
            del model[key]
    return model


def load_teacher(cfg: Any, mesh: Any, tokenizer: Any) -> Teacher:
    """The `hf:PATH` / `orbax:PATH` teacher, sharded on `mesh`; its vocabulary must cover the tokenizer's."""
    parts, params, rest, _ = build_model(teacher_model_section(cfg), tokenizer, mesh, field="rl.teacher.source")
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
    agent = is_agent_task(task)
    # The held-out set is drawn before the warm-up, so a task too small for eval.num_problems fails first.
    runtime = make_agent_runtime(cfg, task) if agent else None
    if agent:
        eval_problems = runtime.eval_episodes  # held-out episodes (task_id, seed)
    else:
        eval_problems = task.eval_set(int(cfg.eval.num_problems), seed=int(cfg.seed)) if int(cfg.eval.num_problems) else []
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
    extras = {**initial_extras(rl), **(agent_extras(cfg, task) if agent else {})}
    state = create_train_state(params, optimizer, mesh, shardings, seed=int(cfg.seed), extras=extras)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    update_fn = make_rl_update(parts, optimizer, options, rest=rest, mesh=mesh, state_shardings=state_shardings)
    logprob_fn = make_logprob_fn(parts, chunk_size=options.logprob_chunk, qarl_format=options.qarl_format,
                                 temperature=options.temperature)
    eval_generate = make_greedy_generate(parts, int(cfg.eval.max_new_tokens), valid_vocab_size=tokenizer.vocab_size)
    setup = RLSetup(cfg, mesh, tokenizer, task, parts, rest, state, update_fn, logprob_fn,
                    sampling_config(cfg, tokenizer), ref_params, eval_problems, eval_generate, agent=runtime)
    if rl.teacher.source.startswith(("hf:", "orbax:")):
        setup.teacher = load_teacher(cfg, mesh, tokenizer)
    elif rl.teacher.source == "privileged":
        setup.teacher_fn = make_pass_fn(parts, chunk_size=options.logprob_chunk, temperature=options.temperature,
                                        topk=int(rl.teacher.topk))
    if options.critic:
        setup.values_fn = make_pass_fn(parts, chunk_size=options.logprob_chunk, qarl_format=options.qarl_format,
                                       temperature=options.temperature, values=True)
    return setup


def evaluate_policy(setup: RLSetup, params: Any) -> dict[str, float]:
    """Held-out `eval/accuracy` (sampled, see the module docstring) and `eval/greedy_accuracy`, from
    `train/eval_run.py: evaluate`; with samples also `eval/mean_length` and `eval/truncated`, and with
    `n = eval.samples_per_prompt > 1` samples `eval/pass@n` and `eval/maj@n`."""
    if setup.agent is not None:
        return evaluate_agent(setup, params)
    cfg = setup.cfg
    problems = setup.eval_problems
    n = int(cfg.eval.samples_per_prompt)
    result = evaluate(setup.parts, params, setup.rest, setup.task, setup.tokenizer, problems, k=n,
                      temperature=setup.sampling.temperature, top_k=setup.sampling.top_k,
                      top_p=setup.sampling.top_p, stop_ids=setup.sampling.stop_ids,
                      max_new_tokens=int(cfg.eval.max_new_tokens), batch_size=int(cfg.eval.batch_size),
                      key=eval_key(int(cfg.seed)), generate=setup.eval_generate,
                      quant_format=cfg.rl.rollout_quant, mesh=setup.mesh)
    completions, texts, rollout = result.greedy, result.samples, result.rollout
    greedy = result.metrics["accuracy"]
    # Tasks with a step checker (arith_chain): the share of correct steps in the policy's own responses.
    steps = has_step_labels(setup.task)
    extra = {"eval/greedy_step_accuracy": _step_share(setup.task, problems, completions)} if steps else {}
    if hasattr(setup.task, "score_breakdown"):
        extra.update({f"eval/greedy/{k}": v for k, v in setup.task.score_breakdown(problems, completions).items()})
    if n == 0:
        return {"eval/accuracy": greedy, "eval/greedy_accuracy": greedy, **extra}
    rows = [problems[i // n] for i in range(len(texts))]
    if steps:
        extra["eval/step_accuracy"] = _step_share(setup.task, rows, texts)
    if hasattr(setup.task, "score_breakdown"):
        # The task's per-slice metrics of the sampled held-out responses (e.g. eval/lang/low/lc_acc).
        extra.update({f"eval/{k}": v for k, v in setup.task.score_breakdown(rows, texts).items()})
    if has_error_definition(setup.task):
        # Garbled tails of the sampled held-out responses: eval/error_token_rate, eval/garbled_frac.
        extra.update(error_token_metrics(setup.task, rows, response_pieces(setup.tokenizer, rollout),
                                         np.asarray(rollout.lengths), prefix="eval"))
    m = result.metrics
    out = {"eval/accuracy": m["pass@1"], "eval/greedy_accuracy": greedy, "eval/mean_length": m["mean_length"],
           "eval/truncated": m["truncated"]}
    if n > 1:
        out.update({f"eval/pass@{n}": m[f"pass@{n}"], f"eval/maj@{n}": m[f"maj@{n}"]})
    return {**out, **extra}


def _step_share(task: Any, problems: list, texts: list[str]) -> float:
    ok, total = step_accuracy(task, problems, texts)
    return ok / max(total, 1)


class MismatchError(RuntimeError):
    """The sampler's and the learner's log-probs of the same tokens drifted apart past `rl.max_mismatch`."""

    def __init__(self, step: int, mismatch: float, limit: float, quant: str, qarl: bool):
        hint = ("the rollout weights are quantized (rl.rollout_quant={!r}) but the learner is not aligned: "
                "set rl.qarl=true".format(quant) if quant and not qarl else
                "the sampler and the learner disagree on the same weights: check rl.temperature and the "
                "sampling knobs against the learner's")
        super().__init__(f"step {step}: sampler-vs-learner log-prob mismatch {mismatch:.4g} nats/token exceeds "
                         f"rl.max_mismatch={limit:g}; {hint} (rl.max_mismatch=0 turns the guard off)")
        self.step, self.mismatch = step, mismatch


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

    guard = float(cfg.rl.get("max_mismatch", 0.0))
    warned = []  # the truncation warning is given once per run

    def after_step(state, record):
        at = int(state.step)
        if not warned and warn_truncated(float(record.get("rollout/truncated", 0.0)), field="rl.max_new_tokens",
                                         limit=int(cfg.rl.max_new_tokens), where=f"RL step {at}"):
            warned.append(at)
        mismatch = float(record.get("rollout/mismatch_abs_logp", 0.0))
        if guard and mismatch > guard:
            raise MismatchError(at, mismatch, guard, cfg.rl.rollout_quant, bool(cfg.rl.qarl))
        if setup.eval_problems and ((eval_every and at % eval_every == 0) or at == last):
            t0 = time.perf_counter()
            record.update(evaluate_policy(setup, state.params))
            # step_time_s includes this; equal-wall-time comparisons subtract it
            record["eval/time_s"] = time.perf_counter() - t0

    def bar_fields(record):
        if setup.agent is not None:  # episodes: the success rate, train and held-out
            return {"reward": record["reward/mean"], "success": record["success"],
                    "eval_success": record.get("eval/accuracy")}
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
    An `rl.offline.enabled` config is `train/rl_offline.py: run_offline_rl`'s (a fixed dataset,
    `rl.steps` epochs over it); the `rl` command dispatches to it.
    """
    if cfg.rl.get("offline", {}).get("enabled", False):
        raise ValueError("rl.offline.enabled: an offline run is train/rl_offline.py's run_offline_rl "
                         "(the `rl` command dispatches to it)")
    t0 = time.perf_counter()
    run_dir = os.path.abspath(cfg.output_dir)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    check_rl_config(cfg)  # bad values fail before the run directory is touched
    resume = open_run_dir(cfg, command="rl")  # refuses a used directory unless resuming a compatible run
    setup = setup_rl(cfg, warm_up=not resume, initial=None if resume else initial)
    primary = is_primary_process()
    checkpointer = Checkpointer(ckpt_dir, max_to_keep=int(cfg.checkpoint.max_to_keep))
    ref_path = os.path.join(run_dir, "reference")
    state = setup.state
    if resume:
        state = checkpointer.restore(state, fallback=bool(cfg.checkpoint.get("fallback", False)))
        if primary:
            truncate_metrics(run_dir, int(state.step))
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
    summary.update(export_run(cfg, setup.parts, state.params, setup.rest, run_dir))  # HF folder, LoRA adapters
    summary["checkpoint_dir"] = ckpt_dir
    summary["wall_time_s"] = time.perf_counter() - t0
    return summary
