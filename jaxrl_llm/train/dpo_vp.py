"""DPO-VP (arXiv 2503.12854): iterative DPO on verifier-labelled pairs of the policy's own samples.

`run_dpo_vp(cfg)` (the `dpo_vp` CLI command, configs/dpo_vp.py) starts from the DPO trainer's
initial policy (the SFT warm-up of `cfg.sft`, or a fresh init), then runs `dpo_vp.rounds` rounds.
Round r:

1. sample `dpo_vp.samples_per_prompt` responses to each of `dpo_vp.prompts_per_round` training
   prompts at temperature `dpo_vp.temperatures[r]`;
2. score each with the verifier (`verifier_scores`);
3. build at most one (chosen, rejected) pair per prompt (`objectives.preference.dpo_vp_pairs`);
4. run `dpo.steps_per_round` DPO steps over the round's pairs, cycled, against the reference =
   the policy at the start of the round (the reference is reset every round);
5. log one `round/*` record with held-out greedy accuracy.

Verifier of the built-in arithmetic task, the spec's {1, 0, -1} with "eos emitted" standing in for
"a non-empty \\boxed{} present": v = -1 when the sample is truncated (no eos within
`dpo_vp.max_new_tokens`) or holds a token outside the tokenizer (a format failure, even if its
leading integer is right); otherwise v = 1 when `task.score` is 1 (correct), else v = 0.

The Adam state and step count carry across rounds; the learning-rate schedule spans all
`rounds x steps_per_round` steps. Runs on one process.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxrl_llm.data.tokenizer import Tokenizer, stop_ids_of
from jaxrl_llm.objectives.preference import dpo_vp_pairs
from jaxrl_llm.rollout.sampler import FINISH_STOP, SamplingConfig
from jaxrl_llm.train.builders import build_task, build_tokenizer
from jaxrl_llm.train.checkpoint import Checkpointer
from jaxrl_llm.train.evaluate import (
    exact_match_accuracy,
    greedy_completions,
    make_greedy_generate,
)
from jaxrl_llm.train.metrics import MetricsWriter
from jaxrl_llm.train.preference import (
    check_dpo_config,
    dpo_trainer,
    encode_pairs,
    pair_dataset,
)
from jaxrl_llm.train.rl_rollout import (
    decode_responses,
    encode_prompts,
    prompts_for_step,
    sample_responses,
    score_responses,
)
from jaxrl_llm.train.sft_run import train_loop

UNREADABLE = "\ufffd"  # `decode_responses` ends a text with it at the first id outside the tokenizer
_ROUND_KEY_SALT = 0xD7  # sampling keys of the rounds, apart from other uses of the seed


# -------------------------------------------------------------------------------------------- rounds

def verifier_scores(correct: np.ndarray, finished: np.ndarray) -> np.ndarray:
    """DPO-VP scores `[R]` int32: -1 unfinished (format failure), else 1 correct, else 0.

    correct: `[R]` bool, the task's verdict; finished: `[R]` bool, ended with eos and readable.
    """
    correct, finished = np.asarray(correct, bool), np.asarray(finished, bool)
    return np.where(finished, np.where(correct, 1, 0), -1).astype(np.int32)


def score_samples(task: Any, problems: Sequence[Any], texts: Sequence[str], finish_reasons: np.ndarray,
                  samples_per_prompt: int) -> tuple[np.ndarray, np.ndarray]:
    """`(scores [R] int32 in {1, 0, -1}, correct [R] bool)` of `R = len(problems) * n` decoded samples."""
    correct = score_responses(task, problems, texts, samples_per_prompt) >= 1.0
    readable = np.asarray([not t.endswith(UNREADABLE) for t in texts])
    finished = (np.asarray(finish_reasons) == FINISH_STOP) & readable
    return verifier_scores(correct, finished), correct


def round_pairs(problems: Sequence[Any], texts: Sequence[str], scores: np.ndarray, lengths: np.ndarray,
                samples_per_prompt: int, *, seed: int, max_chosen_length: int
                ) -> tuple[list[dict[str, str]], np.ndarray]:
    """`(pairs, rows [M, 3])`: `{"prompt", "chosen", "rejected"}` texts and `dpo_vp_pairs` rows.

    scores, lengths: `[R]` with row `b * n + j` sample j of problem b; lengths count the eos.
    A rejected text keeps only its readable part (chosen texts are always readable, v >= 0).
    """
    n = samples_per_prompt
    rows = dpo_vp_pairs(np.reshape(scores, (-1, n)), np.reshape(lengths, (-1, n)), seed=seed,
                        max_chosen_length=max_chosen_length)
    pairs = [{"prompt": problems[p].prompt, "chosen": texts[p * n + c],
              "rejected": texts[p * n + r].removesuffix(UNREADABLE)} for p, c, r in rows]
    return pairs, rows


def cycled(encoded: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """`[P, 2, T]` encoded pairs repeated until there are at least `batch_size` of them."""
    num = encoded["tokens"].shape[0]
    reps = -(-batch_size // num)
    return {k: np.concatenate([v] * reps) for k, v in encoded.items()}


# -------------------------------------------------------------------------------------------- config

def check_dpo_vp_config(cfg: Any) -> None:
    """Fail before anything is built when a field is out of range, naming it."""
    vp = cfg.dpo_vp
    for name, low in (("rounds", 1), ("prompts_per_round", 1), ("samples_per_prompt", 2), ("max_new_tokens", 1),
                      ("max_chosen_length", 1)):
        if int(vp[name]) < low:
            raise ValueError(f"dpo_vp.{name} must be >= {low}; got {vp[name]}")
    temps = tuple(vp.temperatures)
    if len(temps) != int(vp.rounds):
        raise ValueError(f"dpo_vp.temperatures must hold one temperature per round (dpo_vp.rounds={vp.rounds}); "
                         f"got {len(temps)}: {temps}")
    if any(float(t) <= 0 for t in temps):
        raise ValueError(f"dpo_vp.temperatures must all be > 0 (sampled, not greedy); got {temps}")
    if int(cfg.dpo.steps_per_round) < 1:
        raise ValueError(f"dpo.steps_per_round must be >= 1; got {cfg.dpo.steps_per_round}")
    if bool(cfg.distributed.enabled):
        raise ValueError("distributed.enabled must be False: dpo_vp samples and trains on one process")
    check_dpo_config(dpo_config(cfg))


def dpo_config(cfg: Any) -> ConfigDict:
    """`cfg` as the DPO trainer reads it: `dpo.steps` = all rounds' steps, no held-out pairs."""
    out = copy.deepcopy(cfg)
    with out.unlocked():
        out.dpo.steps = int(cfg.dpo_vp.rounds) * int(cfg.dpo.steps_per_round)
        out.eval.num_pairs = 0
    return out


