"""RL stages before the update: prompts -> sampled responses -> rewards -> advantages -> `RolloutBatch`.

Each stage is a plain function so that a different sampler, task or estimator can be swapped in:

- `prompts_for_step`: the step's prompts, a pure function of (seed, step), so a resumed run draws
  exactly the prompts the uninterrupted run would have;
- `sample_responses`: `n` samples per prompt with `jaxrl_llm.rollout.generate` (optionally on
  quantized weights);
- `score_responses`: task rewards from the decoded text;
- `estimate`: any registered advantage estimator, over the fields the roles produced;
- `build_rollout_batch`: the `[left-padded prompt | response]` token layout plus per-token arrays.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_llm.data.tokenizer import Tokenizer, stop_ids_of
from jaxrl_llm.envs.rewards import get_scorer
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.models.lora import merge_lora
from jaxrl_llm.objectives.registry import advantage_spec
from jaxrl_llm.parallel.batch import to_host
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.quant.params import quantize_params
from jaxrl_llm.rollout.sampler import Rollout, SamplingConfig, generate
from jaxrl_llm.train.evaluate import truncate_at_stop
from jaxrl_llm.rollout.prompts import left_pad, round_up
from jaxrl_llm.train.rl_batch import RolloutBatch, assemble_token_arrays, response_to_token_axis

_STEP_SEED_STRIDE = 1_000_003  # a prime: (seed, step) pairs map to distinct task seeds


_ROUND_SEED_STRIDE = 7_919_111  # a prime above any step count: refill rounds draw fresh prompts


def prompts_for_step(task: Any, num_prompts: int, seed: int, step: int, round_index: int = 0) -> list[Problem]:
    """`num_prompts` training problems for RL step `step` (deterministic in `seed`, `step` and the
    refill round: round 0 is the step's batch, later rounds refill it under dynamic sampling)."""
    return task.sample_batch(num_prompts, seed * _STEP_SEED_STRIDE + step + round_index * _ROUND_SEED_STRIDE,
                             "train")


def concat_rollouts(rollouts: Sequence[Rollout], pad_id: int, *, width: int = 0) -> Rollout:
    """Rows of several rollouts (same response width) as one: prompts left-padded to the widest (or to
    `width` when that is wider)."""
    width = max(width, *(r.prompt_width for r in rollouts))

    def widen(r: Rollout) -> np.ndarray:
        tokens = np.asarray(r.tokens)
        return np.pad(tokens, ((0, 0), (width - r.prompt_width, 0)), constant_values=pad_id)

    fields = {f: np.concatenate([np.asarray(getattr(r, f)) for r in rollouts])
              for f in ("response", "response_mask", "logprobs", "processed_logprobs", "lengths", "prompt_lengths",
                        "finish_reasons")}
    return Rollout(tokens=np.concatenate([widen(r) for r in rollouts]), **fields)


def select_rows(rollout: Rollout, rows: np.ndarray) -> Rollout:
    """The rollout's rows `rows` (an index array), in that order."""
    return jax.tree.map(lambda x: np.asarray(x)[rows], rollout)


def pick_groups(informative: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """DAPO dynamic sampling's choice: the first `num_groups` informative groups (mixed rewards), in
    draw order, topped up with uninformative ones when there are too few.

    informative: `[G]` bool over all drawn groups. Returns `(groups [num_groups], kept [num_groups] bool)`.
    """
    good = np.flatnonzero(informative)[:num_groups]
    rest = np.flatnonzero(~informative)[:num_groups - len(good)]
    groups = np.concatenate([good, rest]).astype(np.int64)
    return groups, np.arange(num_groups) < len(good)


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], *, max_tokens: int = 0) -> list[list[int]]:
    """Token ids of each prompt text laid out as in SFT (`tokenizer.encode_prompt`); `max_tokens > 0` keeps
    the last ones (left truncation: the end of a prompt, next to the response, matters most)."""
    ids = [tokenizer.encode_prompt(t) for t in texts]
    return [x[-max_tokens:] for x in ids] if max_tokens > 0 else ids


