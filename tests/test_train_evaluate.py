"""Greedy decoding over the KV cache and exact-match scoring."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arithmetic import ArithmeticTask
from jaxrl_llm.models.config import tiny
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel import make_mesh
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.train.evaluate import (
    exact_match_accuracy,
    greedy_completions,
    left_pad_prompts,
    make_greedy_generate,
    truncate_at_eos,
)

CONFIG = tiny(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1, head_dim=8)


@functools.lru_cache(maxsize=None)
def model_state():
    # A random model with a strong embedding scale, so greedy choices are not near-ties.
    parts, params, rest, _ = init_sharded(lambda: Decoder(CONFIG, rngs=nnx.Rngs(3)), make_mesh(1, 1, 1))
    params = jax.tree.map(lambda x: x, params)
    params["embed"] = params["embed"] * 50.0
    return parts, params, rest


@functools.lru_cache(maxsize=None)
def full_forward(parts):
    return jax.jit(lambda params, rest, t, p, s: parts.merge(params, rest)(t, p, segment_ids=s)[0])


def naive_greedy(parts, params, rest, prompt, n, valid=None, width=16):
    """Reference without a cache: re-run the whole (right-padded) sequence for every new token."""
    seq = list(prompt)
    for _ in range(n):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(seq)] = seq
        segments = (np.arange(width) < len(seq)).astype(np.int32)[None]
        logits = full_forward(parts)(params, rest, tokens, np.arange(width, dtype=np.int32)[None], segments)
        row = np.asarray(logits[0, len(seq) - 1])
        seq.append(int(np.argmax(row if valid is None else row[:valid])))
    return seq[len(prompt):]


def test_cached_greedy_decoding_matches_full_recompute_for_ragged_prompts():
    parts, params, rest = model_state()
    prompts = [[1, 5, 9, 20], [1, 7], [1, 30, 31, 32, 33, 34]]
    tokens, lengths = left_pad_prompts(prompts, pad_id=0)
    assert tokens.shape == (3, 6) and list(lengths) == [4, 2, 6]
    out = np.asarray(make_greedy_generate(parts, 5)(params, rest, tokens, lengths))
    assert out.shape == (3, 5)
    for row, prompt in zip(out, prompts):
        assert list(row) == naive_greedy(parts, params, rest, prompt, 5)


def test_truncate_and_exact_match():
    assert truncate_at_eos([5, 6, 2, 7], eos_id=2) == [5, 6]
    assert truncate_at_eos([5, 6], eos_id=2) == [5, 6]
    task = ArithmeticTask(1)
    problems = task.eval_set(4, seed=0)
    completions = [p.reference for p in problems[:3]] + ["x"]
    assert exact_match_accuracy(task, problems, completions) == 0.75


def test_greedy_completions_pad_the_last_batch_and_decode_text():
    parts, params, rest = model_state()
    tok = CharTokenizer()
    generate = make_greedy_generate(parts, 4, valid_vocab_size=tok.vocab_size)
    prompts = ["12+3=", "4+4=", "99+1="]
    texts = greedy_completions(generate, params, rest, tok, prompts, batch_size=2)
    assert len(texts) == 3
    for text, prompt in zip(texts, prompts):
        ids = naive_greedy(parts, params, rest, [tok.bos_id] + tok.encode(prompt), 4, valid=tok.vocab_size)
        assert text == tok.decode(truncate_at_eos(ids, tok.eos_id))


def test_greedy_generate_rejects_an_empty_response_and_pads_prompts_like_the_sampler():
    parts, _, _ = model_state()
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1; got 0"):
        make_greedy_generate(parts, 0)
    tokens, lengths = left_pad_prompts([[4, 5], [6]], pad_id=9)
    np.testing.assert_array_equal(tokens, [[4, 5], [9, 6]])
    np.testing.assert_array_equal(lengths, [2, 1])
