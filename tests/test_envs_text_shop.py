"""Text environments: the TextShop episode, the batched wrapper and action parsing."""

import numpy as np
import pytest

from jaxrl_llm.envs.text_env import INFO_KEYS, BatchedTextEnv, TextEnv, extract_action
from jaxrl_llm.envs.text_shop import Product, ShopGoal, TextShop, shop_reward


def test_shop_reward_spec_case():
    # spec: goal {shirt; red; size M; < $20}; bought a red shirt, size L, $15 -> 2/3
    goal = ShopGoal("shirt", {"color": "red"}, "M", 20)
    shirt = Product("P000", "shirt", "red", "cotton", 15, ("M", "L"))
    assert shop_reward(goal, shirt, "L") == pytest.approx(0.666667, abs=1e-6)
    assert shop_reward(goal, shirt, "M") == 1.0
    assert shop_reward(goal, Product("P1", "hat", "red", "cotton", 15, ("M",)), "M") == 0.0
    pricey = Product("P2", "shirt", "blue", "cotton", 20, ("M",))
    assert shop_reward(goal, pricey, None) == 0.0  # color, size and price all miss
    goal2 = ShopGoal("shirt", {"color": "red", "material": "silk"}, "M", 20)
    assert shop_reward(goal2, shirt, "M") == pytest.approx(0.75)


def test_extract_action():
    assert extract_action("think...<action>click[buy]</action>") == "click[buy]"
    two_tags = "<action>a</action> <action> search[red hat] </action>"
    assert extract_action(two_tags) == "search[red hat]"
    assert extract_action("  click[next] ") == "click[next]"
    assert extract_action("<action>  </action>") is None


def _run_oracle(env: TextShop, seed: int, task_id: int):
    obs = env.reset(seed, task_id)
    total, done, steps = 0.0, False, 0
    while not done:
        obs, reward, done, info = env.step(f"<action>{env.info['oracle_action']}</action>")
        assert not info["invalid"]
        total += reward
        steps += 1
    return total, info, steps


@pytest.mark.parametrize("task_id", [0, 1])
def test_oracle_plan_wins_every_task_type(task_id):
    env = TextShop()
    env.reset(0, task_id)
    assert isinstance(env, TextEnv)  # after reset: Python 3.11's check reads the info property
    for seed in range(15):
        total, info, steps = _run_oracle(env, seed, task_id)
        assert info["won"] and info["score"] == 1.0 and total == 1.0
        assert info["task_type"] == TextShop.task_types[task_id]
        assert steps <= env.max_steps


def test_same_task_and_seed_give_same_episode():
    a, b = TextShop(), TextShop()
    assert a.reset(7, 1) == b.reset(7, 1)
    assert a.info == b.info
    for _ in range(3):
        action = a.info["oracle_action"]
        assert a.step(action)[0] == b.step(action)[0]
    c = TextShop()
    c.reset(8, 1)
    assert (c.goal, c._catalog) != (a.goal, a._catalog)


def test_invalid_action_leaves_state_unchanged():
    env = TextShop()
    obs0 = env.reset(3, 0)
    info0 = env.info
    for bad in ["click[buy]", "dance", "search[]", "<action></action>", "click[P999]"]:
        obs, reward, done, info = env.step(bad)
        assert info["invalid"] and obs == obs0 and reward == 0.0 and not done
        assert info["admissible_actions"] == info0["admissible_actions"]
        assert info["oracle_action"] == info0["oracle_action"]
    obs, _, _, info = env.step(info0["oracle_action"])
    assert not info["invalid"] and obs.startswith("Results for")
    assert info["step"] == 6


def test_navigation_back_and_next():
    env = TextShop(catalog_size=80)
    env.reset(0, 0)
    obs, *_ = env.step("search[red blue green black white yellow]")  # matches almost everything
    assert "(page 1/" in obs
    assert env.info["admissible_actions"][-2:] == ["click[next]", "click[back]"]
    obs, *_ = env.step("click[next]")
    assert "(page 2/" in obs
    first = env.info["admissible_actions"][0]
    obs, *_ = env.step(first)
    assert obs.startswith(f"[{first[6:-1]}]") and "Selected size: none" in obs
    size = env.info["admissible_actions"][0]
    obs, *_ = env.step(size)
    assert f"Selected size: {size[6:-1]}" in obs
    obs, *_ = env.step("click[back]")
    assert "(page 2/" in obs
    obs, *_ = env.step("click[back]")
    assert obs.startswith("TextShop search page.")


def test_timeout_and_sticky_done():
    env = TextShop(max_steps=4)
    env.reset(1, 0)
    for i in range(4):
        obs, reward, done, info = env.step("look around")
    assert done and reward == 0.0 and not info["won"] and info["score"] == 0.0
    again = env.step(env.info["oracle_action"] or "click[buy]")
    assert again[0] == obs and again[1] == 0.0 and again[2] is True


def test_wrong_purchase_scores_partially_and_sticks():
    env = TextShop()
    env.reset(2, 0)
    goal = env.goal
    env.step(f"search[{goal.category}]")
    # buy the first listed item of another color, without choosing a size
    by_id = {p.id: p for p in env._catalog}
    clicks = [a for a in env.info["admissible_actions"] if a.startswith("click[P")]
    others = [a for a in clicks if by_id[a[6:-1]].color != goal.attributes["color"]]
    assert others, "seed 2 should list an item of another color"
    action, product = others[0], by_id[others[0][6:-1]]
    env.step(action)
    obs, reward, done, info = env.step("click[buy]")
    expected = shop_reward(goal, product, None)
    assert done and reward == pytest.approx(expected) and 0.0 < reward < 1.0 and not info["won"]
    assert env.step("click[buy]")[1:3] == (0.0, True)


def test_batched_env_interface():
    benv = BatchedTextEnv(TextShop)
    assert benv.name == "textshop" and "search" in benv.describe()
    obs, infos = benv.reset([0, 1, 0], [5, 5, 6])
    assert len(obs) == 3 and set(infos[0]) == set(INFO_KEYS)
    assert infos[0]["goal"] != infos[2]["goal"] or obs[0] != obs[2]
    rewards_total = np.zeros(3, np.float32)
    for _ in range(benv.max_steps):
        actions = [info["oracle_action"] or "noop" for info in infos]
        actions[2] = "noop"  # the third episode never acts validly
        obs, reward, done, infos = benv.step(actions)
        assert reward.dtype == np.float32 and reward.shape == (3,) and done.dtype == bool
        rewards_total += reward
        if done.all():
            break
    np.testing.assert_array_equal(rewards_total, [1.0, 1.0, 0.0])
    assert done.all() and infos[0]["won"] and not infos[2]["won"]
    with pytest.raises(ValueError, match=r"actions must have one entry per episode \(3\); got 1"):
        benv.step(["x"])
    with pytest.raises(ValueError, match="seeds must have one entry per task id"):
        benv.reset([0, 1], [0])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="catalog_size must be >= 2"):
        TextShop(catalog_size=1)
    with pytest.raises(ValueError, match="max_steps must be >= 4"):
        TextShop(max_steps=2)
    with pytest.raises(RuntimeError, match="reset must be called before step"):
        TextShop().step("click[buy]")
