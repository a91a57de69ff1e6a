"""Knowledge-neuron attribution and interventions (spec §7) and the FactHop world (spec §0 item 5)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrl_llm.analysis import knowledge_neurons as kn
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs import fact_hop
from jaxrl_llm.models.config import preset
from jaxrl_llm.models.decoder import Decoder

TOKENS = np.array([1, 17, 40, 5, 63, 22, 9, 71, 30, 3, 12], np.int32)  # [T] = 11


def _peaked_tiny(seed=0, gain=3.0):
    """The tiny preset with weights scaled up, so that next-token probabilities are far from uniform
    (random init gives ~1/V everywhere, and attributions of ~1e-5)."""
    model = Decoder(preset("tiny"), rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x * gain, state))


@pytest.fixture(scope="module")
def model():
    return _peaked_tiny()


@pytest.fixture(scope="module")
def answer(model):
    # The second most likely token: its probability is neither ~0 nor ~1.
    return int(np.argsort(kn.answer_prob(model, TOKENS))[-2])


@pytest.fixture(scope="module")
def coarse(model, answer):
    """The paper's m = 20 right-rule attribution (one compiled forward shared by several tests)."""
    return kn.neuron_attributions(model, TOKENS, answer, steps=20)


def _model_probs(model, tokens):
    t = len(tokens)
    logits, _ = model(jnp.asarray(tokens)[None], jnp.arange(t, dtype=jnp.int32)[None])
    return np.asarray(jax.nn.softmax(logits[0, -1]))


# ---- integrated gradients -------------------------------------------------------------------------

def test_spec_sigmoid_values():
    fn = lambda w: jax.nn.sigmoid(2.0 * w - 1.0)  # noqa: E731
    assert float(kn.integrated_gradients(fn, 1.0, steps=20)) == pytest.approx(0.461966, abs=1e-6)
    exact = float(kn.integrated_gradients(fn, 1.0, steps=4000, rule="midpoint"))
    assert exact == pytest.approx(0.462117, abs=1e-6)
    assert exact == pytest.approx(1 / (1 + math.exp(-1)) - 1 / (1 + math.exp(1)), abs=1e-6)


def test_batched_form_equals_pointwise_and_linear_fn_is_exact():
    c = jnp.array([0.5, -2.0, 3.0])
    w_bar = jnp.array([1.0, 2.0, -1.0])
    fn = lambda w: jnp.sum(c * w) + jnp.sum(w ** 2)  # noqa: E731
    pointwise = kn.integrated_gradients(fn, w_bar, steps=7)
    batched = kn.integrated_gradients(lambda p: jnp.sum(c * p, -1) + jnp.sum(p ** 2, -1), w_bar, steps=7,
                                      batched=True)
    np.testing.assert_allclose(pointwise, batched, rtol=1e-6)
    # Right rule: the quadratic term integrates to w^2 (m + 1) / m.
    np.testing.assert_allclose(pointwise, c * w_bar + w_bar ** 2 * 8 / 7, rtol=1e-6)
    np.testing.assert_allclose(kn.integrated_gradients(fn, w_bar, steps=7, rule="midpoint"),
                               c * w_bar + w_bar ** 2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(steps=2.5), dict(rule="left")])
def test_integrated_gradients_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="steps|rule"):
        kn.integrated_gradients(jnp.sum, jnp.ones(2), **kwargs)


# ---- the attribution forward -----------------------------------------------------------------------

