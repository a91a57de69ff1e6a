"""Offline BCPG-NSA: task step labels on tokens (the spec's N1 case end to end), the PRM consensus
hook, the fixed dataset (deterministic, shared by the variants) and a reduced run of each variant."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

import jaxrl_llm.objectives as obj
from jaxrl_llm import cli
from jaxrl_llm.envs.arith_chain import ArithChainTask, parse_steps
from jaxrl_llm.envs.step_labels import (
    register_step_scorer,
    step_accuracy,
    task_step_labels,
    token_step_ids,
    with_judge_false_positives,
)
from jaxrl_llm.envs.task import Problem
from jaxrl_llm.train import rl_offline
from jaxrl_llm.train.rl_step import step_label_fields

PIECES = {3: "1+2", 4: "=3;", 5: "3+4", 6: "=7;", 7: "=7;#7", 8: "x"}  # multi-character tokens


class PieceTokenizer:
    """Token id -> a fixed piece of text (tokens spanning several characters, as BPE ones do)."""

    eos_id, pad_id, vocab_size = 2, 0, 9

    def decode(self, ids):
        return "".join(PIECES[int(i)] for i in ids)


def chain_problem():
    return Problem(prompt="1+2+4=", reference="7",
                   metadata={"operands": (1, 2, 4), "ops": ("+", "+"), "steps": ("1+2=3", "3+4=7")})


@register_step_scorer("test_prm_09_03")
def _fixed_prm(problem, response, steps):
    return [0.9, 0.3][:len(steps)] + [1.0] * max(len(steps) - 2, 0)


def n1_labels(prm: str, judge_false_positive: float = 0.0):
    """The spec's N1 group through the online step-label role: r = [1, 0, 0, 0], 4 response tokens
    each; response 2 is `1+2=3;` `3+4=7;` (both steps right by the checker), tokens 0-1 = step 1."""
    rows = np.array([[3, 4, 5, 7], [3, 4, 5, 6], [8, 8, 8, 8], [8, 8, 8, 8]])
    prompt_width = 2
    rollout = types.SimpleNamespace(response=rows, lengths=np.full(4, 4), prompt_width=prompt_width)
    mask = np.concatenate([np.zeros((4, prompt_width)), np.ones((4, 4))], axis=1).astype(np.float32)
    rl = ConfigDict({"samples_per_prompt": 4, "step_labels": {"delimiter": "", "prm": prm, "prm_threshold": 0.5,
                                                               "judge_false_positive": judge_false_positive}})
    setup = types.SimpleNamespace(cfg=ConfigDict({"rl": rl, "seed": 0}), tokenizer=PieceTokenizer(),
                                  task=ArithChainTask(3, 1))
    fields = step_label_fields(setup, rollout, [chain_problem()], mask)
    return fields["step_id"][:, prompt_width:], fields["step_ok"]


def test_token_step_ids_hand_case():
    text = "12+7=19;19-30=-12;#-12"
    steps = parse_steps([12, 7, 30], ["+", "-"], text)
    ids = token_step_ids(list(text), [(s.start, s.end) for s in steps], 24)
    np.testing.assert_array_equal(ids, [0] * 8 + [1] * 10 + [-1] * 4 + [-1] * 2)  # answer and padding: -1
    # A token starting inside step 1 belongs to it even when it runs into step 2.
    np.testing.assert_array_equal(token_step_ids(["12+7=1", "9;1", "9-30=-12;"], [(0, 8), (8, 18)], 4),
                                  [0, 0, 1, -1])


def test_n1_case_through_the_token_mapping_and_the_prm_consensus():
    step_id, step_ok = n1_labels("test_prm_09_03")
    np.testing.assert_array_equal(step_id[1], [0, 0, 1, 1])
    np.testing.assert_array_equal(step_ok[1, :2], [True, False])  # checker ok, ok; PRM 0.9, 0.3 -> 1, 0
    rewards, groups = jnp.array([1.0, 0.0, 0.0, 0.0]), jnp.zeros(4, jnp.int32)
    adv = obj.grpo_advantages(rewards, groups, num_groups=1)
    np.testing.assert_allclose(adv, [1.5, -0.5, -0.5, -0.5], atol=1e-5)
    adv_t = obj.nsa_token_advantages(adv, jnp.asarray(step_id), jnp.asarray(step_ok))
    np.testing.assert_allclose(adv_t[1], [0.5, 0.5, -0.5, -0.5], atol=1e-5)
    np.testing.assert_allclose(adv_t[0], [1.5] * 4, atol=1e-5)
    np.testing.assert_allclose(adv_t[2:], -0.5, atol=1e-5)  # junk: one wrong step, nothing flipped
    # The loss at rho = 1 has gradient -A_hat / (number of tokens) per token.
    logp = jnp.full((4, 4), -1.0)
    loss = lambda lp: obj.bcpg_nsa_loss(lp, logp, jnp.ones((4, 4)), rewards, groups, jnp.asarray(step_id),
                                        jnp.asarray(step_ok), num_groups=1).loss
    np.testing.assert_allclose(jax.grad(loss)(logp), -adv_t / 16, atol=1e-6)
    # Without the PRM the checker alone judges: both steps of response 2 are correct.
    _, ok_alone = n1_labels("")
    np.testing.assert_array_equal(ok_alone[1, :2], [True, True])


def test_judge_false_positives_flip_only_wrong_steps_that_have_tokens():
    rng = np.random.default_rng(0)
    step_id = np.array([[0, 0, 1, -1], [0, 1, 1, 2]])
    step_ok = np.array([[True, False, False], [False, True, False]])
    np.testing.assert_array_equal(with_judge_false_positives(step_id, step_ok, 1.0, rng),
                                  [[True, True, False], [True, True, True]])  # row 0's step 2 has no token
    np.testing.assert_array_equal(with_judge_false_positives(step_id, step_ok, 0.0, rng), step_ok)
    # At rate 0.5 about half the 20000 wrong, present steps flip, and no correct step changes.
    ids = np.tile(np.arange(4), (5000, 1))
    ok = np.zeros((5000, 4), bool)
    flipped = with_judge_false_positives(ids, ok, 0.5, np.random.default_rng(1))
    assert abs(flipped.mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match=r"in \[0, 1\]; got 1.5"):
        with_judge_false_positives(step_id, step_ok, 1.5, rng)


def test_an_erring_first_judge_feeds_the_consensus_deterministically():
    # Responses 3 and 4 ("xxxx") have one wrong step each; a judge that always errs calls it correct,
    # and the fixed PRM (0.9 on a first step) agrees, so the consensus keeps it.
    _, ok = n1_labels("", judge_false_positive=1.0)
    np.testing.assert_array_equal(ok[2:, 0], [True, True])
    _, ok_prm = n1_labels("test_prm_09_03", judge_false_positive=1.0)
    np.testing.assert_array_equal(ok_prm[2:, 0], [True, True])
    np.testing.assert_array_equal(ok_prm[1, :2], [True, False])  # the PRM's 0.3 still vetoes
    np.testing.assert_array_equal(n1_labels("", 0.5)[1], n1_labels("", 0.5)[1])


def test_tasks_without_a_checker_keep_the_reference_prefix_rule():
    rollout = types.SimpleNamespace(response=np.array([[8, 8], [3, 8]]), lengths=np.array([2, 1]), prompt_width=1)
    mask = np.array([[0, 1, 1], [0, 1, 0]], np.float32)
    rl = ConfigDict({"samples_per_prompt": 2, "step_labels": {"delimiter": "", "prm": "", "prm_threshold": 0.5}})
    setup = types.SimpleNamespace(cfg=ConfigDict({"rl": rl}), tokenizer=PieceTokenizer(), task=object())
    fields = step_label_fields(setup, rollout, [Problem("q", "1+2z")], mask)
    np.testing.assert_array_equal(fields["step_id"], [[-1, 0, 1], [-1, 0, -1]])
    np.testing.assert_array_equal(fields["step_ok"], [[False, False], [True, False]])


def test_step_accuracy_counts_the_checker_verdicts():
    task, p = ArithChainTask(3, 1), chain_problem()
    assert step_accuracy(task, [p, p], ["1+2=3;3+4=7;#7", "1+2=4;4+4=8;#8"]) == (2, 4)
    step_id, step_ok = task_step_labels(task, [p], [list("1+2=3;3+4=8;#8")], num_steps=16)
    assert step_id[0].tolist() == [0] * 6 + [1] * 6 + [-1] * 4 and step_ok[0, :3].tolist() == [True, False, False]


def _record(group, prompt_ids, response_ids, reward, step_id, step_ok):
    return {"group": group, "prompt": "", "prompt_ids": prompt_ids, "response": "", "response_ids": response_ids,
            "reward": reward, "finished": True, "behaviour_logp": [-0.5 - 0.1 * i for i in range(len(response_ids))],
            "step_id": step_id, "step_ok": step_ok}


def test_records_batch_places_labels_and_behaviour_logprobs_on_the_token_axis():
    recs = [_record(0, [1, 5], [6, 7, 2], 1.0, [0, 0, -1], [True]),
            _record(0, [1, 5], [6, 8], 0.0, [0, 1], [True, False]),
            _record(1, [1, 5, 9], [6], 0.0, [0], [False]),
            _record(1, [1, 5, 9], [7, 7, 7], 0.0, [0, 0, 0], [False])]
    batch = rl_offline.records_batch(recs, samples_per_prompt=2, prompt_width=4, response_width=3, pad_id=0)
    np.testing.assert_array_equal(batch.tokens[1], [0, 0, 1, 5, 6, 8, 0])
    np.testing.assert_array_equal(batch.loss_mask[1], [0, 0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(batch.step_id[:2], [[-1] * 4 + [0, 0, -1], [-1] * 4 + [0, 1, -1]])
    np.testing.assert_allclose(batch.old_logprobs[1], [0, 0, 0, 0, -0.5, -0.6, 0], atol=1e-6)
    assert batch.step_ok[1, :2].tolist() == [True, False] and batch.group_ids.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(batch.advantages[:2], [0.7071, -0.7071], atol=1e-3)  # unbiased std of [1, 0]
    plain = rl_offline.records_batch(recs, samples_per_prompt=2, prompt_width=4, response_width=3, pad_id=0,
                                     flip_steps=False)
    assert not plain.step_ok.any()  # BCPG without NSA: no step counts, so no token is flipped
    adv = obj.nsa_token_advantages(jnp.asarray(batch.advantages), jnp.asarray(batch.step_id), jnp.asarray(batch.step_ok))
    np.testing.assert_allclose(adv[1, 4:6], [0.7071, -0.7071], atol=1e-3)


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = rl_offline.epoch_batches(8, 2, seed=0, epoch=1)
    assert a.shape == (4, 2) and sorted(a.reshape(-1).tolist()) == list(range(8))
    np.testing.assert_array_equal(a, rl_offline.epoch_batches(8, 2, seed=0, epoch=1))
    assert not np.array_equal(a, rl_offline.epoch_batches(8, 2, seed=0, epoch=2))


def offline_config(tmp, **overrides):
    cfg = cli.load_config_file("configs/bcpg_offline.py")
    small = {"model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1, "model.head_dim": 8,
             "mesh.fsdp": 1, "data.task_kwargs.num_operands": "(2, 2)", "data.task_kwargs.num_digits": 1,
             "data.seq_len": 16, "data.num_train": 512, "sft.train.steps": 60, "sft.train.progress_bar": False,
             "sft.optimizer.decay_steps": 60, "sft.optimizer.warmup_steps": 10, "rl.steps": 2,
             "rl.prompts_per_step": 4, "rl.samples_per_prompt": 4, "rl.max_new_tokens": 10,
             "rl.offline.num_prompts": 8, "rl.progress_bar": False, "eval.num_problems": 8,
             "eval.samples_per_prompt": 2, "eval.batch_size": 8, "eval.max_new_tokens": 10, "eval.every": 2,
             "output_dir": str(tmp / "run"), **overrides}
    for key, value in small.items():
        cli.apply_override(cfg, key, str(value))
    return cfg


@pytest.mark.parametrize("field, value, match", [
    ("rl.offline.variant", "dpo", r"rl.offline.variant must be one of"),
    ("rl.offline.num_prompts", "6", r"rl.offline.num_prompts=6 must be a positive multiple of rl.prompts_per_step=4"),
    ("rl.reuse_epochs", "2", r"rl.reuse_epochs must be 1 in offline mode"),
    ("rl.objective", "grpo", r"trains rl.objective='bcpg_nsa'"),
])
def test_offline_config_errors_name_the_field(tmp_path, field, value, match):
    cfg = offline_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=match):
        rl_offline.check_offline_config(cfg)


def test_a_cached_dataset_of_other_data_fields_is_refused(tmp_path):
    cfg = offline_config(tmp_path)
    path = str(tmp_path / "data.jsonl")
    rl_offline.write_records(path, [], rl_offline.data_fingerprint(cfg))
    assert rl_offline._check_cached(path, rl_offline.data_fingerprint(cfg))
    other = offline_config(tmp_path, **{"rl.temperature": 0.7, "rl.offline.variant": "rft"})
    with pytest.raises(ValueError, match=r"rl.temperature: 1.0 -> 0.7"):
        rl_offline._check_cached(path, rl_offline.data_fingerprint(other))
    # The variant and training fields are not data fields.
    same = offline_config(tmp_path, **{"rl.offline.variant": "rft", "rl.steps": 9, "rl.optimizer.learning_rate": 1.0})
    assert rl_offline.data_fingerprint(same) == rl_offline.data_fingerprint(cfg)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    from jaxrl_llm.train.rl import initial_policy

    tmp = tmp_path_factory.mktemp("warm")
    return initial_policy(offline_config(tmp), warm_up=True)


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_reduced_offline_runs_share_one_deterministic_dataset(tmp_path, warm):
    shared = str(tmp_path / "data.jsonl")
    runs = {}
    for variant, path in (("bcpg_nsa", shared), ("rft", str(tmp_path / "again.jsonl")), ("bcpg", shared)):
        cfg = offline_config(tmp_path, **{"rl.offline.variant": variant, "rl.offline.dataset_path": path,
                                          "output_dir": str(tmp_path / variant)})
        runs[variant] = rl_offline.run_offline_rl(cfg, initial=warm)
    # Built twice independently (by different variants): byte-identical; the third run reuses the file.
    with open(shared, "rb") as a, open(tmp_path / "again.jsonl", "rb") as b:
        assert a.read() == b.read()
    assert [runs[v]["dataset_cached"] for v in ("bcpg_nsa", "rft", "bcpg")] == [False, False, True]
    data = _jsonl(shared)
    assert len(data) == 8 * 4 and [r["group"] for r in data[:8]] == [0] * 4 + [1] * 4
    assert all(len(r["behaviour_logp"]) == len(r["response_ids"]) == len(r["step_id"]) for r in data)
    for variant, summary in runs.items():
        records = _jsonl(os.path.join(summary["run_dir"], "metrics.jsonl"))
        assert [r["step"] for r in records] == [0, 1, 2]
        assert all(np.isfinite(r["loss"]) and r["offline/updates"] == 2 for r in records[1:])
        assert [r["step"] for r in records if "eval/step_accuracy" in r and "eval/greedy_step_accuracy" in r] == [0, 2]
        assert records[0]["dataset/accuracy"] == runs["bcpg_nsa"]["dataset/accuracy"]
        assert records[0]["eval/accuracy"] == runs["bcpg_nsa"]["accuracy_before"]  # the same warm-up
    nsa, plain = (_jsonl(os.path.join(runs[v]["run_dir"], "metrics.jsonl")) for v in ("bcpg_nsa", "bcpg"))
    assert all(r["pg/frac_flipped"] == 0.0 for r in plain[1:])
    assert (max(r["pg/frac_flipped"] for r in nsa[1:]) > 0) == (runs["bcpg_nsa"]["dataset/frac_flipped"] > 0)
    rft = _jsonl(os.path.join(runs["rft"]["run_dir"], "metrics.jsonl"))
    assert (rft[1]["supervised_tokens"] > 0) == (runs["rft"]["dataset/accuracy"] > 0)  # positives only
