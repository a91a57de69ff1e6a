"""`rl.overlap_scoring`: the learner's passes are dispatched before the host scores the rollout, and the
batch, the update and the metrics are exactly those of scoring first (train/rl_step.py)."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.envs.rewards import SCORERS, correctness_rewards, register_scorer
from jaxrl_llm.train.rl import check_rl_config, setup_rl
from jaxrl_llm.train.rl_step import collect_rollout_batch, rl_step

TINY = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
        "mesh.fsdp": 1, "data.level": 0, "sft.train.steps": 0, "rl.steps": 2, "rl.prompts_per_step": 2,
        "rl.samples_per_prompt": 4, "rl.max_new_tokens": 3, "rl.reuse_epochs": 1, "rl.progress_bar": False,
        "rl.optimizer.learning_rate": 1e-3, "rl.optimizer.warmup_steps": 0, "rl.proximal_check_rows": 4,
        "eval.num_problems": 0, "checkpoint.every": 0, "rl.dgg.window": 2}
TIMINGS = ("rollout/time_s", "rollout/score_time_s", "rollout/tokens_per_s", "update/time_s", "update/tokens_per_s")


def config(path, tmp_path, **extra):
    cfg = load_config_file(path)
    for k, v in {**TINY, "output_dir": str(tmp_path), **extra}.items():
        apply_override(cfg, k, str(v))
    return cfg


# The passes each recipe runs before its update: the proximal pass on check rows (quickstart), on every
# row with the reference pass (KL), the critic's, and the privileged self-teacher's (SDAR).
CASES = {"auto_check_rows": ("configs/quickstart.py", {}),
         "full_pass_and_reference": ("configs/quickstart.py", {"rl.proximal_pass": "always", "rl.kl_coef": 0.05}),
         "critic": ("configs/ppo.py", {}),
         "privileged_teacher": ("configs/sdar.py", {})}


@pytest.fixture
def length_scorer():
    """A scorer with mixed rewards from an untrained model (the response's length in characters / 4)."""
    register_scorer("response_chars", overwrite=True)(
        lambda task, problems, responses, **_: np.asarray([len(r) / 4 for r in responses], np.float32))
    yield "response_chars"
    SCORERS.pop("response_chars")


@pytest.mark.parametrize("case", CASES)
def test_overlapped_scoring_gives_the_same_batch_update_and_metrics(tmp_path, case, length_scorer):
    path, extra = CASES[case]
    out = {}
    for overlap in (True, False):
        overrides = {**extra, "rl.overlap_scoring": overlap, "rl.scorers": f"('{length_scorer}',)"}
        setup = setup_rl(config(path, tmp_path / str(overlap), **overrides), warm_up=False)
        batch, _ = collect_rollout_batch(setup, setup.state)
        state, record = rl_step(setup, setup.state)
        out[overlap] = batch, state, record
    (b_on, s_on, r_on), (b_off, s_off, r_off) = out[True], out[False]
    for field in dataclasses.fields(b_on):
        a, b = getattr(b_on, field.name), getattr(b_off, field.name)
        assert (a is None) == (b is None), field.name
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=field.name)
    assert np.asarray(b_on.loss_mask).sum() > 0 and np.ptp(np.asarray(b_on.rewards)) > 0
    assert {k for k in r_on} == {k for k in r_off}
    for k in r_on:
        if k not in TIMINGS:
            np.testing.assert_array_equal(r_on[k], r_off[k], err_msg=k)
    for a, b in zip(jax.tree.leaves(s_on.params), jax.tree.leaves(s_off.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert r_on["grad_norm"] > 0 and r_on["rollout/score_time_s"] >= 0


@pytest.fixture
def recorded_scorer():
    events = []

    @register_scorer("recorded_task", overwrite=True)
    def recorded(task, problems, responses, *, lengths, finished, max_length):
        events.append("score")
        return correctness_rewards(task, problems, responses)

    yield events
    SCORERS.pop("recorded_task")


def recorded_dispatch(fn, events):
    """`fn` (a `host_outputs` pass) that notes when its program is dispatched."""
    def call(*args):
        events.append("pass")
        return fn(*args)

    def start(*args):
        events.append("pass")
        return fn.dispatch(*args)

    call.dispatch = start
    return call


@pytest.mark.parametrize("overlap, dynamic, order", [
    (True, False, ["pass", "pass", "score"]),  # proximal and reference passes, then scoring
    (False, False, ["score", "pass", "pass"]),
    (True, True, ["score", "pass", "pass"]),  # dynamic sampling picks rows by reward: scoring comes first
])
def test_the_passes_are_dispatched_before_the_host_scores(tmp_path, recorded_scorer, overlap, dynamic, order):
    extra = {"rl.overlap_scoring": overlap, "rl.scorers": "('recorded_task',)", "rl.kl_coef": 0.05,
             "rl.dynamic_sampling.enabled": dynamic, "rl.dynamic_sampling.max_rounds": 0}
    setup = setup_rl(config("configs/quickstart.py", tmp_path, **extra), warm_up=False)
    setup = dataclasses.replace(setup, logprob_fn=recorded_dispatch(setup.logprob_fn, recorded_scorer))
    collect_rollout_batch(setup, setup.state)
    assert recorded_scorer == order


def test_overlap_scoring_must_be_a_bool(tmp_path):
    cfg = config("configs/quickstart.py", tmp_path)
    del cfg.rl["overlap_scoring"]  # a config file of the user's, setting it to a string
    cfg.rl.overlap_scoring = "yes"
    with pytest.raises(ValueError, match="rl.overlap_scoring must be true or false; got 'yes'"):
        check_rl_config(cfg)
