"""The RL trainer on a multi-turn env (data.task = "agent"): the turn-sample batch, its masks and
advantages, skills reaching the prompts, bad input, and a user env class through the CLI."""

import json
import os
import textwrap

import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.agents.task import AgentTask
from jaxrl_llm.train.agent_step import agent_rows, collect_agent_batch
from jaxrl_llm.train.rl import check_rl_config, setup_rl

SMALL = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
         "mesh.fsdp": 1, "sft.train.steps": 0, "rl.prompts_per_step": 2, "rl.samples_per_prompt": 2,
         "rl.max_new_tokens": 4, "agent.max_turns": 3, "rl.minibatches": 1, "rl.progress_bar": False,
         "eval.num_problems": 2, "checkpoint.every": 0}


def _config(path="configs/agents_house_grpo.py", **overrides):
    cfg = cli.load_config_file(path)
    for key, value in {**SMALL, **overrides}.items():
        cli.apply_override(cfg, key, str(value))
    return cfg


def test_oracle_records_teach_the_oracle_action_and_splits_are_disjoint():
    task = AgentTask("texthouse", history_turns=1)
    train = {ep for ep in task.episodes(200, 0, "train")}
    held = set(task.eval_episodes(30))
    assert not train & held
    recs = task.sample_batch(40, 3)
    assert len(recs) == 40 and recs == task.sample_batch(40, 3)  # deterministic
    for r in recs:
        assert r.prompt.startswith(task.builder.instruction) and "Now: " in r.prompt
        assert task.score(r, task.sft_target(r)) == 1.0 and task.score(r, "look around") == 0.0
        assert f"{r.reference}" in r.prompt.split("Actions: ")[-1] or r.reference in ("look", "inventory")
    from jaxrl_llm.agents.skills import builtin_skill_library
    lib = builtin_skill_library("texthouse")
    skilled = AgentTask("texthouse", history_turns=1, skill_fraction=0.5).sample_batch(1000, 3)
    with_text = [lib.text_for(r.metadata["task_type"]) in r.prompt for r in skilled]
    assert 0.3 < np.mean(with_text) < 0.7  # about half the episodes' turns read their type's skill
    assert not any(lib.text_for(r.metadata["task_type"]) in r.prompt for r in recs)  # off by default
    with pytest.raises(ValueError, match="skill_fraction"):
        AgentTask("texthouse", skill_fraction=1.5)


def test_explorer_records_teach_a_search_from_what_the_prompt_shows():
    kw = {"history_turns": 1, "task_types": ("pick",), "oracle_noise": 0.0}
    full, explorer = AgentTask("texthouse", **kw), AgentTask("texthouse", oracle="explorer", **kw)
    first = lambda task: [r for r in task.sample_batch(400, 5) if r.metadata["turn"] == 0]  # noqa: E731
    # Turn 0 shows only the receptacle list: the explorer's first stop is always the first storage
    # receptacle in it (the countertop, in every house), the oracle's is wherever the object hides.
    assert {r.reference for r in first(explorer)} == {"go to countertop"}
    assert len({r.reference for r in first(full)}) > 1
    with pytest.raises(ValueError, match=r"data.task_kwargs.oracle must be one of \['explorer', 'full'\]"):
        AgentTask("texthouse", oracle="greedy")
    with pytest.raises(ValueError, match=r"oracle='explorer' reads info\['explorer_action'\], which env 'textshop'"):
        AgentTask("textshop", oracle="explorer")


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    cfg = _config(**{"output_dir": str(tmp_path_factory.mktemp("agent"))})
    setup = setup_rl(cfg, warm_up=False)
    state, batch, metrics = collect_agent_batch(setup, setup.state)
    return cfg, setup, batch, metrics


