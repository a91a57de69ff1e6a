"""HeavySkill (agents/heavyskill.py): the spec's values, the deliberation prompt layout, trimming that keeps
the answer and the tail within the budget, the warm-up task's records, and one RL step on deliberations."""

import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.agents.heavyskill import (
    DELIBERATION_INSTRUCTION,
    HeavySkillTask,
    answer_char_end,
    cached_solutions,
    deliberation_advantages,
    deliberation_problems,
    deliberation_prompt,
    heavyskill_aggregate,
    heavyskill_settings,
    heavyskill_solution_budget,
    solution_answer,
    trim_solution,
    wrong_solution,
)
from jaxrl_llm.analysis import short_methods
from jaxrl_llm.data.tokenizer import CharTokenizer
from jaxrl_llm.envs.arith_chain import ArithChainTask
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.train.rl import check_rl_config, collect_rollout_batch, rl_step, setup_rl
from jaxrl_llm.train.rl_step import sample_round

CHAIN = ArithChainTask(num_operands=3, num_digits=1)
PROBLEM = Problem("3+7-8=", "2", {"operands": (3, 7, 8), "ops": ("+", "-"), "answer": 2,
                                  "steps": ("3+7=10", "10-8=2"), "difficulty": 2})
TINY = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
        "mesh.fsdp": 1, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 2, "rl.samples_per_prompt": 4,
        "rl.max_new_tokens": 3, "rl.reuse_epochs": 1, "rl.progress_bar": False, "eval.num_problems": 0,
        "checkpoint.every": 0, "rl.dgg.window": 2}


def config(tmp_path, **overrides):
    args = ["--config", "configs/heavyskill.py", f"--config.output_dir={tmp_path}"]
    return cli.parse_config_args(args + [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()])


def test_spec_values_majority_is_wrong_while_pass_at_4_is_one():
    answers = ["12", "15", "12", "7"]
    result = heavyskill_aggregate(answers, answers, "15")
    assert result.answer == "12" and result.correct is False and result.pass_at_k == 1.0
    np.testing.assert_allclose(deliberation_advantages([1, 0, 1, 1]), [0.5, -1.5, 0.5, 0.5], atol=1e-6)
    assert short_methods.heavyskill_aggregate is heavyskill_aggregate  # re-exported, one home


def test_deliberation_prompt_layout():
    text = deliberation_prompt("3+7-8=", ["3+7=10;10-8=2;#2", "#5", "a\nb"])
    assert text == "3+7-8=\n1) 3+7=10;10-8=2;#2\n2) #5\n3) a b\nCheck the solutions and answer:\n3+7-8="
    assert DELIBERATION_INSTRUCTION == "Check the solutions and answer:"
    CharTokenizer().encode_prompt(text)  # every character is in the char alphabet


def test_trimming_keeps_the_answer_and_the_tail_within_the_budget():
    assert trim_solution(list("3+7=10;10-8=2;#2"), 6, answer_end=16) == list("8=2;#2")
    assert trim_solution(list("xx#5yy"), 6, answer_end=4) == list("xx#5")  # text after the answer is dropped
    assert trim_solution(list("abcdefgh"), 3) == list("fgh")  # no answer: the plain tail
    assert answer_char_end(CHAIN, "xx#5yy") == 4 and answer_char_end(CHAIN, "3+7=10;#-12;") == 11
    assert answer_char_end(CHAIN, "no answer") is None and solution_answer(CHAIN, "1;# -3") == "-3"
    tok = CharTokenizer()
    overhead = len(tok.encode_prompt(deliberation_prompt(PROBLEM.prompt, ["", ""])))
    assert overhead == 54
    assert heavyskill_solution_budget(70, overhead, 4, 2) == 6
    prompt, texts, cut = cached_solutions(CHAIN, tok, PROBLEM, [tok.encode("3+7=10;10-8=2;#2"), tok.encode("xx#5yy")],
                                          context=70, reserve=4)
    assert texts == ["8=2;#2", "xx#5"] and cut == [True, True]
    assert prompt == "3+7-8=\n1) 8=2;#2\n2) xx#5\nCheck the solutions and answer:\n3+7-8="
    assert len(tok.encode_prompt(prompt)) <= 70 - 4


