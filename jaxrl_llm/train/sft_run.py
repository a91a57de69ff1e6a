"""An SFT run from a config: build everything, train with logging and checkpoints, evaluate.

`setup_sft(cfg)` builds the mesh, tokenizer, sharded model, optimizer, `TrainState`, data iterator
and jitted step (`SFTSetup`); `train_loop` runs steps with metrics, progress bar, checkpoints and
the non-finite-loss stop; `run_sft(cfg)` does both plus held-out evaluation and the loss plot,
and returns a summary dict.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxrl_llm.data.pipeline import build_sft_dataset
from jaxrl_llm.data.tokenizer import Tokenizer
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.parallel.batch import row_shards
from jaxrl_llm.parallel.distributed import initialize_distributed, is_primary_process
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.parallel.mesh import mesh_from_config
from jaxrl_llm.train.builders import (build_model_config, build_optimizer, build_policy, build_schedule,
                                      build_tokenizer, task_from_config)
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.export import export_run
from jaxrl_llm.train.init_from import check_init_from
from jaxrl_llm.train.evaluate import exact_match_accuracy, greedy_completions, make_greedy_generate
from jaxrl_llm.train.lora import check_lora_config
from jaxrl_llm.train.loop import NonFiniteLossError, drive  # noqa: F401  (NonFiniteLossError: the public name)
from jaxrl_llm.train.metrics import MetricsWriter, plot_loss_curve
from jaxrl_llm.train.optim import optimizer_dtypes
from jaxrl_llm.train.run_dir import open_run_dir, truncate_metrics
from jaxrl_llm.train.sft import make_sft_step
from jaxrl_llm.train.state import TrainState, create_train_state


def sft_data_path(data_cfg: Mapping[str, Any]) -> tuple[str, str]:
    """`(field, path)` of the SFT records file: `data.path`, or its older alias `data.jsonl_path`
    (`("", "")` when neither is set; both set to different files is an error)."""
    path, alias = str(data_cfg.get("path", "") or ""), str(data_cfg.get("jsonl_path", "") or "")
    if path and alias and path != alias:
        raise ValueError(f"data.path={path!r} and data.jsonl_path={alias!r} both name SFT records; set only "
                         "data.path (jsonl_path is its older name)")
    return ("data.path", path) if path else ("data.jsonl_path", alias) if alias else ("", "")


def sft_target_of(task: Any) -> Any:
    """The task's `sft_target(problem) -> str`, the completion its SFT records teach (default: the reference)."""
    return getattr(task, "sft_target", lambda p: p.reference)


def training_records(data_cfg: Mapping[str, Any], seed: int) -> list[dict[str, str]] | str:
    """SFT records: the `data.path` file if set (JSONL, Parquet or a `save_to_disk` folder of
    {prompt, completion} / {prompt, response} / {question, answer} / {messages} records, read by
    `data/datasets.py: read_sft_records`; `data.jsonl_path` is its older alias), else
    `data.num_train` task problems, each completed by the task's `sft_target` (the reference, or
    e.g. ArithChain's worked solution).

    With `data.privileged_fraction > 0` that share of the task records (a fixed random subset per
    seed) uses the task's privileged prompt (a hint or worked copy in front), so that the model
    learns to read hints before RL methods that rely on them (SDAR's self-teacher, SkillC's
    hinted stream).
    """
    _, path = sft_data_path(data_cfg)
    if path:
        return path
    task = task_from_config(data_cfg)
    problems = task.sample_batch(int(data_cfg["num_train"]), seed, "train")
    fraction = float(data_cfg.get("privileged_fraction", 0.0))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.privileged_fraction must be in [0, 1]; got {fraction}")
    hinted = np.random.default_rng([seed, 1]).random(len(problems)) < fraction
    target = sft_target_of(task)
    return [{"prompt": task.privileged_prompt(p) if h else p.prompt, "completion": target(p)}
            for p, h in zip(problems, hinted)]


