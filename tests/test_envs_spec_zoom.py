"""SpecZoom: determinism, the scripted expert, the Spec-o3 reward through the answer path,
invalid zooms, sticky done and character-encodable observations."""

import numpy as np
import pytest

from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.spec_zoom import LINES, NUM_BINS, SpecZoom, oracle_trajectory, render_strip
from jaxrl_llm.envs.text_env import INFO_KEYS, BatchedTextEnv, TextEnv


def _seed_with_truth(task_id: int, truth: str) -> int:
    env = SpecZoom()
    for seed in range(200):
        env.reset(seed, task_id)
        if env.truth == truth:
            return seed
    raise AssertionError(f"no seed with truth {truth}")


def test_protocol_info_keys_and_description():
    env = SpecZoom()
    env.reset(0, 0)
    assert isinstance(env, TextEnv)
    assert tuple(env.info) == INFO_KEYS
    assert env.name == "speczoom" and env.max_steps == 8
    assert "zoom[lmin,lmax]" in env.describe() and "6563" in env.describe()
    assert env.info["privileged"] == f"the line to inspect is near {env.target} ({LINES[env.target]})"


def test_same_task_and_seed_give_same_episode():
    a, b = SpecZoom(), SpecZoom()
    assert a.reset(11, 1) == b.reset(11, 1)
    np.testing.assert_array_equal(a.flux, b.flux)
    assert a.info == b.info and a.truth == b.truth
    for action in ["zoom[5000,5100]", a.info["oracle_action"]]:
        assert a.step(action)[:3] == b.step(action)[:3]
    c = SpecZoom()
    c.reset(12, 1)
    assert not np.array_equal(c.flux, a.flux)


@pytest.mark.parametrize("task_id", [0, 1])
def test_oracle_wins_every_seed(task_id):
    env = SpecZoom()
    truths = set()
    for seed in range(25):
        pairs = oracle_trajectory(env, seed, task_id)
        info = env.info
        assert len(pairs) == 2 and pairs[0][1].startswith("zoom[")
        assert info["won"] and info["score"] == 1.0 and info["task_type"] == SpecZoom.task_types[task_id]
        truths.add(env.truth)
        # replaying the pairs reproduces the final reward 1.0
        env.reset(seed, task_id)
        rewards = [env.step(a)[1] for _, a in pairs]
        assert rewards == [0.0, 1.0]
    assert truths == {"YES", "NO"}


@pytest.mark.parametrize("task_id", [0, 1])
def test_oracle_window_strip_reveals_the_class(task_id):
    # the expert's zoom is informative: a fixed threshold on its digits recovers the truth
    env = SpecZoom()
    for seed in range(40):
        obs = env.reset(seed, task_id)
        assert "\n4000-7000: " in obs
        strip = env.step(env.info["oracle_action"])[0].split(": ")[1]
        digits = [int(c) for c in strip]
        seen = max(digits) >= 7 if env.task_type == "emission" else min(digits) <= 2
        assert seen == (env.truth == "YES"), (seed, strip)


@pytest.mark.parametrize(
    "answer_for, formatted, expected",
    [("truth", True, 1.0), ("truth", False, 0.8), ("wrong", True, 0.0), ("wrong", False, -0.2)],
)
def test_speco3_reward_through_the_answer_path(answer_for, formatted, expected):
    env = SpecZoom()
    env.reset(_seed_with_truth(0, "YES"), 0)
    choice = "YES" if answer_for == "truth" else "NO"
    action = f"<answer>\\boxed{{{choice}}}</answer>" if formatted else f"\\boxed{{{choice}}}"
    obs, reward, done, info = env.step(f"<action>{action}</action>")
    assert done and not info["invalid"] and obs == "Episode finished."
    assert reward == pytest.approx(expected)
    assert info["won"] == (expected == 1.0)
    assert info["score"] == pytest.approx(max(expected, 0.0))


def test_invalid_zoom_leaves_state_unchanged():
    env = SpecZoom()
    obs0 = env.reset(5, 1)
    flux0 = env.flux.copy()
    oracle0 = env.info["oracle_action"]
    bad = ["zoom[6600,6500]", "zoom[3900,4100]", "zoom[6990,7010]", "zoom[6500,6510]",
           "zoom[6500]", "zoom[a,b]", "<action> </action>"]  # 7 < max_steps turns
    for i, action in enumerate(bad, start=1):
        obs, reward, done, info = env.step(action)
        assert info["invalid"] and obs == obs0 and reward == 0.0 and not done
        assert info["oracle_action"] == oracle0 and info["step"] == i
        np.testing.assert_array_equal(env.flux, flux0)
    # the eighth invalid turn spends the budget: scored as an empty answer (Spec-o3: -0.2)
    obs, reward, done, info = env.step("look")
    assert info["invalid"] and done and reward == pytest.approx(-0.2)
    # a fresh episode: a valid zoom after invalid ones behaves as from the start
    env.reset(5, 1)
    env.step("zoom[6600,6500]")
    obs, _, done, info = env.step("zoom[6500,6532]")
    assert not info["invalid"] and not done
    assert obs == "6500-6532: " + render_strip(env.grid, env.flux, 6500.0, 6532.0)


def test_running_out_of_turns_is_a_format_error():
    env = SpecZoom(max_steps=3)
    env.reset(2, 0)
    rewards = [env.step("zoom[4100,4200]")[1] for _ in range(3)]
    assert rewards == [0.0, 0.0, pytest.approx(-0.2)]
    assert env.info["won"] is False and env.info["score"] == 0.0


def test_sticky_done():
    env = SpecZoom()
    env.reset(0, 0)
    env.step(env.info["oracle_action"])
    obs, reward, done, info = env.step(env.info["oracle_action"])
    assert done and reward == 1.0
    for action in ["zoom[5000,5100]", "<answer>\\boxed{NO}</answer>"]:
        assert env.step(action)[:3] == (obs, 0.0, True)
        assert env.info["won"] and env.info["admissible_actions"] == [] and env.info["oracle_action"] is None


def test_observations_are_char_encodable_and_short():
    tok = CharTokenizer()
    env = SpecZoom()
    for task_id in range(2):
        for seed in range(10):
            for obs, action in oracle_trajectory(env, seed, task_id):
                assert len(obs) <= 200
                assert tok.decode(tok.encode(obs)) == obs
                tok.encode(action)
    tok.encode(env.describe())


def test_render_strip_scale():
    grid = np.arange(4000.0, 7000.25, 0.5)
    flux = np.ones_like(grid)
    assert render_strip(grid, flux, 4000.0, 7000.0) == "4" * NUM_BINS
    flux[grid >= 5000] = 2.0  # a step: f = 2 -> digit 12, clipped to 9
    # bin 15 = [4999, 5000): sub-samples 4999.25 (f 1) and 4999.75 (f 1.5, interpolated) -> 1.25 -> 6
    assert render_strip(grid, flux, 4984.0, 5016.0) == "4" * 15 + "6" + "9" * 16
    # f = 0.75 -> 4 + 8 (-0.25) = 2
    assert render_strip(grid, np.full_like(grid, 0.75), 6000.0, 6100.0) == "2" * NUM_BINS


def test_batched_speczoom():
    env = BatchedTextEnv(SpecZoom)
    obs, infos = env.reset([0, 1], [3, 3])
    actions = [i["oracle_action"] for i in infos]
    obs, reward, done, infos = env.step(actions)
    obs, reward, done, infos = env.step([i["oracle_action"] for i in infos])
    np.testing.assert_array_equal(reward, [1.0, 1.0])
    assert done.all()
