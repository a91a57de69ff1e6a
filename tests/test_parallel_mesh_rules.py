"""Mesh construction and the logical-axis rules table."""

import re

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P

from jaxrl_llm.parallel import (
    DEFAULT_RULES,
    MESH_AXES,
    logical_to_sharding,
    logical_to_spec,
    make_mesh,
    mesh_from_config,
    resolve_mesh_shape,
)


def test_minus_one_takes_the_remaining_devices():
    assert resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    assert resolve_mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    assert resolve_mesh_shape({"data": -1, "tensor": 4}, 8) == (2, 1, 4)


def test_sizes_without_minus_one_may_use_a_divisor_of_the_devices():
    assert resolve_mesh_shape({"data": 1, "fsdp": 1, "tensor": 1}, 8) == (1, 1, 1)
    assert resolve_mesh_shape({"data": 2, "fsdp": 2}, 8) == (2, 2, 1)


@pytest.mark.parametrize(
    "sizes, match",
    [
        ({"data": 3, "fsdp": -1}, "must divide the device count 8"),
        ({"data": 2, "fsdp": 2, "tensor": 3}, "must divide the device count 8"),
        ({"data": -1, "fsdp": -1}, "at most one mesh axis may be -1"),
        ({"data": 0}, "mesh.data must be a positive int or -1"),
        ({"tensor": 1.5}, "mesh.tensor must be a positive int"),
        ({"expert": 2}, "unknown"),
    ],
)
def test_bad_mesh_sizes_fail_naming_the_problem(sizes, match):
    with pytest.raises(ValueError, match=match):
        resolve_mesh_shape(sizes, 8)


@given(st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4, 8]), st.sampled_from(MESH_AXES))
@settings(max_examples=30, deadline=None)
def test_resolved_shape_always_covers_a_divisor_of_the_devices(a, b, rest_axis):
    others = [x for x in MESH_AXES if x != rest_axis]
    sizes = {others[0]: a, others[1]: b, rest_axis: -1}
    if 8 % (a * b):
        with pytest.raises(ValueError):
            resolve_mesh_shape(sizes, 8)
    else:
        shape = resolve_mesh_shape(sizes, 8)
        assert shape[0] * shape[1] * shape[2] == 8
        assert shape[MESH_AXES.index(others[0])] == a


def test_make_mesh_has_named_axes_and_sizes():
    mesh = make_mesh(2, 2, 2)
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = mesh_from_config({"data": 1, "fsdp": 1, "tensor": 1})
    assert mesh.devices.size == 1 and mesh.devices.flat[0] == jax.devices()[0]


def test_rules_table_maps_logical_names_without_a_mesh():
    assert logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert logical_to_spec(("heads", "embed")) == P("tensor", "fsdp")
    assert logical_to_spec(("batch", None)) == P(("data", "fsdp"))
    assert logical_to_spec((None, "kv_heads")) == P(None, "tensor")
    assert logical_to_spec(("layers", None)) == P()
    assert DEFAULT_RULES["embed"] == "fsdp"


def test_a_dimension_its_mesh_axes_do_not_divide_fails_naming_both():
    mesh = make_mesh(1, 1, 8)
    assert logical_to_sharding(("embed", "mlp"), mesh, shape=(64, 128)).spec == P(None, "tensor")
    with pytest.raises(ValueError, match=re.escape(
            "dimension 1 (logical 'mlp', size 100) is not divisible by mesh axes ('tensor',) of size 8")):
        logical_to_sharding(("embed", "mlp"), mesh, shape=(64, 100))
    with pytest.raises(ValueError, match=re.escape(
            "dimension 0 (logical 'batch', size 6) is not divisible by mesh axes ('data', 'fsdp') of size 4 "
            "(data=2, fsdp=2)")):
        logical_to_sharding(("batch", None), make_mesh(2, 2, 2), shape=(6, 3))


def test_replication_of_a_non_dividing_dimension_is_an_explicit_opt_in():
    mesh = make_mesh(2, 2, 2)
    # 99 rows do not split over tensor=2: with the opt-in only the embed dim stays sharded.
    assert logical_to_sharding(("vocab", "embed"), mesh, shape=(99, 64), allow_replicate=("vocab",)).spec == P(
        None, "fsdp")
    assert logical_to_sharding(("vocab", "embed"), mesh, shape=(128, 64), allow_replicate=("vocab",)).spec == P(
        "tensor", "fsdp")
    assert logical_to_sharding(("batch", None), mesh, shape=(6, 3), allow_replicate=("batch",)).spec == P()
    assert logical_to_sharding(("batch", None), mesh, shape=(8, 3)).spec == P(("data", "fsdp"))
    # The opt-in names one logical axis; another one that does not divide still fails.
    with pytest.raises(ValueError, match=r"dimension 1 \(logical 'embed', size 63\)"):
        logical_to_sharding(("vocab", "embed"), mesh, shape=(99, 63), allow_replicate=("vocab",))


def test_two_dimensions_on_one_mesh_axis_fail_naming_both():
    mesh = make_mesh(2, 2, 2)
    with pytest.raises(ValueError, match=re.escape(
            "dimension 1 (logical 'kv_heads') maps to mesh axes ('tensor',) of size 2, but dimension 0 "
            "(logical 'heads') already uses ['tensor']")):
        logical_to_sharding(("heads", "kv_heads"), mesh, shape=(8, 8))
    # batch takes fsdp, so embed cannot have it; the opt-in is for divisibility only.
    with pytest.raises(ValueError, match=r"dimension 1 \(logical 'embed'\) maps to mesh axes \('fsdp',\)"):
        logical_to_sharding(("batch", "embed"), mesh, shape=(8, 8), allow_replicate=("batch", "embed"))
    # Without a mesh the table alone shows the clash.
    with pytest.raises(ValueError, match=r"dimension 1 \(logical 'embed'\) maps to mesh axes \('fsdp',\), but"):
        logical_to_spec(("embed", "embed"))


def test_size_one_mesh_axes_divide_everything_and_never_collide():
    mesh = make_mesh(1, 8, 1)
    assert logical_to_sharding(("embed", "mlp"), mesh, shape=(64, 100)).spec == P("fsdp")
    assert logical_to_sharding(("batch", None), mesh, shape=(8, 4)).spec == P("fsdp")
    # heads and kv_heads share tensor, which has size 1 here: no clash, nothing sharded.
    assert logical_to_sharding(("heads", "kv_heads"), mesh, shape=(7, 5)).spec == P()
    one = make_mesh(1, 1, 1)
    assert logical_to_sharding(("vocab", "embed"), one, shape=(99, 63)).spec == P()


def test_custom_rules_table_replaces_the_default():
    rules = {"embed": "tensor", "mlp": ("data", "fsdp")}
    assert logical_to_spec(("embed", "mlp"), rules) == P("tensor", ("data", "fsdp"))


def test_names_must_match_rank():
    mesh = make_mesh(2, 2, 2)
    with pytest.raises(ValueError, match="one entry per dimension"):
        logical_to_sharding(("embed",), mesh, shape=(4, 4))
