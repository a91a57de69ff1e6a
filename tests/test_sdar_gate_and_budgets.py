"""SDAR's gate-off variant (naive GRPO + OPSD) by hand, its config check, and the methods experiment's new
paths: per-recipe baselines, shared warm-ups, accuracy at equal rollouts / wall time, a tiny dpo_vp run."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl_llm.objectives as obj
from jaxrl_llm.cli import apply_override, load_config_file
from jaxrl_llm.train.rl import check_rl_config

spec = importlib.util.spec_from_file_location("exp_methods", os.path.join("tools", "exp_methods.py"))
exp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exp)

# Test S1 of the spec: student p = [0.5, 0.5], teacher p = [0.8, 0.2].
S1_LOGP = jnp.log(jnp.array([[0.5, 0.5]]))
S1_TEACHER = jnp.log(jnp.array([[0.8, 0.2]]))
S1_GAP = [0.470004, -0.916291]


# ------------------------------------------------------------------------------ the gate-off variant

def test_ungated_term_weights_each_token_by_the_gap_case_s1():
    mask = jnp.ones((1, 2))
    out = obj.sdar_aux_loss(S1_LOGP, S1_TEACHER, mask, gate="none")
    value, grad = jax.value_and_grad(lambda lp: obj.sdar_aux_loss(lp, S1_TEACHER, mask, gate="none").loss)(S1_LOGP)
    # value = mean(gap^2) = (0.470004^2 + 0.916291^2) / 2; d/dlogp = -gap / N
    np.testing.assert_allclose(value, 0.530246, atol=1e-6)
    np.testing.assert_allclose(grad, [[-0.235002, 0.458146]], atol=1e-6)
    np.testing.assert_allclose(out.metrics["gate_mean"], (S1_GAP[0] + S1_GAP[1]) / 2, atol=1e-6)
    assert float(out.metrics["gate_active_ratio"]) == 0.5  # only the endorsed token has a positive weight
    # The sigmoid gate on the same tokens pushes the rejected one *up* a little; ungated pushes it down.
    gated = jax.grad(lambda lp: obj.sdar_aux_loss(lp, S1_TEACHER, mask).loss)(S1_LOGP)
    assert float(gated[0, 1]) < 0 < float(grad[0, 1])


def test_ungated_term_ignores_beta_and_masked_tokens_and_is_zero_at_zero_gap():
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    teacher = logp + jnp.array([[0.3, -0.1, 5.0]])  # the masked token's gap must not count
    a = obj.sdar_aux_loss(logp, teacher, mask, gate="none", gate_beta=1.0, coef=0.5)
    b = obj.sdar_aux_loss(logp, teacher, mask, gate="none", gate_beta=10.0, coef=0.5)
    np.testing.assert_allclose(a.loss, 0.5 * (0.3**2 + 0.1**2) / 2, atol=1e-6)
    assert float(a.loss) == float(b.loss)
    value, grad = jax.value_and_grad(lambda lp: obj.sdar_aux_loss(lp, lp, mask, gate="none").loss)(logp)
    assert float(value) == 0.0 and float(jnp.abs(grad).max()) == 0.0  # the gated form's is -0.5 / N here


def test_registry_sdar_gate_none_is_grpo_plus_kl_plus_the_ungated_term():
    rng = np.random.default_rng(1)
    logp = jnp.asarray(-rng.uniform(0.5, 2, (2, 3)), jnp.float32)
    batch = {"logp": logp, "old_logp": logp, "ref_logp": logp - 0.1, "teacher_logp": logp + 0.2,
             "mask": jnp.ones((2, 3)), "advantages": jnp.array([1.0, -1.0])}
    out = obj.get_objective("sdar")(batch, kl_coef=0.01, sdar_coef=0.1, gate="none")
    pg = obj.dual_clip_loss(logp, logp, batch["advantages"], batch["mask"]).loss
    kl = obj.kl_penalty(logp, batch["ref_logp"], batch["mask"], coef=0.01).loss
    np.testing.assert_allclose(out.loss, pg + kl + 0.1 * 0.2**2, atol=1e-6)
    np.testing.assert_allclose(out.metrics["sdar/gate_mean"], 0.2, atol=1e-6)
    with pytest.raises(ValueError, match="gate must be one of"):
        obj.sdar_aux_loss(logp, logp, batch["mask"], gate="off")


def test_a_bad_gate_fails_the_config_check_naming_the_field():
    cfg = load_config_file("configs/opsd_chain.py")
    assert cfg.rl.objective_kwargs.gate == "none"
    check_rl_config(cfg)
    apply_override(cfg, "rl.objective_kwargs.gate", "off")
    with pytest.raises(ValueError, match=r"rl.objective_kwargs.gate must be one of \('sigmoid', 'none'\)"):
        check_rl_config(cfg)


def test_chain_recipes_share_the_grpo_chain_warm_up_and_differ_only_in_their_method():
    cfgs = {m: exp.configure(exp.METHODS[m][0], {"seed": 1}) for m in ("grpo_chain", "sdar_chain", "opsd_chain",
                                                                       "skillc_chain")}
    assert len({exp.warmup_key(c) for c in cfgs.values()}) == 1
    assert cfgs["grpo_chain"].data.task == "arith_chain" and cfgs["grpo_chain"].data.privileged_fraction > 0
    assert exp.warmup_key(cfgs["grpo_chain"]) != exp.warmup_key(exp.configure("configs/quickstart.py", {"seed": 1}))
    assert (cfgs["sdar_chain"].rl.objective_kwargs.gate, cfgs["opsd_chain"].rl.objective_kwargs.gate) == ("sigmoid",
                                                                                                         "none")
    # dpo_vp starts from the GRPO quickstart's warm-up; logging fields do not change a warm-up
    dpo_vp = exp.configure("configs/dpo_vp.py", {"seed": 1, "sft.train.progress_bar": False})
    assert exp.warmup_key(dpo_vp) == exp.warmup_key(exp.configure("configs/quickstart.py", {"seed": 1}))
    assert exp.warmup_key(dpo_vp) != exp.warmup_key(exp.configure("configs/quickstart.py", {"seed": 2}))


def test_a_sweep_reads_each_config_file_once_and_hands_out_independent_copies(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("from ml_collections import ConfigDict\n\ndef get_config():\n    return ConfigDict({'a': 1})\n")
    first = exp.configure(str(path), {"a": 2})
    path.write_text("from ml_collections import ConfigDict\n\ndef get_config():\n    return ConfigDict({'a': 9})\n")
    assert (first.a, exp.configure(str(path), {}).a) == (2, 1)  # the edit mid-sweep is not seen


# ------------------------------------------------------------------------------ bookkeeping

def run(method, seed, final, greedy=None, before=0.3, **extra):
    return {"method": method, "seed": seed, "accuracy_before": before, "final_accuracy": final,
            "final_greedy_accuracy": final if greedy is None else greedy, "response_length": 4.0, "metric": "m",
            "metric_mean": 1.0, "wall_time_s": 10.0, "curve": [(0, before), (100, final)], **extra}


def test_chain_recipes_are_compared_with_grpo_chain_and_dpo_vp_on_greedy_accuracy():
    results = [run("grpo", 0, 0.50, greedy=0.60), run("grpo_chain", 0, 0.20), run("sdar_chain", 0, 0.25),
               run("opsd_chain", 0, 0.15), run("skillc_chain", 0, 0.205),
               run("dpo_vp", 0, 0.55, greedy=0.55, eval="greedy")]
    rows = {r["method"]: r for r in exp.summarize(results)}
    assert rows["sdar_chain"]["gain_vs_grpo_per_seed"] == pytest.approx([0.05])  # vs grpo_chain, not grpo
    assert rows["opsd_chain"]["baseline"] == "grpo_chain"
    assert rows["dpo_vp"]["gain_vs_grpo_per_seed"] == pytest.approx([-0.05])  # greedy 0.55 vs GRPO's greedy 0.60
    assert exp.verdict(rows["grpo_chain"]) == "-" and exp.verdict(rows["sdar_chain"]) == "holds"
    assert exp.verdict(rows["opsd_chain"]) == "holds"  # the claim is that it is worse
    assert exp.verdict(rows["skillc_chain"]) == "within noise"
    assert exp.verdict(rows["dpo_vp"]) == "see the budget table"


def test_eval_curves_count_rollouts_and_training_time_without_evaluation():
    records = [{"step": 1, "step_time_s": 5.0}, {"step": 2, "step_time_s": 7.0, "eval/time_s": 3.0,
                                                 "eval/accuracy": 0.4, "eval/greedy_accuracy": 0.5},
               {"step": 3, "step_time_s": 2.0}, {"step": 4, "step_time_s": 6.0, "eval/time_s": 2.0,
                                                 "eval/accuracy": 0.6, "eval/greedy_accuracy": 0.7}]
    c = exp.eval_curves(records, 64, {"accuracy": 0.1, "greedy": 0.2})
    assert c["curve"] == [(0, 0.1), (128, 0.4), (256, 0.6)]
    assert c["greedy_curve"] == [(0, 0.2), (128, 0.5), (256, 0.7)]
    assert c["time_curve"] == [(0.0, 0.2), (9.0, 0.5), (15.0, 0.7)]


def test_budget_rows_interpolate_grpo_between_its_evaluation_points():
    grpo = run("grpo", 0, 0.5, greedy_curve=[(0, 0.2), (1024, 0.4), (2048, 0.6), (4096, 0.7)],
               time_curve=[(0.0, 0.2), (10.0, 0.4), (20.0, 0.6), (40.0, 0.7)])
    vp = run("dpo_vp", 0, 0.5, greedy=0.5, eval="greedy", rollouts=3072, train_time_s=15.0)
    late = run("dpo_vp", 1, 0.5, greedy=0.5, eval="greedy", rollouts=3072, train_time_s=99.0)
    grpo1 = dict(grpo, seed=1)
    assert exp.at_budget(grpo["greedy_curve"], 3072) == pytest.approx(0.65)
    assert exp.at_budget(grpo["greedy_curve"], 5000) is None  # never extrapolated
    rows = exp.budget_rows([grpo, vp, grpo1, late])
    assert rows[0]["baseline_at_rollouts"] == pytest.approx(0.65) and rows[0]["baseline_at_time"] == pytest.approx(0.5)
    assert rows[0]["gain_at_rollouts"] == pytest.approx(-0.15) and rows[0]["gain_at_time"] == pytest.approx(0.0)
    assert rows[1]["baseline_at_time"] is None and rows[1]["gain_at_time"] is None
    table = exp.budget_table(rows)
    assert table.count("\n") == 3 and "| dpo_vp | 0 |" in table and "-15.0" in table


# ------------------------------------------------------------------------------ a tiny sweep

@pytest.mark.slow
def test_a_tiny_dpo_vp_sweep_starts_from_the_grpo_warm_up_and_counts_its_samples(tmp_path):
    out = str(tmp_path)
    sets = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.head_dim=8",
            "mesh.fsdp=1",  # one device: the tests force 8 host devices
            "sft.train.steps=2", "sft.train.progress_bar=false", "eval.num_problems=4", "eval.batch_size=4",
            "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.reuse_epochs=1", "rl.dgg.window=2",
            "eval.samples_per_prompt=2", "dpo_vp.prompts_per_round=3", "dpo_vp.samples_per_prompt=2",
            "dpo.steps_per_round=1", "dpo.batch_size=2", "dpo.log_every=1"]
    argv = ["--out", out, "--methods", "dpo_vp", "--seeds", "0", "--steps", "2", "--eval-every", "1"]
    assert exp.main(argv + [a for s in sets for a in ("--set", s)]) == 0
    with open(os.path.join(out, "results.json")) as f:
        runs = {r["method"]: r for r in json.load(f)["runs"]}
    assert sorted(runs) == ["dpo_vp", "grpo"]
    vp, grpo = runs["dpo_vp"], runs["grpo"]
    assert vp["rollouts"] == 3 * 3 * 2 and [n for n, _ in vp["greedy_curve"]] == [0, 6, 12, 18]
    assert vp["greedy_curve"][0][1] == grpo["greedy_curve"][0][1]  # the same warmed-up policy, the same problems
    assert [n for n, _ in grpo["greedy_curve"]] == [0, 4, 8] and vp["train_time_s"] > 0
    assert "eval.samples_per_prompt" in vp["skipped_overrides"]  # an RL-only field
    with open(os.path.join(out, "budget.json")) as f:
        (row,) = json.load(f)
    assert row["rollouts"] == 18 and row["baseline_at_rollouts"] is None  # GRPO stopped at 8 samples
