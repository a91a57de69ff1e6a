"""One trainer for every objective: declared inputs checked before compile, roles, and 2-step runs of
every registered objective and estimator through the CLI."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm import cli
from jaxrl_llm.envs.rewards import prefix_step_labels, register_scorer
from jaxrl_llm.objectives.registry import (
    advantage_spec,
    list_advantages,
    list_objectives,
    objective_spec,
)
from jaxrl_llm.objectives.token_stats import hidden_topk_logprobs
from jaxrl_llm.train import rl as rl_module
from jaxrl_llm.train import sft_run
from jaxrl_llm.train.rl import collect_rollout_batch, run_rl, setup_rl
from jaxrl_llm.train.rl_batch import token_rewards
from jaxrl_llm.train.rl_rollout import condition_flags
from jaxrl_llm.train.roles import overrides_for

TINY = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
    "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 2,
    "rl.samples_per_prompt": 4, "rl.max_new_tokens": 3, "rl.reuse_epochs": 1, "rl.dgg.window": 2,
    "rl.progress_bar": False, "rl.optimizer.learning_rate": 1e-3, "rl.optimizer.warmup_steps": 0,
    "rl.scorers": ("parity",), "eval.num_problems": 0, "checkpoint.every": 0,
}


@register_scorer("parity", overwrite=True)
def _parity(task, problems, responses, *, lengths, finished, max_length):
    """A reward a random-init policy earns about half the time: the first character's code is odd."""
    return np.asarray([float(bool(r) and ord(r[0]) % 2 == 1) for r in responses], np.float32)


def write_config(tmp_path):
    """A config file over the quickstart with an empty objective_kwargs (each objective has its own)."""
    path = tmp_path / "tiny_rl.py"
    path.write_text(textwrap.dedent("""
        from ml_collections import ConfigDict
        from jaxrl_llm.cli import load_config_file

        def get_config():
            c = load_config_file("configs/quickstart.py")
            c.rl.objective_kwargs = ConfigDict()
            return c
    """))
    return str(path)


def cli_args(config_path, out, overrides):
    args = ["--config", config_path, f"--config.output_dir={out}"]
    args += [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
    return args


def read_records(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def rl_recipe(objective=None, advantage=None):
    """The overrides that turn on the roles the objective / estimator reads (train/roles.py)."""
    out = {}
    if advantage is not None:
        out.update(overrides_for(advantage_spec(advantage)), **{"rl.advantage": advantage})
        if advantage_spec(advantage).rewards == "vector":
            out["rl.scorers"] = ("parity", "task")
    if objective is not None:
        out.update(overrides_for(objective_spec(objective)), **{"rl.objective": objective})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_objectives() if objective_spec(n).trainer == "rl"])
