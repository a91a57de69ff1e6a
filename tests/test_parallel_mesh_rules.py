"""Mesh construction and the logical-axis rules table."""

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


def test_a_non_dividing_axis_falls_back_to_replication_for_that_dim_only():
    mesh = make_mesh(2, 2, 2)
    # 99 rows do not split over tensor=2: only the embed dim stays sharded.
    assert logical_to_sharding(("vocab", "embed"), mesh, shape=(99, 64)).spec == P(None, "fsdp")
    assert logical_to_sharding(("vocab", "embed"), mesh, shape=(128, 64)).spec == P("tensor", "fsdp")
    # batch over data x fsdp = 4: 6 rows cannot be split, 8 can.
    assert logical_to_sharding(("batch", None), mesh, shape=(6, 3)).spec == P()
    assert logical_to_sharding(("batch", None), mesh, shape=(8, 3)).spec == P(("data", "fsdp"))


def test_size_one_mesh_axes_are_dropped_and_an_axis_is_used_once():
    mesh = make_mesh(1, 8, 1)
    assert logical_to_sharding(("embed", "mlp"), mesh, shape=(64, 128)).spec == P("fsdp")
    assert logical_to_sharding(("batch", None), mesh, shape=(8, 4)).spec == P("fsdp")
    # Two dims asking for the same mesh axis: the first keeps it.
    assert logical_to_spec(("embed", "embed")) == P("fsdp")


def test_custom_rules_table_replaces_the_default():
    rules = {"embed": "tensor", "mlp": ("data", "fsdp")}
    assert logical_to_spec(("embed", "mlp"), rules) == P("tensor", ("data", "fsdp"))


def test_names_must_match_rank():
    mesh = make_mesh(2, 2, 2)
    with pytest.raises(ValueError, match="one entry per dimension"):
        logical_to_sharding(("embed",), mesh, shape=(4, 4))
