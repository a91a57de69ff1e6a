"""TextHouse: determinism, no-op invalid actions, sticky done, the oracle, the twists, ASCII text."""

import collections

import numpy as np
import pytest

from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.text_env import INFO_KEYS, BatchedTextEnv, TextEnv
from jaxrl_llm.envs.text_house import (
    House,
    HouseState,
    TextHouse,
    admissible_actions,
    apply_action,
    explorer_action,
    goal_met,
    oracle_action,
)
from jaxrl_llm.envs.text_house import STORAGE

TYPES = TextHouse.task_types


def _play_oracle(env: TextHouse, seed: int, task_id: int):
    """Follows the oracle to the end; returns [(action, obs, reward)] and the last info."""
    env.reset(seed, task_id)
    trajectory, done, info = [], False, env.info
    while not done:
        action = info["oracle_action"]
        obs, reward, done, info = env.step(f"<action>{action}</action>")
        assert not info["invalid"], (seed, task_id, action)
        trajectory.append((action, obs, reward))
    return trajectory, info


def _shortest(house: House, state: HouseState) -> int:
    """Breadth-first search over every admissible action: the true shortest plan length."""
    queue, seen = collections.deque([(state, 0)]), {state}
    while queue:
        s, depth = queue.popleft()
        if goal_met(house, s):
            return depth
        for action in admissible_actions(house, s):
            nxt = apply_action(house, s, action)[0]
            if nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, depth + 1))
    raise AssertionError("goal unreachable")


def _hand_house(task_type="heat", heater="microwave"):
    # countertop: apple (the goal object), mug; cabinet 1 (closed): book; the target is the shelf.
    receptacles = ("countertop", "cabinet 1", "fridge", "microwave", "stoveburner", "sinkbasin",
                   "desklamp", "shelf")
    house = House(task_type, receptacles, ("apple", "mug", "book"), heater, "apple", "shelf")
    state = HouseState(None, frozenset({"cabinet 1"}), ("countertop", "countertop", "cabinet 1"),
                       (frozenset(),) * 3)
    return house, state


def test_goal_texts():
    expected = {
        "pick": "put an apple on shelf",
        "look": "examine the apple under the desklamp",
        "clean": "put a clean apple on shelf",
        "heat": "put a hot apple on shelf",
        "cool": "put a cool apple on shelf",
    }
    for task_type, text in expected.items():
        assert _hand_house(task_type)[0].goal == text
    pick2 = House("pick2", ("countertop", "drawer"), ("potato", "potato"), "microwave", "potato", "drawer")
    assert pick2.goal == "put two potatoes in drawer"


def test_hand_built_house_step_by_step():
    house, s = _hand_house("heat", heater="stoveburner")  # the microwave is broken here
    assert admissible_actions(house, s) == [f"go to {r}" for r in house.receptacles]
    plan = [
        ("go to cabinet 1", "You are at the cabinet 1. It is closed."),
        ("open cabinet 1", "You open the cabinet 1. In it: book."),
        ("go to countertop", "You are at the countertop. On it: apple, mug."),
        ("take apple from countertop", "You take the apple from the countertop."),
        ("inventory", "You carry: apple."),
        ("go to microwave", "You are at the microwave."),
        ("heat apple with microwave", "The microwave is broken."),
        ("inventory", "You carry: apple."),
        ("go to stoveburner", "You are at the stoveburner."),
        ("heat apple with stoveburner", "You heat the apple with the stoveburner."),
        ("inventory", "You carry: hot apple."),
        ("go to fridge", "You are at the fridge. In it: nothing."),
        ("go to shelf", "You are at the shelf. On it: nothing."),
        ("put apple in shelf", "You put the apple on the shelf."),  # "in" accepted for "on"
    ]
    for action, message in plan:
        assert not goal_met(house, s)
        result = apply_action(house, s, action)
        assert result is not None, action
        s, obs = result
        assert obs == message, action
    assert goal_met(house, s) and s.where == ("shelf", "countertop", "cabinet 1")
    assert s.props[0] == frozenset({"hot"}) and oracle_action(house, s) is None


