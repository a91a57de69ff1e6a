"""MAP on TextHouse: the goal-free explorer, its map, the map as every turn prompt's context (SFT records
and one RL step), checked against the House dataclass."""

import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.agents.map import MAP_HEADER, explore, house_map, render_map
from jaxrl_llm.agents.task import AgentTask
from jaxrl_llm.envs.text_house import HEATERS, TextHouse
from jaxrl_llm.train.agent_step import _EPISODE_SEED_STRIDE, collect_agent_batch
from jaxrl_llm.train.rl import setup_rl

SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1, "sft.train.steps": 0, "rl.prompts_per_step": 2, "rl.samples_per_prompt": 2,
         "rl.max_new_tokens": 4, "agent.max_turns": 3, "rl.minibatches": 1, "rl.progress_bar": False,
         "eval.num_problems": 2, "checkpoint.every": 0}


def _config(path, **overrides):
    cfg = cli.load_config_file(path)
    for key, value in {**SMALL, **overrides}.items():
        cli.apply_override(cfg, key, str(value))
    return cfg


def _house(task_id, seed):
    env = TextHouse()
    env.reset(seed, task_id)
    return env.house, env.state


def test_the_explorers_map_is_deterministic():
    for task_id, seed in ((0, 1), (9, 4), (17, 23)):
        a, ea = house_map(TextHouse(max_steps=40), task_id, seed)
        b, eb = house_map(TextHouse(max_steps=40), task_id, seed)
        assert a == b and ea == eb and a.startswith(MAP_HEADER)


def test_the_map_names_the_working_heater_whether_it_is_the_stoveburner_or_the_microwave():
    seen = set()
    for k in range(40):
        task_id = 6 * k + 3  # heat: both heaters are in the house
        text, ex = house_map(TextHouse(max_steps=40), task_id, k)
        house, _ = _house(task_id, k)
        broken = next(h for h in HEATERS if h != house.heater)
        assert ex.affordances[("heat", house.heater)] and not ex.affordances[("heat", broken)]
        assert f"heat: {', '.join(sorted([f'{house.heater} works', f'{broken} fails']))}." in text
        seen.add(house.heater)
    assert seen == set(HEATERS)  # both twists were covered
    for task_id in range(30):  # other tasks: a heater that is present is probed and reported truthfully
        text, ex = house_map(TextHouse(max_steps=40), task_id, 100 + task_id)
        house, _ = _house(task_id, 100 + task_id)
        for h in HEATERS:
            assert (("heat", h) in ex.affordances) == (h in house.receptacles)
            if h in house.receptacles:
                assert ex.affordances[("heat", h)] == (h == house.heater)


def test_the_map_lists_each_receptacles_first_seen_contents_and_closed_containers():
    for task_id, seed in ((1, 5), (4, 8), (11, 2)):
        house, state = _house(task_id, seed)
        text, ex = house_map(TextHouse(max_steps=40), task_id, seed)
        for r, objs in ex.contents.items():
            truth = sorted(house.objects[i] for i, w in enumerate(state.where) if w == r)
            assert list(objs) == truth
            assert (r in ex.closed) == (r in state.closed)
            assert f"{r}{' (closed)' if r in state.closed else ''}: {', '.join(truth) or 'empty'}" in text
        assert set(ex.contents) == {r for r in house.receptacles if r in
                                    ("countertop", "cabinet 1", "cabinet 2", "drawer", "fridge", "shelf")}


def test_maps_are_short_ascii():
    env = TextHouse(num_receptacles=10, num_objects=8, max_steps=40)
    for t in range(40):
        text = house_map(env, t, t)[0]
        assert text.isascii() and len(text.split()) <= 60


@pytest.mark.parametrize("patience,budget", [(1, 30), (2, 30), (3, 6), (3, 30)])
def test_exploration_stops_after_w_idle_steps_and_within_budget(patience, budget):
    stops = set()
    for t in range(24):
        ex = explore(TextHouse(max_steps=40), t, 3 * t, budget=budget, patience=patience)
        assert 1 <= ex.steps <= budget and len(ex.new) == ex.steps
        runs = [not any(ex.new[s:s + patience]) for s in range(ex.steps - patience + 1)]
        if ex.stop == "idle":  # the first window of w idle steps ends the exploration
            assert runs[-1] and not any(runs[:-1])
        else:
            assert not any(runs)
        assert ex.stop != "budget" or ex.steps == budget
        stops.add(ex.stop)
    if patience == 1:
        assert "idle" in stops  # e.g. taking an object teaches nothing new
    if budget == 6:
        assert stops == {"budget"}
    if (patience, budget) == (3, 30):
        assert stops == {"done"}  # the default explorer finishes its sweep
    with pytest.raises(ValueError, match="map_budget"):
        explore(TextHouse(), 0, 0, budget=0)


def test_a_map_context_task_puts_the_map_in_every_record():
    task = AgentTask("texthouse", history_turns=1, context="map")
    recs = task.sample_batch(30, 2)
    for r in recs:
        block = task.context_block(r.metadata["task_id"], r.metadata["seed"])
        assert block.startswith(MAP_HEADER) and block in r.prompt
        assert r.prompt.index(block) < r.prompt.index("Goal: ")
    plain = AgentTask("texthouse", history_turns=1)
    assert plain.context_block(3, 4) == "" and all(MAP_HEADER not in r.prompt for r in plain.sample_batch(10, 2))
    ex = task.exploration(3, 4)
    assert task.context_block(3, 4) == render_map(ex)
    with pytest.raises(ValueError, match="context"):
        AgentTask("texthouse", context="atlas")
    with pytest.raises(ValueError, match="context='map'"):
        AgentTask("textshop", context="map")


def test_one_rl_step_with_the_map_context_has_the_map_in_every_real_prompt(tmp_path):
    cfg = _config("configs/agents_house_map.py", **{"output_dir": str(tmp_path)})
    setup = setup_rl(cfg, warm_up=False)
    state, batch, metrics = collect_agent_batch(setup, setup.state)
    task, tok = setup.task, setup.tokenizer
    groups = task.episodes(int(cfg.rl.prompts_per_step), int(cfg.seed) * _EPISODE_SEED_STRIDE + 0, "train")
    maps = [task.context_block(t, s) for t, s in groups]
    width = int(cfg.agent.max_prompt_tokens)
    real = int(metrics["rollout/turn_samples"])
    tokens, gids = np.asarray(batch.tokens), np.asarray(batch.group_ids)
    for row in range(real):
        prompt = tok.decode([int(x) for x in tokens[row, :width] if int(x) != tok.pad_id])
        assert maps[gids[row]] in prompt
    assert metrics["map/explore_steps"] == pytest.approx(np.mean([task.exploration(t, s).steps for t, s in groups]))
