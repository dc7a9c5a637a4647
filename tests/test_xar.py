"""xAR (next-X prediction): entity layout, block-causal noisy context, teacher forcing's
mask, per-entity adaLN, the entity-by-entity sampler, the position prior, the quick repro."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.xar import XAR, XARConfig, entity_order, teacher_forcing_mask

# 8 x 8 images, 2 x 2 patches: a 4 x 4 grid of 4-value tokens; cells 2 x 2 -> 4 entities.
TINY = dict(image_size=8, channels=1, patch_size=2, num_classes=3, d_model=16, num_layers=1,
            num_heads=2, sample_steps=4)


@pytest.fixture(scope="module")
def ncl():
  """(method, initial params, random params). Every leaf random: adaLN-Zero makes the network
  exactly 0 at init, so dependence tests need non-zero weights. The teacher-forcing arm has
  the same parameter tree (only the sequence and mask differ), so it reuses them."""
  import flax.linen as nn
  method = XAR(XARConfig(cell=2, **TINY))
  batch = {"image": np.zeros((2, 8, 8, 1), np.float32), "label": np.zeros((2,), np.int32)}
  # Shapes only (no init compile): every leaf random, then the zero-initialised output
  # projection of adaLN-Zero for the "initial" parameters (the network's output is then 0).
  shapes = nn.unbox(jax.eval_shape(method.init, jax.random.key(0), batch))
  leaves, tree = jax.tree_util.tree_flatten(shapes)
  rng = np.random.default_rng(0)
  random = jax.tree_util.tree_unflatten(
      tree, [jnp.asarray(0.3 * rng.standard_normal(l.shape), l.dtype) for l in leaves])
  initial = dict(random, final={k: jax.tree_util.tree_map(jnp.zeros_like, v) if k == "proj"
                                else v for k, v in random["final"].items()})
  return method, initial, random


def test_entity_order_cells_and_round_trip():
  # k = 2 on a 4 x 4 grid: the four 2 x 2 quadrants in raster order, raster inside each.
  np.testing.assert_array_equal(entity_order(4, 2),
                                [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
  # k = 1 (next-token) and k = grid (one entity: the whole image) keep the raster order.
  np.testing.assert_array_equal(entity_order(4, 1), np.arange(16))
  np.testing.assert_array_equal(entity_order(4, 4), np.arange(16))
  with pytest.raises(Exception, match="does not tile"):
    entity_order(4, 3)
  method = XAR(XARConfig(cell=2, **TINY))
  assert (method.num_entities, method.tokens_per_entity, method.token_dim) == (4, 4, 4)
  images = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
  tokens = method.tokens(images)          # numpy in, numpy out: no compile
  np.testing.assert_allclose(method.images(tokens), images, atol=1e-6)
  # Entity 0 alone (the rest at -1, black): it must be the top-left 4 x 4 pixel quadrant.
  quadrant = method.images(np.concatenate([tokens[:, :4], np.zeros_like(tokens[:, 4:]) - 1],
                                          axis=1))
  np.testing.assert_allclose(quadrant[:, :4, :4], images[:, :4, :4], atol=1e-6)
  assert float(jnp.abs(quadrant[:, 4:]).max()) == 0.0 and float(jnp.abs(quadrant[:, :, 4:]).max()) == 0.0


def test_noisy_context_is_block_causal_and_conditioned_per_entity(ncl):
  method, _, params = ncl
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 16, 4)), jnp.float32)
  t = jnp.asarray(rng.random((2, 4)), jnp.float32)
  labels = jnp.asarray([0, 2])
  v = jax.jit(method.velocity)
  base = v(params, x, t, labels)
  per_entity = lambda a: np.abs(np.asarray(a)).reshape(2, 4, 4, 4).max(axis=(0, 2, 3))
  # Changing the tokens of entity 1 leaves entity 0's velocity unchanged and moves 1, 2, 3.
  moved = per_entity(v(params, x.at[:, 4:8].add(1.0), t, labels) - base)
  assert moved[0] == 0.0 and np.all(moved[1:] > 1e-3), moved
  # The noise level of entity 2 conditions entity 2 (its adaLN) and what comes after only.
  moved = per_entity(v(params, x, t.at[:, 2].set(0.9 - t[:, 2] * 0.5), labels) - base)
  assert np.all(moved[:2] == 0.0) and np.all(moved[2:] > 1e-3), moved
  # The class conditions every entity.
  moved = per_entity(v(params, x, t, labels.at[0].set(1)) - base)
  assert np.all(moved > 1e-3), moved


def test_teacher_forcing_sees_clean_context_only(ncl):
  mask = teacher_forcing_mask(3, 2)
  # A noisy token of entity 1 sees clean entity 0, its own noisy entity, nothing else.
  np.testing.assert_array_equal(mask[6 + 2], [1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0])
  assert not mask[:6, 6:].any()            # clean tokens never see noisy ones
  method = XAR(XARConfig(cell=2, noisy_context=False, **TINY))
  params = ncl[2]
  rng = np.random.default_rng(2)
  clean = jnp.asarray(rng.standard_normal((2, 16, 4)), jnp.float32)
  x = jnp.asarray(rng.standard_normal((2, 16, 4)), jnp.float32)
  t = jnp.asarray(rng.random((2, 4)), jnp.float32)
  labels = jnp.asarray([1, 2])
  v = jax.jit(method.teacher_forced_velocity)
  base = v(params, clean, x, t, labels)
  per_entity = lambda a: np.abs(np.asarray(a)).reshape(2, 4, 4, 4).max(axis=(0, 2, 3))
  # Clean entity 1 is context of noisy entities 2 and 3, not of 0 or 1 itself.
  moved = per_entity(v(params, clean.at[:, 4:8].add(1.0), x, t, labels) - base)
  assert np.all(moved[:2] == 0.0) and np.all(moved[2:] > 1e-3), moved
  # A noisy entity is seen by itself only: no noisy context.
  moved = per_entity(v(params, clean, x.at[:, 4:8].add(1.0), t, labels) - base)
  assert moved[1] > 1e-3 and moved[0] == moved[2] == moved[3] == 0.0, moved


def test_loss_target_and_equal_compute_configs(ncl):
  method, params, _ = ncl
  images = np.random.default_rng(3).random((256, 8, 8, 1)).astype(np.float32)
  batch = {"image": images, "label": np.arange(256) % 3}
  # adaLN-Zero: the velocity is 0 at init, so the loss is E||x1 - x0||^2 = E[x1^2] + 1.
  loss, _ = jax.jit(method.loss)(params, batch, jax.random.key(4))
  expected = float(np.mean((images * 2 - 1) ** 2) + 1.0)
  assert abs(float(loss) - expected) < 0.05, (float(loss), expected)
  from tokenlab.config import load_config
  noisy = load_config("experiments/xar.py:size=small,cell=2,context=noisy")
  clean = load_config("experiments/xar.py:size=small,cell=2,context=clean")
  token = load_config("experiments/xar.py:size=small,cell=1")
  # Teacher forcing passes twice the tokens per image: half the batch, equal tokens per step.
  assert clean.train.batch_size * 2 == noisy.train.batch_size == token.train.batch_size
  assert clean.train.steps == noisy.train.steps == token.train.steps
  assert not clean.model.noisy_context and noisy.model.noisy_context and token.model.cell == 1


def test_sampler_generates_entities_in_order_from_clean_context():
  """An oracle velocity whose target for entity e is 1 + the sum of the means of the entities
  before it (+ the label): Euler lands on the target, so correct wiring gives 1, 2, 4, 8 (+y)."""
  method = XAR(XARConfig(cell=2, **TINY))
  E, T = method.num_entities, method.tokens_per_entity

  def oracle(params, seq, t_entity, labels):
    means = seq.reshape(seq.shape[0], E, T, -1).mean(axis=(2, 3))            # (R, E)
    target = 1.0 + jnp.cumsum(means, axis=1) - means + labels[:, None]       # sum before e
    t_tok = jnp.repeat(t_entity, T, axis=1)[..., None]
    goal = jnp.repeat(target, T, axis=1)[..., None]
    return (goal - seq) / jnp.maximum(1.0 - t_tok, 1e-3)

  method.velocity = oracle
  labels = jnp.asarray([0, 2])
  tokens = jax.jit(method.generate_tokens)(None, labels, jax.random.key(0))
  got = np.asarray(tokens).reshape(2, E, T, -1).mean(axis=(2, 3))
  want = np.array([[1, 2, 4, 8], [3, 6, 12, 24]], np.float32)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_dit_block_per_token_conditioning_matches_shared():
  from tokenlab.nn.vision import DiTBlock
  block = DiTBlock(num_heads=2, head_dim=4, mlp_dim=16)
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.float32)
  c = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)
  shapes = jax.eval_shape(block.init, jax.random.key(0), x, c)
  params = jax.tree_util.tree_map(                       # random, non-zero adaLN
      lambda l: jnp.asarray(0.3 * rng.standard_normal(l.shape), l.dtype), shapes)
  # (The attention bias is tested through xAR's block-causal network above.)

  @jax.jit
  def outputs(params, x, c):
    per_token = jnp.broadcast_to(c[:, None], (2, 3, 8))
    return block.apply(params, x, c), block.apply(params, x, per_token)

  shared, per_token = outputs(params, x, c)
  np.testing.assert_allclose(per_token, shared, atol=1e-5)
  assert float(jnp.abs(shared - x).max()) > 1e-2        # the block is not the identity


def test_position_prior_draws_each_position_from_its_class():
  from tokenlab.repro.baselines import sample_position_prior
  rng = np.random.default_rng(6)
  labels = np.repeat([0, 1], 20)
  # Class y's token at position l is the vector (y, l, image index): the draw is traceable.
  tokens = np.stack([[[y, l, i] for l in range(5)] for i, y in enumerate(labels)]).astype(float)
  want = np.array([0, 1, 1, 0])
  out = sample_position_prior(tokens, labels, want, rng)
  assert out.shape == (4, 5, 3)
  np.testing.assert_array_equal(out[..., 0], np.broadcast_to(want[:, None], (4, 5)))
  np.testing.assert_array_equal(out[..., 1], np.broadcast_to(np.arange(5), (4, 5)))
  assert np.all(labels[out[..., 2].astype(int)] == want[:, None])
  assert len(np.unique(out[..., 2])) > 5         # positions are drawn independently


def test_repro_quick(tmp_path):
  from tokenlab import repro
  result = repro.run("xar", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  values = {(arm, metric): mean for arm, metric, mean, _, _ in result.rows}
  from tokenlab.repro.xar import ACC, FD, PRIOR, UNTRAINED, XAR as XAR_ARM
  for arm in (XAR_ARM, UNTRAINED, PRIOR):
    assert 0.0 <= values[(arm, ACC)] <= 1.0 and np.isfinite(values[(arm, FD)])
  assert (tmp_path / "repro.md").exists() and (tmp_path / "samples.png").exists()
