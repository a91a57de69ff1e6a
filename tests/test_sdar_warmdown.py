"""SDAR's warm-down (agents-analysis.md s.3): lambda_t = lambda (1 - t / T_w), through the objective's per-row scale."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.objectives.distillation import sdar_aux_loss, sdar_warmdown
from jaxrl_llm.objectives.registry import get_objective, objective_spec
from jaxrl_llm.train.rl_step import warmdown_scale
from ml_collections import ConfigDict


def test_spec_value_and_schedule_ends():
    assert float(sdar_warmdown(0.01, 25, 100)) == pytest.approx(0.0075, abs=1e-9)
    assert float(sdar_warmdown(0.01, 0, 100)) == pytest.approx(0.01)
    assert float(sdar_warmdown(0.01, 100, 100)) == 0.0 and float(sdar_warmdown(0.01, 250, 100)) == 0.0
    assert sdar_warmdown(0.01, 10_000, 0) == 0.01  # 0: no warm-down


def test_row_scale_multiplies_the_auxiliary_term():
    rng = np.random.default_rng(0)
    logp = jnp.asarray(-rng.random((3, 5)), jnp.float32)
    teacher = jnp.asarray(-rng.random((3, 5)), jnp.float32)
    mask = jnp.ones((3, 5))
    plain = sdar_aux_loss(logp, teacher, mask, coef=0.01)
    scaled = sdar_aux_loss(logp, teacher, mask, coef=0.01, row_scale=jnp.full((3,), 0.75))
    assert float(scaled.loss) == pytest.approx(0.75 * float(plain.loss), rel=1e-6)


def test_objective_requires_the_scale_only_with_a_warmdown_and_trainer_fills_it():
    spec = objective_spec("sdar")
    assert "aux_scale" in spec.required_inputs({"warmdown_steps": 100})
    assert "aux_scale" not in spec.required_inputs({})
    rl = ConfigDict({"objective_kwargs": {"warmdown_steps": 100}})
    np.testing.assert_allclose(warmdown_scale(rl, 25, 4), 0.75)
    assert warmdown_scale(ConfigDict({"objective_kwargs": {}}), 25, 4) is None
    rng = np.random.default_rng(1)
    b = {"logp": jnp.asarray(-rng.random((2, 4)), jnp.float32), "old_logp": jnp.asarray(-rng.random((2, 4)), jnp.float32),
         "advantages": jnp.asarray([1.0, -1.0]), "mask": jnp.ones((2, 4)),
         "teacher_logp": jnp.asarray(-rng.random((2, 4)), jnp.float32), "aux_scale": jnp.zeros(2)}
    fn = get_objective("sdar")
    off = fn({k: v for k, v in b.items() if k != "aux_scale"}, sdar_coef=0.0, kl_coef=0.0)
    ended = fn(b, warmdown_steps=100, kl_coef=0.0)  # scale 0: the auxiliary is gone, only the policy term is left
    assert float(ended.loss) == pytest.approx(float(off.loss), rel=1e-6)
