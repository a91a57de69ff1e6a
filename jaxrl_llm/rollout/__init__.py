"""Rollouts: the bucketed KV-cache sampler, QaRL-aligned learner log-probs, and a serving engine.

- `sampler`: `generate(graphdef, params, prompts, key=, config=SamplingConfig(...)) -> Rollout`.
- `decode`: the one prefill step, single-token decode step and decode loop (sampler, greedy
  evaluation and engine all decode with it).
- `sampling`: temperature / top-k / top-p draws and their two log-probs.
- `prompts`: left padding, shape buckets, and the one prompt layout (positions, segment ids).
- `qarl`: learner log-probs (optionally on fake-quantized weights) and mismatch metrics.
- `engine`, `serve`: a JetStream-style slot engine and a continuous-batching loop.
"""

from jaxrl_llm.rollout.decode import Decoded, decode_loop, decode_step, prefill_step
from jaxrl_llm.rollout.engine import DecodeEngine, DecodeState, EngineAPI, Prefix, ResultTokens
from jaxrl_llm.rollout.qarl import (
    learner_logprobs,
    learner_params,
    logprob_mismatch_metrics,
    rollout_layout,
    token_batch,
)
from jaxrl_llm.rollout.sampler import (
    FINISH_LENGTH,
    FINISH_NONE,
    FINISH_REASONS,
    FINISH_STOP,
    Rollout,
    SamplingConfig,
    generate,
)
from jaxrl_llm.rollout.sampling import Draw, SamplingKnobs, process_logits, sample_tokens
from jaxrl_llm.rollout.serve import Completion, Request, serve

__all__ = [
    "FINISH_LENGTH", "FINISH_NONE", "FINISH_REASONS", "FINISH_STOP",
    "Completion", "DecodeEngine", "DecodeState", "Decoded", "Draw", "EngineAPI", "Prefix", "Request", "ResultTokens",
    "Rollout", "SamplingConfig", "SamplingKnobs",
    "decode_loop", "decode_step", "generate", "learner_logprobs", "learner_params", "logprob_mismatch_metrics",
    "prefill_step", "process_logits", "rollout_layout", "sample_tokens", "serve", "token_batch",
]