def test_admissible_actions_at_a_storage():
    house, s = _hand_house("pick")
    s, _ = apply_action(house, s, "go to countertop")
    acts = admissible_actions(house, s)
    assert acts[:2] == ["take apple from countertop", "take mug from countertop"]
    assert "go to countertop" not in acts and len(acts) == 2 + len(house.receptacles) - 1
    s, _ = apply_action(house, s, "take mug from countertop")
    # carrying one object: no take, only the put back
    assert admissible_actions(house, s)[0] == "put mug on countertop"
    assert apply_action(house, s, "take apple from countertop") is None
    s, _ = apply_action(house, s, "go to cabinet 1")
    assert admissible_actions(house, s)[0] == "open cabinet 1"
    assert apply_action(house, s, "put mug in cabinet 1") is None  # closed
    s, obs = apply_action(house, s, "Open  Cabinet 1.")
    assert obs == "You open the cabinet 1. In it: book." and admissible_actions(house, s)[:2] == [
        "close cabinet 1", "put mug in cabinet 1"]
    s, obs = apply_action(house, s, "put mug on cabinet 1")
    assert obs == "You put the mug in the cabinet 1." and s.where[1] == "cabinet 1"


def test_same_task_and_seed_give_same_episode():
    a, b = TextHouse(), TextHouse()
    for task_id in range(6):
        assert a.reset(11, task_id) == b.reset(11, task_id)
        assert a.info == b.info and a.house == b.house and a.state == b.state
        assert _play_oracle(a, 11, task_id) == _play_oracle(b, 11, task_id)


def test_different_seeds_give_different_houses():
    env = TextHouse()
    for task_id in range(6):
        houses = set()
        for seed in range(10):
            env.reset(seed, task_id)
            houses.add((env.house, env.state))
        assert len(houses) == 10
    heaters, closed_sets = set(), set()
    for seed in range(30):
        env.reset(seed, 3)
        heaters.add(env.house.heater)
        closed_sets.add(env.state.closed)
    assert heaters == {"microwave", "stoveburner"} and len(closed_sets) > 3


@pytest.mark.parametrize("task_id", range(6))
def test_oracle_plan_wins_every_task_type(task_id):
    env = TextHouse()
    env.reset(0, task_id)
    assert isinstance(env, TextEnv)
    for seed in range(15):
        trajectory, info = _play_oracle(env, seed, task_id)
        rewards = [r for _, _, r in trajectory]
        assert rewards.count(1.0) == 1 and rewards[-1] == 1.0 and sum(rewards) == 1.0
        assert info["won"] and info["score"] == 1.0 and info["oracle_action"] is None
        assert info["task_type"] == TYPES[task_id] and info["step"] == len(trajectory)
        assert len(trajectory) <= env.max_steps and trajectory[-1][1].endswith("\nTask complete.")


@pytest.mark.parametrize("task_id", range(6))
def test_oracle_is_a_shortest_plan_even_after_detours(task_id):
    env = TextHouse(num_receptacles=6, num_objects=5, max_steps=30)
    rng = np.random.default_rng(task_id)
    for seed in range(2):
        trajectory, _ = _play_oracle(env, seed, task_id)
        env.reset(seed, task_id)
        assert len(trajectory) == _shortest(env.house, env.state)
        # three random admissible actions (wrong objects taken, doors closed), then the oracle
        for _ in range(3):
            acts = env.info["admissible_actions"]
            env.step(acts[int(rng.integers(len(acts)))])
        if env.info["won"]:
            continue
        house, start, steps, done = env.house, env.state, 0, False
        while not done:
            _, _, done, info = env.step(env.info["oracle_action"])
            assert not info["invalid"]
            steps += 1
        assert info["won"]
        assert steps == _shortest(house, start)


