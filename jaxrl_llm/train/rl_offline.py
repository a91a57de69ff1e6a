"""Offline RL on one fixed set of sampled responses (BCPG-NSA, arXiv 2505.14403, and its baselines).

    python -m jaxrl_llm.cli rl --config configs/bcpg_offline.py
    python -m jaxrl_llm.cli rl --config configs/bcpg_offline.py --config.rl.offline.variant=rft

`rl.offline.enabled` turns the `rl` command into this trainer (`run_offline_rl`):

1. Dataset, built once: `rl.offline.num_prompts` training prompts x `rl.samples_per_prompt`
   samples from the warmed-up policy at `rl.temperature`, scored by `rl.scorers`, with the
   behaviour log-probs (the learner's pass at the sampling parameters) and the step labels of the
   step-label role (`rl_step.step_label_fields`: the task's own checker, e.g. ArithChain's, and the
   optional PRM consensus). It is written to `rl.offline.dataset_path` as JSONL, one response a
   line, with the fields that shaped it in `<path>.meta.json`; a run whose data fields agree loads
   the file instead of sampling, so several variants train on the same responses.
2. Training: `rl.steps` epochs over the dataset. Each epoch visits the prompt groups in an order
   drawn from the seed and the epoch (the same for every variant), `rl.prompts_per_step` whole
   groups per optimizer step. Variants (`rl.offline.variant`):
   - `bcpg_nsa`: the RL update (`rl_update.py`) with the `bcpg_nsa` objective: ratio to the stored
     behaviour log-probs (never refreshed), clip, tokens of correct steps of negative responses
     get +mu |A|;
   - `bcpg`: the same update with every step judged wrong, so no token is flipped (plain offline
     clipped policy gradient);
   - `rft`: the SFT step (`train/sft.py`) on the positive responses only (rejection-sampling
     fine-tuning), with the same optimizer settings (`rl.optimizer`) and batches.
3. Held-out evaluation at epoch 0, every `eval.every` epochs and at the end: `eval/accuracy`
   (sampled), `eval/greedy_accuracy`, and for tasks with a step checker `eval/step_accuracy` /
   `eval/greedy_step_accuracy` (share of correct steps in the policy's own responses).

No checkpoints are written and the mode does not resume (a run is a few epochs over a small file).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxrl_llm.parallel.distributed import is_primary_process
from jaxrl_llm.rollout.prompts import left_pad, round_up
from jaxrl_llm.rollout.sampler import FINISH_STOP
from jaxrl_llm.train.loop import drive
from jaxrl_llm.train.metrics import MetricsWriter, read_jsonl
from jaxrl_llm.train.optim import make_optimizer, make_schedule
from jaxrl_llm.train.rl_batch import (
    RolloutBatch,
    assemble_token_arrays,
    response_to_token_axis,
)
from jaxrl_llm.train.rl import check_rl_config, evaluate_policy, setup_rl
from jaxrl_llm.train.rl_plot import plot_rl_curves
from jaxrl_llm.train.rl_rollout import (
    build_rollout_batch,
    decode_responses,
    encode_prompts,
    estimate,
    prompts_for_step,
    sample_responses,
    score_with,
)
from jaxrl_llm.train.rl_step import step_label_fields
from jaxrl_llm.train.run_dir import flat_config, open_run_dir
from jaxrl_llm.train.sft import make_sft_step
from jaxrl_llm.train.state import create_train_state

__all__ = [
    "OFFLINE_VARIANTS",
    "build_records",
    "check_offline_config",
    "data_fingerprint",
    "dataset_stats",
    "epoch_batches",
    "load_records",
    "offline_enabled",
    "records_batch",
    "run_offline_rl",
    "write_records",
]

OFFLINE_VARIANTS = ("bcpg_nsa", "bcpg", "rft")
# Config fields that shape the dataset (dotted prefixes); the variant and training fields do not.
DATA_FIELDS = ("seed", "model.", "data.", "sft.", "rl.samples_per_prompt", "rl.max_new_tokens", "rl.temperature",
               "rl.top_k", "rl.top_p", "rl.scorers", "rl.step_labels.", "rl.rollout_quant", "rl.offline.num_prompts")
_NOT_DATA = ("sft.train.progress_bar", "sft.train.log_every")
_DATA_KEY_SALT = 0x0FF1  # the dataset's sampling key, apart from the eval key and online steps
_ORDER_SALT = 0xBC96


def offline_enabled(cfg: Any) -> bool:
    return bool(cfg.get("rl", {}).get("offline", {}).get("enabled", False))


def check_offline_config(cfg: Any) -> None:
    """Fail before anything is built, naming the field, when the offline fields do not fit together."""
    rl, off = cfg.rl, cfg.rl.offline
    if off.variant not in OFFLINE_VARIANTS:
        raise ValueError(f"rl.offline.variant must be one of {OFFLINE_VARIANTS}; got {off.variant!r}")
    n_prompts, per_step = int(off.num_prompts), int(rl.prompts_per_step)
    if n_prompts < per_step or n_prompts % per_step:
        raise ValueError(f"rl.offline.num_prompts={n_prompts} must be a positive multiple of rl.prompts_per_step="
                         f"{per_step} (each optimizer step takes that many whole groups)")
    if int(rl.samples_per_prompt) < 2:
        raise ValueError(f"rl.samples_per_prompt must be >= 2 (group advantages); got {rl.samples_per_prompt}")
    for name in ("reuse_epochs", "minibatches"):
        if int(rl[name]) != 1:
            raise ValueError(f"rl.{name} must be 1 in offline mode (rl.steps counts epochs over the dataset, one "
                             f"optimizer step per batch of rl.prompts_per_step groups); got {rl[name]}")
    if off.variant != "rft" and rl.objective != "bcpg_nsa":
        raise ValueError(f"rl.offline.variant={off.variant!r} trains rl.objective='bcpg_nsa'; got {rl.objective!r}")
    if bool(cfg.checkpoint.resume):
        raise ValueError("checkpoint.resume: offline mode does not resume; start a fresh output_dir")


def dataset_path(cfg: Any) -> str:
    """`rl.offline.dataset_path`, or `<output_dir>/offline_data.jsonl` when empty."""
    return cfg.rl.offline.dataset_path or os.path.join(cfg.output_dir, "offline_data.jsonl")


def data_fingerprint(cfg: Any) -> dict[str, Any]:
    """The config fields that shape the dataset (`DATA_FIELDS`, less logging), as JSON values."""
    flat = flat_config(cfg)
    keep = {k: v for k, v in flat.items() if k not in _NOT_DATA
            and any(k == p or (p.endswith(".") and k.startswith(p)) for p in DATA_FIELDS)}
    return json.loads(json.dumps(keep, default=str))


def _check_cached(path: str, fingerprint: Mapping[str, Any]) -> bool:
    """True when `path` holds a dataset built with `fingerprint`; raises when it holds another one."""
    if not os.path.exists(path):
        return False
    meta_path = path + ".meta.json"
    if not os.path.exists(meta_path):
        raise ValueError(f"rl.offline.dataset_path={path!r} exists without {meta_path}: cannot tell what built it")
    with open(meta_path, encoding="utf-8") as f:
        saved = json.load(f)["fingerprint"]
    diffs = [f"{k}: {saved.get(k)!r} -> {fingerprint.get(k)!r}" for k in sorted(set(saved) | set(fingerprint))
             if saved.get(k) != fingerprint.get(k)]
    if diffs:
        raise ValueError(f"rl.offline.dataset_path={path!r} was built with other data fields:\n  " + "\n  ".join(diffs)
                         + "\nuse the same fields, or another dataset_path")
    return True


# -------------------------------------------------------------------------------------------- the dataset

def build_records(setup: Any, params: Any) -> list[dict[str, Any]]:
    """Sample, score and label the dataset with the policy `params`; one dict per response.

    Rows are group-major: record `g * n + j` is sample j of prompt g. Fields: `group`, `prompt`,
    `prompt_ids`, `response`, `response_ids` (eos included), `reward`, `finished`,
    `behaviour_logp` (per response token), `step_id` (per response token, -1 outside every step),
    `step_ok` (one bool per step).
    """
    cfg, rl, tok = setup.cfg, setup.cfg.rl, setup.tokenizer
    n = int(rl.samples_per_prompt)
    problems = prompts_for_step(setup.task, int(rl.offline.num_prompts), int(cfg.seed), 0)
    key = jax.random.fold_in(jax.random.key(int(cfg.seed)), _DATA_KEY_SALT)
    prompt_ids = encode_prompts(tok, problems)
    rollout = sample_responses(setup.parts, params, setup.rest, prompt_ids, key=key, config=setup.sampling,
                               quant_format=rl.rollout_quant, mesh=setup.mesh)
    texts = decode_responses(tok, rollout)
    lengths = np.asarray(rollout.lengths)
    finished = np.asarray(rollout.finish_reasons) == FINISH_STOP
    rewards = score_with(tuple(rl.scorers), setup.task, problems, texts, n, lengths=lengths, finished=finished,
                         max_length=int(rl.max_new_tokens))
    if rewards.ndim != 1:
        raise ValueError(f"offline mode needs one scorer (rewards [B]); rl.scorers={tuple(rl.scorers)}")
    group_ids = np.repeat(np.arange(len(problems), dtype=np.int32), n)
    batch = build_rollout_batch(rollout, rewards, group_ids, np.zeros(len(texts), np.float32), pad_id=tok.pad_id)
    behaviour, _ = setup.logprob_fn(params, setup.rest, batch.tokens, batch.positions, batch.segment_ids)
    width = rollout.prompt_width
    behaviour = np.asarray(behaviour)[:, width:]
    labels = step_label_fields(setup, rollout, problems, batch.loss_mask)
    step_id, step_ok = np.asarray(labels["step_id"])[:, width:], np.asarray(labels["step_ok"])
    response = np.asarray(rollout.response)
    records = []
    for i, text in enumerate(texts):
        m = int(lengths[i])
        k = int(step_id[i, :m].max(initial=-1)) + 1
        records.append({
            "group": int(group_ids[i]), "prompt": problems[i // n].prompt, "prompt_ids": [int(t) for t in prompt_ids[i // n]],
            "response": text, "response_ids": [int(t) for t in response[i, :m]], "reward": float(rewards[i]),
            "finished": bool(finished[i]), "behaviour_logp": [float(x) for x in behaviour[i, :m]],
            "step_id": [int(x) for x in step_id[i, :m]], "step_ok": [bool(x) for x in step_ok[i, :k]],
        })
    return records


def write_records(path: str, records: Sequence[Mapping[str, Any]], fingerprint: Mapping[str, Any]) -> None:
    """The dataset as JSONL (one response a line) and its fingerprint in `<path>.meta.json`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in records)
    os.replace(tmp, path)
    with open(path + ".meta.json", "w", encoding="utf-8") as f:
        json.dump({"fingerprint": dict(fingerprint), "records": len(records)}, f, indent=1, sort_keys=True)


