"""The turn prompt layout and the turn-level rollout loop (no model: scripted policies)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrl_llm.agents.prompt import PromptBuilder, Turn, format_action, privileged_prompt
from jaxrl_llm.agents.rollout import episode_returns, run_episodes, turn_advantages
from jaxrl_llm.envs.text_env import BatchedTextEnv
from jaxrl_llm.envs.text_shop import TextShop


def test_prompt_layout_is_exact():
    b = PromptBuilder(instruction="Act.", history_turns=1)
    text = b.render("buy a hat", "page 3", history=[Turn("page 1", "a1"), Turn("page 2", "a2")],
                    admissible=["x", "y"], skill_block="Skill: look first.")
    assert text == "Act.\nSkill: look first.\nGoal: buy a hat\nBefore: page 2\nDid: a2\nNow: page 3\nActions: x | y\n"
    none = PromptBuilder(instruction="", history_turns=0, show_actions=False)
    assert none.render("g", "o", history=[Turn("b", "a")], admissible=["x"]) == "Goal: g\nNow: o\n"
    assert PromptBuilder(max_actions=1).render("g", "o", admissible=["x", "y"]).endswith("Actions: x\n")


def test_action_formats_and_privileged_prefix():
    assert format_action("go to fridge", "plain") == "go to fridge"
    assert format_action("go to fridge", "tagged") == "<action>go to fridge</action>"
    assert privileged_prompt("Heat it.", "Goal: g\n") == "[Privileged Skill Information]\nHeat it.\n\nGoal: g\n"
    with pytest.raises(ValueError, match="action_format"):
        PromptBuilder(action_format="json")
    with pytest.raises(ValueError, match="history_turns"):
        PromptBuilder(history_turns=-1)


def _oracle_act(env_holder, wrong_first=False):
    """A scripted policy reading the oracle action of each episode's current state."""
    def act(prompts, turn):
        infos = [e.info for e in env_holder._envs]
        out = []
        for i, info in enumerate(infos):
            action = info["oracle_action"] or "click[back]"
            if wrong_first and turn == 0 and i % 2 == 0:
                action = "dance"  # unparsable for the shop: an invalid turn
            out.append(f"<action>{action}</action>")
        return out, [(turn, i) for i in range(len(prompts))]
    return act


def test_oracle_policy_wins_every_episode_and_rows_are_live_turns():
    env = BatchedTextEnv(TextShop)
    episodes = [(0, 3), (1, 3), (0, 4), (1, 5)]
    out = run_episodes(env, PromptBuilder(), episodes, act=_oracle_act(env), max_turns=15)
    assert out.won.all() and np.allclose(out.score, 1.0) and not out.cut.any()
    # one row per live turn, turn-major: every episode's turns 0..num_turns-1 appear exactly once
    assert len(out.prompts) == int(out.num_turns.sum())
    for e in range(4):
        assert sorted(out.turn[out.episode == e].tolist()) == list(range(out.num_turns[e]))
    assert not out.invalid.any() and (out.invalid_turns == 0).all()
    assert out.task_type == ["color", "color_material", "color", "color_material"]
    # the first prompt of an episode shows its goal and no history line
    first = out.prompts[0]
    assert first.startswith(PromptBuilder().instruction) and "Goal: " in first and "Before: " not in first
    np.testing.assert_allclose(episode_returns(out), 1.0)


def test_invalid_turns_are_penalised_and_cut_episodes_score_zero():
    env = BatchedTextEnv(TextShop)
    episodes = [(0, 3), (1, 3)]
    out = run_episodes(env, PromptBuilder(), episodes, act=_oracle_act(env, wrong_first=True), max_turns=15)
    assert out.invalid_turns.tolist() == [1, 0] and out.invalid[out.episode == 0][0]
    np.testing.assert_allclose(episode_returns(out, invalid_penalty=0.1), [0.9, 1.0], atol=1e-6)
    np.testing.assert_allclose(episode_returns(out, invalid_penalty=0.0, reward="won"), [1.0, 1.0])
    np.testing.assert_allclose(episode_returns(out, invalid_penalty=0.1, reward="return"), out.env_return - [0.1, 0.0],
                               atol=1e-6)
    with pytest.raises(ValueError, match="agent reward"):
        episode_returns(out, reward="steps")
    env = BatchedTextEnv(TextShop)
    short = run_episodes(env, PromptBuilder(), episodes, act=_oracle_act(env), max_turns=1)
    assert short.cut.all() and (short.num_turns == 1).all() and not short.won.any()


