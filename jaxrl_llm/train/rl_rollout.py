"""RL stages before the update: prompts -> sampled responses -> rewards -> advantages -> `RolloutBatch`.

Each stage is a plain function so that a different sampler, task or estimator can be swapped in:

- `prompts_for_step`: the step's prompts, a pure function of (seed, step), so a resumed run draws
  exactly the prompts the uninterrupted run would have;
- `sample_responses`: `n` samples per prompt with `jaxrl_llm.rollout.generate` (optionally on
  quantized weights);
- `score_responses`: task rewards from the decoded text;
- `estimate_advantages`: any registered advantage estimator;
- `build_rollout_batch`: the `[left-padded prompt | response]` token layout plus per-token arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_llm.data.tokenizer import Tokenizer
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.objectives.registry import get_advantage
from jaxrl_llm.parallel.init import ModelParts
from jaxrl_llm.quant.params import quantize_params
from jaxrl_llm.rollout.sampler import Rollout, SamplingConfig, generate
from jaxrl_llm.train.evaluate import truncate_at_eos
from jaxrl_llm.train.rl_batch import RolloutBatch, assemble_token_arrays, response_to_token_axis

_STEP_SEED_STRIDE = 1_000_003  # a prime: (seed, step) pairs map to distinct task seeds


def prompts_for_step(task: Any, num_prompts: int, seed: int, step: int) -> list[Problem]:
    """`num_prompts` training problems for RL step `step` (deterministic in `seed` and `step`)."""
    return task.sample_batch(num_prompts, seed * _STEP_SEED_STRIDE + step, "train")


def encode_prompts(tokenizer: Tokenizer, problems: Sequence[Problem]) -> list[list[int]]:
    """Token ids of each prompt, with bos prepended as in SFT."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    return [bos + tokenizer.encode(p.prompt) for p in problems]


def sample_responses(parts: ModelParts, params: Any, rest: Any, prompt_ids: Sequence[Sequence[int]], *,
                     key: jax.Array, config: SamplingConfig, quant_format: str = "", mesh=None) -> Rollout:
    """`config.n` responses per prompt from the policy `params` (quantized first if `quant_format`)."""
    if quant_format:
        params = quantize_params(params, quant_format)
    graphdef, state = nnx.split(parts.merge(params, rest))
    return generate(graphdef, state, list(prompt_ids), key=key, config=config, mesh=mesh)


def decode_responses(tokenizer: Tokenizer, rollout: Rollout) -> list[str]:
    """Text of each response, cut at eos (the eos token itself is not part of the text).

    A model's vocabulary is often padded past the tokenizer's; an id outside the tokenizer ends
    the readable text and is rendered as U+FFFD, i.e. trailing junk the verifier sees as such.
    """
    texts = []
    for row, n in zip(np.asarray(rollout.response), np.asarray(rollout.lengths)):
        ids = truncate_at_eos(row[:n], tokenizer.eos_id)
        bad = [i for i, t in enumerate(ids) if not 0 <= t < tokenizer.vocab_size]
        cut = bad[0] if bad else len(ids)
        texts.append(tokenizer.decode(ids[:cut]) + ("\ufffd" if bad else ""))
    return texts


def score_responses(task: Any, problems: Sequence[Problem], texts: Sequence[str],
                    samples_per_prompt: int) -> np.ndarray:
    """`rewards [len(problems) * n]` float32; row `b * n + j` is sample j of problem b."""
    if len(texts) != len(problems) * samples_per_prompt:
        raise ValueError(f"need {len(problems)} x {samples_per_prompt} responses; got {len(texts)}")
    rewards = [task.score(problems[i // samples_per_prompt], text) for i, text in enumerate(texts)]
    return np.asarray(rewards, np.float32)


def estimate_advantages(name: str, rewards: np.ndarray, group_ids: np.ndarray, num_groups: int,
                        **kwargs: Any) -> tuple[np.ndarray, dict[str, float]]:
    """`(advantages [B] (or [B, T]), metrics)` from the registered estimator `name`."""
    out = get_advantage(name)({"rewards": jnp.asarray(rewards), "group_ids": jnp.asarray(group_ids)},
                              num_groups=num_groups, **kwargs)
    return np.asarray(out.advantages, np.float32), {k: float(v) for k, v in out.metrics.items()}


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