def test_ffn_forward_equals_the_model_forward():
    model = Decoder(preset("tiny"), rngs=nnx.Rngs(1))
    tokens = jnp.asarray(np.stack([TOKENS, TOKENS[::-1]]))
    logits, _ = model(tokens, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
    ours, acts = kn.ffn_forward(model, tokens)
    np.testing.assert_allclose(ours, logits, atol=1e-6)
    assert acts.shape == (model.config.num_layers, 2, tokens.shape[1], model.config.intermediate_size)


def test_attributions_are_complete_per_layer(model, answer, coarse):
    """IG completeness: over one layer, sum_i Attr_i = P(w_bar) - P(layer's activation = 0)."""
    attr = kn.neuron_attributions(model, TOKENS, answer, steps=100, rule="midpoint")
    assert attr.shape == (2, 128)
    p = _model_probs(model, TOKENS)[answer]
    for layer in range(2):
        p0 = kn.suppress(model, TOKENS, answer, [(layer, i) for i in range(128)])
        assert abs(p - p0) > 1e-3  # a real signal, not two zeros
        assert attr[layer].sum() == pytest.approx(p - p0, rel=2e-3, abs=1e-6)
    # The paper's m = 20 right sum is close to the fine-grid integral.
    np.testing.assert_allclose(coarse.sum(1), attr.sum(1), rtol=0.15, atol=1e-4)


def test_neuron_without_an_output_path_gets_zero_attribution(answer):
    model = _peaked_tiny()
    down = model.layers[0].mlp.down_proj
    down.set_value(down.get_value().at[5].set(0.0))  # neuron (0, 5) writes nothing to the residual
    attr = kn.neuron_attributions(model, TOKENS, answer, steps=20)
    assert attr[0, 5] == 0.0 and np.count_nonzero(attr[0]) > 100


def test_layer_subset_rows_and_padding_buckets(model, answer, coarse):
    only = kn.neuron_attributions(model, TOKENS, answer, layers=[1], steps=20)
    assert not only[0].any()
    np.testing.assert_allclose(only[1], coarse[1], rtol=1e-6, atol=1e-9)
    # A prompt of 40 tokens is padded to a different bucket than one of 11; both match the model.
    long = np.concatenate([TOKENS] * 4)[:40]
    np.testing.assert_allclose(kn.answer_prob(model, long), _model_probs(model, long), atol=1e-6)


@pytest.mark.parametrize("call", [
    lambda m: kn.neuron_attributions(m, TOKENS[None], 3),
    lambda m: kn.neuron_attributions(m, TOKENS, 128),
    lambda m: kn.neuron_attributions(m, TOKENS, 3, layers=[2]),
    lambda m: kn.answer_prob(m, TOKENS, 3, scale=np.ones((2, 64))),
    lambda m: kn.answer_prob(m, TOKENS, 3, where="first"),
    lambda m: kn.enhance(m, TOKENS, 3, [(0, 128)]),
    lambda m: kn.suppress(m, TOKENS, 3, []),
])
def test_bad_inputs_name_the_argument(model, call):
    with pytest.raises(ValueError, match="tokens|answer_id|layers|scale|where|neurons"):
        call(model)


# ---- interventions ---------------------------------------------------------------------------------

def test_scale_one_leaves_the_output_unchanged(model, answer):
    plain = _model_probs(model, TOKENS)
    np.testing.assert_allclose(kn.answer_prob(model, TOKENS, scale=np.ones((2, 128))), plain, atol=1e-6)
    neurons = [(0, 3), (1, 7), (1, 100)]
    assert kn.intervene(model, TOKENS, answer, neurons, 1.0) == pytest.approx(plain[answer], abs=1e-6)
    assert kn.intervene(model, TOKENS, answer, neurons, 1.0, where="all") == pytest.approx(plain[answer], abs=1e-6)
    assert kn.enhance(model, TOKENS, answer, neurons) != pytest.approx(plain[answer], abs=1e-6)


@pytest.mark.parametrize("layer", [0, 1])
def test_suppressing_a_whole_layer_equals_zeroing_its_ffn(layer, answer):
    model = _peaked_tiny()
    all_neurons = [(layer, i) for i in range(128)]
    suppressed = kn.suppress(model, TOKENS, answer, all_neurons, where="all")
    last_only = kn.suppress(model, TOKENS, answer, all_neurons)
    down = model.layers[layer].mlp.down_proj
    down.set_value(jnp.zeros_like(down.get_value()))
    reference = _model_probs(model, TOKENS)[answer]
    assert suppressed == pytest.approx(reference, abs=1e-6)
    # The last layer's FFN at earlier positions never reaches the last position's logits.
    if layer == 1:
        assert last_only == pytest.approx(reference, abs=1e-6)
    else:
        assert last_only != pytest.approx(reference, abs=1e-6)


def test_neuron_scale_mask():
    scale = kn.neuron_scale({(0, 1), (1, 2)}, (2, 3), 2.0)
    np.testing.assert_array_equal(scale, [[1, 2, 1], [1, 1, 2]])


# ---- selection rules and the KN score --------------------------------------------------------------

def test_threshold_rule():
    attr = np.array([[0.1, 1.0, 0.2], [0.25, -3.0, 0.19]])
    assert kn.knowledge_neurons(attr) == {(0, 1), (1, 0)}           # 0.2 is not > 0.2 * 1.0
    assert kn.knowledge_neurons(attr, threshold=0.15) == {(0, 1), (1, 0), (0, 2), (1, 2)}
    assert kn.knowledge_neurons(-np.abs(attr)) == frozenset()        # nothing supports the answer
    with pytest.raises(ValueError, match="attr"):
        kn.knowledge_neurons(np.ones(3))


def test_sharing_rule():
    a, b = (0, 1), (1, 4)
    ten = [{a, b}] * 6 + [{a}] + [set()] * 3                          # a in 7 of 10, b in 6 of 10
    assert kn.shared_neurons(ten) == {a}
    three = [{a, b}, {a}, {b, (0, 0)}]                                 # a, b in 2 of 3 = 0.667
    assert kn.shared_neurons(three) == frozenset()
    assert kn.shared_neurons(three, min_share=0.6) == {a, b}
    with pytest.raises(ValueError, match="neuron_sets"):
        kn.shared_neurons([])


def test_kn_score():
    two = np.array([[2.0, 0.0], [0.0, 4.0]])
    one = np.array([[1.0, 5.0], [0.0, 2.0]])
    assert kn.kn_score(two, one, {(0, 0), (1, 1)}) == pytest.approx(2.0)   # mean 3 / mean 1.5
    with pytest.raises(ValueError, match="neurons"):
        kn.kn_score(two, one, set())
    with pytest.raises(ValueError, match="single-hop"):
        kn.kn_score(two, one, {(1, 0)})


# ---- FactHop ---------------------------------------------------------------------------------------

def test_fact_hop_is_deterministic_and_distinct():
    world = fact_hop.make_world(8, seed=3)
    assert world == fact_hop.make_world(8, seed=3)
    assert world != fact_hop.make_world(8, seed=4)
    firsts = [name[0] for name in world.capitals + world.mayors]
    assert len(set(firsts)) == 16                                     # the first letter names the entity
    assert len(set(world.countries)) == 8
    assert fact_hop.questions(world, "two_hop") == fact_hop.questions(fact_hop.make_world(8, seed=3), "two_hop")


def test_fact_hop_questions_and_records_encode_with_chars():
    world = fact_hop.make_world(13, seed=0)
    tok = CharTokenizer()
    for hop in fact_hop.HOPS:
        qs = fact_hop.questions(world, hop)
        assert len(qs) == 13 * len(fact_hop.PARAPHRASES[hop])
        for q in qs:
            assert q.prompt.endswith(" ") and tok.decode(tok.encode(q.prompt + q.answer)) == q.prompt + q.answer
    q = fact_hop.questions(world, "two_hop")[3]
    assert q.answer == world.mayors[1] and world.countries[1] in q.prompt and q.paraphrase == 0
    assert fact_hop.questions(world, "mayor")[0].prompt == f"The mayor of {world.capitals[0]} is "
    records = fact_hop.sft_records(world, two_hop_countries=[2])
    assert len(records) == 13 * 3 * 2 + 3
    assert {"prompt": f"The mayor of the capital of {world.countries[2]} is ", "completion": world.mayors[2] + "."} \
        in records
    for r in records:
        tok.encode(r["prompt"] + r["completion"])


@pytest.mark.parametrize("call", [
    lambda: fact_hop.make_world(14),
    lambda: fact_hop.make_world(0),
    lambda: fact_hop.questions(fact_hop.make_world(2), "three_hop"),
    lambda: fact_hop.sft_records(fact_hop.make_world(2), two_hop_countries=[2]),
    lambda: fact_hop.sft_records(fact_hop.make_world(2), repeats=0),
])
def test_fact_hop_rejects_bad_arguments(call):
    with pytest.raises(ValueError, match="num_countries|hop|two_hop_countries|repeats"):
        call()
