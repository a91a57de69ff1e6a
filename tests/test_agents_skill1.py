"""Skill1 on TextHouse: the spec's credit values, segment rewards and per-segment GRPO on a hand case, the
bank growing by distilled skills, the warm-up's segment records, and one RL step's fixed-shape batch."""

import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.agents import skill1 as s1
from jaxrl_llm.agents.skill_bank import SkillBank
from jaxrl_llm.agents.task import AgentTask
from jaxrl_llm.train.agent_step import agent_rows, collect_agent_batch
from jaxrl_llm.train.rl import check_rl_config, setup_rl
from jaxrl_llm.train.rl_rollout import estimate

SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1, "sft.train.steps": 0, "rl.prompts_per_step": 2, "rl.samples_per_prompt": 2,
         "rl.max_new_tokens": 4, "agent.max_turns": 3, "rl.minibatches": 1, "rl.progress_bar": False,
         "eval.num_problems": 2, "checkpoint.every": 0}


def _config(path="configs/agents_house_skill1.py", **overrides):
    cfg = cli.load_config_file(path)
    for key, value in {**SMALL, **overrides}.items():
        cli.apply_override(cfg, key, str(value))
    return cfg


def _bank(utilities=(0.7, 0.4, 0.2), types=("heat", "cool", "pick")):
    bank = s1.Skill1Bank(SkillBank(top_k=3, min_sim=0.0))
    for u, t in zip(utilities, types):
        skill = bank.add(f"put {t} thing", f"take, {t}, put", t, step=0)
        skill.utility = u
    return bank


def test_the_spec_values():
    assert s1.skill_utility_update(0.7, 1) == pytest.approx(0.715, abs=1e-12)
    assert s1.skill_utility_update(0.7, 0) == pytest.approx(0.665, abs=1e-12)
    assert s1.distillation_credit(1.0, [0.7, 0.4, 0.2]) == pytest.approx(0.3, abs=1e-12)
    assert s1.distillation_credit(0.0, [0.7, 0.4, 0.2]) == pytest.approx(-0.7, abs=1e-12)
    from jaxrl_llm.analysis import short_methods as sm  # the old home re-exports the same functions
    assert sm.skill_utility_update is s1.skill_utility_update and sm.selection_credit is s1.selection_credit


def test_segment_rewards_and_utilities_on_a_hand_case():
    bank = _bank()
    heat, cool, pick = bank.skills
    # 4 episodes in 2 groups of 2. Episodes 0, 1, 2 saw all three candidates; 3 saw only `pick`.
    cands = [[heat, cool, pick], [heat, cool, pick], [heat, cool, pick], [pick]]
    eps = s1.Skill1Episodes(goals=["g"] * 4, queries=["q"] * 4, candidates=cands, picks=[0, 2, 1, 0],
                            reranked=np.array([True, True, True, False]), rerank_valid=np.ones(4, bool),
                            distilled=[("put hot x", "take, heat, put"), None, ("put hot x", "take, heat, put"),
                                       ("put cool y", "take, cool, put")],
                            payloads={"query": [None] * 4, "select": [None] * 4, "distill": [None] * 4})
    success = np.array([1.0, 0.0, 1.0, 0.0])
    returns = np.array([1.0, -0.1, 1.0, 0.0])
    step = s1.skill1_update(bank, eps, success, returns, ["heat", "heat", "cool", "cool"], step=1)
    mean_u = (0.7 + 0.4 + 0.2) / 3
    np.testing.assert_allclose(step.rewards["select"][:3], [1.0 + 0.3 * (0.7 - mean_u), -0.1 + 0.3 * (0.2 - mean_u),
                                                            1.0 + 0.3 * (0.4 - mean_u)], atol=1e-6)
    assert step.rewards["select"][3] == 0.0 and step.present["select"].tolist() == [True, True, True, False]
    # r_dist = r - max U of the retrieved: 1 - .7, 0 - .7, 1 - .7, 0 - .2
    np.testing.assert_allclose(step.rewards["distill"], [1.3 - 0.21, -0.1 - 0.21, 1.09, -0.06], atol=1e-6)
    np.testing.assert_allclose(step.rewards["query"], returns, atol=1e-6)
    # the picked skills' utilities: heat once with r=1, pick with r=0 twice (episodes 1 and 3), cool with r=1
    assert heat.utility == pytest.approx(0.715) and cool.utility == pytest.approx(0.43)
    assert pick.utility == pytest.approx(0.2 * 0.95 * 0.95) and pick.count == 2
    # only the successful episodes' skills are added, a duplicate once
    assert [s.title for s in step.added] == ["heat"] and len(bank.skills) == 4
    assert step.metrics["skill1/bank_size"] == 4.0
    assert step.metrics["skill1/selection_accuracy"] == pytest.approx(2 / 4)  # heat ok, pick no, cool ok, pick no

    # GRPO per segment: select rows exist for group 0 (2 rows) only; group 1 has one and gives none
    idx, gid, num = s1.full_groups(step.present["select"], 2)
    assert idx.tolist() == [0, 1] and gid.tolist() == [0, 0] and num == 1
    adv, _, _ = estimate("grpo", {"rewards": step.rewards["select"][idx], "group_ids": gid}, num)
    np.testing.assert_allclose(adv, [1 / np.sqrt(2), -1 / np.sqrt(2)], atol=1e-4)  # (r - mean) / unbiased std
    idx, gid, num = s1.full_groups(step.present["distill"], 2)
    adv, _, _ = estimate("grpo", {"rewards": step.rewards["distill"][idx], "group_ids": gid}, num)
    assert num == 2 and np.sign(adv).tolist() == [1, -1, 1, -1]