def check_prompt_lengths(tokenizer: Tokenizer, problems: Sequence[Any], seq_len: int, max_new_tokens: int) -> None:
    """Every pair row `[bos + prompt | response | eos]` must fit `data.seq_len`."""
    longest = max(len(ids) for ids in encode_prompts(tokenizer, problems))
    if longest + max_new_tokens + 1 > seq_len:
        raise ValueError(f"data.seq_len={seq_len} is too short for prompts of {longest} tokens (bos included) + "
                         f"dpo_vp.max_new_tokens={max_new_tokens} + eos; raise it to {longest + max_new_tokens + 1}")


# -------------------------------------------------------------------------------------------- run

def run_dpo_vp(cfg: Any, *, initial: tuple | None = None) -> dict[str, Any]:
    """A DPO-VP run per `cfg` (see the module docstring and configs/dpo_vp.py); returns a summary dict.

    `initial`: a ready policy tuple (`train.rl.initial_policy`, e.g. a warm-up shared with RL runs) in
    place of the warm-up of `cfg.sft`; its params are copied.
    Keys: steps, rounds (one dict per round: round, temperature, pairs, prompts_skipped,
    sampled_accuracy, samples (responses sampled), time_s (the round's sampling, scoring and DPO
    steps, held-out evaluation excluded), first_loss / final_loss when it trained, greedy_accuracy after it),
    greedy_accuracy_before/after, eval_accuracy, eval_num_problems, run_dir, checkpoint_dir, wall_time_s.
    """
    t0 = time.perf_counter()
    run_dir = os.path.abspath(cfg.output_dir)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints; choose another output_dir")
    check_dpo_vp_config(cfg)
    vp, dpo, ev, seed = cfg.dpo_vp, cfg.dpo, cfg.eval, int(cfg.seed)
    n, new_tokens = int(vp.samples_per_prompt), int(vp.max_new_tokens)
    tokenizer, task = build_tokenizer(cfg.data), build_task(cfg.data)
    problems = [prompts_for_step(task, int(vp.prompts_per_round), seed, r) for r in range(int(vp.rounds))]
    check_prompt_lengths(tokenizer, [p for ps in problems for p in ps], int(cfg.data.seq_len), new_tokens)

    mesh, parts, rest, _, state, step_fn = dpo_trainer(dpo_config(cfg), tokenizer, initial)
    eval_problems = task.eval_set(int(ev.num_problems), seed=seed) if int(ev.num_problems) else []
    generate = make_greedy_generate(parts, int(ev.max_new_tokens), valid_vocab_size=tokenizer.vocab_size)

    def greedy_accuracy(params) -> dict[str, float]:
        if not eval_problems:
            return {}
        completions = greedy_completions(generate, params, rest, tokenizer, [p.prompt for p in eval_problems],
                                         batch_size=int(ev.batch_size))
        return {"eval/greedy_accuracy": exact_match_accuracy(task, eval_problems, completions)}

    writer = MetricsWriter(run_dir)
    checkpointer = Checkpointer(ckpt_dir, max_to_keep=int(cfg.checkpoint.max_to_keep))
    rounds: list[dict[str, float]] = []
    try:
        before = greedy_accuracy(state.params)
        if before:
            writer.write(0, before)
        for r, temperature in enumerate(float(t) for t in vp.temperatures):
            t_round = time.perf_counter()
            # The state is donated by each step; the round's reference is a copy of its start.
            ref = jax.tree.map(lambda x: x.copy(), state.params)
            config = SamplingConfig(max_new_tokens=new_tokens, temperature=temperature, n=n,
                                    stop_ids=stop_ids_of(tokenizer), pad_id=tokenizer.pad_id)
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _ROUND_KEY_SALT), r)
            rollout = sample_responses(parts, state.params, rest, encode_prompts(tokenizer, problems[r]), key=key,
                                       config=config, mesh=mesh)
            texts = decode_responses(tokenizer, rollout)
            scores, correct = score_samples(task, problems[r], texts, rollout.finish_reasons, n)
            pairs, _ = round_pairs(problems[r], texts, scores, np.asarray(rollout.lengths), n, seed=seed + r,
                                   max_chosen_length=int(vp.max_chosen_length))
            record = {"round": r + 1, "round/temperature": temperature, "round/pairs": len(pairs),
                      "round/prompts_skipped": len(problems[r]) - len(pairs),
                      "round/sampled_accuracy": float(np.mean(correct))}
            if pairs:  # a round without pairs leaves the policy as it is
                encoded = cycled(encode_pairs(pairs, tokenizer, int(cfg.data.seq_len)), int(dpo.batch_size))
                iterator = iter(pair_dataset(encoded, batch_size=int(dpo.batch_size), seed=seed + r))
                state, records = train_loop(state, functools.partial(step_fn, ref=ref), iterator,
                                            int(dpo.steps_per_round), writer=writer, log_every=int(dpo.log_every),
                                            progress=bool(dpo.progress_bar), phase=f"DPO-VP round {r + 1}")
                record.update({"round/first_loss": records[0]["loss"], "round/final_loss": records[-1]["loss"]})
            del ref
            jax.block_until_ready(state.params)
            record.update({"round/samples": len(texts), "round/time_s": time.perf_counter() - t_round})
            record.update(greedy_accuracy(state.params))
            writer.write(int(state.step), record)
            rounds.append({k.removeprefix("round/").removeprefix("eval/"): v for k, v in record.items()})
        checkpointer.save(int(state.step), state, force=True)
    finally:
        writer.close()
        checkpointer.close()

    summary: dict[str, Any] = {"steps": int(state.step), "rounds": rounds}
    if eval_problems:
        after = rounds[-1]["greedy_accuracy"]
        summary.update(greedy_accuracy_before=before["eval/greedy_accuracy"], greedy_accuracy_after=after,
                       eval_accuracy=after, eval_num_problems=len(eval_problems))
    summary.update(run_dir=run_dir, checkpoint_dir=checkpointer.directory, wall_time_s=time.perf_counter() - t0)
    return summary
