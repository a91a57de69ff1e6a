"""HCC scored by a decoder (analysis/hcc_model.py) and the `hcc` command (train/hcc_run.py)."""

import json

import numpy as np
import pytest
from flax import nnx

from jaxrl_llm import cli
from jaxrl_llm.analysis import hcc
from jaxrl_llm.analysis import hcc_model as hm
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arith_chain_traces import export_traces_jsonl, make_trace
from jaxrl_llm.models.config import preset
from jaxrl_llm.models.decoder import Decoder

TOK = CharTokenizer()
CONFIG = "configs/hcc_arith_chain.py"
SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1}


def _traces(n, seed=0, **kw):
    rng = np.random.default_rng(seed)
    rates = {"num_ops": 3, "error_rate": 0.3, "correction_rate": 0.7, "continuation_rate": 0.8, **kw}
    return [make_trace(rng, **rates) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    return Decoder(preset("tiny", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1, head_dim=8),
                   rngs=nnx.Rngs(0))


def _reference(logits, hidden, encoded, kind):
    """float64 numpy u, g with explicit loops: token t's uncertainty from position t - 1."""
    logits, hidden = np.asarray(logits, np.float64), np.asarray(hidden, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ids, p = encoded.ids, encoded.prompt_len
    split, spans = encoded.split, encoded.token_spans
    u, hbar = [], []
    for s, e in split.spans:
        rows = [p + t for t in range(len(spans)) if s <= spans[t, 0] < e]
        if kind == "entropy":
            vals = [-(np.exp(logp[r - 1]) * logp[r - 1]).sum() for r in rows]
        else:
            vals = [-logp[r - 1, ids[r]] for r in rows]
        u.append(np.mean(vals))
        hbar.append(hidden[rows].mean(0))
    answer = split.final_answer
    a_end = len(split.reasoning) + len("</think>") + split.answer_block.rfind(answer) + len(answer)
    h_t = hidden[p + a_end - 1]  # char tokens: the answer's last character
    prev, g = hidden[p - 1], []
    for h in hbar:
        a, b = h - prev, h_t - prev
        g.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        prev = h
    return np.asarray(u), np.asarray(g)


@pytest.mark.parametrize("kind", ["entropy", "nll"])
def test_step_values_equal_a_float64_reference_on_fixed_logits(kind):
    trace = _traces(1, seed=3)[0]
    enc = hm.encode_trace(TOK, trace.prompt, trace.completion)
    rng = np.random.default_rng(0)
    length = enc.ids.size
    logits = rng.normal(size=(length, TOK.vocab_size)).astype(np.float32) * 3
    hidden = rng.normal(size=(length, 6))
    u, g, step_ids = hm.step_inputs(hm.token_uncertainty(logits, enc.ids, kind=kind), hidden, enc)
    ref_u, ref_g = _reference(logits, hidden, enc, kind)
    np.testing.assert_allclose(u, ref_u, rtol=1e-5)
    np.testing.assert_allclose(g, ref_g, rtol=1e-6, atol=1e-9)
    assert step_ids.max() == len(trace.steps) - 1 and hm.answer_token(enc) == len(trace.completion) - 1


def test_model_scores_equal_a_reference_from_its_own_logits_and_batching_changes_nothing(tiny):
    traces = _traces(5)
    prompts, completions = [t.prompt for t in traces], [t.completion for t in traces]
    batched = hm.score_traces(tiny, TOK, prompts, completions, batch_size=3)
    for i, t in enumerate(traces):
        one = hm.score_traces(tiny, TOK, [t.prompt], [t.completion], batch_size=1)[0]
        np.testing.assert_allclose(batched[i].u, one.u, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched[i].g, one.g, rtol=1e-5, atol=1e-6)
        assert batched[i].k_ans == one.k_ans
    enc = batched[0].encoded
    tokens = enc.ids[None]
    positions = np.arange(tokens.shape[1], dtype=np.int32)[None]
    logits, _, hidden = tiny(tokens, positions, return_hidden=True)
    ref_u, ref_g = _reference(np.asarray(logits[0]), np.asarray(hidden[0]), enc, "entropy")
    np.testing.assert_allclose(batched[0].u, ref_u, rtol=1e-5)
    np.testing.assert_allclose(batched[0].g, ref_g, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched[0].m, hcc.mismatch(ref_u, ref_g), rtol=1e-4, atol=1e-5)


def _check_edit_invariants(tokenizer, completion, edit):
    split, again = hcc.split_trace(completion), hcc.split_trace(edit.text)
    kept = tokenizer.encode(edit.kept_reasoning)
    assert tokenizer.encode(split.reasoning)[: len(kept)] == kept  # a token prefix of the reasoning
    assert again.answer_block == split.answer_block and again.final_answer == split.final_answer


def test_editor_invariants_hold_on_model_scored_traces(tiny):
    traces = _traces(12, seed=1)
    scored = hm.score_traces(tiny, TOK, [t.prompt for t in traces], [t.completion for t in traces])
    cuts = 0
    for t, s in zip(traces, scored):
        for tau in (0.0, 0.3, 2.0, 100.0):
            edit = hm.scored_cut(s, tau)
            _check_edit_invariants(TOK, t.completion, edit)
            # char tokens: the removed count is the length difference, the tail whitespace is kept
            assert hm.removed_tokens(s, edit) == len(t.completion) - len(edit.text)
            cuts += edit.boundary is not None
            if tau == 100.0:
                assert edit.boundary is None and edit.text == t.completion
    assert cuts > 0


def test_hf_loaded_decoder_scores_traces(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_tiny import make_hf_checkpoint

    from jaxrl_llm.data.tokenizer import HFTokenizer
    from jaxrl_llm.models.hf import load_pretrained

    path = make_hf_checkpoint(tmp_path / "qwen2", "qwen2")
    model, _ = load_pretrained(path)
    tok = HFTokenizer.from_file(path)
    traces = _traces(4, seed=2)
    prompts, completions = [t.prompt for t in traces], [t.completion for t in traces]
    scored = hm.score_traces(model, tok, prompts, completions, batch_size=4)
    single = hm.score_traces(model, tok, prompts[:1], completions[:1], batch_size=1)[0]
    np.testing.assert_allclose(scored[0].u, single.u, rtol=1e-5, atol=1e-6)
    for t, s in zip(traces, scored):
        assert s.u.shape == s.g.shape == (len(t.steps),) and np.all(np.isfinite(s.m)) and np.all(s.u >= 0)
        assert np.all(np.abs(s.g) <= 1 + 1e-9)
        for tau in (0.0, 0.3):
            _check_edit_invariants(tok, t.completion, hm.scored_cut(s, tau))


def _run_hcc(tmp_path, path, **extra):
    overrides = {**SMALL, "hcc.input": str(path), "output_dir": str(tmp_path / "out"), **extra}
    return cli.main(["hcc", "--config", CONFIG] + [f"--config.{k}={v}" for k, v in overrides.items()])


def test_hcc_command_writes_the_edit_and_the_report(tmp_path):
    traces = _traces(10, seed=4)
    export_traces_jsonl(tmp_path / "traces.jsonl", traces)
    assert _run_hcc(tmp_path, tmp_path / "traces.jsonl", **{"hcc.fit_tau_records": 4}) == 0
    with open(tmp_path / "out" / "hcc_report.json") as f:
        report = json.load(f)
    assert set(report) >= {"num_records", "tau", "cut", "agreement"} and report["num_records"] == 10
    cut = report["cut"]
    for key in ("share_records_cut", "step_share", "step_share_mean", "token_share", "token_share_mean"):
        assert 0.0 <= cut[key] <= 1.0, key
    assert report["tau_fitted"] and report["fit_records"] == 4
    assert report["tau_at_grid_edge"] == (report["tau"] == 0.05)
    agree = report["agreement"]
    assert agree["all"]["num_labelled"] == 10 and agree["held_out"]["num_labelled"] == 6
    assert 0.0 <= agree["all"]["exact_match"] <= 1.0 and agree["all"]["mean_abs_step_error"] >= 0.0
    with open(tmp_path / "out" / "hcc_edited.jsonl") as f:
        edited = [json.loads(line) for line in f]
    assert len(edited) == 10
    removed = 0
    for rec, t in zip(edited, traces):
        assert rec["original_completion"] == t.completion and rec["prompt"] == t.prompt
        _check_edit_invariants(TOK, t.completion, hcc.hcc_edit(t.completion, rec["hcc_boundary"]))
        assert rec["completion"] == hcc.hcc_edit(t.completion, rec["hcc_boundary"]).text
        removed += rec["hcc_removed_steps"]
    assert removed == cut["steps_removed_total"]
    # agreement recomputed from the written boundaries
    pred = [len(t.steps) - 1 if r["hcc_boundary"] is None else r["hcc_boundary"] for r, t in zip(edited, traces)]
    assert agree["all"]["exact_match"] == pytest.approx(np.mean([p == t.boundary for p, t in zip(pred, traces)]))


def test_hcc_command_errors_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="hcc.input"):
        _run_hcc(tmp_path, tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+2="}) + "\n")
    with pytest.raises(ValueError, match="line 1: needs a string 'completion'"):
        _run_hcc(tmp_path, bad)
    good = tmp_path / "good.jsonl"
    export_traces_jsonl(good, _traces(2))
    with pytest.raises(ValueError, match="hcc.uncertainty"):
        _run_hcc(tmp_path, good, **{"hcc.uncertainty": "variance"})