def test_the_bank_grows_by_distilled_skills_and_retrieves_greedily_in_eval():
    bank = s1.Skill1Bank(SkillBank(top_k=3, min_sim=0.0))
    eps = s1.Skill1Episodes(["g"] * 2, ["q"] * 2, [[], []], [None, None], np.zeros(2, bool), np.zeros(2, bool),
                            [("put hot apple", "take, heat, put"), ("put cool mug", "take, cool, put")],
                            {"query": [None] * 2, "select": [None] * 2, "distill": [None] * 2})
    step = s1.skill1_update(bank, eps, [1.0, 0.0], [1.0, 0.0], ["heat", "cool"], step=0)
    assert len(bank.skills) == 1  # the failed episode's skill is not added
    np.testing.assert_allclose(step.rewards["distill"], [1.3, 0.0], atol=1e-6)  # no retrieval: r_dist = r
    s1.skill1_update(bank, eps, [1.0, 0.0], [1.0, 0.0], ["heat", "cool"], step=1, add_failed=True)
    assert [s.title for s in bank.skills] == ["heat", "cool"]
    assert bank.candidates("hot apple", explore=False)[0].title == "heat"
    again = s1.Skill1Bank.from_json(bank.to_json())
    assert [s.id for s in again.skills] == [s.id for s in bank.skills]
    # greedy retrieval ranks by sim and utility only; the UCB bonus favours the never-used skill
    bank.skills[0].utility, bank.skills[0].count = 0.02, 50
    assert bank.candidates("put", explore=False)[0].title == "heat"
    assert bank.candidates("put", explore=True)[0].title == "cool"


def test_segment_texts_parse_back():
    assert s1.parse_pick("2", 3) == 1 and s1.parse_pick(" 3 x", 3) == 2
    assert s1.parse_pick("4", 3) is None and s1.parse_pick("go to", 3) is None
    assert s1.parse_skill("put hot apple: take, heat, put") == ("put hot apple", "take, heat, put")
    assert s1.parse_skill("put hot apple") is None and s1.parse_skill(": take") is None
    assert s1.plan_summary(["go to fridge", "open fridge", "take apple from fridge", "go to microwave",
                            "heat apple with microwave", "go to shelf", "put apple on shelf"]) == "open, take, heat, put"
    assert s1.oracle_query("put a hot apple in cabinet 1") == "put hot apple cabinet 1"


