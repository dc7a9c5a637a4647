"""Mesh construction and logical axis rules -> PartitionSpecs / shardings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from tokenlab.config import DEFAULT_SHARDING_RULES
from tokenlab.errors import ConfigError
from tokenlab.train import partitioning
from tokenlab.train.mesh import make_mesh, mesh_shape

RULES = partitioning.rules_from_config(DEFAULT_SHARDING_RULES)


def test_mesh_shape_resolves_rest():
  assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {"data": 4, "fsdp": 2,
                                                                  "tensor": 1}
  with pytest.raises(ConfigError, match="at most one axis"):
    mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ConfigError, match="multiple of 3"):
    mesh_shape({"data": -1, "fsdp": 3}, 8)
  with pytest.raises(ConfigError, match="uses 2 devices but 8"):
    mesh_shape({"data": 2, "fsdp": 1}, 8)


def test_make_mesh_on_fake_devices():
  assert jax.device_count() == 4, "tests/conftest.py sets 4 fake CPU devices"
  mesh = make_mesh(ConfigDict({"data": 2, "fsdp": 2, "tensor": 1}))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("logical,expected", [
    (("batch", "length"), P(("data", "fsdp"), None)),
    (("embed", "mlp"), P("fsdp", "tensor")),
    (("vocab", "embed"), P("tensor", "fsdp")),
    (("embed", "heads", "head_dim"), P("fsdp", "tensor", None)),
    (("layers", "embed", "mlp"), P(None, "fsdp", "tensor")),
])
def test_rules_to_partition_specs(logical, expected):
  assert partitioning.logical_to_spec(logical, RULES) == expected


def test_tree_shardings_and_indivisible_dims():
  mesh = make_mesh(ConfigDict({"data": 1, "fsdp": 4, "tensor": 1}))

  class M(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp")),
                     (self.width, 8))
      return x @ w

  boxed = jax.eval_shape(lambda: M(8).init(jax.random.key(0), jnp.ones((1, 8))))
  sh = partitioning.tree_shardings(boxed, mesh, RULES)
  assert sh["params"]["w"].spec == P("fsdp", "tensor")
  boxed = jax.eval_shape(lambda: M(6).init(jax.random.key(0), jnp.ones((1, 6))))
  with pytest.raises(ConfigError, match=r"\['params'\]\['w'\].*cannot be split"):
    partitioning.tree_shardings(boxed, mesh, RULES)


def test_rule_naming_missing_mesh_axis():
  mesh = make_mesh(ConfigDict({"data": 4}))
  with pytest.raises(ConfigError, match="lacks"):
    partitioning.check_rules(RULES, mesh)


# --- Meshes on TPU topologies (issue 13): compile-only devices from libtpu, no TPU needed.


def _topology(name, num_slices=1):
  pytest.importorskip("libtpu", reason="TPU topologies need libtpu (the test extra, Linux)")
  from tokenlab.topology import get_topology
  return get_topology(name, num_slices)


def test_multi_slice_mesh_puts_only_the_dcn_axis_across_slices():
  import numpy as np
  from jax.sharding import AxisType
  devices = _topology("v5e:2x2", num_slices=2).devices
  assert len(devices) == 8 and {d.slice_index for d in devices} == {0, 1}
  mesh = make_mesh(ConfigDict({"data": -1, "fsdp": 2, "tensor": 1}), devices,
                   ConfigDict({"data": 2}))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert mesh.axis_types == (AxisType.Auto,) * 3
  slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  # data = 2 slices (outer) x 2 chips: the first half of the axis on slice 0, the rest on 1.
  assert (slices[:2] == 0).all() and (slices[2:] == 1).all()
  # Every fsdp (and tensor) group lies inside one slice.
  for i in range(4):
    assert len(set(slices[i].ravel())) == 1


def test_tpu_mesh_follows_the_topology_or_says_why():
  devices = _topology("v5e:4x4").devices
  mesh = make_mesh(ConfigDict({"data": 2, "fsdp": -1}), devices)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 8}
  # Each fsdp group is a physical rectangle of the 4x4 torus (mesh_utils' assignment).
  for row in mesh.devices:
    xs, ys = {d.coords[0] for d in row}, {d.coords[1] for d in row}
    assert len(xs) * len(ys) == 8, [d.coords for d in row]
  multi = _topology("v5e:2x2", num_slices=2).devices
  with pytest.raises(ConfigError, match="mesh_dcn.data=2"):
    make_mesh(ConfigDict({"data": -1}), multi)
  with pytest.raises(ConfigError, match="must be >= 1 and divide"):
    make_mesh(ConfigDict({"data": -1, "fsdp": 2}), multi, ConfigDict({"fsdp": 4}))


def test_dcn_axes_on_cpu_devices_are_slice_major():
  mesh = make_mesh(ConfigDict({"data": 2, "fsdp": 2}), jax.devices()[:4], ConfigDict({"data": 2}))
  ids = [[d.id for d in row] for row in mesh.devices]
  assert ids == [[0, 1], [2, 3]]
