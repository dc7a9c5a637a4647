"""2-D building blocks (tokenlab/nn/vision.py): patches, 2-D positions, ViT, DiT (issue 16)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenlab.nn.attention import MultiHeadAttention, dot_product_attention
from tokenlab.nn.layers import rope
from tokenlab.nn.vision import (DiT, DiTBlock, ClassEmbedder, ViT,
                                grid_positions, patchify, rope_2d, sincos_2d,
                                timestep_embedding, unpatchify)


# Tests stay fast on a 2-core CPU by compiling little: inputs come from numpy (no per-shape
# threefry compiles), models are initialised and applied under jit (one compile each instead
# of one per primitive), init draws from the "unsafe_rbg" generator (its compile is ~3x
# cheaper than threefry's; the statistics of the draws do not matter here), and where the
# values of the initialisers do not matter parameters come from numpy.


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _init(model, *args, **kwargs):
  key = jax.random.key(0, impl="unsafe_rbg")
  return jax.jit(lambda key: model.init(key, *args, **kwargs))(key)


def _random_params(model, *args, scale: float = 0.3, **kwargs):
  """Parameters of model's shapes drawn from numpy (traces init, compiles nothing)."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *args, **kwargs)))
  leaves, tree = jax.tree.flatten(shapes)
  return tree.unflatten([scale * _normal(i, x.shape) for i, x in enumerate(leaves)])


# ------------------------------------------------------------------------------ patches


def test_patchify_round_trip_and_layout():
  images = _normal(0, (2, 6, 4, 3))
  tokens = patchify(images, 2)
  assert tokens.shape == (2, 3 * 2, 2 * 2 * 3)
  np.testing.assert_array_equal(unpatchify(tokens, 2, 6, 4), images)
  # Raster order of patches; within a patch (row, col, channel).
  np.testing.assert_array_equal(tokens[1, 3], images[1, 2:4, 2:4].reshape(-1))
  np.testing.assert_array_equal(patchify(unpatchify(tokens, 2, 6, 4), 2), tokens)


def test_patchify_errors():
  with pytest.raises(ValueError, match="does not split into 4x4"):
    patchify(jnp.zeros((1, 8, 6, 3)), 4)
  with pytest.raises(ValueError, match="are not 2x2 patches"):
    unpatchify(jnp.zeros((1, 5, 12)), 2, 4, 4)


# ----------------------------------------------------------------------------- positions