def test_the_warm_up_records_teach_the_three_segment_formats():
    task = AgentTask("texthouse", history_turns=1, skill1=True)
    recs = task.sample_batch(400, 1)
    by = {k: [r for r in recs if r.metadata.get("segment") == k] for k in ("query", "select", "distill")}
    assert all(by.values())
    for r in by["query"]:
        goal = r.prompt.split("Goal: ")[1].strip()
        assert r.reference == s1.oracle_query(goal) and task.sft_target(r) == r.reference
    for r in by["select"]:
        lines = [ln for ln in r.prompt.splitlines() if ln[:1].isdigit()]
        assert 2 <= len(lines) <= 3
        goal = r.prompt.split("Goal: ")[1].splitlines()[0]
        picked = lines[int(r.reference) - 1].split(". ", 1)[1]
        assert picked.startswith(s1.oracle_query(goal) + ":")  # the candidate of the episode's own type
        assert task.score(r, r.reference) == 1.0
    for r in by["distill"]:
        when, strategy = s1.parse_skill(r.reference)
        assert "Outcome: success" in r.prompt and when == s1.oracle_query(r.prompt.split("Goal: ")[1].splitlines()[0])
        assert "take" in strategy
    turns = [r for r in recs if "segment" not in r.metadata]
    with_skill = [r for r in turns if "Skill for " in r.prompt]
    assert 0 < len(with_skill) < len(turns)  # half of the episodes show the oracle skill


def test_skill1_needs_its_warm_up_records():
    with pytest.raises(ValueError, match="data.task_kwargs.skill1"):
        check_rl_config(_config(**{"data.task_kwargs.skill1": False}))
    with pytest.raises(ValueError, match="agent.skill1.rate"):
        check_rl_config(_config(**{"agent.skill1.rate": 0.0}))


def test_one_rl_step_gives_the_fixed_row_count_with_every_segment_masked_to_its_tokens(tmp_path):
    cfg = _config(**{"output_dir": str(tmp_path)})
    setup = setup_rl(cfg, warm_up=False)
    bank = setup.agent.skill1
    for t in ("heat", "cool", "pick"):  # a bank with candidates: every episode reranks
        bank.add(f"put {t} apple", f"take, {t}, put", t, step=0)
    state, batch, metrics = collect_agent_batch(setup, setup.state)
    e, turns = 4, 3
    rows = agent_rows(cfg, setup.task)
    width = int(cfg.agent.max_prompt_tokens)
    assert rows == e * (turns + 3) and batch.tokens.shape == (rows, width + 4)
    real = int(metrics["rollout/turn_samples"])
    solve = int(round(metrics["turns_per_episode"] * e))
    assert metrics["skill1/query_rows"] == e and metrics["skill1/select_rows"] == e
    assert metrics["skill1/distill_rows"] == e and real == solve + 3 * e
    mask = np.asarray(batch.loss_mask)
    assert mask[:, :width].sum() == 0 and mask[real:].sum() == 0
    assert (mask[:real].sum(1) >= 1).all() and (mask[:real].sum(1) <= 4).all()
    tok = setup.tokenizer
    prompts = [tok.decode([int(x) for x in batch.tokens[r, :width] if int(x) != tok.pad_id]) for r in range(real)]
    for start, head in ((solve, s1.QUERY_INSTRUCTION), (solve + e, s1.RERANK_INSTRUCTION),
                        (solve + 2 * e, s1.DISTIL_INSTRUCTION)):
        assert all(p.startswith(head) for p in prompts[start:start + e])
    assert all(p.startswith(setup.task.builder.instruction) for p in prompts[:solve])
    assert all("Skill for put " in p for p in prompts[:solve])  # every episode solved with its picked skill
    adv = np.asarray(batch.advantages)
    assert np.isfinite(adv).all() and adv[real:].tolist() == [0.0] * (rows - real)
    for k in (solve, solve + e, solve + 2 * e):  # each segment is normalised within its groups of 2
        a = adv[k:k + e].reshape(2, 2)
        np.testing.assert_allclose(a.sum(1), 0.0, atol=1e-5)
    assert metrics["skill1/bank_size"] >= 3 and (tmp_path / "skill1_bank.json").exists()
