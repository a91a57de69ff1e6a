"""PRM head: per-step BCE, step-end gathering, a short training run, the "prm_head" step scorer, the `prm` command."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.analysis.prm import arith_chain_truth, first_error_labels, label_steps
from jaxrl_llm.analysis.prm_head import (
    encode_steps,
    init_head,
    injected_error_trace,
    pack_examples,
    prm_step_logits,
    step_auc,
    step_bce,
    step_end_tokens,
    truth_labels,
)
from jaxrl_llm.cli import main
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arith_chain import ArithChainTask
from jaxrl_llm.envs.step_labels import prm_step_scores, task_step_labels
from jaxrl_llm.models.config import preset
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel.init import init_sharded
from jaxrl_llm.parallel.mesh import mesh_from_config
from jaxrl_llm.parallel.rules import replicated
from jaxrl_llm.train import prm_run
from jaxrl_llm.train.state import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=8)


def _tiny_model(seed=0):
    mesh = mesh_from_config({"data": 1, "fsdp": -1, "tensor": 1})
    parts, params, rest, shardings = init_sharded(lambda: Decoder(preset("tiny", **TINY), rngs=nnx.Rngs(seed)), mesh)
    return mesh, parts, params, rest, shardings


def test_step_bce_hand_case():
    logits, labels = jnp.asarray([[0.0, 2.0]]), jnp.asarray([[1.0, 0.0]])
    expected = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    np.testing.assert_allclose(float(step_bce(logits, labels)), expected, rtol=1e-6)
    # A masked step leaves the mean: only the first step, BCE(0, 1) = log 2.
    np.testing.assert_allclose(float(step_bce(logits, labels, jnp.asarray([[1.0, 0.0]]))), math.log(2.0), rtol=1e-6)


def test_step_end_tokens_and_auc_hand_cases():
    # Pieces "1+2=3;" "3", "-1=2;" as 3 tokens: step spans [0, 6) and [6, 12).
    assert step_end_tokens(["1+2=3;", "3-1", "=2;"], [(0, 6), (6, 12)]).tolist() == [0, 2]
    # A token straddling a boundary ("3;3") ends the step whose last character it holds.
    assert step_end_tokens(["1+2=", "3;3", "-1=2;"], [(0, 6), (6, 12)]).tolist() == [1, 2]
    # Errors (gold 0) scored 0.1 and 0.6, correct steps 0.5 and 0.9: 3 of 4 pairs ordered.
    assert step_auc([0.1, 0.6, 0.5, 0.9], [0, 0, 1, 1]) == 0.75


def test_injected_error_trace_tags_and_labels():
    operands, ops = (3, 4, 5, 1), ("+", "-", "+")
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        response = injected_error_trace(operands, ops, rng, error_prob=1.0, fix_prob=0.5, max_delta=3)
        tags = arith_chain_truth(operands, ops, response)
        assert tags.count("err") == 1  # exactly one injected error
        assert truth_labels(operands, ops, response).tolist() == label_steps(tags).tolist()
        assert truth_labels(operands, ops, response, "first_error").tolist() == first_error_labels(tags).tolist()
        seen.add(tuple(tags))
    # Error at step 1, fixed at step 2: cessation labels [0, 1, 1], first-error [0, 0, 0]; the answer is right.
    assert ("err", "fix", "ok") in seen and ("err", "prop", "prop") in seen and ("ok", "ok", "err") in seen
    assert injected_error_trace(operands, ops, rng, error_prob=0.0) == "3+4=7;7-5=2;2+1=3;#3"


def test_scores_are_read_at_each_steps_last_token():
    mesh, parts, params, rest, _ = _tiny_model()
    task, tok = ArithChainTask(num_operands=(3, 4), num_digits=1), CharTokenizer()
    problems = task.sample_batch(3, 1, "train")
    rng = np.random.default_rng(1)
    responses = [injected_error_trace(p.metadata["operands"], p.metadata["ops"], rng) for p in problems]
    head = {"w": jax.random.normal(jax.random.key(3), (TINY["hidden_size"],)), "b": jnp.asarray(0.25)}
    examples = []
    for p, r in zip(problems, responses):
        spans = [(s.start, s.end) for s in task.step_labels(p, r)]
        tokens, end = encode_steps(tok, p.prompt, r, spans)
        assert [tok.decode([tokens[i]]) for i in end] == [";"] * len(spans)  # every step ends at its ';'
        examples.append(prm_run.StepExample(tokens, end.tolist(), [1] * len(end)))
    b = pack_examples(examples, seq_len=48, max_steps=4)
    args = [jnp.asarray(b[k]) for k in ("tokens", "positions", "segment_ids", "end_idx")]
    logits = np.asarray(jax.jit(lambda p, r, *a: prm_step_logits(parts.merge(p, r), head, *a))(params, rest, *args))
    hidden = jax.jit(lambda p, r, t, pos, seg: parts.merge(p, r).hidden(t, pos, segment_ids=seg)[0])(
        params, rest, *args[:3])
    hidden, w = np.asarray(hidden, np.float64), np.asarray(head["w"], np.float64)
    for i, ex in enumerate(examples):
        manual = [hidden[i, t] @ w + 0.25 for t in ex.end_idx]
        np.testing.assert_allclose(logits[i, :len(ex.end_idx)], manual, rtol=1e-4, atol=1e-5)
    # The loaded-head path (bucketed padding) gives the same scores.
    scorer = prm_run.PRMHead(parts, rest, {"trunk": params, "head": head}, tok)
    spans = [[(s.start, s.end) for s in task.step_labels(p, r)] for p, r in zip(problems, responses)]
    for i, s in enumerate(scorer.score([p.prompt for p in problems], responses, spans)):
        np.testing.assert_allclose(s, 1 / (1 + np.exp(-logits[i, :len(s)])), rtol=1e-4, atol=1e-5)


def test_short_training_separates_correct_from_corrupted_steps():
    """A tiny decoder + head, 120 steps on one-step chains whose wrong results are off by up to 60:
    held-out AUC > 0.75 and error-step F1 > 0.5 (the all-correct predictor's F1 is 0)."""
    mesh, parts, params, rest, shardings = _tiny_model()
    task, tok = ArithChainTask(num_operands=2, num_digits=1), CharTokenizer()
    traces = {"error_prob": 0.5, "fix_prob": 0.0, "max_delta": 60}

    def data(n, seed, salt):
        problems = task.sample_batch(n, seed, "train")
        responses = [r[0] for r in prm_run.trace_responses(problems, 1, seed, traces, salt)]
        labels = [truth_labels(p.metadata["operands"], p.metadata["ops"], r) for p, r in zip(problems, responses)]
        return problems, responses, labels

    problems, responses, labels = data(1000, 0, 1)
    examples = prm_run.build_examples(task, tok, problems, responses, labels)
    steps, opt_cfg = 120, {"learning_rate": 3e-3, "warmup_steps": 10, "b2": 0.98}
    optimizer = prm_run.head_optimizer(opt_cfg, steps, train_trunk=True)
    rep = replicated(mesh)
    state = create_train_state({"trunk": params, "head": init_head(TINY["hidden_size"])}, optimizer, mesh,
                               {"trunk": shardings, "head": {"w": rep, "b": rep}}, seed=0)
    step = prm_run.make_prm_step(parts, rest, optimizer, prm_run.build_schedule(opt_cfg, steps),
                                 jax.tree.map(lambda x: x.sharding, state), mesh, train_trunk=True)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = pack_examples([examples[i] for i in rng.choice(len(examples), 64, replace=False)], seq_len=24,
                              max_steps=2)
        state, metrics = step(state, batch)
    assert float(metrics["finite"]) == 1.0 and float(metrics["loss"]) < 0.5
    held_p, held_r, held_y = data(300, 7, 2)
    spans = [[(s.start, s.end) for s in task.step_labels(p, r)] for p, r in zip(held_p, held_r)]
    scores = np.concatenate(prm_run.PRMHead(parts, rest, state.params, tok).score(
        [p.prompt for p in held_p], held_r, spans))
    gold = np.concatenate(held_y)
    assert step_auc(scores, gold) > 0.75
    from jaxrl_llm.analysis.prm import step_prf
    assert step_prf((scores >= 0.5).astype(int), gold)[2] > 0.5
    assert step_prf(np.ones_like(gold), gold)[2] == 0.0


@pytest.fixture(scope="module")
def prm_run_dir(tmp_path_factory):
    """A two-step `prm` command run on a tiny model (its report and trained head)."""
    out = tmp_path_factory.mktemp("prm")
    args = ["prm", "--config", os.path.join(ROOT, "configs", "prm_arith_chain.py"), f"--config.output_dir={out}",
            "--config.train.steps=2", "--config.train.batch_size=8", "--config.prm.num_train=16",
            "--config.prm.eval.num_problems=6", "--config.train.progress_bar=false", "--config.model.hidden_size=32",
            "--config.model.intermediate_size=64", "--config.model.head_dim=8"]
    assert main(args) == 0
    return out


def test_prm_command_writes_report_with_documented_keys(prm_run_dir):
    with open(prm_run_dir / "prm_report.json") as f:
        report = json.load(f)
    assert set(prm_run.REPORT_KEYS) <= set(report)
    assert report["num_problems"] == 6 and report["num_responses"] == 6 * 8
    assert set(report["step"]) == set(prm_run.REPORT_ROWS)
    assert set(report["prm_at_n"]) == {"4", "8"}
    # The rule-based labels are the gold labels; first-error zeros include every propagation zero.
    assert report["step"]["rule_based"]["f1"] == 1.0
    assert report["step"]["first_error"]["recall"] == 1.0
    assert report["prm_at_n"]["8"]["rule_based"] == report["prm_at_n"]["8"]["pass@n"]
    # The rule-based final label is the answer's correctness, so it ranks every right solution first.
    assert report["solution_auc"]["rule_based"] == 1.0 and set(report["solution_auc"]) == set(report["step"]) - {
        "all_correct"}
    assert 0 < report["distinct_per_problem"]["correct"] <= 8 and 0 < report["distinct_per_problem"]["wrong"] <= 8
    assert "| solution AUC |" in prm_run.report_table(report)
    assert os.path.isfile(prm_run_dir / prm_run.HEAD_FILE)
    assert (prm_run_dir / "metrics.jsonl").read_text().count("\n") >= 2


def test_registered_scorer_gives_b_by_k_scores_aligned_with_step_labels(prm_run_dir):
    task, tok = ArithChainTask(num_operands=(3, 4), num_digits=1), CharTokenizer()
    problems = task.sample_batch(4, 3, "train")
    rng = np.random.default_rng(2)
    texts = [injected_error_trace(p.metadata["operands"], p.metadata["ops"], rng) for p in problems]
    pieces = [[tok.decode([t]) for t in tok.encode(r)] for r in texts]
    width = 40
    options = {"prm": "prm_head", "prm_path": str(prm_run_dir), "prm_threshold": 0.5}
    scores = prm_step_scores("prm_head", task, problems, pieces, num_steps=width, options=options)
    step_id, step_ok = task_step_labels(task, problems, pieces, num_steps=width)
    assert scores.shape == step_ok.shape == (4, width)
    head = prm_run.load_prm_head(str(prm_run_dir))
    for i, (p, r) in enumerate(zip(problems, texts)):
        k = len(task.step_labels(p, r))
        assert k == step_id[i].max() + 1
        direct = head.score([p.prompt], [r], [[(s.start, s.end) for s in task.step_labels(p, r)]])[0]
        np.testing.assert_allclose(scores[i, :k], direct, rtol=1e-6)
        assert (scores[i, :k] > 0).all() and (scores[i, :k] < 1).all() and (scores[i, k:] == 0).all()
    with pytest.raises(ValueError, match="rl.step_labels.prm_path"):
        prm_step_scores("prm_head", task, problems, pieces, num_steps=width, options={"prm": "prm_head"})