@dataclasses.dataclass
class SFTSetup:
    """Everything a run needs, built from one config."""

    cfg: Any
    mesh: Mesh
    tokenizer: Tokenizer
    model_config: ModelConfig
    parts: ModelParts
    rest: Any
    state: TrainState
    step_fn: Any
    dataset: Any
    iterator: Any
    optimizer: Any
    schedule: Any


def _check_int(value: Any, field: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}; got {value!r}")
    return int(value)


def check_sft_config(cfg: Any) -> None:
    """Every value range of an SFT config, before anything is built or compiled; errors name the field.

    Checks step and batch counts, that `train.micro_batches` divides the batch and the mesh's row
    shards divide each micro-batch (else the rows would be silently replicated: no data parallelism),
    the optimizer's rates, the data fields and the registered task.
    """
    initialize_distributed(cfg.distributed)  # before the first device query below (idempotent)
    train, opt, data = cfg.train, cfg.optimizer, cfg.data
    _check_int(train.steps, "train.steps", 1)
    batch = _check_int(train.batch_size, "train.batch_size", 1)
    micro = _check_int(train.micro_batches, "train.micro_batches", 1)
    _check_int(train.log_every, "train.log_every", 1)
    _check_int(data.seq_len, "data.seq_len", 2)
    if batch % micro:
        raise ValueError(f"train.micro_batches={micro} must divide train.batch_size={batch}")
    if batch % jax.process_count():
        raise ValueError(f"train.batch_size={batch} must be a multiple of the process count {jax.process_count()}")
    shards = row_shards(mesh_from_config(cfg.mesh))
    if (batch // micro) % shards:
        raise ValueError(f"train.batch_size / train.micro_batches = {batch // micro} rows must be a multiple of the "
                         f"mesh's {shards} row shards (mesh.data x mesh.fsdp); otherwise the rows are replicated, "
                         "not split")
    if not float(opt.learning_rate) > 0:
        raise ValueError(f"optimizer.learning_rate must be > 0; got {opt.learning_rate}")
    optimizer_dtypes(opt, "optimizer")
    _check_int(opt.warmup_steps, "optimizer.warmup_steps", 0)
    if not 0.0 <= float(opt.weight_decay):
        raise ValueError(f"optimizer.weight_decay must be >= 0; got {opt.weight_decay}")
    check_init_from(cfg.model)
    check_lora_config(cfg.model)
    if data.get("long_records", "fail") not in ("fail", "drop"):
        raise ValueError(f"data.long_records must be 'fail' or 'drop'; got {data.long_records!r}")
    field, path = sft_data_path(data)
    if path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{field}={path!r}: no such file")
    else:
        _check_int(data.num_train, "data.num_train", 1)
        task_from_config(data)  # an unknown task or bad task_kwargs fails here
    for key in ("every", "max_to_keep"):
        _check_int(cfg.checkpoint[key], f"checkpoint.{key}", 0 if key == "every" else 1)
    for key in ("num_problems", "batch_size", "max_new_tokens"):
        _check_int(cfg.eval[key], f"eval.{key}", 0 if key == "num_problems" else 1)


def check_eval_length(cfg: Any, tokenizer: Tokenizer) -> None:
    """Raise if `eval.max_new_tokens` cannot hold the completions the run trains on.

    With task records (no `data.path`) the model learns the task's `sft_target` (e.g. ArithChain's
    worked solution), so a greedy completion cut shorter than the longest held-out target scores 0
    whatever was learnt; that is a config error, reported before anything compiles.
    """
    if int(cfg.eval.num_problems) <= 0 or sft_data_path(cfg.data)[1]:
        return
    target = sft_target_of(task_from_config(cfg.data))
    lengths = [len(tokenizer.encode(target(p))) for p in sft_eval_problems(cfg)]
    budget, longest = int(cfg.eval.max_new_tokens), max(lengths)
    if budget < longest:
        cut = sum(n > budget for n in lengths)
        raise ValueError(
            f"eval.max_new_tokens={budget} is shorter than the held-out completions of "
            f"data.task={str(cfg.data.task)!r} (up to {longest} tokens; {cut} of {len(lengths)} longer): greedy "
            f"exact match would score them 0; set --config.eval.max_new_tokens={longest} or more")


def setup_sft(cfg: Any) -> SFTSetup:
    """Build mesh, tokenizer, sharded model, optimizer, `TrainState`, data iterator and step."""
    check_sft_config(cfg)
    tokenizer = build_tokenizer(cfg.data)
    check_eval_length(cfg, tokenizer)
    if not cfg.model.get("init_from", ""):
        build_model_config(cfg.model, tokenizer)  # bad model fields fail before the data is read
    # The data first: every record is read and checked before the model is built or anything compiles.
    # Each process reads its own rows of the global batch.
    local_batch = int(cfg.train.batch_size) // jax.process_count()
    dataset = build_sft_dataset(
        training_records(cfg.data, int(cfg.seed)),
        tokenizer,
        seq_len=int(cfg.data.seq_len),
        batch_size=local_batch,
        seed=int(cfg.seed),  # one global order; each process keeps its own rows of every global batch
        packing=bool(cfg.data.packing),
        long_records=str(cfg.data.get("long_records", "fail")),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    mesh, parts, params, rest, params_shardings = build_policy(cfg, tokenizer)
    model_config = parts.merge(params, rest).config  # a checkpoint's (`model.init_from`) or the section's
    steps = int(cfg.train.steps)
    optimizer = build_optimizer(cfg.optimizer, steps)
    schedule = build_schedule(cfg.optimizer, steps)
    state = create_train_state(params, optimizer, mesh, params_shardings, seed=int(cfg.seed))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = make_sft_step(
        parts, optimizer, schedule, shardings, mesh, rest=rest, num_micro_batches=int(cfg.train.micro_batches)
    )
    return SFTSetup(cfg, mesh, tokenizer, model_config, parts, rest, state, step_fn, dataset, iter(dataset),
                    optimizer, schedule)


def train_loop(
    state: TrainState,
    step_fn: Any,
    iterator: Iterator[Mapping[str, np.ndarray]],
    num_steps: int,
    *,
    writer: MetricsWriter | None = None,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 0,
    log_every: int = 1,
    progress: bool = False,
    phase: str = "SFT",
) -> tuple[TrainState, list[dict[str, float]]]:
    """Run `num_steps` updates of `step_fn(state, batch)` over `iterator` (`train/loop.py: drive`).

    `phase` labels the progress bar ("SFT", "warm-up", "DPO"). Raises `NonFiniteLossError` (with
    the global step) as soon as a step's loss or gradient norm is not finite; that step's update
    was not applied and no checkpoint is written for it.
    """
    def step(state):
        batch = next(iterator)
        state, metrics = step_fn(state, batch)
        n_tokens = int(np.asarray(batch["segment_ids"] > 0).sum())
        return state, {k: float(v) for k, v in metrics.items()}, n_tokens

    # Only checkpointable (grain) iterators are saved alongside the state.
    return drive(state, step, num_steps, phase=phase, progress=progress, writer=writer, log_every=log_every,
                 checkpointer=checkpointer, checkpoint_at=lambda s: bool(checkpoint_every) and s % checkpoint_every == 0,
                 checkpoint_iterator=iterator if hasattr(iterator, "get_state") else None)


def sft_eval_problems(cfg: Any) -> list[Problem]:
    """The `eval.num_problems` held-out problems of `data.task` (none when 0). `run_sft` draws them
    before training, so a task too small for the request fails before anything compiles."""
    if int(cfg.eval.num_problems) <= 0:
        return []
    return task_from_config(cfg.data).eval_set(int(cfg.eval.num_problems), seed=int(cfg.seed))


def evaluate_sft(setup: SFTSetup, state: TrainState, problems: Sequence[Problem] | None = None) -> dict[str, Any]:
    """Greedy exact-match accuracy on `problems` (default: `sft_eval_problems(setup.cfg)`)."""
    cfg = setup.cfg
    task = task_from_config(cfg.data)
    problems = sft_eval_problems(cfg) if problems is None else list(problems)
    generate = make_greedy_generate(
        setup.parts, int(cfg.eval.max_new_tokens), valid_vocab_size=setup.tokenizer.vocab_size
    )
    completions = greedy_completions(
        generate, state.params, setup.rest, setup.tokenizer, [p.prompt for p in problems],
        batch_size=int(cfg.eval.batch_size),
    )
    accuracy = exact_match_accuracy(task, problems, completions)
    examples = [(p.prompt, p.reference, c) for p, c in zip(problems[:5], completions[:5])]
    return {"accuracy": accuracy, "num_problems": len(problems), "examples": examples}


def run_sft(cfg: Any) -> dict[str, Any]:
    """Train per `cfg`, writing `metrics.jsonl`, `tensorboard/`, `loss.png`, `checkpoints/` under
    `cfg.output_dir`; returns `{"final_loss", "eval_accuracy", "wall_time_s", "run_dir", ...}`."""
    t0 = time.perf_counter()
    run_dir = os.path.abspath(cfg.output_dir)
    check_sft_config(cfg)
    eval_problems = sft_eval_problems(cfg)
    resume = open_run_dir(cfg, command="sft")  # refuses a used directory unless resuming a compatible run
    setup = setup_sft(cfg)
    primary = is_primary_process()
    checkpointer = Checkpointer(
        os.path.join(run_dir, "checkpoints"), max_to_keep=int(cfg.checkpoint.max_to_keep)
    )
    state = setup.state
    if resume:
        state = checkpointer.restore(state, setup.iterator, fallback=bool(cfg.checkpoint.get("fallback", False)))
        if primary:
            truncate_metrics(run_dir, int(state.step))
    remaining = int(cfg.train.steps) - int(state.step)
    writer = MetricsWriter(run_dir, tensorboard=primary) if primary else None
    try:
        state, records = train_loop(
            state, setup.step_fn, setup.iterator, max(remaining, 0), writer=writer,
            checkpointer=checkpointer, checkpoint_every=int(cfg.checkpoint.every),
            log_every=int(cfg.train.log_every), progress=primary and bool(cfg.train.progress_bar),
        )
        if int(state.step) not in checkpointer.all_steps():
            checkpointer.save(int(state.step), state, setup.iterator, force=True)
        summary: dict[str, Any] = {"run_dir": run_dir, "steps": int(state.step)}
        if records:
            summary.update(first_loss=records[0]["loss"], final_loss=records[-1]["loss"])
        if int(cfg.eval.num_problems) > 0:
            result = evaluate_sft(setup, state, eval_problems)
            summary.update(eval_accuracy=result["accuracy"], eval_examples=result["examples"],
                           eval_num_problems=result["num_problems"])
            if writer is not None:
                writer.write(int(state.step), {"eval_accuracy": result["accuracy"]})
        if writer is not None:
            writer.close()
            writer = None
            if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and records:
                summary["loss_plot"] = plot_loss_curve(os.path.join(run_dir, "metrics.jsonl"),
                                                       os.path.join(run_dir, "loss.png"))
    finally:
        if writer is not None:
            writer.close()
        checkpointer.close()
    # A Hugging Face folder of the trained model (e.g. the teacher of an RL run, `rl.teacher.source =
    # "hf:DIR"`, or for `transformers`) and LoRA adapters.
    summary.update(export_run(cfg, setup.parts, state.params, setup.rest, run_dir))
    summary["wall_time_s"] = time.perf_counter() - t0
    summary["checkpoint_dir"] = checkpointer.directory
    return summary