def test_skill_blocks_reach_the_prompt_and_are_flagged():
    env = BatchedTextEnv(TextShop)
    out = run_episodes(env, PromptBuilder(), [(0, 1), (0, 2)], act=_oracle_act(env), max_turns=15,
                       skills=lambda i, goal, obs, turn: "Skill: search first." if i == 1 else "")
    assert all(("Skill: search first." in p) == s for p, s in zip(out.prompts, out.skill_injected))
    assert out.skill_injected[out.episode == 1].all() and not out.skill_injected[out.episode == 0].any()


def test_act_must_answer_every_episode():
    env = BatchedTextEnv(TextShop)
    with pytest.raises(ValueError, match="act must return 2 responses"):
        run_episodes(env, PromptBuilder(), [(0, 1), (0, 2)], act=lambda p, t: (["x"], [0]), max_turns=3)
    with pytest.raises(ValueError, match="max_turns"):
        run_episodes(env, PromptBuilder(), [(0, 1)], act=lambda p, t: (["x"], [0]), max_turns=0)


def test_turn_advantages_hand_case():
    # Group of 2 episodes: a win in 2 turns (adv +1) and a loss cut at 6 turns (adv -1). Mean turns 4.
    rows = [0, 0, 1, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(turn_advantages([1.0, -1.0], rows), [1, 1, -1, -1, -1, -1, -1, -1])
    np.testing.assert_allclose(turn_advantages([1.0, -1.0], rows, credit="episode"),
                               [2, 2] + [-4 / 6] * 6, rtol=1e-6)
    # "turn" credit: the rows of a zero-mean group sum to 2 - 6 = -4; "episode": to 0.
    assert turn_advantages([1.0, -1.0], rows).sum() == -4.0
    assert abs(turn_advantages([1.0, -1.0], rows, credit="episode").sum()) < 1e-6
    # An episode without rows (here episode 2) does not enter the mean of turns.
    np.testing.assert_allclose(turn_advantages([1.0, -1.0, 5.0], [0, 1, 1], credit="episode"), [1.5, -0.75, -0.75])
    # The invalid penalty on the invalid rows only, after the episode credit.
    np.testing.assert_allclose(turn_advantages([1.0, -1.0], rows, credit="episode", invalid=[0, 0, 1, 0, 0, 0, 0, 1],
                                               invalid_penalty=0.5),
                               [2, 2, -4 / 6 - 0.5] + [-4 / 6] * 4 + [-4 / 6 - 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="invalid must be"):
        turn_advantages([1.0, -1.0], rows, invalid=[True], invalid_penalty=0.5)
    with pytest.raises(ValueError, match="agent.turn_credit"):
        turn_advantages([1.0], [0], credit="trajectory")
    with pytest.raises(ValueError, match="row_episode"):
        turn_advantages([1.0], [1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_turn_advantages_episode_credit_weighs_every_episode_alike(turns, seed):
    rng = np.random.default_rng(seed)
    adv = rng.normal(size=len(turns)).astype(np.float32)
    rows = np.repeat(np.arange(len(turns)), turns)
    out = turn_advantages(adv, rows, credit="episode")
    per_episode = np.bincount(rows, weights=out, minlength=len(turns))
    # Each episode's rows sum to mean(turns) x its advantage, whatever its length.
    np.testing.assert_allclose(per_episode, np.mean(turns) * adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(turn_advantages(adv, rows), adv[rows])
