"""ICL uncertainty decomposition (spec §6) and PRM labels/metrics (spec §5), plus their notebook."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.analysis.icl_uncertainty import (
    entropy,
    first_winning_layer,
    icl_uncertainty,
    icl_uncertainty_batched,
    label_probs,
    logit_lens_label_probs,
)
from jaxrl_llm.analysis.prm import (
    arith_chain_truth,
    final_step_scores,
    first_error_labels,
    label_steps,
    monte_carlo_labels,
    prm_at_n,
    step_prf,
)
from jaxrl_llm.envs.arith_chain import ArithChainTask, parse_steps
from jaxrl_llm.models.config import ModelConfig
from jaxrl_llm.models.decoder import Decoder
from notebook_run import assert_stored_without_outputs, execute_notebook

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_uncertainty_and_neurons.ipynb"


# ---- §6 ICL uncertainty ---------------------------------------------------------------------------

def _reference(a):
    """float64 TU/EU/AU straight from the definitions."""
    a = np.asarray(a, np.float64)
    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)
    mean = a.sum(0) / a.sum()
    tu, eu = h(mean), float(np.mean([h(r) for r in a]))
    return tu, eu, tu - eu


def test_spec_values():
    tu, eu, au = icl_uncertainty([[0.9, 0.1], [0.5, 0.5]])
    np.testing.assert_allclose([tu, eu, au], [0.610864, 0.509115, 0.101749], atol=1e-6)
    tu, eu, au = icl_uncertainty([[0.3, 0.7]] * 6)
    assert abs(float(au)) < 1e-6 and abs(float(tu) - float(eu)) < 1e-6
    tu, eu, au = icl_uncertainty([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose([eu, au, tu], [0.0, 0.693147, 0.693147], atol=1e-6)


def test_invariants_and_batched_matches_reference():
    probs = np.random.default_rng(0).dirichlet(np.ones(4) * 0.5, size=(7, 6))  # [N=7, L=6, Y=4]
    tu, eu, au = icl_uncertainty_batched(probs)
    assert tu.shape == eu.shape == au.shape == (7,)
    assert (np.asarray(au) >= 0).all() and (np.asarray(tu) >= np.asarray(eu) - 1e-7).all()
    for i in range(7):
        np.testing.assert_allclose([float(x) for x in icl_uncertainty(probs[i])], _reference(probs[i]), atol=1e-6)
        np.testing.assert_allclose([tu[i], eu[i], au[i]], _reference(probs[i]), atol=1e-6)
    # TU is bounded by log Y; jit works (no value checks on tracers).
    assert float(tu.max()) <= math.log(4) + 1e-6
    np.testing.assert_allclose(jax.jit(lambda p: icl_uncertainty(p)[2])(probs[0]), au[0], atol=1e-6)
    np.testing.assert_allclose(entropy(jnp.array([0.5, 0.5, 0.0])), math.log(2), atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[\.\.\., L, Y\]"):
        icl_uncertainty([0.5, 0.5])
    with pytest.raises(ValueError, match="distribution"):
        icl_uncertainty([[0.5, 0.6], [0.5, 0.5]])
    with pytest.raises(ValueError, match="3-d"):
        icl_uncertainty_batched([[0.5, 0.5]])
    with pytest.raises(ValueError, match="label_ids"):
        label_probs(jnp.zeros((3, 5)), [1, 7])


def test_label_probs_restricts_softmax_to_label_tokens():
    logits = jnp.array([[5.0, 1.0, 0.0, 2.0], [0.0, 0.0, 9.0, 0.0]])  # [2, V=4]
    p = label_probs(logits, [1, 3])
    e = np.exp([1.0, 2.0])
    np.testing.assert_allclose(p[0], e / e.sum(), atol=1e-6)
    np.testing.assert_allclose(p[1], [0.5, 0.5], atol=1e-6)


class _Identity(nnx.Module):
    def __call__(self, x):
        return x


def test_logit_lens_on_decoder_hidden_states():
    config = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=16)
    model = Decoder(config, rngs=nnx.Rngs(0))
    tokens = jnp.array([[3, 9, 4, 17, 5]], jnp.int32)
    positions = jnp.arange(5, dtype=jnp.int32)[None]
    labels, pos = [4, 7, 11], 4

    # Residual stream after each layer (before the final norm): truncated clones with no final norm.
    residuals, per_layer_ref = [], []
    for n in range(1, config.num_layers + 1):
        cut = nnx.clone(model)
        cut.layers = nnx.List(list(cut.layers)[:n])
        normed, _ = cut.hidden(tokens, positions)
        per_layer_ref.append(label_probs(cut.logits(normed)[0, pos], labels))
        cut.final_norm = _Identity()
        residuals.append(cut.hidden(tokens, positions)[0][0, pos])
    lens = logit_lens_label_probs(jnp.stack(residuals), model.final_norm, model.logits, labels)  # [Lyr=2, Y=3]
    assert lens.shape == (2, 3)
    np.testing.assert_allclose(lens, jnp.stack(per_layer_ref), atol=1e-5)
    logits, _, hidden = model(tokens, positions, return_hidden=True)
    np.testing.assert_allclose(lens[-1], label_probs(logits[0, pos], labels), atol=1e-5)
    # Decoder.hidden is already normed: identity final norm reproduces the model's own readout.
    np.testing.assert_allclose(logit_lens_label_probs(hidden[0], lambda h: h, model.logits, labels),
                               label_probs(logits[0], labels), atol=1e-5)


def test_first_winning_layer():
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
    assert first_winning_layer(probs, 1) == 3
    assert first_winning_layer(probs, 0) == -1
    assert first_winning_layer(probs[2:3], 0) == 0


# ---- §5 PRM labels ----------------------------------------------------------------------------------

SPEC_TRUTH = ["ok", "err", "prop", "fix", "ok"]


def test_spec_labels():
    assert label_steps(SPEC_TRUTH).tolist() == [1, 0, 0, 1, 1]
    assert first_error_labels(SPEC_TRUTH).tolist() == [1, 0, 0, 0, 0]
    for truth in (SPEC_TRUTH, ["ok"] * 3, ["err", "ok", "fix"], []):
        assert len(label_steps(truth)) == len(first_error_labels(truth)) == len(truth)
    # ok after an unresolved error still relies on it -> 0; a later fix resolves it.
    assert label_steps(["err", "ok", "fix", "ok", "err", "ok"]).tolist() == [0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="truth tags"):
        label_steps(["ok", "wrong"])


def test_monte_carlo_labels():
    correct = np.array([[0, 0, 1, 0, 0, 0, 0, 0], [0] * 8, [1] * 8])  # [K=3, M=8]
    assert monte_carlo_labels(correct).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match=r"\[K, M\]"):
        monte_carlo_labels([1, 0])


def test_step_prf_hand_case():
    gold = np.array([1, 0, 0, 1, 1, 0])
    pred = np.array([1, 0, 1, 0, 1, 0])
    # positive = error steps (0): pred 0 at {1,3,5}, gold 0 at {1,2,5}: tp 2 -> P 2/3, R 2/3.
    np.testing.assert_allclose(step_prf(pred, gold), [2 / 3, 2 / 3, 2 / 3], atol=1e-9)
    # positive = correct steps (1), last step masked out: pred 1 at {0,2,4}, gold 1 at {0,3,4}: tp 2.
    p, r, f = step_prf(pred, gold, positive=1, mask=[1, 1, 1, 1, 1, 0])
    np.testing.assert_allclose([p, r, f], [2 / 3, 2 / 3, 2 / 3], atol=1e-9)
    p, r, f = step_prf([1, 1, 1], [1, 0, 0])  # no step predicted erroneous: all ratios 0
    assert (p, r, f) == (0.0, 0.0, 0.0)
    p, r, f = step_prf([0, 0, 1], [0, 1, 1])  # P 1/2, R 1, F1 2/3
    np.testing.assert_allclose([p, r, f], [0.5, 1.0, 2 / 3], atol=1e-9)


def test_prm_at_n_hand_case():
    step_scores = np.array([[[0.9, 0.2, 0.0], [0.5, 0.6, 0.7], [0.1, 0.8, 0.95]],
                            [[0.3, 0.4, 0.0], [0.2, 0.1, 0.0], [0.9, 0.35, 0.0]]])  # [P=2, N=3, K=3]
    mask = np.array([[[1, 1, 0], [1, 1, 1], [1, 1, 1]], [[1, 1, 0], [1, 0, 0], [1, 1, 0]]])
    finals = final_step_scores(step_scores, mask)
    np.testing.assert_allclose(finals, [[0.2, 0.7, 0.95], [0.4, 0.2, 0.35]])
    correct = np.array([[0, 0, 1], [0, 1, 1]])
    assert prm_at_n(finals, correct) == 0.5  # picks solution 2 (correct) and solution 0 (wrong)
    assert prm_at_n([[0.5, 0.5]], [[1, 0]]) == 1.0  # ties go to the first solution
    with pytest.raises(ValueError, match="at least one valid step"):
        final_step_scores([[0.1, 0.2]], [[0, 0]])


def test_arith_chain_truth_adapter():
    operands, ops = (12, 7, 30, 5), ("+", "-", "+")  # true steps 12+7=19; 19-30=-11; -11+5=-6
    cases = {
        "12+7=19;19-30=-11;-11+5=-6;#-6": ["ok", "ok", "ok"],
        "12+7=20;20-30=-10;-11+5=-6;#-6": ["err", "prop", "fix"],
        "12+7=19;19-30=-12;-12+5=-7;#-7": ["ok", "err", "prop"],
        "12+7=18;19-30=-11;-11+5=-6;#-6": ["err", "fix", "ok"],
        "12+7=19;19-30=-11;-11+5=-6;1+1=2;#2": ["ok", "ok", "ok", "err"],  # extra step
    }
    for response, truth in cases.items():
        tags = arith_chain_truth(operands, ops, response)
        assert tags == truth, response
        checker = [int(s.ok) for s in parse_steps(operands, ops, response)]
        assert first_error_labels(tags).tolist() == checker  # the task's propagation-only labels
    assert label_steps(cases["12+7=20;20-30=-10;-11+5=-6;#-6"]).tolist() == [0, 0, 1]
    assert label_steps(cases["12+7=18;19-30=-11;-11+5=-6;#-6"]).tolist() == [0, 1, 1]
    # Drawn problems, through their metadata: the worked solution is all "ok"; a wrong first step
    # followed by the true remaining steps is err then fixes.
    task = ArithChainTask((3, 5), num_digits=2)
    for problem in task.sample_batch(20, seed=0):
        meta = problem.metadata
        assert arith_chain_truth(meta["operands"], meta["ops"], task.worked_solution(problem)) == \
            ["ok"] * len(meta["ops"])
        first = meta["steps"][0].rsplit("=", 1)[0] + f"={int(meta['steps'][0].rsplit('=', 1)[1]) + 1}"
        response = ";".join((first,) + meta["steps"][1:]) + ";#" + problem.reference
        assert arith_chain_truth(meta["operands"], meta["ops"], response) == \
            ["err"] + ["fix"] + ["ok"] * (len(meta["ops"]) - 2)


# ---- notebook ---------------------------------------------------------------------------------------

def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def test_uncertainty_notebook_executes(tmp_path, monkeypatch):
    nb, text, has_png = execute_notebook(NOTEBOOK, tmp_path, monkeypatch, timeout=120)
    assert "TU falls with k: True" in text and "EU falls with k: True" in text
    assert "duplicated demos keep EU: True" in text
    assert has_png
