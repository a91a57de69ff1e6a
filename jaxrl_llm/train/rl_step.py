"""One RL iteration: prompts -> rollout -> scorers -> extra passes -> advantages -> the jitted update.

`collect_rollout_batch(setup, state)` runs the roles of `train/roles.py` on the host and returns the
`RolloutBatch` of step `state.step`; `rl_step` adds the update. `setup` is the `RLSetup` of
`train/rl.py` (the mesh, tokenizer, task, jitted passes and the frozen reference / teacher).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxrl_llm.agents.heavyskill import HEAVYSKILL_KEY_SALT, deliberation_problems, heavyskill_settings
from jaxrl_llm.envs.error_tokens import error_token_metrics, has_error_definition
from jaxrl_llm.envs.rewards import overlong_penalty, prefix_step_labels
from jaxrl_llm.envs.step_labels import (
    has_step_labels,
    prm_step_scores,
    task_step_labels,
    with_judge_false_positives,
)
from jaxrl_llm.objectives.preference import nsa_step_consensus
from jaxrl_llm.rollout.prompts import round_up
from jaxrl_llm.rollout.sampler import FINISH_STOP
from jaxrl_llm.train.rl_hints import (EMA_KEY, hints_config, prompts_with_hints, switch_from_metrics, switch_record,
                                      with_switch)
from jaxrl_llm.train.rl_batch import (
    response_to_token_axis,
    token_rewards,
)
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
    privileged_teacher_outputs,
    prompts_for_step,
    response_pieces,
    sample_responses,
    score_with_metrics,
    select_rows,
)
from jaxrl_llm.train.proximal import launch_proximal, mismatch_abs_logp
from jaxrl_llm.train.rl_update import dispatch
from jaxrl_llm.train.state import TrainState
from jaxrl_llm.train.agent_step import collect_agent_batch

RLSetup = Any  # `jaxrl_llm.train.rl.RLSetup`, built there (rl.py imports this module)


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


def launch_teacher_pass(setup: RLSetup, state: TrainState, batch: Any, rollout: Any, problems: list
                        ) -> Callable[[], dict[str, Any]]:
    """A callable giving `teacher_logprobs [B, T]` (and `teacher_topk_idx/logp [B, T, k]`) for the sampled
    responses.

    "hf:PATH": the separate teacher reads the same rows as the learner; its pass is dispatched now, so
    host work before the callable is called overlaps it. "privileged": the actor at rollout parameters
    reads each response after the task's privileged prompt (re-tokenised, left-truncated to
    `rl.teacher.max_prompt_tokens`), response tokens unchanged; that pass runs when called.
    """
    rl = setup.cfg.rl
    n = int(rl.samples_per_prompt)
    width = rollout.prompt_width
    mask = batch.loss_mask

    def fields_of(response: dict[str, np.ndarray]) -> dict[str, Any]:
        fields = {"teacher_logprobs": response_to_token_axis(response["logp"], width, mask)}
        if "topk_idx" in response:
            fields["teacher_topk_idx"] = response_to_token_axis(response["topk_idx"], width, mask)
            fields["teacher_topk_logp"] = response_to_token_axis(response["topk_logp"], width, mask)
        return fields

    if setup.teacher is not None:
        pending = dispatch(setup.teacher.pass_fn, setup.teacher.params, setup.teacher.rest, batch.tokens,
                           batch.positions, batch.segment_ids)
        return lambda: fields_of({k: np.asarray(v)[:, width:] for k, v in pending().items()})

    def privileged() -> dict[str, Any]:
        texts = privileged_prompts(setup.task, problems)
        return fields_of(privileged_teacher_outputs(
            setup.teacher_fn, state.params, setup.rest, setup.tokenizer, [texts[i // n] for i in range(batch.shape[0])],
            rollout, max_prompt_tokens=int(rl.teacher.max_prompt_tokens), bucket=setup.sampling.prompt_bucket))

    return privileged


def step_label_fields(setup: RLSetup, rollout: Any, problems: list, mask: np.ndarray) -> dict[str, Any]:
    """`step_id [B, T]` (-1 outside every step) and `step_ok [B, N]` of the sampled responses.

    The task's own step checker when it has one (`task.step_labels`, e.g. ArithChain's steps ending
    at `;`; `envs/step_labels.py`), else `prefix_step_labels` (a step is correct while the response
    is a prefix of the reference). `rl.step_labels.judge_false_positive` > 0 makes that first judge
    err (`with_judge_false_positives`). With `rl.step_labels.prm` a registered step scorer must also
    give the step at least `rl.step_labels.prm_threshold` (the consensus of `nsa_step_consensus`).
    """
    rl, tok = setup.cfg.rl, setup.tokenizer
    n = int(rl.samples_per_prompt)
    pieces = response_pieces(tok, rollout)
    rows, width = [problems[i // n] for i in range(len(pieces))], rollout.response.shape[1]
    if has_step_labels(setup.task):
        step_id, step_ok = task_step_labels(setup.task, rows, pieces, num_steps=width)
    else:
        step_id, step_ok = prefix_step_labels(pieces, [p.reference for p in rows],
                                              delimiter=str(rl.step_labels.delimiter), num_steps=width)
    false_positive = float(rl.step_labels.get("judge_false_positive", 0.0))
    if false_positive > 0.0:  # deterministic per batch: the seed and the response texts
        key = zlib.crc32("\x00".join("".join(p) for p in pieces).encode())
        step_ok = with_judge_false_positives(step_id, step_ok, false_positive,
                                             np.random.default_rng([int(setup.cfg.seed), key]))
    prm = str(rl.step_labels.get("prm", ""))
    if prm:
        scores = prm_step_scores(prm, setup.task, rows, pieces, num_steps=width, options=rl.step_labels)
        step_ok = np.asarray(nsa_step_consensus(step_ok, scores,
                                                prm_threshold=float(rl.step_labels.get("prm_threshold", 0.5))))
    return {"step_id": response_to_token_axis(step_id, rollout.prompt_width, mask, fill=-1), "step_ok": step_ok}


def mixed_groups(rewards: np.ndarray, n: int) -> np.ndarray:
    """`[G]` bool: the groups of `n` consecutive rows whose rewards are not all equal."""
    grouped = np.asarray(rewards).reshape(-1, n)
    return grouped.max(1) > grouped.min(1)


def sample_round(setup: RLSetup, state: TrainState, step: int, round_index: int) -> dict[str, Any]:
    """One draw of `rl.prompts_per_step` prompts and their samples, scored: `score_round(draw_round(...))`.

    Returns `problems`, `rollout`, `cond` (or None), `texts`, `rewards` (`[B]` or `[B, R]`, overlong
    shaping added to the first column), `task_reward` (the first scorer's, unshaped) and
    `scorer_metrics` (what the scorers report, e.g. `autothink/...`, and HeavySkill's `heavyskill/...`).
    """
    return score_round(setup, draw_round(setup, state, step, round_index), step)


def draw_round(setup: RLSetup, state: TrainState, step: int, round_index: int) -> dict[str, Any]:
    """One draw of `rl.prompts_per_step` prompts and their samples, decoded but not scored.

    Round 0 is the step's batch; refill rounds (dynamic sampling) use fresh prompts and keys.
    Returns `problems`, `rollout`, `cond` (or None), `texts` and `scorer_metrics` (HeavySkill's so far).
    With `rl.heavyskill.enabled` the problems carry their deliberation prompts (`agents/heavyskill.py`),
    the samples are deliberations with prompts left-padded to `context - reserve`, and `scorer_metrics`
    holds `heavyskill/...`.
    """
    cfg, rl = setup.cfg, setup.cfg.rl
    problems = prompts_for_step(setup.task, int(rl.prompts_per_step), int(cfg.seed), step, round_index)
    problems = prompts_with_hints(rl, setup.task, state, problems, step)  # rl.hints (LANG); unchanged when off
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
    if round_index:
        key = jax.random.fold_in(key, round_index)
    sampling, heavy, heavy_metrics = setup.sampling, heavyskill_settings(cfg), {}
    if heavy is not None:
        # HeavySkill (agents/heavyskill.py): K solutions per problem (no gradient, not trained on), trimmed into
        # its deliberation prompt; the samples below are the deliberations. One prompt width: one update shape.
        solutions = sample_responses(setup.parts, state.params, setup.rest, encode_prompts(setup.tokenizer, problems),
                                     key=jax.random.fold_in(key, HEAVYSKILL_KEY_SALT),
                                     config=dataclasses.replace(sampling, n=heavy.num_solutions),
                                     quant_format=rl.rollout_quant, mesh=setup.mesh)
        problems, heavy_metrics = deliberation_problems(
            setup.task, setup.tokenizer, problems, np.asarray(solutions.response), np.asarray(solutions.lengths),
            num_solutions=heavy.num_solutions, context=heavy.context, reserve=heavy.reserve)
        heavy_metrics["heavyskill/solution_tokens"] = float(np.asarray(solutions.lengths).sum())
        sampling = dataclasses.replace(sampling, prompt_bucket=heavy.width)
    prompt_ids, cond = rollout_prompts(setup, problems)
    sampling = sampling if cond is None else dataclasses.replace(sampling, n=1)
    rollout = sample_responses(setup.parts, state.params, setup.rest, prompt_ids, key=key, config=sampling,
                               quant_format=rl.rollout_quant, mesh=setup.mesh)
    if heavy is not None:
        rollout = concat_rollouts([rollout], setup.tokenizer.pad_id, width=heavy.width)  # the one prompt width
    return {"problems": problems, "rollout": rollout, "cond": cond, "texts": decode_responses(setup.tokenizer, rollout),
            "scorer_metrics": heavy_metrics}


def score_round(setup: RLSetup, drawn: dict[str, Any], step: int) -> dict[str, Any]:
    """`drawn` (a `draw_round`) with its `rewards`, `task_reward`, the scorers' metrics and `score_s` (the
    seconds it took) added: host work only."""
    rl = setup.cfg.rl
    t0 = time.perf_counter()
    rollout = drawn["rollout"]
    lengths = np.asarray(rollout.lengths)
    finished = np.asarray(rollout.finish_reasons) == FINISH_STOP
    rewards, scorer_metrics = score_with_metrics(
        tuple(rl.scorers), setup.task, drawn["problems"], drawn["texts"], int(rl.samples_per_prompt), lengths=lengths,
        finished=finished, max_length=int(rl.max_new_tokens), step=step,
        options={name: rl.get(name, None) for name in rl.scorers})
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
    return {**drawn, "rewards": rewards, "task_reward": task_reward,
            "scorer_metrics": {**scorer_metrics, **drawn["scorer_metrics"]}, "score_s": time.perf_counter() - t0}


def collect_rollout_batch(setup: RLSetup, state: TrainState) -> tuple[Any, dict[str, float]]:
    """Stages 1-5 of an iteration: the `RolloutBatch` for step `state.step` and rollout metrics.

    prompts -> rollout -> scorers -> proximal / reference / teacher / critic passes -> advantages.
    """
    rl = setup.cfg.rl
    step = int(state.step)
    n_prompts, n = int(rl.prompts_per_step), int(rl.samples_per_prompt)
    t0 = time.perf_counter()
    # rl.overlap_scoring (default on): without dynamic sampling the batch's rows do not depend on the
    # rewards, so the learner's passes are dispatched before the host scores, and run meanwhile.
    overlap = bool(rl.get("overlap_scoring", True)) and not rl.dynamic_sampling.enabled
    drawn = [draw_round(setup, state, step, 0) if overlap else sample_round(setup, state, step, 0)]
    if rl.dynamic_sampling.enabled:
        # DAPO: groups whose rewards are all equal carry no advantage; draw fresh prompts until the
        # step has `prompts_per_step` informative groups (or `max_rounds` refills were drawn).
        while (sum(int(mixed_groups(d["task_reward"], n).sum()) for d in drawn) < n_prompts
               and len(drawn) <= int(rl.dynamic_sampling.max_rounds)):
            drawn.append(sample_round(setup, state, step, len(drawn)))
    rollout_s = time.perf_counter() - t0 - sum(d.get("score_s", 0.0) for d in drawn)  # sampling and decoding
    if rl.dynamic_sampling.enabled:
        informative = np.concatenate([mixed_groups(d["task_reward"], n) for d in drawn])
        groups, kept = pick_groups(informative, n_prompts)
    else:
        groups, kept = np.arange(n_prompts), np.ones(n_prompts, bool)
    rows = (groups[:, None] * n + np.arange(n)[None, :]).reshape(-1)
    # rl.prompt_bucket > 0: the batch's prompt part is left-padded to a multiple of it, so prompts of
    # varying length (e.g. LANG's hints) give a few batch shapes, not one compile of the update per step.
    bucket = int(rl.get("prompt_bucket", 0))
    widest = max(d["rollout"].prompt_width for d in drawn)
    rollout = select_rows(concat_rollouts([d["rollout"] for d in drawn], setup.tokenizer.pad_id,
                                          width=round_up(widest, bucket) if bucket > 0 else 0), rows)
    all_problems = [p for d in drawn for p in d["problems"]]
    problems = [all_problems[g] for g in groups]
    cond = None if drawn[0]["cond"] is None else np.concatenate([d["cond"] for d in drawn])[rows]
    lengths = np.asarray(rollout.lengths)
    truncated = np.asarray(rollout.finish_reasons) != FINISH_STOP
    group_ids = np.repeat(np.arange(n_prompts, dtype=np.int32), n)
    # Rewards are filled in after scoring; nothing before that reads them.
    batch = build_rollout_batch(rollout, np.zeros(len(rows), np.float32), group_ids, np.zeros(len(rows), np.float32),
                                pad_id=setup.tokenizer.pad_id)
    if rl.dynamic_sampling.enabled or rl.overlong.filter:
        # Filled-up uninformative groups and (overlong filtering) truncated responses leave the loss.
        drop = ~np.repeat(kept, n) | (truncated if rl.overlong.filter else False)
        batch = batch.replace(loss_mask=np.where(drop[:, None], 0.0, batch.loss_mask).astype(np.float32))
    arrays = (batch.tokens, batch.positions, batch.segment_ids)
    mask = batch.loss_mask
    # Device passes, dispatched now; each `finish_*` waits for its own.
    if setup.values_fn is not None:
        # The critic's pass is the proximal pass plus the value head: one forward gives both.
        pending_values = dispatch(setup.values_fn, state.params, setup.rest, *arrays)
    else:
        # rl.proximal_pass = "auto": the sampler's log-probs when exact, the learner's pass on a few rows
        # (train/proximal.py); otherwise the learner's pass on every row.
        finish_proximal = launch_proximal(setup, state.params, arrays, batch,
                                          sampling_temperature=setup.sampling.temperature)
    pending_ref = None if setup.ref_params is None else dispatch(setup.logprob_fn, setup.ref_params, setup.rest,
                                                                 *arrays)
    has_teacher = setup.teacher is not None or setup.teacher_fn is not None
    finish_teacher = launch_teacher_pass(setup, state, batch, rollout, problems) if has_teacher else None
    if overlap:
        drawn = [score_round(setup, drawn[0], step)]
    score_s = sum(d["score_s"] for d in drawn)
    pick = {k: np.concatenate([d[k] for d in drawn])[rows] for k in ("rewards", "task_reward")}
    rewards, task_reward = pick["rewards"], pick["task_reward"]
    if setup.values_fn is not None:
        out = pending_values()
        old = np.asarray(out["logp"]) * mask
        mismatch, skipped = mismatch_abs_logp(old, batch.rollout_logprobs, mask), False
        batch = batch.replace(old_values=np.asarray(out["values"]) * mask)
    else:
        old, mismatch, skipped = finish_proximal()
    batch = batch.replace(rewards=np.asarray(rewards, np.float32), old_logprobs=np.asarray(old) * mask, cond=cond)
    if pending_ref is not None:
        batch = batch.replace(ref_logprobs=np.asarray(pending_ref()[0]) * mask)
    if finish_teacher is not None:
        batch = batch.replace(**finish_teacher())
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
        "rollout/mismatch_abs_logp": mismatch,  # over rl.proximal_check_rows rows when the pass was skipped
        "rollout/proximal_skipped": float(skipped),
        "rollout/tokens": float(lengths.sum()),
        "rollout/tokens_per_s": float(lengths.sum() / max(rollout_s, 1e-9)),
        "rollout/time_s": rollout_s,
        "rollout/score_time_s": score_s,  # host scoring (while the passes run, with the overlap)
        **{f"advantage/{k}": v for k, v in adv_metrics.items()},
        **drawn[0]["scorer_metrics"],  # the step's own draw (refill rounds are not summarised)
    }
    if rewards.ndim == 2:
        metrics.update({f"reward/{name}": float(rewards[:, i].mean()) for i, name in enumerate(rl.scorers)})
    if has_error_definition(setup.task):
        # Garbled tails (envs/error_tokens.py): rollout/error_token_rate, rollout/garbled_frac. Rows
        # sampled from a privileged prompt continue a hint, not the plain prompt: left out.
        rows_kept = [i for i in range(len(lengths)) if cond is None or cond[i] == 0]
        pieces = response_pieces(setup.tokenizer, rollout)
        metrics.update(error_token_metrics(setup.task, [problems[i // n] for i in rows_kept],
                                           [pieces[i] for i in rows_kept], lengths[rows_kept], prefix="rollout"))
    if rl.dynamic_sampling.enabled:
        metrics.update({"dapo/rounds": float(len(drawn)), "dapo/kept_groups": float(kept.sum()),
                        "rollout/drawn_samples": float(len(drawn) * n_prompts * n),
                        "dapo/informative_first_round": float(informative[:n_prompts].mean())})
    metrics["rollout/truncated"] = float(truncated.mean())  # share of responses cut at rl.max_new_tokens
    if float(rl.overlong.cache_length) or rl.overlong.filter:
        metrics["overlong/truncated"] = float(truncated.mean())
    if cond is not None:
        metrics["reward/cond1"] = float(scalar[cond == 1].mean())
        metrics["reward/cond0"] = float(scalar[cond == 0].mean())
    if hasattr(setup.task, "score_breakdown"):
        # The task's own per-slice metrics (e.g. LangArith's per-resource-group LC / format / accuracy).
        texts = [t for d in drawn for t in d["texts"]]
        metrics.update(setup.task.score_breakdown([problems[i // n] for i in range(len(rows))],
                                                  [texts[r] for r in rows]))
    if hints_config(rl) is not None:
        metrics.update(switch_record(rl, state, problems, advantages, group_ids))
    return batch, metrics


def warmdown_scale(rl: Any, step: int, rows: int) -> np.ndarray | None:
    """`aux_scale [rows]` = 1 - step / warmdown_steps (clipped at 0) when `rl.objective_kwargs.warmdown_steps`
    is set (SDAR's warm-down: the objective multiplies its auxiliary weight by it), else None."""
    steps = int(dict(rl.objective_kwargs).get("warmdown_steps", 0) or 0)
    if steps <= 0:
        return None
    return np.full(rows, max(0.0, 1.0 - step / steps), np.float32)


def rl_step(setup: RLSetup, state: TrainState) -> tuple[TrainState, dict[str, float]]:
    """One full iteration (see the module docstring); returns the new state and its flat record."""
    if setup.agent is not None:
        state, batch, record = collect_agent_batch(setup, state)  # episodes turn by turn (train/agent_step.py)
    else:
        batch, record = collect_rollout_batch(setup, state)
    scale = warmdown_scale(setup.cfg.rl, int(state.step), batch.shape[0])
    if scale is not None:
        batch = batch.replace(aux_scale=scale)
        record["sdar/warmdown_scale"] = float(scale[0])
    t0 = time.perf_counter()
    state, metrics = setup.update_fn(state, batch)
    if EMA_KEY in state.extras:
        state = with_switch(state, switch_from_metrics(record))  # LANG's switch, checkpointed with the state
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    update_s = time.perf_counter() - t0
    b, t = batch.shape
    record.update(metrics)
    record["update/tokens_per_s"] = b * t * max(metrics["reuse/epochs_used"], 1.0) / max(update_s, 1e-9)
    record["update/time_s"] = update_s
    return state, record