def encode_prompts(tokenizer: Tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Token ids of each problem's prompt, laid out as in SFT (`tokenizer.encode_prompt`)."""
    return encode_texts(tokenizer, [p.prompt for p in problems])


def privileged_prompts(task: Any, problems: Sequence[Problem]) -> list[str]:
    """Each problem's privileged prompt (`task.privileged_prompt`: the prompt with a hint or a worked
    solution in front), the context of a self-teacher or a hinted (cond = 1) rollout."""
    if not hasattr(task, "privileged_prompt"):
        raise ValueError(f"task {getattr(task, 'name', type(task).__name__)!r} has no privileged_prompt(problem); "
                         "it cannot feed rl.teacher.source='privileged' or rl.condition.source='privileged'")
    return [task.privileged_prompt(p) for p in problems]


def privileged_teacher_outputs(teacher_fn: Any, params: Any, rest: Any, tokenizer: Tokenizer, texts: Sequence[str],
                               rollout: Rollout, *, max_prompt_tokens: int = 0, bucket: int = 16
                               ) -> dict[str, np.ndarray]:
    """The actor's pass (`teacher_fn`, at rollout parameters) on each row's prompt `texts[r]` followed by
    the row's sampled response: `{"logp": [B, N], ...}` over the response columns. Prompts are
    re-tokenised and left-truncated to `max_prompt_tokens` (0: no limit); response tokens are unchanged."""
    ids = encode_texts(tokenizer, texts, max_tokens=max_prompt_tokens)
    pad = tokenizer.pad_id
    # A bucketed width: the jitted teacher pass compiles once per bucket, not per longest prompt.
    prompt, prompt_lengths = left_pad(ids, round_up(max(len(r) for r in ids), bucket), pad_id=pad)
    t_width = prompt.shape[1]
    arrays = assemble_token_arrays(prompt, prompt_lengths, np.asarray(rollout.response), np.asarray(rollout.lengths),
                                   pad)
    out = teacher_fn(params, rest, arrays["tokens"], arrays["positions"], arrays["segment_ids"])
    return {k: np.asarray(v)[:, t_width:] for k, v in out.items()}


def condition_flags(num_prompts: int, samples_per_prompt: int, fraction: float) -> np.ndarray:
    """`cond [num_prompts * n]` int32: the first round(fraction * n) samples of each group are 1 (at
    least one and at most n - 1, so every group has both conditions)."""
    n = samples_per_prompt
    k = min(max(int(round(fraction * n)), 1), n - 1)
    return np.tile((np.arange(n) < k).astype(np.int32), num_prompts)


def score_with_metrics(scorers: Sequence[str], task: Any, problems: Sequence[Problem], texts: Sequence[str],
                       samples_per_prompt: int, *, lengths: np.ndarray, finished: np.ndarray, max_length: int,
                       step: int = 0, options: Mapping[str, Any] | None = None,
                       ) -> tuple[np.ndarray, dict[str, float]]:
    """Rewards from the registered scorers (`[B]` for one scorer, `[B, R]`, one column each, for
    several) and the metrics they report.

    Row `b * n + j` is sample j of problem b. A scorer that declares `group_ids` (`[B]`, b),
    `step` or `options` (`options[name]`, the `rl.<name>` section; {} when absent) receives them;
    one that returns `(rewards, metrics)` adds its metrics.
    """
    rows = [problems[i // samples_per_prompt] for i in range(len(texts))]
    group_ids = np.arange(len(texts), dtype=np.int32) // samples_per_prompt
    columns, metrics = [], {}
    for name in scorers:
        fn = get_scorer(name)
        context = {"group_ids": group_ids, "step": int(step), "options": dict((options or {}).get(name) or {})}
        accepted = inspect.signature(fn).parameters
        out = fn(task, rows, list(texts), lengths=lengths, finished=finished, max_length=max_length,
                 **{k: v for k, v in context.items() if k in accepted})
        if isinstance(out, tuple):
            out, reported = out
            metrics.update({k: float(v) for k, v in reported.items()})
        columns.append(np.asarray(out, np.float32))
    return (columns[0] if len(columns) == 1 else np.stack(columns, axis=1)), metrics


def score_with(scorers: Sequence[str], task: Any, problems: Sequence[Problem], texts: Sequence[str],
               samples_per_prompt: int, *, lengths: np.ndarray, finished: np.ndarray,
               max_length: int, step: int = 0, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """The rewards of `score_with_metrics` alone."""
    return score_with_metrics(scorers, task, problems, texts, samples_per_prompt, lengths=lengths,
                              finished=finished, max_length=max_length, step=step, options=options)[0]


def sample_responses(parts: ModelParts, params: Any, rest: Any, prompt_ids: Sequence[Sequence[int]], *,
                     key: jax.Array, config: SamplingConfig, quant_format: str = "", mesh=None) -> Rollout:
    """`config.n` responses per prompt from the policy `params` (quantized first if `quant_format`),
    as host arrays on every process. LoRA adapters are merged into their base first (`merge_lora`), so
    `quant_format` quantizes the merged weights."""
    params = merge_lora(params)
    if quant_format:
        params = quantize_params(params, quant_format)
    graphdef, state = nnx.split(parts.merge(params, rest))
    # On host for scoring and grouping, on every process (sharded rows are gathered).
    return to_host(generate(graphdef, state, list(prompt_ids), key=key, config=config, mesh=mesh))


def decode_responses(tokenizer: Tokenizer, rollout: Rollout) -> list[str]:
    """Text of each response, cut at the first stop id (eos or end-of-turn; the stop token is not in the text).

    A model's vocabulary is often padded past the tokenizer's; an id outside the tokenizer ends
    the readable text and is rendered as U+FFFD, i.e. trailing junk the verifier sees as such.
    """
    texts = []
    for row, n in zip(np.asarray(rollout.response), np.asarray(rollout.lengths)):
        ids = truncate_at_stop(row[:n], stop_ids_of(tokenizer))
        bad = [i for i, t in enumerate(ids) if not 0 <= t < tokenizer.vocab_size]
        cut = bad[0] if bad else len(ids)
        texts.append(tokenizer.decode(ids[:cut]) + ("\ufffd" if bad else ""))
    return texts


def response_pieces(tokenizer: Tokenizer, rollout: Rollout) -> list[list[str]]:
    """Per response, the decoded text of each of its tokens up to the first stop id (excluded).

    An id outside the tokenizer's vocabulary reads as U+FFFD, as in `decode_responses`. Each
    distinct id is decoded once per call.
    """
    rows = [truncate_at_stop(row[:n], stop_ids_of(tokenizer))
            for row, n in zip(np.asarray(rollout.response), np.asarray(rollout.lengths))]
    text = {t: tokenizer.decode([t]) if 0 <= t < tokenizer.vocab_size else "\ufffd"
            for t in {t for row in rows for t in row}}
    return [[text[t] for t in row] for row in rows]


def score_responses(task: Any, problems: Sequence[Problem], texts: Sequence[str],
                    samples_per_prompt: int) -> np.ndarray:
    """`rewards [len(problems) * n]` float32; row `b * n + j` is sample j of problem b."""
    if len(texts) != len(problems) * samples_per_prompt:
        raise ValueError(f"need {len(problems)} x {samples_per_prompt} responses; got {len(texts)}")
    rewards = [task.score(problems[i // samples_per_prompt], text) for i, text in enumerate(texts)]
    return np.asarray(rewards, np.float32)


def estimate(name: str, fields: dict[str, Any], num_groups: int, **kwargs: Any
             ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """`(advantages [B] or [B, T], returns [B, T] or None, metrics)` from the registered estimator `name`.

    fields: what the estimator may read (`rewards`, `group_ids`, `cond`, `token_rewards`, `values`,
    `mask`); `num_groups` is passed when the estimator takes it from the trainer.
    """
    spec = advantage_spec(name)
    if "num_groups" in spec.supplied:
        kwargs["num_groups"] = num_groups
    out = spec.fn({k: jnp.asarray(v) for k, v in fields.items() if v is not None}, **kwargs)
    returns = None if out.returns is None else np.asarray(out.returns, np.float32)
    return np.asarray(out.advantages, np.float32), returns, {k: float(v) for k, v in out.metrics.items()}


def build_rollout_batch(rollout: Rollout, rewards: np.ndarray, group_ids: np.ndarray, advantages: np.ndarray,
                        *, pad_id: int) -> RolloutBatch:
    """A `RolloutBatch` whose `old_logprobs` start as the sampler's log-probs.

    The log-probs are those of the distribution actually sampled from (`processed_logprobs`:
    after temperature, top-k and top-p), i.e. of the policy softmax(logits / T) that the learner
    optimises. The trainer usually replaces `old_logprobs` by the learner's own recomputation
    (and fills `ref_logprobs`) before the update; `rollout_logprobs` keep what the sampler reported.
    """
    response = np.asarray(rollout.response)
    width = rollout.prompt_width
    arrays = assemble_token_arrays(np.asarray(rollout.tokens)[:, :width], np.asarray(rollout.prompt_lengths),
                                   response, np.asarray(rollout.lengths), pad_id)
    logprobs = response_to_token_axis(np.asarray(rollout.processed_logprobs), width, arrays["loss_mask"])
    return RolloutBatch(**arrays, old_logprobs=logprobs, rollout_logprobs=logprobs,
                        rewards=np.asarray(rewards, np.float32), group_ids=np.asarray(group_ids, np.int32),
                        advantages=np.asarray(advantages, np.float32))