def test_invalid_actions_are_no_ops():
    env = TextHouse()
    env.reset(5, 3)
    env.step("go to countertop")
    obs0, info0, state0 = env._obs, env.info, env.state
    # garbage, unknown places, and actions that need another place or a carried object
    bad_actions = ["dance", "<action></action>", "go to garage", "take egg from fridge",
                   "heat apple with microwave", "use desklamp", "put mug on countertop",
                   "go to countertop", "open countertop"]
    for k, bad in enumerate(bad_actions, start=1):
        obs, reward, done, info = env.step(bad)
        assert info["invalid"] and obs == obs0 and reward == 0.0 and not done
        assert env.state == state0 and info["step"] == info0["step"] + k
        assert {key: v for key, v in info.items() if key not in ("step", "invalid")} == {
            key: v for key, v in info0.items() if key not in ("step", "invalid")}
    for fine in ["look", "inventory", "<action>look</action>"]:
        obs, _, _, info = env.step(fine)
        assert not info["invalid"] and env.state == state0
    assert env.step("look")[0] == obs0  # look re-describes the place


def test_sticky_done_after_win_and_after_timeout():
    env = TextHouse()
    trajectory, _ = _play_oracle(env, 2, 0)
    last_obs = trajectory[-1][1]
    for action in ["look", "go to countertop", "garbage"]:
        obs, reward, done, info = env.step(action)
        assert (obs, reward, done) == (last_obs, 0.0, True)
        assert info["won"] and not info["invalid"] and info["admissible_actions"] == []
        assert info["step"] == len(trajectory)
    env = TextHouse(max_steps=11)
    env.reset(2, 1)
    for _ in range(11):
        obs, reward, done, info = env.step("look")
    assert done and reward == 0.0 and not info["won"] and info["score"] == 0.0
    assert obs.endswith("\nOut of steps.") and info["oracle_action"] is None
    assert env.step(env.info["oracle_action"] or "look")[:3] == (obs, 0.0, True)


def test_broken_stoveburner_does_not_heat():
    env = TextHouse()
    for seed in range(50):
        env.reset(seed, 3)
        if env.house.heater == "microwave":
            break
    assert env.house.heater == "microwave" and "stoveburner" in env.house.receptacles
    while env.state.held is None:  # the oracle fetches the object to heat first
        env.step(env.info["oracle_action"])
    obj = env.house.goal_object
    env.step("go to stoveburner")
    obs, reward, done, info = env.step(f"heat {obj} with stoveburner")
    assert obs == "The stoveburner is broken." and not info["invalid"] and (reward, done) == (0.0, False)
    assert env.state.props[env.state.held] == frozenset()
    assert env.step("inventory")[0] == f"You carry: {obj}."
    assert info["oracle_action"] == "go to microwave", seed
    env.step("go to microwave")
    obs, *_ = env.step(f"heat {obj} with microwave")
    assert obs == f"You heat the {obj} with the microwave."
    assert env.state.props[env.state.held] == frozenset({"hot"})


def test_closed_containers_hide_their_objects():
    env = TextHouse(closed_prob=1.0)
    for seed in range(20):
        env.reset(seed, 0)
        s = env.state
        boxes = [r for r in ("cabinet 1", "cabinet 2", "drawer", "fridge") if r in s.where]
        if boxes:
            break
    box = boxes[0]
    assert box in s.closed
    inside = sorted(env.house.objects[i] for i, w in enumerate(s.where) if w == box)
    obs, *_ = env.step(f"go to {box}")
    assert obs == f"You are at the {box}. It is closed."
    assert not any(a.startswith("take") for a in env.info["admissible_actions"])
    obs, *_ = env.step(f"open {box}")
    assert obs == f"You open the {box}. In it: {', '.join(inside)}."
    assert [a for a in env.info["admissible_actions"] if a.startswith("take")] == [
        f"take {o} from {box}" for o in sorted(set(inside))]
    open_env = TextHouse(closed_prob=0.0)
    open_env.reset(4, 0)
    assert open_env.state.closed == frozenset()


def test_every_text_encodes_with_the_char_tokenizer():
    tok, env = CharTokenizer(), TextHouse(num_receptacles=10, num_objects=8)
    tok.encode(env.describe())
    rng = np.random.default_rng(0)
    longest = 0
    for task_id in range(12):
        obs = env.reset(task_id, task_id)
        for t in range(env.max_steps):
            info = env.info
            for text in [obs, info["goal"], info["privileged"], *info["admissible_actions"]]:
                tok.encode(text)
            longest = max(longest, len(obs))
            acts = info["admissible_actions"]
            action = info["oracle_action"] if t % 2 else acts[int(rng.integers(len(acts)))]
            obs, _, done, _ = env.step(action)
            if done:
                break
        tok.encode(obs)
        longest = max(longest, len(obs))
    assert longest <= 160


