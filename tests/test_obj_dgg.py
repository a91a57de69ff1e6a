"""DGG gate: energy, z-score cases, never-gate conditions, bit-identical optimizer state, jit/scan use."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrl_llm.objectives as obj


def grads_with_head(head):
    return {"layers": {"mlp": jnp.ones((2, 2))}, "lm_head": {"kernel": jnp.asarray(head, jnp.float32)}}


def full_state(window_values, prev_energy=0.0):
    state = obj.dgg_init(len(window_values))
    return state._replace(window=jnp.asarray(window_values, jnp.float32), count=jnp.int32(len(window_values)),
                          prev_energy=jnp.float32(prev_energy))


WINDOW = [0.0, 0.1, -0.1, 0.05, -0.05]


def test_energy_is_squared_frobenius_norm_case_i():
    assert float(obj.head_gradient_energy(grads_with_head([[3.0, 4.0], [0.0, 0.0]]))) == 25.0
    tied = {"embed_tokens": {"embedding": jnp.array([[1.0, 2.0]])}, "mlp": jnp.ones(3)}
    assert float(obj.head_gradient_energy(tied)) == 5.0
    custom = {"out_proj": jnp.array([2.0]), "lm_head": jnp.array([10.0])}
    assert float(obj.head_gradient_energy(custom, leaf_rule=["out_proj"])) == 4.0
    assert float(obj.head_gradient_energy(custom, leaf_rule=lambda p: "out" in p)) == 4.0
    with pytest.raises(ValueError, match="no leaf matching"):
        obj.head_gradient_energy({"mlp": jnp.ones(2)})


def test_init_state_has_fixed_shapes_and_distinct_buffers():
    state = obj.dgg_init(5)
    assert state.window.shape == (5,) and all(leaf.shape == () for leaf in state[1:])
    pointers = [leaf.unsafe_buffer_pointer() for leaf in state]
    assert len(set(pointers)) == len(pointers)
    with pytest.raises(ValueError, match="window must be >= 2"):
        obj.dgg_init(1)


def test_zscore_cases_ii():
    head = [[np.sqrt(0.02), 0.0], [0.0, 0.0]]
    gated, _, m = obj.dgg_gate(grads_with_head(head), full_state(WINDOW), 2, tau=0.1)
    np.testing.assert_allclose(m["dgg/z"], 0.282843, atol=1e-5)
    assert bool(gated)
    gated, state, _ = obj.dgg_gate(grads_with_head(head), full_state(WINDOW), 2, tau=0.5)
    assert not bool(gated)
    np.testing.assert_allclose(state.window[0], 0.02, atol=1e-7)  # accepted value enters the ring buffer
    big = [[np.sqrt(0.1), 0.0], [0.0, 0.0]]
    for tau in (0.1, 0.5):
        gated, _, m = obj.dgg_gate(grads_with_head(big), full_state(WINDOW), 3, tau=tau)
        np.testing.assert_allclose(m["dgg/z"], 1.414214, atol=1e-5)
        assert bool(gated)


def test_zscore_in_float64_matches_to_1e6():
    with jax.enable_x64(True):
        grads = {"lm_head": jnp.array([[np.sqrt(0.02)]], jnp.float64)}
        _, _, m = obj.dgg_gate(grads, full_state(WINDOW), 2, tau=0.1)
        np.testing.assert_allclose(m["dgg/z"], 0.282843, atol=1e-6)


def test_never_gates_on_first_pass_or_partial_window_case_iii():
    huge = grads_with_head([[1e3, 0.0], [0.0, 0.0]])
    gated, state, _ = obj.dgg_gate(huge, full_state(WINDOW), 1, tau=0.1)
    assert not bool(gated)
    assert int(state.count) == 5  # no increment on a batch's first pass
    partial = full_state(WINDOW)._replace(count=jnp.int32(4))
    gated, _, m = obj.dgg_gate(huge, partial, 2, tau=0.1)
    assert not bool(gated) and float(m["dgg/window_full"]) == 0.0


def test_gate_stops_the_rest_of_the_batch_and_resets_on_a_new_batch():
    spike = grads_with_head([[10.0, 0.0], [0.0, 0.0]])
    calm = grads_with_head([[0.0, 0.0], [0.0, 0.0]])
    gated, state, _ = obj.dgg_gate(spike, full_state(WINDOW), 2, tau=0.5)
    assert bool(gated) and bool(state.stopped)
    gated, state, m = obj.dgg_gate(calm, state, 3, tau=0.5)
    assert bool(gated)  # reuse of this batch stays stopped
    gated, state, m = obj.dgg_gate(calm, state, 1, tau=0.5)
    assert not bool(gated) and float(m["dgg/reuse_steps_used"]) == 1.0


def test_energy_statistic_flag():
    grads = grads_with_head([[1.0, 0.0], [0.0, 0.0]])
    state = full_state([0.0, 0.1, -0.1, 0.05, -0.05], prev_energy=0.9)
    _, _, m_delta = obj.dgg_gate(grads, state, 2, tau=0.5, statistic="delta")
    _, _, m_energy = obj.dgg_gate(grads, state, 2, tau=0.5, statistic="energy")
    std = np.std(WINDOW)
    np.testing.assert_allclose(m_delta["dgg/z"], 0.1 / std, rtol=1e-4)
    np.testing.assert_allclose(m_energy["dgg/z"], 1.0 / std, rtol=1e-4)
    with pytest.raises(ValueError, match="statistic"):
        obj.dgg_gate(grads, state, 2, statistic="norm")
    with pytest.raises(ValueError, match="window=7"):
        obj.dgg_gate(grads, state, 2, window=7)


def test_gated_optimizer_state_is_bit_identical_case_iv():
    params = {"lm_head": jnp.array([[0.3, -0.2]]), "w": jnp.array([1.0, 2.0])}
    grads = {"lm_head": jnp.array([[0.5, 0.1]]), "w": jnp.array([0.2, -0.4])}
    opt = obj.gated_update(optax.adam(1e-2))
    state = opt.init(params)
    _, state = opt.update(grads, state, params, gated=False)  # non-trivial moments
    updates, new_state = jax.jit(lambda g, s: opt.update(g, s, params, gated=True))(grads, state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))
    ref_updates, _ = optax.adam(1e-2).update(grads, state, params)
    updates, _ = opt.update(grads, state, params, gated=False)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
        np.testing.assert_array_equal(a, b)


def test_dgg_wrapped_inside_jitted_scan_over_reuse_epochs():
    params = {"lm_head": jnp.array([[0.3, -0.2]]), "w": jnp.array([1.0, 2.0])}
    opt = obj.dgg_wrapped(optax.sgd(0.1), tau=2.0, window=3)
    # Head-gradient scale per reuse pass: energy increments alternate +-0.42 (z <= 1.42), then the
    # third batch spikes at pass 3.
    scales = jnp.array([1.0, 1.1, 1.0, 1.1, 1.0, 1.1, 1.0, 1.1, 1.0, 1.1, 9.0, 1.0])
    reuse = jnp.array([1, 2, 3, 4] * 3)

    @jax.jit
    def run(params):
        def step(carry, xs):
            p, s = carry
            scale, k = xs
            g = {"lm_head": scale * jnp.ones((1, 2)), "w": jnp.ones(2)}
            u, s = opt.update(g, s, p, reuse_index=k)
            return (optax.apply_updates(p, u), s), (s.gate.last_gated, s.gate.last_z)

        return jax.lax.scan(step, (params, opt.init(params)), (scales, reuse))

    (final, state), (gated, z) = run(params)
    assert gated.tolist() == [False] * 10 + [True, True]
    assert float(z[10]) > 2.0 and float(jnp.max(z[:10])) < 2.0
    np.testing.assert_allclose(final["w"], params["w"] - 0.1 * 10, atol=1e-5)
    assert int(state.gate.count) == 3 * 2 + 1  # pushes: passes 2-4 of batches 1-2, pass 2 of batch 3
