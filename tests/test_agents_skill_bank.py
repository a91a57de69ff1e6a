"""D2Skill skill bank (agents-analysis.md section 2) and the fixed skill libraries."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import objectives as obj
from jaxrl_llm.agents import (
    OracleReflector,
    Skill,
    SkillBank,
    SkillLibrary,
    Trajectory,
    Turn,
    builtin_skill_library,
    ema_update,
    embed_text,
    evict,
    eviction_keys,
    group_credits,
    intrinsic_rewards,
    load_skill_library,
    reflect_step,
    retrieval_scores,
    retrieve,
    select_skills,
    skill_split,
)
from jaxrl_llm.data.tokenizer import CharTokenizer

# ---- retrieval and eviction: spec hand values ----

SIMS, UTILS, COUNTS = [0.8, 0.9, 0.6], [0.25, 0.0, 0.6], [3, 0, 5]  # skills A, B, C; N = 8


def test_retrieval_scores_spec_values():
    np.testing.assert_allclose(retrieval_scores(SIMS, UTILS, COUNTS), [0.348352, 0.161704, 0.647232], atol=1e-6)


def test_retrieval_ranks_then_filters_by_similarity():
    # Score order C, A, B; the sim >= 0.7 filter runs after ranking and drops C.
    assert select_skills(SIMS, UTILS, COUNTS, min_sim=-1.0).tolist() == [2, 0, 1]
    assert select_skills(SIMS, UTILS, COUNTS).tolist() == [0, 1]
    # top_k applies before the filter: C and A survive ranking with top_k 2, then C is dropped.
    assert select_skills(SIMS, UTILS, COUNTS, top_k=2).tolist() == [0]
    # Only the most similar candidates are scored: with 2 candidates C (sim .6) never competes.
    assert select_skills(SIMS, UTILS, COUNTS, top_candidates=2, min_sim=-1.0).tolist() == [0, 1]


def test_retrieval_bonus_counts_the_whole_pool():
    # N is the pool's total count even when only some skills are candidates.
    only_ab = retrieval_scores(SIMS[:2], UTILS[:2], COUNTS[:2], total_count=8)
    np.testing.assert_allclose(only_ab, [0.348352, 0.161704], atol=1e-6)
    # log max(2, 1 + N): an unused pool still explores.
    np.testing.assert_allclose(retrieval_scores([1.0], [0.0], [0]), [0.1 + 0.9 * 0.05 * np.sqrt(np.log(2))])


def test_eviction_keys_spec_values_and_order():
    np.testing.assert_allclose(eviction_keys(UTILS, COUNTS), [0.287058, 0.074115, 0.630257], atol=1e-6)
    pool = [Skill(n, n, "p", "w", "o", utility=u, count=c, created_at_step=0, pool="step")
            for n, u, c in zip("ABC", UTILS, COUNTS)]
    kept, removed = evict(pool, step=10, max_size=2)
    assert [s.id for s in removed] == ["B"] and [s.id for s in kept] == ["A", "C"]
    kept, removed = evict(pool, step=10, max_size=1)
    assert [s.id for s in removed] == ["A", "B"] and [s.id for s in kept] == ["C"]
    assert evict(pool, step=10, max_size=3) == (pool, [])


def test_eviction_spares_young_skills():
    pool = [Skill(n, n, "p", "w", "o", utility=u, count=c, created_at_step=t)
            for n, u, c, t in zip("ABC", UTILS, COUNTS, (0, 5, 0))]
    kept, removed = evict(pool, step=10, max_size=2, min_age=10)  # B is 5 steps old: A goes instead
    assert [s.id for s in removed] == ["A"]
    kept, removed = evict(pool, step=10, max_size=1, min_age=10)  # only A and C eligible
    assert [s.id for s in kept] == ["B"]
    kept, removed = evict(pool, step=3, max_size=1, min_age=10)  # nothing old enough
    assert removed == [] and len(kept) == 3


# ---- credit: spec group ----

SUCCESS = np.array([1, 1, 0, 1, 1, 0, 0, 0], float)
WITH = skill_split(8)


def test_split_first_half_gets_skills():
    assert WITH.tolist() == [True] * 4 + [False] * 4
    assert skill_split(5).tolist() == [True, True, True, False, False]  # round half up
    assert skill_split(4, fraction=1.0).all()  # validation: everyone


def test_group_credits_spec_values():
    credit = group_credits(SUCCESS, WITH)
    assert credit.baseline == pytest.approx(0.25) and credit.task_credit == pytest.approx(0.5)
    np.testing.assert_allclose(credit.step_credits, [0.75, 0.75, -0.25, 0.75, 0.75, -0.25, -0.25, -0.25])
    assert ema_update(0.0, credit.task_credit, beta=0.5) == pytest.approx(0.25)
    # No skill-free rollouts: baseline 0.
    assert group_credits([1.0, 0.0], [True, True]).baseline == 0.0


def test_intrinsic_reward_leaves_binary_grpo_advantages_unchanged():
    credit = group_credits(SUCCESS, WITH)
    shaped = SUCCESS + intrinsic_rewards(SUCCESS, credit.baseline, kappa=1.0)
    np.testing.assert_allclose(shaped, 2 * SUCCESS - 0.25)
    g = jnp.zeros(8, jnp.int32)
    plain = np.asarray(obj.grpo_advantages(jnp.asarray(SUCCESS), g, num_groups=1))
    with_bonus = np.asarray(obj.grpo_advantages(jnp.asarray(shaped), g, num_groups=1))
    np.testing.assert_allclose(np.abs(plain), 0.935413, atol=1e-5)
    np.testing.assert_allclose(with_bonus, plain, atol=1e-5)


def test_bank_update_credits_spec_group():
    bank = SkillBank()
    task = bank.add("task", title="heat plan", principle="p", when_to_apply="heat egg")
    step_a = bank.add("step", title="a", principle="p", when_to_apply="x")
    step_b = bank.add("step", title="b", principle="p", when_to_apply="y")
    step_ids = [[step_a.id], [step_a.id, step_a.id], [step_b.id], [], [step_b.id], [], [], []]
    credit = bank.update_credits(SUCCESS, WITH, task_skill_ids=[task.id], step_skill_ids=step_ids)
    assert credit.baseline == pytest.approx(0.25)
    assert task.utility == pytest.approx(0.25) and task.count == 1
    # step A: rollouts 0 and 1 (repeats within a rollout count once): 0 -> 0.375 -> 0.5625.
    assert step_a.utility == pytest.approx(0.5625) and step_a.count == 2
    # step B: rollout 2 (failed, -0.25); rollout 4 is skill-free so it gives no credit.
    assert step_b.utility == pytest.approx(-0.125) and step_b.count == 1


# ---- embedding ----


def test_embedding_is_normalised_and_deterministic():
    v = embed_text("heat the egg in the microwave")
    assert v.shape == (256,) and np.linalg.norm(v) == pytest.approx(1.0)
    np.testing.assert_array_equal(v, embed_text("Heat the EGG, in the microwave!"))
    assert float(v @ embed_text("heat egg microwave")) == pytest.approx(1.0)  # function words dropped
    assert not embed_text("the of a").any()


def test_retrieve_by_text():
    pool = [Skill("s0", "heat", "use the microwave", "heat some egg and put it in countertop", "", pool="task"),
            Skill("s1", "cool", "use the fridge", "cool some apple and put it in cabinet", "", pool="task")]
    assert [s.id for s in retrieve(pool, "heat some egg and put it in garbagecan")] == ["s0"]
    assert retrieve(pool, "open the drawer") == []


# ---- reflection ----


def _trajectory(actions, oracle, success=0.0, with_skill=True, goal="heat some egg and put it in countertop"):
    obs = [f"You are at {a.split()[-1]}. You see an egg." for a in actions]
    return Trajectory(goal, "heat", tuple(Turn(o, a, b) for o, a, b in zip(obs, actions, oracle)),
                      success=success, with_skill=with_skill)


ORACLE = ["go to fridge", "take egg from fridge", "go to microwave", "heat egg with microwave"]
TAKEN = ["go to fridge", "take egg from fridge", "go to stoveburner", "look"]


def test_oracle_reflector_finds_first_error():
    r = OracleReflector().reflect(_trajectory(TAKEN, ORACLE))
    assert r.first_error_turn == 2
    assert r.step_skill["principle"] == ("When You are at stoveburner. You see an egg., do go to microwave, "
                                         "not go to stoveburner.")
    assert r.step_skill["retrieval_obs"] == "You are at stoveburner. You see an egg."
    assert r.task_skill["retrieval_obs"] == r.task_skill["when_to_apply"] == "heat some egg and put it in countertop"
    assert r.task_skill["principle"].startswith("For heat tasks: go to -> take -> go to -> heat;")
    assert OracleReflector().reflect(_trajectory(ORACLE, ORACLE)) is None


def test_reflect_step_adds_deduplicated_skills():
    bank = SkillBank()
    failed = _trajectory(TAKEN, ORACLE)
    groups = [[failed, failed, _trajectory(ORACLE, ORACLE, success=1.0, with_skill=False)],
              [_trajectory(ORACLE, ORACLE, success=1.0)] * 2,  # success rate 1: not reflected
              [_trajectory(TAKEN, ORACLE, with_skill=False)]]  # no skill-injected rollout
    added = reflect_step(bank, groups, rng=0, step=3)
    assert [s.pool for s in added] == ["step", "task"] and all(s.created_at_step == 3 for s in added)
    assert reflect_step(bank, groups, rng=1, step=4) == []  # same texts: deduplicated
    assert len(bank.step_pool) == len(bank.task_pool) == 1
    many = [[_trajectory(TAKEN, ORACLE, goal=f"heat some egg {i} and put it in countertop")] for i in range(15)]
    assert len(reflect_step(SkillBank(), many, rng=0, step=0, max_reflections=10)) == 20


def test_reflect_step_is_deterministic_in_rng():
    groups = [[_trajectory(TAKEN, ORACLE, goal=f"heat some egg {i} and put it in countertop")] for i in range(15)]
    a = [s.when_to_apply for s in reflect_step(SkillBank(), groups, rng=7, step=0, max_reflections=3)]
    b = [s.when_to_apply for s in reflect_step(SkillBank(), groups, rng=7, step=0, max_reflections=3)]
    assert a == b and len(a) == 6


# ---- the bank ----


def _filled_bank():
    bank = SkillBank()
    reflect_step(bank, [[_trajectory(TAKEN, ORACLE)]], rng=0, step=0)
    return bank


def test_bank_retrieves_its_reflections_and_renders_ascii():
    bank = _filled_bank()
    goal = "heat some egg and put it in countertop"
    task = bank.retrieve_task(goal)
    step = bank.retrieve_step(goal, "You are at stoveburner. You see an egg.")
    assert len(task) == len(step) == 1
    text = bank.render(task, step)
    lines = text.split("\n")
    assert lines[0] == "Task-level experience:" and lines[2] == "Step-level experience:"
    assert lines[1] == f"- {task[0].title}: {task[0].principle}"
    assert lines[3] == "- heat: go to microwave: When You are at stoveburner. You see an egg., do go to microwave, " \
                       "not go to stoveburner."
    assert text.isascii()
    assert bank.render([], []) == "" and bank.render(task, []) == "\n".join(lines[:2])
    assert bank.retrieve_step("clean a mug", "You see a sinkbasin.") == []


def test_bank_folds_text_to_ascii():
    bank = SkillBank()
    skill = bank.add("task", title="Caf\u00e9 plan", principle="Heat \u2192 put", when_to_apply="heat caf\u00e9")
    assert (skill.title, skill.principle, skill.when_to_apply) == ("Cafe plan", "Heat put", "heat cafe")
    assert bank.render([skill], []).isascii()


def test_bank_json_round_trip():
    bank = _filled_bank()
    bank.update_credits([0.0, 1.0], [True, False], task_skill_ids=[bank.task_pool[0].id],
                        step_skill_ids=[[bank.step_pool[0].id], []])
    restored = SkillBank.from_json(bank.to_json())
    assert restored.to_json() == bank.to_json()
    assert restored.pools == bank.pools and restored.next_id == bank.next_id == 2
    assert restored.task_pool[0].utility == pytest.approx(-0.5) and restored.task_pool[0].count == 1
    goal = "heat some egg and put it in countertop"
    assert [s.id for s in restored.retrieve_task(goal)] == [s.id for s in bank.retrieve_task(goal)]
    # Dedupe state survives too.
    assert restored.add("task", title=bank.task_pool[0].title, principle=bank.task_pool[0].principle,
                        when_to_apply=bank.task_pool[0].when_to_apply) is None
    with pytest.raises(ValueError, match="missing the keys"):
        SkillBank.from_json(json.dumps({"pools": {}}))


def test_bank_update_group_and_metrics_and_evict():
    bank = _filled_bank()
    tid, sid = bank.task_pool[0].id, bank.step_pool[0].id
    group = [Trajectory("g", "heat", (), success=s, with_skill=w, task_skill_ids=(tid,) if w else (),
                        step_skill_ids=(sid,) if w else ()) for s, w in zip(SUCCESS, WITH)]
    bank.update_group(group)
    assert bank.task_pool[0].utility == pytest.approx(0.25)
    # rollouts 0-3, credits .75, .75, -.25, .75: u 0 -> .375 -> .5625 -> .15625 -> .453125.
    assert bank.step_pool[0].count == 4 and bank.step_pool[0].utility == pytest.approx(0.453125)
    m = bank.metrics()
    assert m["d2skill/task_pool_size"] == 1.0 and m["d2skill/step_pool_size"] == 1.0
    assert m["d2skill/task_mean_utility"] == pytest.approx(0.25)
    bank.max_size = 0
    assert bank.evict(step=5) == []  # too young
    assert {s.id for s in bank.evict(step=10)} == {tid, sid}
    assert bank.retrieve_task("heat some egg and put it in countertop") == []
    assert bank.metrics()["d2skill/task_mean_utility"] == 0.0


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="pool must be one of"):
        SkillBank().add("episode", title="t", principle="p", when_to_apply="w")
    with pytest.raises(ValueError, match="with_skill"):
        group_credits([1.0, 0.0], [True])
    with pytest.raises(TypeError, match="with_skill must be bool"):
        group_credits([1.0, 0.0], [1, 0])
    with pytest.raises(ValueError, match="group_size"):
        skill_split(0)
    with pytest.raises(ValueError, match="sims, utilities, counts"):
        select_skills([0.1, 0.2], [0.0], [0])


# ---- skill libraries ----


def test_builtin_texthouse_library():
    lib = builtin_skill_library("texthouse")
    assert set(lib.task_types) == {"pick", "look", "clean", "heat", "cool", "pick2"}
    heat = lib.text_for("heat")
    assert heat.split("\n") == [*lib.general, lib.by_type["heat"]]
    assert "heat it with the appliance that works in this house" in heat
    everything = lib.text_for("heat", include_all=True)
    assert all(t in everything for t in (*lib.general, *lib.by_type.values()))
    assert all(len(t) <= 150 for t in (*lib.general, *lib.by_type.values()))


def test_keyword_fallback_from_goal():
    lib = builtin_skill_library("texthouse")
    assert lib.type_for_goal("heat some egg and put it in countertop") == "heat"
    assert lib.type_for_goal("put a cool apple in the cabinet") == "cool"
    assert lib.type_for_goal("put two pencils in the drawer") == "pick2"
    assert lib.type_for_goal("examine the book with the desklamp") == "look"
    assert lib.type_for_goal("put a mug in the shelf") == "pick"
    assert lib.type_for_goal("sing a song") is None
    assert lib.text_for("unknown", goal="clean some mug and put it in shelf") == lib.text_for("clean")
    assert lib.text_for_goal("clean some mug and put it in shelf") == lib.text_for("clean")
    assert lib.text_for(None) == "\n".join(lib.general)
    shop = builtin_skill_library("textshop")
    assert shop.task_types == ("color_material", "color")
    assert shop.type_for_goal("red cotton shirt, size M, under $20") == "color_material"
    assert shop.type_for_goal("red shirt, size M, under $20") == "color"


def test_library_texts_encode_with_the_char_tokenizer():
    tok = CharTokenizer()
    for env in ("texthouse", "textshop"):
        lib = builtin_skill_library(env)
        text = lib.text_for(None, include_all=True)
        assert text.isascii() and len(tok.encode(text)) >= len(text)
    bank = _filled_bank()
    bank_text = bank.render(bank.task_pool, bank.step_pool)
    assert len(tok.encode(bank_text)) >= len(bank_text)


def test_load_skill_library(tmp_path):
    path = tmp_path / "skills.json"
    path.write_text(json.dumps({"general": ["Be careful."], "by_type": {"sort": "Sort it.", "find": "Find it."},
                                "keywords": {"find": ["locate"]}}))
    lib = load_skill_library(path)
    assert lib == SkillLibrary(("Be careful.",), {"sort": "Sort it.", "find": "Find it."}, {"find": ("locate",)})
    assert lib.text_for_goal("locate the key") == "Be careful.\nFind it."
    with pytest.raises(FileNotFoundError, match=r"missing\.json.*agent\.skills"):
        load_skill_library(tmp_path / "missing.json")
    path.write_text(json.dumps({"general": ["x"]}))
    with pytest.raises(ValueError, match=r"skills\.json.*'by_type'"):
        load_skill_library(path)
    path.write_text(json.dumps({"general": "x", "by_type": {}}))
    with pytest.raises(ValueError, match=r"skills\.json.*'general' must be a list of strings"):
        load_skill_library(path)
    path.write_text(json.dumps({"general": [], "by_type": {"a": 3}}))
    with pytest.raises(ValueError, match=r"'by_type' must map"):
        load_skill_library(path)
    path.write_text(json.dumps({"general": ["caf\u00e9"], "by_type": {}}))
    with pytest.raises(ValueError, match=r"skills\.json.*general\[0\] must be ASCII"):
        load_skill_library(path)
    with pytest.raises(ValueError, match="no built-in skill library for env 'nope'"):
        builtin_skill_library("nope")