def test_batched_env_over_texthouse():
    benv = BatchedTextEnv(TextHouse)
    assert benv.name == "texthouse" and benv.task_types == TYPES and "desklamp" in benv.describe()
    obs, infos = benv.reset(list(range(6)), [9] * 6)
    assert all(o.startswith("You are in a house. Receptacles: countertop") for o in obs)
    assert [i["task_type"] for i in infos] == list(TYPES) and set(infos[0]) == set(INFO_KEYS) | {"explorer_action"}
    total = np.zeros(6, np.float32)
    for _ in range(benv.max_steps):
        actions = [info["oracle_action"] or "look" for info in infos]
        actions[5] = "inventory"  # the pick2 episode never moves
        obs, reward, done, infos = benv.step(actions)
        assert reward.dtype == np.float32 and done.dtype == bool and reward.shape == (6,)
        total += reward
    np.testing.assert_array_equal(total, [1, 1, 1, 1, 1, 0])
    assert done.all() and [i["won"] for i in infos] == [True] * 5 + [False]


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"num_receptacles must be an integer in \[6, 10\]; got 5"):
        TextHouse(num_receptacles=5)
    with pytest.raises(ValueError, match=r"num_objects must be an integer in \[5, 8\].*got 9"):
        TextHouse(num_objects=9)
    with pytest.raises(ValueError, match=r"closed_prob must be a probability in \[0, 1\]; got 1.5"):
        TextHouse(closed_prob=1.5)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 11"):
        TextHouse(max_steps=8)
    with pytest.raises(RuntimeError, match="reset must be called before step"):
        TextHouse().step("look")


def test_explorer_searches_in_order_where_the_oracle_walks_to_the_hidden_object():
    # pick: the apple is hidden in the closed cabinet 1; the oracle goes there first, the explorer
    # looks on the countertop (the first storage in the house's order) before it.
    receptacles = ("countertop", "cabinet 1", "fridge", "microwave", "sinkbasin", "desklamp", "shelf")
    house = House("pick", receptacles, ("apple", "mug", "book"), "microwave", "apple", "shelf")
    state = HouseState(None, frozenset({"cabinet 1"}), ("cabinet 1", "countertop", "countertop"),
                       (frozenset(),) * 3)
    assert oracle_action(house, state) == "go to cabinet 1"
    seen, plan = frozenset(), []
    while (action := explorer_action(house, state, seen)) is not None:
        plan.append(action)
        state = apply_action(house, state, action)[0]
        if state.at in STORAGE and state.at not in state.closed:
            seen |= {state.at}  # the contents of an open storage receptacle are shown on arrival
    assert plan == ["go to countertop", "go to cabinet 1", "open cabinet 1", "take apple from cabinet 1",
                    "go to shelf", "put apple on shelf"]
    assert goal_met(house, state)


@pytest.mark.parametrize("task_id", range(6))
def test_explorer_wins_every_task_type_from_what_it_has_observed(task_id):
    env = TextHouse(max_steps=40)
    for seed in range(15):
        env.reset(seed, task_id)
        info, done, seen, steps = env.info, False, set(), 0
        while not done:
            action = info["explorer_action"]
            if action.startswith("go to ") and action[6:] in STORAGE and action[6:] not in seen:
                # a walk to unseen storage is the search's next stop, never a jump to a hidden object
                unseen = [r for r in env.house.receptacles if r in STORAGE and r not in seen]
                assert action[6:] == unseen[0] or info["oracle_action"] == action, (seed, action)
            obs, _, done, info = env.step(action)
            assert not info["invalid"], (seed, task_id, action)
            if obs.startswith("You are at the ") and "It is closed" not in obs or obs.startswith("You open"):
                seen.add(env.state.at)
            steps += 1
        assert info["won"] and info["explorer_action"] is None, (seed, task_id)
        assert steps >= len(_play_oracle(TextHouse(max_steps=40), seed, task_id)[0])
