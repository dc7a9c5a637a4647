"""FocalNet (method focalnet): the focal modulation block's invariants (zero gates, kernel
sizes and receptive field, the CPU depthwise convolution), equal parameters across the three
mixers, and the quick reproduction."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.focalnet import FocalNet, FocalNetConfig
from tokenlab.nn import focal_modulation as fm

C = 8   # channels of the block-level tests


@pytest.fixture(scope="module")
def block():
  """A focal modulation block (L = 2: kernels 3 and 5) on an 8x8 grid of C channels, its
  parameters with every bias non-zero (so the zero-gate check cannot pass by a zero init),
  and one jitted apply returning (output, modulator) for (params, x, gate_scale)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, C)).astype(np.float32))
  mod = fm.FocalModulation(focal_level=2)
  params = nn.unbox(jax.jit(mod.init)(jax.random.key(0), x))["params"]
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 0.3 if path[-1].key == "bias" else a, params)

  @functools.partial(jax.jit, static_argnums=2)
  def apply(params, x, gate_scale):
    y, state = mod.clone(gate_scale=gate_scale).apply({"params": params}, x,
                                                      mutable=["intermediates"])
    return y, state["intermediates"]["modulator"][0]
  return mod, params, x, apply


def test_kernel_sizes():
  assert fm.focal_kernel_sizes(3) == [3, 5, 7]                 # k_l = 2 (l - 1) + 3
  assert fm.focal_kernel_sizes(2, focal_window=5, focal_factor=4) == [5, 9]


def test_zero_gates_give_zero_output(block):
  """The paper's check: with every gate G_l = 0 no context is aggregated (Z_out = 0), so the
  modulator is h(0) = h's bias at every location, whatever the input; with a zero h bias
  the modulation q * M is zero and the block outputs proj's bias alone."""
  mod, params, x, apply = block
  y, m = apply(params, x, 0.0)
  h_bias = np.asarray(params["h"]["bias"])
  np.testing.assert_allclose(np.asarray(m), np.broadcast_to(h_bias, m.shape), atol=1e-6)
  zero_h = dict(params)
  zero_h["h"] = dict(params["h"], bias=jnp.zeros_like(params["h"]["bias"]))
  y0, m0 = apply(zero_h, x, 0.0)
  assert float(jnp.abs(m0).max()) == 0.0
  np.testing.assert_allclose(np.asarray(y0),
                             np.broadcast_to(params["proj"]["bias"], y0.shape), atol=1e-6)
  # With the gates on, context reaches the modulator: it varies with the location.
  y1, m1 = apply(params, x, 1.0)
  assert float(jnp.std(m1, axis=(1, 2)).max()) > 1e-5     # exactly 0 with zero gates
  assert not np.allclose(np.asarray(y1), np.asarray(y))


def test_receptive_field_is_local_levels_plus_global(block):
  """Kernels 3 then 5 see 3 + 5 - 1 = 7 locations (3 each side); only the global context
  (gate L + 1) carries a change further. Perturbing location (0, 0) moves the output within
  rows/cols <= 3 when the global gate is cut, everywhere when it is on."""
  mod, params, x, apply = block
  xp = x.at[:, 0, 0, :].add(50.0)   # large: the global path divides it by 64 locations
  no_global = dict(params)
  no_global["f"] = dict(params["f"], kernel=params["f"]["kernel"].at[:, -1].set(0.0),
                        bias=params["f"]["bias"].at[-1].set(0.0))
  y, _ = apply(no_global, x, 1.0)
  yp, _ = apply(no_global, xp, 1.0)
  moved = np.abs(np.asarray(yp - y)).max(axis=(0, 3)) > 0       # (8, 8)
  assert moved[:4, :4].all() and not moved[4:].any() and not moved[:, 4:].any()
  y, _ = apply(params, x, 1.0)
  yp, _ = apply(params, xp, 1.0)
  assert (np.abs(np.asarray(yp - y)).max(axis=(0, 3)) > 0).all()