def test_turn_rows_fill_a_fixed_batch_and_only_actions_train(one_step):
    cfg, setup, batch, metrics = one_step
    rows = agent_rows(cfg, setup.task)
    assert rows == 2 * 2 * 3 and batch.tokens.shape == (rows, int(cfg.agent.max_prompt_tokens) + 4)
    width = int(cfg.agent.max_prompt_tokens)
    mask = np.asarray(batch.loss_mask)
    assert mask[:, :width].sum() == 0  # the prompt (goal, history, observation, actions) never trains
    real = int(metrics["rollout/turn_samples"])
    assert 4 <= real <= rows and mask[real:].sum() == 0  # padding rows are empty
    assert (mask[:real].sum(1) >= 1).all()  # every live turn trains its action tokens
    # every real row carries its episode's group-normalised reward (GRPO over the 4 episodes)
    rewards = np.asarray(batch.rewards)[:real]
    groups = np.asarray(batch.group_ids)[:real]
    adv = np.asarray(batch.advantages)[:real]
    assert metrics["turns_per_episode"] * 4 == pytest.approx(real)
    for g in (0, 1):
        r = rewards[groups == g]
        assert np.all(r <= 1.0) and np.all(r >= -0.1 * 3 - 1e-6)
    # rows of one episode share its advantage: equal (group, reward) -> equal advantage; a group whose
    # episodes all scored the same has zero advantage; a better episode ranks above within its group
    for g in (0, 1):
        r, a = rewards[groups == g], adv[groups == g]
        for value in np.unique(r):
            assert np.ptp(a[r == value]) < 1e-6
        if np.ptp(r) == 0:
            np.testing.assert_allclose(a, 0.0, atol=1e-6)
        else:
            assert a[np.argmax(r)] > a[np.argmin(r)]
    assert np.isfinite(adv).all() and np.asarray(batch.advantages)[real:].tolist() == [0.0] * (rows - real)
    assert 0.0 <= metrics["invalid_rate"] <= 1.0 and "success" in metrics


def test_episode_turn_credit_balances_each_group(tmp_path):
    # agent.turn_credit="episode": each episode's rows share its advantage scaled by mean turns / its
    # turns, so the rows of a group (GRPO: zero-mean episode advantages) sum to 0 whatever the lengths.
    # agent.invalid_credit="turn": the penalty leaves the returns and lands on the invalid rows only.
    cfg = _config(**{"output_dir": str(tmp_path / "e"), "agent.turn_credit": "episode", "agent.invalid_credit": "turn",
                     "agent.invalid_penalty": 0.25})
    setup = setup_rl(cfg, warm_up=False)
    _, batch, metrics = collect_agent_batch(setup, setup.state)
    real = int(metrics["rollout/turn_samples"])
    adv = np.asarray(batch.advantages)[:real]
    rewards = np.asarray(batch.rewards)[:real]
    assert rewards.min() >= 0.0  # the env's score alone: no penalty in the returns
    invalid_rows = round(metrics["invalid_rate"] * real)
    assert invalid_rows > 0  # the random policy's actions are mostly invalid
    assert adv.sum() == pytest.approx(-0.25 * invalid_rows, abs=1e-4)
    assert np.isfinite(adv).all() and np.asarray(batch.advantages)[real:].tolist() == [0.0] * (len(batch.advantages) - real)


def test_bad_agent_input_fails_before_anything_compiles(tmp_path):
    with pytest.raises(ValueError, match="data.task_kwargs.env"):
        check_rl_config(_config(**{"data.task_kwargs.env": "alfworld_online"}))
    with pytest.raises(ValueError, match="action_format"):
        check_rl_config(_config(**{"data.task_kwargs.action_format": "json"}))
    with pytest.raises(FileNotFoundError, match="no_such_skills.json"):
        check_rl_config(_config("configs/agents_house_skillc.py", **{"agent.skills": str(tmp_path / "no_such_skills.json")}))
    with pytest.raises(ValueError, match="agent.reward"):
        check_rl_config(_config(**{"agent.reward": "steps"}))
    with pytest.raises(ValueError, match="agent.turn_credit"):
        check_rl_config(_config(**{"agent.turn_credit": "trajectory"}))
    with pytest.raises(ValueError, match="agent.invalid_credit"):
        check_rl_config(_config(**{"agent.invalid_credit": "row"}))
    with pytest.raises(ValueError, match="rl.advantage='skillc'"):
        check_rl_config(_config(**{"agent.skillc.enabled": True, "agent.skills": "builtin"}))


