"""STRIL: the matrix game and scripted players, RI / EL indicators, the filter, behaviour cloning and a
short VRNN fit."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.analysis import stril as S


def test_payoff_matrix_is_rock_paper_scissors():
    rock, paper, scissors = 0, 1, 2
    assert S.PAYOFF[paper, rock] == 1 and S.PAYOFF[rock, paper] == -1
    assert S.PAYOFF[scissors, paper] == 1 and S.PAYOFF[rock, scissors] == 1
    np.testing.assert_array_equal(np.diag(S.PAYOFF), 0)
    np.testing.assert_array_equal(S.PAYOFF, -S.PAYOFF.T)
    assert [S.counter_move(m) for m in (None, rock, paper, scissors)] == [rock, paper, scissors, rock]


def test_scripted_players_first_moves_and_episodes():
    rng = np.random.default_rng(0)
    # dominant: paper beats the counter's opening rock, then beat(counter(prev)) = prev + 2 (mod 3)
    obs, actions, rewards = S.play_episode("dominant", 4, rng)
    np.testing.assert_array_equal(actions, [1, 0, 2, 1])
    np.testing.assert_array_equal(rewards, [1, 1, 1, 1])
    # obs = 1 + 3 a_{t-1} + o_{t-1}: (P, R) = 4, (R, S) = 3, (S, P) = 8
    np.testing.assert_array_equal(obs, [0, 4, 3, 8])
    obs, actions, rewards = S.play_episode("exploitable", 4, rng)
    np.testing.assert_array_equal(actions, [0, 0, 0, 0])  # always rock; the counter answers paper
    np.testing.assert_array_equal(rewards, [0, -1, -1, -1])
    np.testing.assert_array_equal(obs, [0, 1, 2, 2])
    a = S.play_episode("random", 10, np.random.default_rng(3), noise=0.2)
    b = S.play_episode("random", 10, np.random.default_rng(3), noise=0.2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="player must be one of"):
        S.scripted_move("mirror", None, rng)


def test_generate_games_is_deterministic_and_ordered():
    d1, d2 = S.generate_games(3, 5, 7, noise=0.1), S.generate_games(3, 5, 7, noise=0.1)
    for x, y in zip(d1, d2):
        np.testing.assert_array_equal(x, y)
    assert d1.obs.shape == d1.actions.shape == d1.rewards.shape == (9, 5)
    np.testing.assert_array_equal(d1.player, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(d1.obs[:, 0], 0)
    np.testing.assert_allclose(S.trajectory_returns([[1, 0, -1, 1], [-1, -1, -1, 0]]), [0.25, -0.75])


def test_decoder_entropy_and_randomness_indicator():
    uniform = jnp.log(jnp.full(3, 1 / 3))
    skewed = jnp.log(jnp.array([0.5, 0.25, 0.25]))
    certain = jnp.array([0.0, -1e9, -1e9])
    ent = np.asarray(S.decoder_entropy(jnp.stack([uniform, skewed, certain])))
    np.testing.assert_allclose(ent, [np.log(3), 1.5 * np.log(2), 0.0], atol=1e-6)
    logits = jnp.stack([jnp.stack([uniform, skewed, certain]), jnp.stack([certain, certain, uniform])])
    ri = S.randomness_indicator(logits)  # [2, 3, 3] -> [2]
    np.testing.assert_allclose(ri, [(np.log(3) + 1.5 * np.log(2)) / 3, np.log(3) / 3], atol=1e-6)
    ri = S.randomness_indicator(logits, mask=[[1, 1, 0], [1, 1, 0]])
    np.testing.assert_allclose(ri, [(np.log(3) + 1.5 * np.log(2)) / 2, 0.0], atol=1e-6)


def test_linear_probe_recovers_a_planted_relation():
    codes = np.random.default_rng(0).normal(size=(20, 3))
    w_true, b_true = np.array([1.5, -2.0, 0.5]), 0.25
    w, b = S.fit_linear_probe(codes, codes @ w_true + b_true)
    np.testing.assert_allclose(w, w_true, atol=1e-12)
    assert b == pytest.approx(b_true, abs=1e-12)
    returns = -(codes @ w_true + b_true)  # EL predicts -return
    np.testing.assert_allclose(S.exploited_level(codes, returns), -returns, atol=1e-12)
    with pytest.raises(ValueError, match="codes must be"):
        S.fit_linear_probe(codes, np.zeros(5))


def test_filter_keeps_both_below_median():
    # medians 0.3 and 0.2: RI < 0.3 -> {0, 2}; EL < 0.2 -> {0, 1}
    kept = S.stril_filter([0.1, 0.5, 0.2, 0.9, 0.3], [0.05, 0.1, 0.8, 0.3, 0.2])
    np.testing.assert_array_equal(kept, [0])
    # even N: medians 3.5 and 2.5: RI -> {0, 1, 2}; EL -> {1, 2, 4}
    np.testing.assert_array_equal(S.stril_filter([1, 2, 3, 4, 5, 6], [6, 1, 2, 5, 0, 3]), [1, 2])


def test_behaviour_clone_counts_and_policy_return():
    probs = S.behaviour_clone([[0, 4]], [[1, 0]], smoothing=0.01)
    np.testing.assert_allclose(probs[0], np.array([0.01, 1.01, 0.01]) / 1.03)
    np.testing.assert_allclose(probs[4], np.array([1.01, 0.01, 0.01]) / 1.03)
    np.testing.assert_allclose(probs[1], np.full(3, 1 / 3))  # unseen -> uniform
    dominant = np.zeros((S.NUM_OBS, S.NUM_ACTIONS))
    dominant[0, 1] = 1.0
    for a in range(3):
        for o in range(3):
            dominant[1 + 3 * a + o, (a + 2) % 3] = 1.0
    assert S.policy_return(dominant, 10, 3, seed=0) == 1.0
    rock = np.zeros_like(dominant)
    rock[:, 0] = 1.0
    assert S.policy_return(rock, 10, 3, seed=0) == pytest.approx(-0.9)  # a tie, then nine losses


@pytest.fixture(scope="module")
def short_run():
    data = S.generate_games(32, 12, 0)
    return data, S.run_stril(data, S.VRNNConfig(steps=200), eval_episodes=50)


def test_short_fit_lowers_the_loss_and_ranks_randomness(short_run):
    data, res = short_run
    assert res.losses[-10:].mean() < res.losses[:10].mean() - 0.5
    ri = {p: res.ri[data.player == i].mean() for i, p in enumerate(S.PLAYERS)}
    assert ri["random"] > ri["dominant"] + 0.3 and ri["random"] > ri["exploitable"] + 0.3
    el = {p: res.el[data.player == i].mean() for i, p in enumerate(S.PLAYERS)}
    assert el["exploitable"] > el["random"] > el["dominant"]


def test_filtered_cloning_beats_cloning_everything(short_run):
    data, res = short_run
    assert res.kept.size > 0 and not np.isin(data.player[res.kept], [0]).any()  # no random player kept
    assert res.bc_kept > res.bc_all + 0.3
