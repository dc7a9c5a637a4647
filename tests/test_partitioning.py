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