def test_skillc_injects_skill_blocks_into_the_first_episodes_of_each_group(tmp_path):
    cfg = _config("configs/agents_house_skillc.py", **{"output_dir": str(tmp_path / "s"), "rl.samples_per_prompt": 4,
                                                        "agent.skillc.val_episodes": 1})
    setup = setup_rl(cfg, warm_up=False)
    state, batch, metrics = collect_agent_batch(setup, setup.state)
    assert "skillc/sr_with" in metrics and "skillc/lam" in metrics
    cond = np.asarray(batch.cond)
    real = int(metrics["rollout/turn_samples"])
    assert cond.shape == (batch.tokens.shape[0],) and set(np.unique(cond[:real])) <= {0, 1}
    assert 0.0 < metrics["skillc/injected_frac"] < 1.0


def test_agent_steps_run_on_int8_rollouts_with_the_aligned_learner_and_dgg_reuse(tmp_path):
    cfg = _config(**{"output_dir": str(tmp_path / "q"), "rl.rollout_quant": "int8", "rl.qarl": True,
                     "rl.dgg.enabled": True, "rl.reuse_epochs": 2, "rl.dgg.window": 2, "rl.steps": 2})
    setup = setup_rl(cfg, warm_up=False)
    from jaxrl_llm.train.rl_step import rl_step
    state = setup.state
    for _ in range(2):
        state, record = rl_step(setup, state)
    assert int(state.step) == 2 and record["reuse/epochs_used"] >= 1
    # the learner reads the rollout's int8 weights: sampler and learner log-probs agree
    assert record["rollout/mismatch_abs_logp"] < 1e-4


USER_ENV = textwrap.dedent('''
    """A one-step env: say the secret word."""
    class EchoEnv:
        name = "echo"
        task_types = ("echo",)
        max_steps = 2

        def reset(self, seed, task_id=0):
            self.word, self.done, self.steps, self.won, self.bad = ("red", "blue")[seed % 2], False, 0, False, False
            return f"Say {self.word}."

        def describe(self):
            return "Say the word you are shown."

        @property
        def info(self):
            return {"task_id": 0, "task_type": "echo", "goal": f"say {self.word}", "step": self.steps,
                    "admissible_actions": ["red", "blue"], "won": self.won, "score": float(self.won),
                    "invalid": self.bad, "privileged": "", "oracle_action": None if self.done else self.word}

        def step(self, action):
            if self.done:
                self.bad = False
                return "Done.", 0.0, True, self.info
            self.steps += 1
            self.bad = action.strip() not in ("red", "blue")
            self.won = action.strip() == self.word
            self.done = self.won or self.steps >= self.max_steps
            return ("Done." if self.done else f"Say {self.word}."), float(self.won), self.done, self.info
''')


def test_a_user_env_class_trains_through_the_cli(tmp_path, monkeypatch):
    (tmp_path / "my_echo_env.py").write_text(USER_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    args = ["rl", "--config", "configs/agents_house_grpo.py", f"--config.output_dir={out}",
            "--config.data.task_kwargs.env=my_echo_env:EchoEnv", "--config.data.tokenizer=char",
            "--config.model.vocab_size=128", "--config.rl.steps=2", "--config.agent.max_prompt_tokens=160"]
    args += [f"--config.{k}={v}" for k, v in SMALL.items()]
    assert cli.main(args) == 0
    with open(out / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    steps = [r for r in records if "success" in r]
    assert [r["step"] for r in steps] == [1, 2] and "success/echo" in steps[0]
    assert os.path.isdir(out / "checkpoints")
