"""Activation sharding constraints: identity without a mesh, batch layout inside, and no
replicate-then-repartition ("Involuntary full rematerialization") in the sharded SFT step."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.parallel import make_mesh
from jaxrl_llm.parallel.activations import RESIDUAL, activation_mesh, constrain, current_mesh

sys.path.insert(0, str(Path(__file__).resolve().parent))

REMAT = "Involuntary full rematerialization"


def test_constrain_is_the_identity_outside_activation_mesh():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    assert constrain(x, RESIDUAL) is x
    assert current_mesh() is None
    with activation_mesh(make_mesh(1, 1, 1)):  # one device: nothing to constrain
        assert current_mesh() is None and constrain(x, RESIDUAL) is x


def test_constrain_pins_the_batch_layout_and_restores_the_outer_context():
    mesh = make_mesh(2, 2, 2)
    seen = {}

    def f(x):
        with activation_mesh(mesh):
            seen["inner"] = current_mesh()
            y = constrain(x * 2.0, RESIDUAL)
        seen["outer"] = current_mesh()
        return y

    x = jnp.arange(8 * 3 * 4, dtype=jnp.float32).reshape(8, 3, 4)
    y = jax.jit(f)(x)
    np.testing.assert_array_equal(y, 2.0 * x)
    assert seen["inner"] is mesh and seen["outer"] is None
    assert y.sharding.spec == jax.P(("data", "fsdp"))
    # A batch the batch axes do not divide stays whole instead of failing.
    odd = jax.jit(f)(jnp.ones((3, 2, 4)))
    assert odd.sharding.is_fully_replicated
    with pytest.raises(ValueError, match=r"2 logical names .* shape \(8, 3, 4\)"):
        with activation_mesh(mesh):
            constrain(x, ("batch", None))


def test_constrain_replicates_only_the_dimensions_it_opts_in():
    mesh = make_mesh(2, 2, 2)
    with activation_mesh(mesh):
        # 3 vocab rows over tensor=2 run whole, as a batch of 3 rows does.
        table = jax.jit(lambda t: constrain(t, ("vocab", None)))(jnp.ones((3, 4)))
        assert table.sharding.is_fully_replicated
        with pytest.raises(ValueError, match=r"dimension 2 \(logical 'mlp', size 5\) is not divisible by mesh "
                                             r"axes \('tensor',\) of size 2"):
            constrain(jnp.ones((8, 3, 5)), ("batch", None, "mlp"))


def test_sharded_sft_step_compiles_without_full_rematerialization(capfd):
    from test_train_sft_step import sharded_setup

    setup = sharded_setup()
    batch = next(setup.iterator)
    capfd.readouterr()
    setup.step_fn.jitted.lower(setup.state, setup.rest, batch).compile()
    err = capfd.readouterr().err
    assert REMAT not in err, err[:2000]