def test_conv_mixer_is_local_only():
  """The plain peer has no global path: a change at (0, 0) reaches 5x5 // 2 = 2 locations
  each way and no further."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8, 4)).astype(np.float32))
  mix = fm.ConvMixer(kernel_size=5)
  params = jax.jit(mix.init)(jax.random.key(0), x)
  apply = jax.jit(mix.apply)
  diff = np.abs(np.asarray(apply(params, x.at[:, 0, 0].add(50.0)) - apply(params, x)))
  moved = diff.max(axis=(0, 3)) > 0
  assert moved[:3, :3].all() and not moved[3:].any() and not moved[:, 3:].any()


def test_cpu_depthwise_conv_equals_xla_grouped_conv():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 4)).astype(np.float32))
  for k in (3, 5):
    w = jnp.asarray(rng.normal(size=(k, k, 1, 4)).astype(np.float32))
    np.testing.assert_allclose(np.asarray(fm.depthwise_conv(x, w, "shift")),
                               np.asarray(fm.depthwise_conv(x, w, "xla")), atol=1e-5)


def test_equal_parameters_across_mixers_closed_form_and_trees():
  """The peers' MLP widths give their blocks the focal block's parameters (to one MLP unit),
  and the closed-form count equals the initialised tree (shapes only: nothing compiles)."""
  batch = {"image": jnp.zeros((1, 32, 32, 3))}
  counts = {}
  for mixer in fm.MIXERS:
    cfg = FocalNetConfig(mixer=mixer)
    shapes = jax.eval_shape(lambda c=cfg: nn.unbox(FocalNet(c).init(jax.random.key(0), batch)))
    counts[mixer] = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
    assert counts[mixer] == cfg.param_count(32)
  assert FocalNetConfig(mixer="attention").block_mlp_dim() == 110
  assert FocalNetConfig(mixer="conv").block_mlp_dim() == 92
  for mixer in ("attention", "conv"):
    assert abs(counts[mixer] - counts["focal"]) <= 4 * 3 * 48 // 2   # half a unit per block
  unmatched = FocalNetConfig(mixer="attention", match_params=False)
  assert unmatched.param_count(32) < counts["focal"] - 4 * 1900


def test_classification_loss_weighs_out_padding_rows():
  from tokenlab.nn.losses import classification_loss
  logits = jnp.asarray([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
  loss, m = jax.jit(classification_loss)(logits, jnp.asarray([0, 0, 1]),
                                         jnp.asarray([1.0, 1.0, 0.0]))
  expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(2.0))) / 2   # the padding row is out
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(m["accuracy"].value()) == 0.5 and float(m["loss"].count) == 2.0


def test_bad_config_names_the_fix():
  from tokenlab.errors import ConfigError
  with pytest.raises(ConfigError, match="mixer"):
    FocalNet(FocalNetConfig(mixer="mlp"))
  with pytest.raises(ConfigError, match="num_heads"):
    FocalNet(FocalNetConfig(mixer="attention", d_model=18, num_heads=4))


def test_repro_quick(tmp_path):
  """The quick reproduction: the focal arm trained 2 steps through the real trainer on the 4
  test devices, evaluated and timed with its untrained network, the figures written."""
  import json
  from tokenlab import repro
  report = repro.run("focalnet", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  arm = tmp_path / "seed0" / "focal_trained"
  assert json.load(open(arm / "config.json"))["model"]["mixer"] == "focal"
  rows = {(r[0], r[1]): r[2] for r in report.rows}
  for name in ("focal modulation", "untrained focal modulation"):
    assert 0.0 <= rows[(name, "accuracy")] <= 1.0 and rows[(name, "images/s")] > 0
    assert rows[(name, "MFLOPs/image (XLA)")] > 0
  assert rows[("focal modulation", "parameters")] == FocalNetConfig(
      d_model=16, num_layers=2, num_heads=2, mlp_dim=32).param_count(32)
  assert {"majority class", "pixel naive Bayes (counts)"} <= {r[0] for r in report.rows}
  assert (tmp_path / "focalnet_modulators.png").exists()
  assert (tmp_path / "focalnet_tradeoff.png").exists()
