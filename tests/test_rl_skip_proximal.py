"""Skipping the learner's proximal pass (`rl.proximal_pass = "auto"`, train/proximal.py) changes nothing but rounding."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.proximal import check_proximal_config, check_rows, mismatch_abs_logp, proximal_blockers
from jaxrl_llm.train.rl import check_rl_config, setup_rl
from jaxrl_llm.train.rl_step import collect_rollout_batch, rl_step

TINY = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
        "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 4,
        "rl.samples_per_prompt": 4, "rl.max_new_tokens": 3, "rl.reuse_epochs": 1, "rl.progress_bar": False,
        "rl.objective_kwargs.entropy_coef": 0.01, "rl.optimizer.learning_rate": 1e-3, "rl.optimizer.warmup_steps": 0,
        "rl.proximal_check_rows": 4, "eval.num_problems": 0, "checkpoint.every": 0, "rl.dgg.window": 2}


def config(tmp_path, **extra):
    cfg = load_config_file("configs/quickstart.py")
    for k, v in {**TINY, "output_dir": str(tmp_path), **extra}.items():
        apply_override(cfg, k, str(v))
    return cfg


def one_step(cfg):
    setup = setup_rl(cfg, warm_up=False)
    batch, _ = collect_rollout_batch(setup, setup.state)
    state, record = rl_step(setup, setup.state)
    return batch, state, record


@pytest.mark.parametrize("extra", [{}, {"rl.rollout_quant": "int8", "rl.qarl": True}], ids=["fp32", "qarl_int8"])
def test_one_step_with_and_without_the_pass_gives_the_same_update(tmp_path, extra):
    b_skip, s_skip, r_skip = one_step(config(tmp_path / "auto", **extra))
    b_full, s_full, r_full = one_step(config(tmp_path / "always", **{"rl.proximal_pass": "always", **extra}))
    assert r_skip["rollout/proximal_skipped"] == 1.0 and r_full["rollout/proximal_skipped"] == 0.0
    mask = b_skip.loss_mask
    assert mask.sum() > 0
    # Skipped: old_logprobs are the sampler's; the learner's own differ by rounding only.
    np.testing.assert_array_equal(b_skip.old_logprobs, b_skip.rollout_logprobs * mask)
    np.testing.assert_allclose(b_skip.old_logprobs, b_full.old_logprobs, atol=1e-4)
    np.testing.assert_array_equal(b_skip.tokens, b_full.tokens)
    np.testing.assert_allclose(r_skip["loss"], r_full["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s_skip.params), jax.tree.leaves(s_full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert r_full["grad_norm"] > 0  # the step moved the parameters
    # The metric still compares sampler and learner: on the check rows, the same size as on all rows.
    assert 0 <= r_skip["rollout/mismatch_abs_logp"] < 1e-4 and r_full["rollout/mismatch_abs_logp"] < 1e-4


def test_unaligned_quantized_rollouts_keep_the_pass_and_its_mismatch(tmp_path):
    _, _, record = one_step(config(tmp_path, **{"rl.rollout_quant": "int4"}))
    assert record["rollout/proximal_skipped"] == 0.0 and record["rollout/mismatch_abs_logp"] > 1e-3


def rl_section(**changes):
    rl = load_config_file("configs/quickstart.py").rl
    rl.reuse_epochs = 1
    for k, v in changes.items():
        rl[k] = v
    return rl


def blockers(rl, *, temperature=None, params=None, rows=16, critic=False):
    return proximal_blockers(rl, sampling_temperature=rl.temperature if temperature is None else temperature,
                             params={"w": np.zeros((2, 2))} if params is None else params, rows=rows, critic=critic)


def test_every_condition_met_allows_the_skip():
    assert blockers(rl_section()) == ()
    assert blockers(rl_section(rollout_quant="int8", qarl=True)) == ()


@pytest.mark.parametrize("changes, kwargs, reason", [
    ({"proximal_pass": "always"}, {}, "rl.proximal_pass='always'"),
    ({"rollout_quant": "int8"}, {}, "rl.rollout_quant='int8' without rl.qarl"),
    ({"top_k": 5}, {}, "rl.top_k=5"),
    ({"top_p": 0.9}, {}, "rl.top_p=0.9"),
    ({"reuse_epochs": 2}, {}, "rl.reuse_epochs=2 x rl.minibatches=1"),
    ({"minibatches": 2}, {}, "rl.reuse_epochs=1 x rl.minibatches=2"),
    ({}, {"temperature": 0.7}, "sampled at temperature 0.7"),
    ({}, {"critic": True}, "the critic's pass"),
    ({}, {"rows": 8}, "rl.proximal_check_rows=8 >= 8 rows"),
])
def test_each_failing_condition_turns_the_skip_off(changes, kwargs, reason):
    out = blockers(rl_section(**changes), **kwargs)
    assert len(out) == 1 and out[0].startswith(reason), out


def test_lora_adapters_turn_the_skip_off():
    from jaxrl_llm.models.lora import apply_lora  # noqa: PLC0415

    params = apply_lora({"q_proj": np.ones((4, 4), np.float32)}, rank=2, alpha=4.0, targets=("q_proj",),
                        key=jax.random.key(0))
    assert blockers(rl_section(), params=params) == ("LoRA adapters",)


def test_a_config_without_the_field_keeps_the_pass():
    rl = rl_section()
    del rl["proximal_pass"]
    assert blockers(rl) == ("rl.proximal_pass='always'",)


def test_check_rows_are_evenly_spread_over_rows_with_tokens():
    mask = np.zeros((10, 3), np.float32)
    mask[[1, 2, 5, 6, 9], 0] = 1.0
    np.testing.assert_array_equal(check_rows(mask, 3), [1, 5, 9])
    np.testing.assert_array_equal(check_rows(mask, 7), [1, 2, 2, 5, 6, 6, 9])  # fixed count: repeats
    np.testing.assert_array_equal(check_rows(np.zeros((4, 2)), 2), [0, 3])


def test_mismatch_is_the_mean_over_masked_tokens():
    old = np.array([[0.0, -1.0], [-2.0, -3.0]])
    new = np.array([[0.5, -1.0], [-2.0, 9.0]])
    mask = np.array([[1.0, 1.0], [1.0, 0.0]])
    assert mismatch_abs_logp(old, new, mask) == pytest.approx(0.5 / 3)
    assert mismatch_abs_logp(old, new, np.zeros_like(mask)) == 0.0


@pytest.mark.parametrize("key, value, message", [
    ("proximal_pass", "never", r"rl.proximal_pass must be one of \['auto', 'always'\]; got 'never'"),
    ("proximal_check_rows", 0, r"rl.proximal_check_rows must be an integer >= 1"),
])
def test_bad_fields_are_named(key, value, message):
    rl = ConfigDict({"proximal_pass": "auto", "proximal_check_rows": 4})
    rl[key] = value
    with pytest.raises(ValueError, match=message):
        check_proximal_config(rl)


def test_the_rl_config_check_runs_it(tmp_path):
    with pytest.raises(ValueError, match=r"rl.proximal_pass must be one of"):
        check_rl_config(config(tmp_path, **{"rl.proximal_pass": "sometimes"}))