def test_sincos_2d_values():
  h, w, d = 3, 4, 8
  emb = np.asarray(sincos_2d(h, w, d))
  assert emb.shape == (h * w, d)
  # Per axis 2 frequencies 10000^(-k/2) = 1, 0.01; rows in channels 0-3, columns in 4-7.
  def expected(r, c):
    f = np.array([1.0, 0.01])
    return np.concatenate([np.sin(r * f), np.cos(r * f), np.sin(c * f), np.cos(c * f)])
  np.testing.assert_allclose(emb[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)
  for r, c in [(0, 3), (2, 1), (1, 2)]:
    np.testing.assert_allclose(emb[r * w + c], expected(r, c), atol=1e-6)


def test_sincos_2d_orthogonality_properties():
  h, w, d = 5, 6, 16
  emb = np.asarray(sincos_2d(h, w, d), np.float64)
  pos = np.asarray(grid_positions(h, w))
  # Each (sin, cos) pair has unit norm: every position has the same norm^2 = d / 2.
  np.testing.assert_allclose((emb ** 2).sum(-1), d / 2, rtol=1e-5)
  # Row and column live in orthogonal subspaces: moving along a row changes only the column
  # half, so the difference of two tokens in one row is orthogonal to the row channels.
  diff_in_row = emb[pos[:, 0] == 2] - emb[(pos[:, 0] == 2) & (pos[:, 1] == 0)]
  np.testing.assert_allclose(diff_in_row[:, : d // 2], 0, atol=1e-7)
  diff_in_col = emb[pos[:, 1] == 3] - emb[(pos[:, 1] == 3) & (pos[:, 0] == 0)]
  np.testing.assert_allclose(diff_in_col[:, d // 2:], 0, atol=1e-7)
  # The Gram matrix depends only on the (row, col) offset (sum of cos of the offsets).
  gram = emb @ emb.T
  off = pos[None, :, :] - pos[:, None, :]
  for dy, dx in [(0, 1), (1, -2), (2, 3)]:
    vals = gram[(off[..., 0] == dy) & (off[..., 1] == dx)]
    assert vals.size > 1
    np.testing.assert_allclose(vals, np.full_like(vals, vals[0]), atol=1e-5)
  with pytest.raises(ValueError, match="divisible by 4"):
    sincos_2d(2, 2, 6)


def test_rope_2d_scores_depend_only_on_relative_offset():
  h, w, hd = 4, 5, 8
  q = jnp.broadcast_to(_normal(1, (1, 1, 1, hd)), (1, h * w, 1, hd))
  k = jnp.broadcast_to(_normal(2, (1, 1, 1, hd)), (1, h * w, 1, hd))
  rq, rk = rope_2d(q, h, w), rope_2d(k, h, w)
  scores = np.asarray(jnp.einsum("bqhd,bkhd->qk", rq, rk), np.float64)
  pos = np.asarray(grid_positions(h, w))
  off = pos[None, :, :] - pos[:, None, :]
  for dy in range(-2, 3):
    for dx in range(-3, 4):
      vals = scores[(off[..., 0] == dy) & (off[..., 1] == dx)]
      np.testing.assert_allclose(vals, np.full_like(vals, vals[0]), atol=1e-5)
  # Not trivially constant: offsets along either axis alone change the score.
  assert abs(scores[0, 1] - scores[0, 0]) > 1e-3 and abs(scores[0, w] - scores[0, 0]) > 1e-3
  # The first half of head_dim rotates with the row only, the second with the column only.
  first_row = rq[0, :w, 0]
  np.testing.assert_allclose(first_row[:, : hd // 2],
                             jnp.broadcast_to(first_row[:1, : hd // 2], (w, hd // 2)), atol=1e-6)
  with pytest.raises(ValueError, match="divisible by 4"):
    rope(_normal(3, (1, 4, 1, 6)), jnp.zeros((1, 4, 2), jnp.int32))


def test_attention_layer_takes_grid_positions_shift_invariant():
  # MultiHeadAttention with (B, L, 2) positions: shifting every (row, col) by the same offset
  # leaves the output unchanged; swapping the axes (a different geometry) does not.
  h, w = 3, 4
  x = _normal(4, (2, h * w, 16))
  layer = MultiHeadAttention(num_heads=2, head_dim=8, causal=False)
  pos = jnp.broadcast_to(grid_positions(h, w), (2, h * w, 2))
  params = _random_params(layer, x, positions=pos)
  apply = jax.jit(lambda p: layer.apply(params, x, positions=p))
  out = apply(pos)
  scale = float(np.abs(np.asarray(out)).max())
  np.testing.assert_allclose(apply(pos + jnp.array([7, -3])), out, atol=1e-4 * scale)
  assert np.abs(np.asarray(apply(pos[..., ::-1]) - out)).max() > 1e-2 * scale


# ----------------------------------------------------------------- neighborhood attention


def _grid_mask(h, w, radius, shape):
  pos = np.asarray(grid_positions(h, w))
  dy = pos[None, :, 0] - pos[:, None, 0]
  dx = pos[None, :, 1] - pos[:, None, 1]
  if shape == "circle":
    return dy * dy + dx * dx < radius * radius
  return np.maximum(np.abs(dy), np.abs(dx)) <= radius


@pytest.mark.parametrize("radius,shape", [(1.5, "circle"), (2, "circle"), (1, "square")])
def test_neighborhood_attention_equals_dense_with_2d_mask(radius, shape):
  h, w = 4, 5
  q, k, v = (_normal(s, (2, h * w, 2, 8)) for s in (5, 6, 7))
  got = jax.jit(lambda *a: dot_product_attention(*a, neighborhood=(h, w, radius, shape)))(
      q, k, v)
  want = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, mask=m))(
      q, k, v, jnp.asarray(_grid_mask(h, w, radius, shape)))
  np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError, match="neighborhood attention takes no"):
    dot_product_attention(q, k, v, causal=True, neighborhood=(h, w, radius, shape))


# ---------------------------------------------------------------------------------- ViT


_VIT = dict(patch_size=2, d_model=16, num_layers=2, num_heads=2, num_classes=5, scan=True)


def test_vit_shapes_jit_logical_axes_and_neighborhood():
  images = _normal(8, (2, 8, 6, 3))
  dense = ViT(**_VIT, position="rope2d", pool="mean")
  variables = _init(dense, images)
  leaves = jax.tree.leaves(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert any("embed" in x.names for x in leaves)
  logits, features = jax.jit(dense.apply)(variables, images)
  assert logits.shape == (2, 5) and features.shape == (2, 4 * 3, 16)
  assert np.isfinite(np.asarray(logits)).all()
  # Neighborhood attention: a circle covering the whole 4x3 grid gives dense attention's output
  # with the same parameters; a small circle gives a different one.
  wide = ViT(**_VIT, position="rope2d", pool="mean", attention="neighborhood", radius=5.0)
  local = ViT(**_VIT, position="rope2d", pool="mean", attention="neighborhood", radius=1.5)
  np.testing.assert_allclose(jax.jit(wide.apply)(variables, images)[0], logits, atol=1e-5)
  local_logits = jax.jit(local.apply)(variables, images)[0]
  assert np.abs(np.asarray(local_logits - logits)).max() > 1e-5
  with pytest.raises(ValueError, match="needs pool='mean'"):
    ViT(**_VIT, attention="neighborhood").init(jax.random.key(0), images)
  with pytest.raises(ValueError, match="attention='sparse'"):
    ViT(**_VIT, pool="mean", attention="sparse").init(jax.random.key(0), images)


def test_vit_patch_order_matters_only_through_positions():
  # Learned positions, no RoPE: permuting the patches together with the rows of the position
  # table permutes the token features and leaves the class-token logits unchanged; permuting
  # the patches alone changes the logits. (Random parameters: the invariant holds for any.)
  p, h, w = 2, 6, 6
  images = _normal(9, (2, h, w, 3))
  model = ViT(**_VIT, position="learned", pool="cls")
  params = _random_params(model, images)
  perm = np.random.default_rng(0).permutation((h // p) * (w // p))
  shuffled = unpatchify(patchify(images, p)[:, perm], p, h, w)
  moved = jax.tree.map(lambda x: x, params)
  moved["params"]["patch_embed"]["pos_embedding"] = (
      params["params"]["patch_embed"]["pos_embedding"][perm])
  apply = jax.jit(model.apply)
  logits, feats = apply(params, images)
  logits_moved, feats_moved = apply(moved, shuffled)
  np.testing.assert_allclose(logits_moved, logits, atol=1e-5)
  np.testing.assert_allclose(feats_moved, feats[:, perm], atol=1e-5)
  logits_shuffled, _ = apply(params, shuffled)
  assert np.abs(np.asarray(logits_shuffled - logits)).max() > 1e-3


# ---------------------------------------------------------------------------------- DiT


def test_timestep_and_class_embedding():
  emb = timestep_embedding(jnp.array([0.0, 2.0]), 8)
  np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(emb[1, 0], np.cos(2.0), rtol=1e-6)
  np.testing.assert_allclose(emb[1, 4], np.sin(2.0), rtol=1e-6)
  embedder = ClassEmbedder(num_classes=3, features=4, dropout_prob=0.5)
  labels = jnp.array([0, 1, 2, 3] * 8)
  variables = _init(embedder, labels)
  table = variables["params"]["embedding"].value
  assert table.shape == (4, 4)
  np.testing.assert_array_equal(embedder.apply(variables, labels), table[labels])
  forced = embedder.apply(variables, labels[:4], drop=jnp.array([True, False, True, False]))
  np.testing.assert_array_equal(forced, table[jnp.array([3, 1, 3, 3])])
  dropped = embedder.apply(variables, labels, train=True, rngs={"dropout": jax.random.key(1)})
  is_null = np.all(np.asarray(dropped) == np.asarray(table[3]), axis=-1)
  assert 0 < is_null[labels != 3].sum() < (labels != 3).sum()


def test_dit_block_is_identity_at_init_and_not_after_a_step():
  x, c = _normal(11, (2, 16, 16)), _normal(12, (2, 8))
  block = DiTBlock(num_heads=2, head_dim=8, mlp_dim=32)
  params = _init(block, x, c)
  apply = jax.jit(lambda p: block.apply(p, x, c))
  np.testing.assert_array_equal(apply(params), x)
  target = _normal(13, x.shape)
  grads = jax.jit(jax.grad(lambda p: jnp.mean((apply(p) - target) ** 2)))(params)
  # The gates get a gradient at init (the attention / MLP weights do not: their gate is 0).
  assert np.abs(np.asarray(grads["params"]["adaln"]["proj"]["bias"].value)).max() > 0
  # One Adam step, as in training (a plain SGD step moves the gates by lr * 1e-4 only).
  opt = optax.adam(1e-2)
  step = jax.jit(lambda p, g: optax.apply_updates(p, opt.update(g, opt.init(p), p)[0]))
  assert np.abs(np.asarray(apply(step(params, grads)) - x)).max() > 1e-5


def test_dit_forward_jit_and_neighborhood_equals_dense_when_radius_covers_grid():
  images, t, labels = _normal(14, (2, 8, 8, 3)), jnp.array([0.1, 0.9]), jnp.array([0, 9])
  kw = dict(patch_size=2, d_model=16, num_layers=1, num_heads=2, num_classes=10,
            position="rope2d")
  dense = DiT(**kw)
  params = _init(dense, images, t, labels)
  dense_apply = jax.jit(dense.apply)
  apply = lambda m, p: (dense_apply if m is dense else jax.jit(m.apply))(  # noqa: E731
      p, images, t, labels)
  # The final adaLN layer's projection starts at zero, so the DiT predicts zeros at init.
  np.testing.assert_array_equal(apply(dense, params), jnp.zeros_like(images))
  # Random parameters everywhere so attention actually shapes the output.
  noisy = _random_params(dense, images, t, labels)
  want = apply(dense, noisy)
  assert want.shape == images.shape and np.abs(np.asarray(want)).max() > 1e-3
  wide = DiT(**kw, attention="neighborhood", radius=6.0)
  np.testing.assert_allclose(apply(wide, noisy), want, atol=1e-4)