def test_every_rl_objective_trains_two_steps_from_the_cli(tmp_path, name):
    out = tmp_path / "run"
    assert cli.main(["rl", *cli_args(write_config(tmp_path), out, rl_recipe(objective=name))]) == 0
    records = [r for r in read_records(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["nonfinite_steps"] == 0 for r in records)
    assert max(r["grad_norm"] for r in records) > 0  # the parameters moved


@pytest.mark.slow
@pytest.mark.parametrize("name", list_advantages())
def test_every_estimator_trains_two_steps_from_the_cli(tmp_path, name):
    out = tmp_path / "run"
    assert cli.main(["rl", *cli_args(write_config(tmp_path), out, rl_recipe(advantage=name))]) == 0
    records = [r for r in read_records(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    assert max(r["grad_norm"] for r in records) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_objectives() if objective_spec(n).trainer == "dpo"])
def test_every_preference_objective_trains_two_steps_from_the_cli(tmp_path, name):
    out = tmp_path / "run"
    overrides = {"output_dir": out, "dpo.objective": name, "dpo.steps": 2, "dpo.batch_size": 4, "sft.train.steps": 0,
                 "data.num_pairs": 8, "eval.num_pairs": 4, "eval.num_problems": 4, "eval.batch_size": 4,
                 "model.num_layers": 1, "model.hidden_size": 32, "model.intermediate_size": 64,
                 "model.head_dim": 8, "mesh.fsdp": 1, "dpo.progress_bar": False}
    args = ["dpo", "--config", "configs/dpo_tiny.py", *[f"--config.{k}={v}" for k, v in overrides.items()]]
    assert cli.main(args) == 0
    records = [r for r in read_records(out) if "loss" in r]
    assert [r["step"] for r in records][-1] == 2 and all(np.isfinite(r["loss"]) for r in records)


@pytest.fixture
def no_warm_up(monkeypatch):
    """Any attempt to build or warm up a model fails the test: config errors must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the warm-up or model build started before the config was checked")

    monkeypatch.setattr(rl_module, "initial_policy", forbidden)
    monkeypatch.setattr(sft_run, "setup_sft", forbidden)
    monkeypatch.setattr(jax, "jit", forbidden)


def tiny_cfg(tmp_path, **overrides):
    cfg = cli.parse_config_args([*cli_args(write_config(tmp_path), tmp_path / "run", {"sft.train.steps": 450,
                                                                                      **overrides})])
    return cfg


@pytest.mark.parametrize("overrides, message", [
    ({"rl.objective_kwargs.clip_lo": 0.1},
     r"rl.objective_kwargs.clip_lo is not a hyperparameter of objective 'grpo'; it takes \[.*'clip_low'"),
    ({"rl.objective": "sdar"}, r"rl.objective='sdar' needs batch field 'teacher_logp'.*rl.teacher.source"),
    ({"rl.objective": "aopd", "rl.teacher.source": "privileged"},
     r"needs batch field 'teacher_topk_idx'.*rl.teacher.topk > 0"),
    ({"rl.objective": "ppo_value"}, r"needs batch field 'values'.*rl.critic.enabled=true"),
    ({"rl.objective": "bcpg_nsa"}, r"needs batch field 'step_id'"),
    ({"rl.advantage": "rdpo"}, r"rl.advantage='rdpo' reads reward vectors \[B, R\].*give rewards \[B\]"),
    ({"rl.advantage": "grpo", "rl.scorers": ("parity", "eos")}, r"reads rewards \[B\].*\[B, 2\]"),
    ({"rl.advantage": "gae"}, r"rl.advantage='gae' needs batch field 'values'"),
    ({"rl.advantage": "skillc"}, r"needs batch field 'cond'.*rl.condition.source='privileged'"),
    ({"rl.advantage_kwargs.gamma": 0.9}, r"rl.advantage_kwargs.gamma is not a hyperparameter of advantage estimator"),
    ({"rl.objective": "dpo"}, r"train it with the `dpo` command"),
    ({"rl.scorers": ("nope",)}, r"rl.scorers: unknown scorer 'nope'"),
])
def test_config_errors_name_the_field_before_anything_is_built(tmp_path, no_warm_up, overrides, message):
    cfg = tiny_cfg(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        run_rl(cfg)


def test_recipes_cover_every_registered_objective_and_estimator(tmp_path):
    """`overrides_for` turns on roles that make the check pass for every registered name."""
    for name in list_objectives():
        if objective_spec(name).trainer == "rl":
            rl_module.check_rl_config(tiny_cfg(tmp_path, **rl_recipe(objective=name)))
    for name in list_advantages():
        rl_module.check_rl_config(tiny_cfg(tmp_path, **rl_recipe(advantage=name)))


def test_privileged_teacher_equals_the_learner_when_the_privileged_prompt_is_the_prompt(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, **{"sft.train.steps": 0, "rl.objective": "sdar", "rl.teacher.source": "privileged",
                                "rl.teacher.topk": 3})
    setup = setup_rl(cfg, warm_up=False)
    batch, _ = collect_rollout_batch(setup, setup.state)
    mask = batch.loss_mask
    assert batch.teacher_topk_idx.shape == (*batch.shape, 3)
    # A different context gives different teacher log-probs on the very same response tokens.
    assert np.max(np.abs(batch.teacher_logprobs - batch.old_logprobs) * mask) > 1e-3
    monkeypatch.setattr(type(setup.task), "privileged_prompt", lambda self, p: p.prompt)
    same, _ = collect_rollout_batch(setup, setup.state)
    np.testing.assert_allclose(same.teacher_logprobs, same.old_logprobs, atol=2e-5)
    assert np.all(same.teacher_logprobs[mask == 0] == 0)
    # The sampled token's log-prob is at most the teacher's best; top-k log-probs are sorted.
    top = same.teacher_topk_logp
    assert np.all((top[..., 0] + 1e-5 >= same.teacher_logprobs)[mask > 0])
    assert np.all(np.diff(top, axis=-1)[mask > 0] <= 1e-6)


def test_teacher_topk_matches_full_softmax_and_stays_below_one_fp32_btv():
    b, t, d, v, k = 2, 64, 32, 4096, 8
    hidden = jax.random.normal(jax.random.key(0), (b, t, d))
    head = jax.random.normal(jax.random.key(1), (d, v)) * 0.3
    idx, logp = hidden_topk_logprobs(hidden, head, k, chunk_size=256, temperature=0.8)
    full = jax.nn.log_softmax((hidden @ head) / 0.8, axis=-1)
    ref_logp, ref_idx = jax.lax.top_k(full, k)
    np.testing.assert_allclose(logp, ref_logp, atol=2e-5)
    np.testing.assert_array_equal(idx, ref_idx)
    compiled = jax.jit(lambda h, w: hidden_topk_logprobs(h, w, k, chunk_size=256)).lower(hidden, head).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < b * t * v * 4, (temp, b * t * v * 4)


def test_condition_flags_token_rewards_and_step_labels_by_hand():
    np.testing.assert_array_equal(condition_flags(2, 4, 0.25), [1, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(condition_flags(1, 2, 0.99), [1, 0])  # both conditions in every group
    mask = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(token_rewards(np.array([2.0, 5.0]), mask), [[0, 0, 2, 0], [0, 0, 0, 0]])
    step_id, step_ok = prefix_step_labels([["1", "2", "x"], ["1", "3\n", "5"]], ["12", "13\n5"], delimiter="\n",
                                          num_steps=3)
    np.testing.assert_array_equal(step_id, [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(step_ok, [[False, False, False], [True, True, False]])


def test_rl_batch_fields_reach_the_objective_under_their_registry_names():
    from jaxrl_llm.train.rl_update import BATCH_TO_OBJECTIVE
    declared = set()
    for name in list_objectives():
        spec = objective_spec(name)
        declared |= set(spec.inputs or ()) | {f for g in spec.any_of for f in g}
        declared |= {f for _, fields in spec.when for f in fields}
    learner = {"logp", "entropy", "student_logits", "values"}
    preference = {"policy_chosen_logp", "policy_rejected_logp", "ref_chosen_logp", "ref_rejected_logp"}
    assert declared - learner - preference - {"teacher_logits"} <= set(BATCH_TO_OBJECTIVE.values())


def test_the_teacher_top_k_pass_of_a_decoder_stays_below_one_fp32_btv():
    """The whole teacher pass (decoder forward + chunked top-k), compiled: temporaries < one [B, T, V] fp32."""
    from flax import nnx

    from jaxrl_llm.models.config import preset
    from jaxrl_llm.models.decoder import Decoder
    from jaxrl_llm.parallel.init import abstract_model, split_module
    from jaxrl_llm.train.rl_update import make_pass_fn

    b, t, v = 2, 32, 16384
    config = preset("tiny", vocab_size=v, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=16)
    parts = abstract_model(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    params, rest = split_module(Decoder(config, rngs=nnx.Rngs(0)))
    fn = make_pass_fn(parts, chunk_size=1024, topk=8)
    tokens = jnp.ones((b, t), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    compiled = fn.lower(params, rest, tokens, positions, jnp.ones((b, t), jnp.int32)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < b * t * v * 4, (temp, b * t * v * 4)
    out = fn(params, rest, tokens, positions, jnp.ones((b, t), jnp.int32))
    assert out["topk_idx"].shape == (b, t, 8) and np.all(np.asarray(out["topk_logp"])[:, 1:] <= 0)


def test_a_share_of_warm_up_records_can_carry_the_privileged_prompt():
    from ml_collections import ConfigDict

    from jaxrl_llm.train.sft_run import training_records

    data = ConfigDict({"jsonl_path": "", "task": "arithmetic", "level": 1, "eval_fraction": 0.1, "num_train": 400,
                       "privileged_fraction": 0.25})
    records = training_records(data, 0)
    hinted = [r for r in records if ";" in r["prompt"]]
    assert 70 <= len(hinted) <= 130  # about a quarter
    for r in hinted:  # "a+b=c;a+b=" -> c: the worked copy, then the same prompt
        worked, prompt = r["prompt"].split(";")
        assert worked == prompt + r["completion"]
    assert training_records({**data, "privileged_fraction": 0.0}, 0) == [
        {"prompt": r["prompt"].split(";")[-1], "completion": r["completion"]} for r in records]
    with pytest.raises(ValueError, match=r"data.privileged_fraction must be in \[0, 1\]"):
        training_records({**data, "privileged_fraction": 1.5}, 0)
