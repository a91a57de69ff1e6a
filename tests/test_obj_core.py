"""Conventions of the objective library: aggregation, composition, registry, import purity, bad input."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrl_llm.objectives as obj

OBJ_DIR = pathlib.Path(obj.__file__).parent


def a0():
    loss = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    return loss, mask


def test_aggregations_match_hand_computed_case_a0():
    loss, mask = a0()
    np.testing.assert_allclose(obj.aggregate(loss, mask, "token-mean"), 1 / 3, atol=1e-6)
    np.testing.assert_allclose(obj.aggregate(loss, mask, "seq-mean-token-mean"), 0.5, atol=1e-6)
    np.testing.assert_allclose(obj.aggregate(loss, mask, "seq-mean-token-sum-norm", norm_length=4), 0.25, atol=1e-6)
    np.testing.assert_allclose(obj.aggregate(loss, mask, "seq-mean-token-sum"), 1.0, atol=1e-6)


def test_seq_means_ignore_empty_sequences():
    loss = jnp.array([[2.0, 4.0], [9.0, 9.0]])
    mask = jnp.array([[1, 1], [0, 0]], jnp.float32)
    assert float(obj.seq_mean_token_mean(loss, mask)) == pytest.approx(3.0)
    assert float(obj.seq_mean_token_sum(loss, mask)) == pytest.approx(6.0)
    assert float(obj.token_mean(loss, jnp.zeros_like(mask))) == 0.0


def test_unknown_aggregation_is_named():
    loss, mask = a0()
    with pytest.raises(ValueError, match="loss_agg_mode"):
        obj.aggregate(loss, mask, "sum-everything")


def test_mismatched_mask_names_the_array():
    with pytest.raises(ValueError, match=r"mask must be \[B, T\]"):
        obj.aggregate(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_objective_modules_import_only_jax_numpy_stdlib_and_each_other():
    import sys

    allowed_roots = {"jax", "numpy", "jaxrl_llm"} | set(sys.stdlib_module_names)
    files = sorted(OBJ_DIR.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed_roots, f"{path.name} imports {name}"
                if name.startswith("jaxrl_llm"):
                    assert name.startswith("jaxrl_llm.objectives"), f"{path.name} imports {name}"


def test_compose_sums_terms_and_prefixes_metrics():
    a = obj.LossOutput(jnp.float32(1.5), {"x": jnp.float32(2.0)})
    b = obj.LossOutput(jnp.float32(-0.5), {})
    out = obj.compose(pg=a, kl=b)
    assert float(out.loss) == pytest.approx(1.0)
    assert set(out.metrics) == {"pg/loss", "pg/x", "kl/loss"}
    with pytest.raises(ValueError, match="LossOutput"):
        obj.compose(pg=(1.0, {}))


def test_registry_lists_every_method_and_user_registration_works():
    for name in ("grpo", "dapo", "gspo", "tbpo", "ppo", "dual_clip", "sdar", "opd", "aopd", "drgrpo",
                 "dpo", "bcpg_nsa", "opd_full", "ppo_value"):
        assert name in obj.list_objectives()
    for name in ("grpo", "drgrpo", "rloo", "gae", "rdpo", "skillc"):
        assert name in obj.list_advantages()

    @obj.register_objective("test_obj_core_mean_logp")
    def mean_logp(batch, *, scale=1.0):
        return obj.LossOutput(-scale * obj.token_mean(batch["logp"], batch["mask"]), {})

    batch = {"logp": jnp.array([[-1.0, -3.0]]), "mask": jnp.ones((1, 2))}
    assert float(obj.get_objective("test_obj_core_mean_logp")(batch, scale=2.0).loss) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="already registered"):
        obj.register_objective("test_obj_core_mean_logp")(mean_logp)
    with pytest.raises(KeyError, match="unknown objective"):
        obj.get_objective("no_such_loss")


def test_registry_objective_reports_missing_batch_key():
    batch = {"logp": jnp.zeros((1, 2)), "old_logp": jnp.zeros((1, 2)), "mask": jnp.ones((1, 2))}
    with pytest.raises(KeyError, match="advantages"):
        obj.get_objective("grpo")(batch)


def test_registry_grpo_with_kl_equals_composed_raw_functions():
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    logp = -jnp.abs(jax.random.normal(k1, (3, 4)))
    batch = {"logp": logp, "old_logp": logp + 0.05 * jax.random.normal(k2, (3, 4)),
             "ref_logp": logp + 0.1 * jax.random.normal(k3, (3, 4)), "mask": jnp.ones((3, 4)),
             "advantages": jnp.array([1.0, -0.5, 0.2])}
    out = obj.get_objective("grpo")(batch, kl_coef=0.04, clip_low=0.2)
    pg = obj.ppo_clip_loss(batch["logp"], batch["old_logp"], batch["advantages"], batch["mask"])
    kl = obj.kl_penalty(batch["logp"], batch["ref_logp"], batch["mask"], coef=0.04)
    np.testing.assert_allclose(out.loss, pg.loss + kl.loss, rtol=1e-6)
    assert "ref/kl" in out.metrics and "pg/clipfrac" in out.metrics and "pg/kl" in out.metrics


def test_registry_advantages_match_raw_functions():
    batch = {"rewards": jnp.array([1.0, 0.0, 0.0, 1.0]), "group_ids": jnp.array([0, 0, 0, 0])}
    out = obj.get_advantage("rloo")(batch, num_groups=1)
    np.testing.assert_allclose(out.advantages, [2 / 3, -2 / 3, -2 / 3, 2 / 3], atol=1e-6)
    assert out.returns is None
