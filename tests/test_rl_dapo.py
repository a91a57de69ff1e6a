"""DAPO in the loop: dynamic sampling refills zero-variance groups, overlong shaping and filtering;
Dr.GRPO's L_norm is the longest generation."""

import numpy as np

from jaxrl_llm import cli
from jaxrl_llm.envs.rewards import register_scorer
from jaxrl_llm.train.rl import (
    collect_rollout_batch,
    mixed_groups,
    setup_rl,
    update_options,
)
from jaxrl_llm.train.rl_rollout import pick_groups

TINY = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
    "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 4,
    "rl.samples_per_prompt": 4, "rl.max_new_tokens": 3, "rl.reuse_epochs": 1, "rl.progress_bar": False,
    "eval.num_problems": 0, "checkpoint.every": 0, "rl.objective": "dapo",
}


@register_scorer("parity_if_even", overwrite=True)
def _parity_if_even(task, problems, responses, *, lengths, finished, max_length):
    """Informative only for problems whose first operand is even: the other groups all score 0."""
    return np.asarray([float(p.metadata["operands"][0] % 2 == 0 and bool(r) and ord(r[0]) % 2 == 1)
                       for p, r in zip(problems, responses)], np.float32)


def config(tmp_path, **overrides):
    args = ["--config", "configs/quickstart.py", f"--config.output_dir={tmp_path}"]
    args += [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
    return cli.parse_config_args(args)


def test_pick_groups_takes_informative_groups_in_draw_order_and_tops_up():
    groups, kept = pick_groups(np.array([False, True, False, True, True]), 2)
    np.testing.assert_array_equal(groups, [1, 3])
    assert kept.all()
    groups, kept = pick_groups(np.array([False, True, False]), 2)
    np.testing.assert_array_equal(groups, [1, 0])
    np.testing.assert_array_equal(kept, [True, False])
    np.testing.assert_array_equal(mixed_groups(np.array([1, 0, 1, 0, 0, 0]), 3), [True, False])


def test_dynamic_sampling_refills_the_step_with_informative_groups(tmp_path):
    cfg = config(tmp_path, **{"rl.scorers": ("parity_if_even",), "rl.dynamic_sampling.enabled": True,
                              "rl.dynamic_sampling.max_rounds": 8})
    setup = setup_rl(cfg, warm_up=False)
    batch, metrics = collect_rollout_batch(setup, setup.state)
    assert metrics["dapo/informative_first_round"] < 1.0  # the first draw had zero-variance groups
    assert metrics["dapo/rounds"] > 1 and metrics["dapo/kept_groups"] == 4
    assert mixed_groups(batch.rewards, 4).all()  # every group in the update carries advantage
    assert np.all(np.abs(batch.advantages.reshape(4, 4)).sum(1) > 0)
    assert metrics["rollout/drawn_samples"] == metrics["dapo/rounds"] * 16


def test_overlong_shaping_and_filtering(tmp_path):
    shaped = {"rl.scorers": ("parity_if_even",), "rl.overlong.cache_length": 2}
    plain = setup_rl(config(tmp_path / "a", **{"rl.scorers": ("parity_if_even",)}), warm_up=False)
    base, _ = collect_rollout_batch(plain, plain.state)
    setup = setup_rl(config(tmp_path / "b", **shaped), warm_up=False)
    batch, metrics = collect_rollout_batch(setup, setup.state)
    lengths = base.loss_mask.sum(1)
    # L_max = 3, L_cache = 2: length 1 -> 0, 2 -> (1 - 2) / 2 = -0.5, 3 -> -1.
    np.testing.assert_allclose(batch.rewards - base.rewards, np.select([lengths <= 1, lengths == 2], [0.0, -0.5], -1.0))
    assert (lengths == 3).any() and metrics["overlong/truncated"] > 0
    filtered = setup_rl(config(tmp_path / "c", **shaped, **{"rl.overlong.filter": True}), warm_up=False)
    kept, _ = collect_rollout_batch(filtered, filtered.state)
    eos = setup.tokenizer.eos_id
    last = base.tokens[np.arange(16), (base.loss_mask * np.arange(base.shape[1])).argmax(1)]
    truncated = (lengths == 3) & (last != eos)
    np.testing.assert_array_equal(kept.loss_mask.sum(1) == 0, truncated)  # truncated rows leave the loss
    np.testing.assert_array_equal(kept.loss_mask[~truncated], base.loss_mask[~truncated])


def test_drgrpo_normalises_by_the_longest_generation(tmp_path):
    options = update_options(config(tmp_path, **{"rl.objective": "drgrpo", "rl.max_new_tokens": 7}))
    assert options.kwargs["norm_length"] == 7.0 and options.kwargs.get("loss_agg_mode") is None
    options = update_options(config(tmp_path, **{"rl.objective": "drgrpo", "rl.objective_kwargs.norm_length": 5.0}))
    assert options.kwargs["norm_length"] == 5.0
    assert "norm_length" not in update_options(config(tmp_path, **{"rl.objective": "grpo"})).kwargs