def load_records(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def dataset_stats(records: Sequence[Mapping[str, Any]], samples_per_prompt: int) -> dict[str, float]:
    """Host statistics of the dataset: accuracy, share of mixed groups, step accuracy (all and
    negative responses), and `dataset/frac_flipped`: the share of the tokens of negative responses
    in mixed groups (A < 0) that NSA turns positive (inside a correct step)."""
    n = samples_per_prompt
    rewards = np.asarray([r["reward"] for r in records], np.float32).reshape(-1, n)
    correct = rewards >= 1.0
    mixed = rewards.max(1) > rewards.min(1)
    ok_steps = [sum(r["step_ok"]) for r in records]
    all_steps = [len(r["step_ok"]) for r in records]
    negative = [i for i, r in enumerate(records) if r["reward"] < 1.0]
    flipped = tokens = 0
    for i in negative:
        if not mixed[i // n]:
            continue
        rec = records[i]
        tokens += len(rec["step_id"])
        flipped += sum(1 for s in rec["step_id"] if s >= 0 and rec["step_ok"][s])
    return {"dataset/accuracy": float(correct.mean()), "dataset/mixed_groups": float(mixed.mean()),
            "dataset/step_accuracy": sum(ok_steps) / max(sum(all_steps), 1),
            "dataset/negative_step_accuracy": (sum(ok_steps[i] for i in negative)
                                               / max(sum(all_steps[i] for i in negative), 1)),
            "dataset/frac_flipped": flipped / max(tokens, 1), "dataset/responses": float(len(records))}


def records_batch(records: Sequence[Mapping[str, Any]], *, samples_per_prompt: int, prompt_width: int,
                  response_width: int, pad_id: int, flip_steps: bool = True) -> RolloutBatch:
    """A `RolloutBatch` `[B, P + N]` of whole groups (`B = G * n` group-major records).

    group_ids are local (0..G-1); `old_logprobs` and `rollout_logprobs` are the stored behaviour
    log-probs; `step_id [B, T]`, `step_ok [B, N]` (all False when `flip_steps` is False: no step
    counts as correct, so nothing is flipped); `advantages` the batch's GRPO advantages.
    """
    b, n = len(records), samples_per_prompt
    prompt, prompt_lengths = left_pad([r["prompt_ids"] for r in records], prompt_width, pad_id=pad_id)
    response = np.full((b, response_width), pad_id, np.int32)
    behaviour = np.zeros((b, response_width), np.float32)
    step_id = np.full((b, response_width), -1, np.int32)
    step_ok = np.zeros((b, response_width), bool)
    lengths = np.zeros((b,), np.int32)
    for i, rec in enumerate(records):
        m = len(rec["response_ids"])
        if m > response_width:
            raise ValueError(f"record {i} has {m} response tokens > rl.max_new_tokens={response_width}")
        response[i, :m] = rec["response_ids"]
        behaviour[i, :m] = rec["behaviour_logp"]
        step_id[i, :m] = rec["step_id"]
        lengths[i] = m
        if flip_steps:
            step_ok[i, :len(rec["step_ok"])] = rec["step_ok"]
    arrays = assemble_token_arrays(np.asarray(prompt), np.asarray(prompt_lengths), response, lengths, pad_id)
    mask = arrays["loss_mask"]
    rewards = np.asarray([r["reward"] for r in records], np.float32)
    group_ids = np.repeat(np.arange(b // n, dtype=np.int32), n)
    advantages, _, _ = estimate("grpo", {"rewards": rewards, "group_ids": group_ids}, b // n)
    old = response_to_token_axis(behaviour, prompt_width, mask)
    return RolloutBatch(**arrays, old_logprobs=old, rollout_logprobs=old, rewards=rewards, group_ids=group_ids,
                        advantages=advantages, step_id=response_to_token_axis(step_id, prompt_width, mask, fill=-1),
                        step_ok=step_ok)


def epoch_batches(num_groups: int, groups_per_step: int, *, seed: int, epoch: int) -> np.ndarray:
    """`[num_groups / groups_per_step, groups_per_step]` group indices: epoch `epoch`'s visiting
    order, a permutation drawn from (seed, epoch) alone, so every variant sees the same batches."""
    order = np.random.default_rng([int(seed), int(epoch), _ORDER_SALT]).permutation(num_groups)
    return order.reshape(-1, groups_per_step)


# -------------------------------------------------------------------------------------------- training

@dataclasses.dataclass
class _Epochs:
    """The loop driver's state: the `TrainState` and `step`, the epochs done (what records are keyed by)."""

    train: Any
    step: int = 0


def _mean_records(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    keys = records[0].keys()
    return {k: float(np.mean([float(r[k]) for r in records])) for k in keys}


def _schedule_config(cfg: Any, total_updates: int) -> Any:
    """A copy of `cfg` whose `rl.steps` is the number of optimizer steps, which the RL setup sizes
    the learning-rate schedule with."""
    c = copy.deepcopy(cfg)
    c.rl.steps = int(total_updates)
    return c


def run_offline_rl(cfg: Any, *, initial: tuple | None = None) -> dict[str, Any]:
    """The offline run of the module docstring; returns a summary like `run_rl`'s plus
    `step_accuracy_before/after`, `greedy_step_accuracy_before/after`, `dataset_path`, `dataset/...`.

    `initial`: a ready `initial_policy(...)` tuple (e.g. one warm-up shared by the three variants).
    """
    t0 = time.perf_counter()
    check_offline_config(cfg)
    check_rl_config(cfg)  # bad values fail before the run directory is touched
    rl = cfg.rl
    n, per_step = int(rl.samples_per_prompt), int(rl.prompts_per_step)
    num_groups = int(rl.offline.num_prompts)
    epochs = int(rl.steps)
    updates_per_epoch = num_groups // per_step
    path, fingerprint = dataset_path(cfg), data_fingerprint(cfg)
    cached = _check_cached(path, fingerprint)  # a mismatched file fails before the warm-up
    open_run_dir(cfg, command="rl")
    setup = setup_rl(_schedule_config(cfg, epochs * updates_per_epoch), initial=initial)
    primary = is_primary_process()
    if cached:
        records = load_records(path)
    else:
        records = build_records(setup, setup.state.params)
        if primary:
            write_records(path, records, fingerprint)
    if len(records) != num_groups * n:
        raise ValueError(f"{path} holds {len(records)} responses; expected rl.offline.num_prompts x "
                         f"rl.samples_per_prompt = {num_groups * n}")
    stats = dataset_stats(records, n)
    prompt_width = round_up(max(len(r["prompt_ids"]) for r in records), setup.sampling.prompt_bucket)
    variant = rl.offline.variant

    def batch_of(groups: np.ndarray) -> RolloutBatch:
        rows = [records[g * n + j] for g in groups for j in range(n)]
        return records_batch(rows, samples_per_prompt=n, prompt_width=prompt_width,
                             response_width=int(rl.max_new_tokens), pad_id=setup.tokenizer.pad_id,
                             flip_steps=variant == "bcpg_nsa")

    if variant == "rft":
        # Rejection-sampling fine-tuning: the SFT step, same optimizer settings and batches.
        total = epochs * updates_per_epoch
        optimizer = make_optimizer(rl.optimizer, total)
        params = jax.tree.map(lambda x: x.copy(), setup.state.params)
        state = create_train_state(params, optimizer, setup.mesh, jax.tree.map(lambda x: x.sharding, params),
                                   seed=int(cfg.seed))
        sft_step = make_sft_step(setup.parts, optimizer, make_schedule(rl.optimizer, total),
                                 jax.tree.map(lambda x: x.sharding, state), setup.mesh, rest=setup.rest)

        def update(state, batch):
            positive = (np.asarray(batch.rewards) >= 1.0).astype(np.float32)[:, None]
            return sft_step(state, {"tokens": batch.tokens, "positions": batch.positions,
                                    "segment_ids": batch.segment_ids, "loss_mask": batch.loss_mask * positive})
    else:
        state, update = setup.state, setup.update_fn

    def epoch_step(epochs_state: _Epochs):
        train, per_update, tokens = epochs_state.train, [], 0
        for groups in epoch_batches(num_groups, per_step, seed=int(cfg.seed), epoch=epochs_state.step + 1):
            batch = batch_of(groups)
            train, metrics = update(train, batch)
            per_update.append({k: float(v) for k, v in jax.device_get(metrics).items()})
            tokens += int(np.asarray(batch.loss_mask).sum())
        record = _mean_records(per_update)
        record["offline/updates"] = float(len(per_update))
        return _Epochs(train, epochs_state.step + 1), record, tokens

    def after_step(epochs_state: _Epochs, record: dict) -> None:
        at = epochs_state.step
        every = int(cfg.eval.every)
        if setup.eval_problems and ((every and at % every == 0) or at == epochs):
            record.update(evaluate_policy(setup, epochs_state.train.params))

    run_dir = os.path.abspath(cfg.output_dir)
    writer = MetricsWriter(run_dir, tensorboard=primary) if primary else None
    try:
        first = dict(stats)
        if setup.eval_problems:
            first.update(evaluate_policy(setup, state.params))
        if writer is not None:
            writer.write(0, first)
        final, records_out = drive(_Epochs(state), epoch_step, epochs, phase=f"offline {variant}",
                                   progress=primary and bool(rl.progress_bar), writer=writer,
                                   log_every=int(rl.log_every), after_step=after_step,
                                   bar_fields=lambda r: {"eval_acc": r.get("eval/accuracy")})
    finally:
        if writer is not None:
            writer.close()
    summary: dict[str, Any] = {"run_dir": run_dir, "variant": variant, "steps": final.step, "records": records_out,
                               "final_state": final.train, "dataset_path": os.path.abspath(path),
                               "dataset_cached": cached, **stats}
    jsonl = os.path.join(run_dir, "metrics.jsonl")
    evals = [r for r in read_jsonl(jsonl) if "eval/accuracy" in r] if os.path.exists(jsonl) else []
    if evals:
        for stem, key in (("accuracy", "eval/accuracy"), ("greedy_accuracy", "eval/greedy_accuracy"),
                          ("step_accuracy", "eval/step_accuracy"),
                          ("greedy_step_accuracy", "eval/greedy_step_accuracy")):
            if key in evals[-1]:
                summary[f"{stem}_before"], summary[f"{stem}_after"] = evals[0].get(key), evals[-1][key]
        summary["eval_accuracy"] = evals[-1]["eval/accuracy"]
        summary["eval_num_problems"] = len(setup.eval_problems)
        if primary:
            summary["plot"] = plot_rl_curves(jsonl, os.path.join(run_dir, "rl.png"))
    summary["wall_time_s"] = time.perf_counter() - t0
    return summary