def test_deliberation_problems_cut_at_the_stop_token_and_score_the_solutions():
    tok = CharTokenizer()
    rows = [tok.encode("3+7=10;10-8=2;#2") + [tok.eos_id, 5, 5], tok.encode("#5") + [tok.eos_id] + [0] * 16]
    width = max(len(r) for r in rows)
    response = np.asarray([r + [0] * (width - len(r)) for r in rows])
    problems, metrics = deliberation_problems(CHAIN, tok, [PROBLEM], response, np.asarray([19, 3]), num_solutions=2,
                                              context=70, reserve=4)
    assert problems[0].prompt == "3+7-8=\n1) 8=2;#2\n2) #5\nCheck the solutions and answer:\n3+7-8="
    assert problems[0].reference == "2" and problems[0].metadata["heavyskill"]["solution_correct"] == [1.0, 0.0]
    assert metrics["heavyskill/solution_accuracy"] == 0.5 and metrics["heavyskill/pass@2"] == 1.0
    assert metrics["heavyskill/trimmed"] == 0.5


def test_warmup_task_writes_deliberation_records_that_fit_the_context():
    task = HeavySkillTask(base="arith_chain", base_kwargs={"num_operands": 3, "num_digits": 1}, num_solutions=8,
                          seq_len=192, reserve=22)
    assert wrong_solution(CHAIN, PROBLEM, np.random.default_rng(0)) != CHAIN.worked_solution(PROBLEM)
    slip = wrong_solution(CHAIN, PROBLEM, np.random.default_rng(0))
    assert CHAIN.score(PROBLEM, slip) == 0.0 and slip.count(";") == 2  # a whole chain with a carried slip
    tok = CharTokenizer()
    for problem in task.sample_batch(20, 0):
        prompt = task.privileged_prompt(problem)
        assert prompt.startswith(problem.prompt + "\n1) ") and prompt.endswith("\n" + problem.prompt)
        lines = prompt.split("\n")[1:9]
        assert all(len(line) - len(f"{i + 1}) ") <= 12 for i, line in enumerate(lines))  # (192 - 74 - 22) // 8
        assert all("#" in line for line in lines)  # every cached candidate kept its answer
        record = tok.encode_prompt(prompt) + tok.encode_response(task.sft_target(problem))
        assert len(record) <= 192
        assert task.score(problem, task.sft_target(problem)) == 1.0
    assert task.extract_answer("1+1=2;#2") == "2" and task.step_labels is not None  # the base task's


def test_config_checks_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="rl.heavyskill.context"):
        check_rl_config(config(tmp_path, **{"rl.heavyskill.context": 60}))
    with pytest.raises(ValueError, match="num_solutions"):
        check_rl_config(config(tmp_path, **{"rl.heavyskill.num_solutions": 4}))
    with pytest.raises(ValueError, match="rl.heavyskill.reserve"):
        check_rl_config(config(tmp_path, **{"rl.heavyskill.reserve": 2}))
    settings = heavyskill_settings(config(tmp_path))
    assert settings == (8, 4, 192, 3) and settings.width == 189


@pytest.mark.slow  # three compiles (solutions, deliberations, update): ~30 s on two busy cores
def test_rl_step_trains_on_deliberation_prompts_of_one_fixed_shape(tmp_path):
    # data.seq_len 100: (100 - 74 - 3) // 8 = 2 tokens per solution, prompts padded to 97.
    setup = setup_rl(config(tmp_path, **{"data.seq_len": 100}), warm_up=False)
    tok = setup.tokenizer
    drawn = sample_round(setup, setup.state, 0, 0)
    assert drawn["rollout"].prompt_width == 97
    for i, problem in enumerate(drawn["problems"]):
        solutions = problem.metadata["heavyskill"]["solutions"]
        assert len(solutions) == 8 and all(len(x) <= 2 for x in solutions)
        plain = problem.prompt.split("\n")[0]
        assert problem.prompt == deliberation_prompt(plain, solutions)
        row = np.asarray(drawn["rollout"].tokens)[i * 4, :97]
        assert tok.decode(row) == problem.prompt  # pads and bos are not text
    batch, metrics = collect_rollout_batch(setup, setup.state)
    assert 0.0 <= metrics["heavyskill/pass@8"] <= 1.0 and metrics["heavyskill/solution_tokens"] > 0
    state, record = rl_step(setup, setup.state)
    assert np.isfinite(record["loss"])
    later, _ = collect_rollout_batch(setup, state)
    assert batch.tokens.shape == later.tokens.shape == (8, 100)
    prompts = [tok.decode(r[:97]) for r in later.tokens[::4]]
    assert all(p.count("\n") == 10 and DELIBERATION_INSTRUCTION in p for p in prompts)
