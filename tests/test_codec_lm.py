"""Codec-LM layout pieces: the delay pattern is invertible and causal over levels; the frame
embedding is the sum of its levels' embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.nn import codec_lm


def test_delay_pattern_places_level_k_k_steps_later_and_undoes_exactly():
  codes = jnp.asarray(np.random.default_rng(0).integers(0, 8, (2, 5, 3)), jnp.int32)
  delayed = codec_lm.delay_pattern(codes, pad_id=8)
  assert delayed.shape == (2, 7, 3)
  d, c = np.asarray(delayed), np.asarray(codes)
  for s in range(7):
    for k in range(3):
      want = c[:, s - k, k] if 0 <= s - k < 5 else 8
      assert (d[:, s, k] == want).all()
  assert (np.asarray(codec_lm.undo_delay_pattern(delayed)) == c).all()
  valid = np.asarray(codec_lm.delay_valid(5, 3))
  assert ((d[0] != 8) == valid).all() and valid.sum() == 15


def test_delay_pattern_a_frames_lower_levels_come_at_earlier_steps():
  # Level k of frame t sits at step t + k: every level j < k of the same frame is earlier, so
  # a causal model over steps has seen them when it predicts level k.
  codes = jnp.arange(4 * 3).reshape(1, 4, 3)
  d = np.asarray(codec_lm.delay_pattern(codes, pad_id=-1))[0]
  where = {int(v): s for s in range(d.shape[0]) for v in d[s] if v >= 0}
  for t in range(4):
    steps = [where[int(codes[0, t, k])] for k in range(3)]
    assert steps == sorted(steps) and len(set(steps)) == 3


def test_undo_refuses_a_sequence_too_short_for_one_frame():
  with pytest.raises(ValueError, match="holds no frame"):
    codec_lm.undo_delay_pattern(jnp.zeros((1, 2, 4), jnp.int32))


def test_codebook_sum_embedding_is_the_sum_of_level_tables():
  emb = codec_lm.CodebookSumEmbedding((4, 6), d_model=5)
  codes = jnp.asarray([[[1, 2], [3, 6]]], jnp.int32)           # 6 = level 1's extra (pad) id
  params = emb.init(jax.random.key(0), codes)["params"]
  out = np.asarray(emb.apply({"params": params}, codes))
  t0, t1 = np.asarray(params["level_0"]["embedding"]), np.asarray(params["level_1"]["embedding"])
  assert t0.shape == (5, 5) and t1.shape == (7, 5)
  np.testing.assert_allclose(out[0, 0], t0[1] + t1[2], rtol=1e-6)
  np.testing.assert_allclose(out[0, 1], t0[3] + t1[6], rtol=1e-6)
  with pytest.raises(ValueError, match="levels"):
    emb.apply({"params": params}, codes[..., :1])


# --- CodecLM (flat delay-pattern model), its loss and cached sampler; the depth decoder ------

SIZES = (5, 5, 6)           # K = 3 levels; unequal last level checks the -1e9 padding
PREFIX_VOCAB = 7
_JITTED = {}


def _apply(module):
  """module.apply under one jit per module (eager flax ops dominate the file's time)."""
  if id(module) not in _JITTED:
    _JITTED[id(module)] = (module, jax.jit(lambda p, *a: module.apply({"params": p}, *a)))
  return _JITTED[id(module)][1]


def _flat_model(head_levels=None):
  return codec_lm.CodecLM(SIZES, PREFIX_VOCAB, d_model=16, num_layers=1, num_heads=2,
                          mlp_dim=16, head_levels=head_levels)


@pytest.fixture(scope="module")
def flat():
  model = _flat_model()
  codes = jnp.asarray(np.random.default_rng(1).integers(0, 5, (2, 4, 3)), jnp.int32)
  prefix = jnp.asarray([[6, 1, 2], [3, 4, 5]], jnp.int32)
  inputs, _ = codec_lm.delay_lm_inputs(codes, SIZES)
  params = jax.jit(model.init)(jax.random.key(0), prefix, inputs)["params"]
  return model, params, prefix, codes


def test_left_align_prefix_right_aligns_each_row():
  ids = jnp.asarray([[1, 2, 0, 0], [3, 4, 5, 6]], jnp.int32)
  out = np.asarray(codec_lm.left_align_prefix(ids, jnp.asarray([2, 4]), pad_id=9))
  assert out.tolist() == [[9, 9, 1, 2], [3, 4, 5, 6]]


def test_codec_lm_step_s_sees_only_earlier_steps_and_pads_small_levels(flat):
  model, params, prefix, codes = flat
  inputs, targets = codec_lm.delay_lm_inputs(codes, SIZES)
  assert inputs.shape == targets.shape == (2, 6, 3)
  assert (np.asarray(inputs[:, 0]) == codec_lm.frame_bos_id(SIZES)).all()
  logits, hidden = _apply(model)(params, prefix, inputs)
  assert logits.shape == (2, 6, 3, 6) and hidden.shape == (2, 6, 16)
  assert (np.asarray(logits[..., :2, 5]) <= -1e8).all()     # levels 0, 1 have 5 entries
  changed = inputs.at[:, 3, 1].set((inputs[:, 3, 1] + 1) % 5)
  logits2, _ = _apply(model)(params, prefix, changed)
  diff = np.abs(np.asarray(logits2 - logits)).max(axis=(0, 2, 3))
  assert (diff[:3] == 0).all() and (diff[3:] > 0).all()
  other = prefix.at[0, 1].set(5)                            # the prefix conditions every step
  logits3, _ = _apply(model)(params, other, inputs)
  assert (np.abs(np.asarray(logits3 - logits))[0].max(axis=(1, 2)) > 0).all()


def test_delay_lm_loss_counts_only_valid_delayed_positions(flat):
  model, params, prefix, codes = flat
  inputs, _ = codec_lm.delay_lm_inputs(codes, SIZES)
  logits, _ = _apply(model)(params, prefix, inputs)
  n = jnp.asarray([4, 2])
  loss, metrics = codec_lm.delay_lm_loss(logits, codes, n)
  assert float(metrics["loss"].count) == 3 * (4 + 2)
  # code_mask drops single codes (here levels 1, 2 of frame 0) on top of num_frames.
  keep = jnp.ones(codes.shape, bool).at[:, 0, 1:].set(False)
  _, kept = codec_lm.delay_lm_loss(logits, codes, n, code_mask=keep)
  assert float(kept["loss"].count) == 3 * (4 + 2) - 2 * 2
  # Garbage at every invalid (step, level) leaves the loss unchanged.
  steps = np.arange(6)[:, None] - np.arange(3)[None]
  valid = (steps[None] >= 0) & (steps[None] < np.asarray(n)[:, None, None])
  noisy = jnp.where(valid[..., None], logits, 50.0 * jax.random.normal(jax.random.key(3),
                                                                       logits.shape))
  np.testing.assert_allclose(float(codec_lm.delay_lm_loss(noisy, codes, n)[0]), float(loss),
                             rtol=1e-6)
  # The loss is the mean nll of the valid codes, from an independent gather.
  lp = np.asarray(jax.nn.log_softmax(logits, -1))
  c = np.asarray(codes)
  want = [-lp[b, t + k, k, c[b, t, k]] for b in range(2) for t in range(int(n[b]))
          for k in range(3)]
  np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)


def test_sample_delay_lm_greedy_matches_the_full_forward(flat):
  # Greedy cached sampling is a fixed point of the training forward: every valid delayed
  # code is the argmax of the full (uncached) model on the sampled sequence, which holds only
  # if the cache matches the full forward and level k of frame t is drawn after levels < k.
  model, params, prefix, _ = flat
  codes = jax.jit(lambda p, x, r: codec_lm.sample_delay_lm(model, p, x, 4, r, temperature=0.0)
                  )(params, prefix, jax.random.key(0))
  assert codes.shape == (2, 4, 3) and codes.dtype == jnp.int32
  c = np.asarray(codes)
  assert (c >= 0).all() and (c[..., :2] < 5).all() and (c[..., 2] < 6).all()
  inputs, targets = codec_lm.delay_lm_inputs(codes, SIZES)
  logits, _ = _apply(model)(params, prefix, inputs)
  valid = np.asarray(codec_lm.delay_valid(4, 3))
  greedy = np.asarray(jnp.argmax(logits, -1))
  assert (greedy[:, valid] == np.asarray(targets)[:, valid]).all()


def test_sample_delay_lm_given_columns_ride_along_each_step():
  # A model with one known input column (e.g. frame-aligned units, ham_tts) predicting K = 2
  # levels: greedy cached samples are a fixed point of the full forward on
  # [delay_lm_inputs(codes); given], and the given column changes what is sampled.
  sizes = (5, 5, 4)                          # two predicted levels, one given column
  model = codec_lm.CodecLM(sizes, PREFIX_VOCAB, d_model=16, num_layers=1, num_heads=2,
                           mlp_dim=16, head_levels=2)
  prefix = jnp.asarray([[6, 1, 2], [3, 4, 5]], jnp.int32)
  given = jnp.asarray(np.random.default_rng(3).integers(0, 4, (2, 5, 1)), jnp.int32)
  frames = jnp.concatenate([jnp.zeros((2, 5, 2), jnp.int32), given], -1)
  params = jax.jit(model.init)(jax.random.key(5), prefix, frames)["params"]
  sample = jax.jit(lambda p, x, g: codec_lm.sample_delay_lm(model, p, x, 4, jax.random.key(0),
                                                            temperature=0.0, given=g))
  codes = sample(params, prefix, given)
  assert codes.shape == (2, 4, 2)
  inputs, targets = codec_lm.delay_lm_inputs(codes, sizes)
  logits, _ = _apply(model)(params, prefix, jnp.concatenate([inputs, given], -1))
  valid = np.asarray(codec_lm.delay_valid(4, 2))
  greedy = np.asarray(jnp.argmax(logits, -1))
  assert (greedy[:, valid] == np.asarray(targets)[:, valid]).all()
  assert not np.array_equal(np.asarray(sample(params, prefix, (given + 1) % 4)),
                            np.asarray(codes))
  with pytest.raises(ValueError, match="head_levels"):
    codec_lm.sample_delay_lm(_flat_model(), params, prefix, 4, jax.random.key(0), given=given)


@pytest.fixture(scope="module")
def dual():
  backbone = _flat_model(head_levels=1)
  depth = codec_lm.DepthDecoder(SIZES, d_model=8, num_layers=1, num_heads=2, mlp_dim=8)
  codes = jnp.asarray(np.random.default_rng(2).integers(0, 5, (2, 4, 3)), jnp.int32)
  prefix = jnp.asarray([[6, 1, 2], [3, 4, 5]], jnp.int32)
  bparams = jax.jit(backbone.init)(jax.random.key(1), prefix,
                                   codec_lm.frame_lm_inputs(codes, SIZES))["params"]
  dparams = jax.jit(depth.init)(jax.random.key(2), jnp.zeros((8, 16)),
                                codes.reshape(8, 3)[:, :2])["params"]
  return backbone, bparams, depth, dparams, prefix, codes


def test_depth_decoder_level_k_sees_only_levels_below_k(dual):
  _, _, depth, dparams, _, codes = dual
  h = jax.random.normal(jax.random.key(4), (8, 16))
  lower = codes.reshape(8, 3)[:, :2]
  logits = _apply(depth)(dparams, h, lower)
  assert logits.shape == (8, 2, 6)                          # levels 1, 2
  for j in range(2):                                        # change level j's code
    changed = lower.at[:, j].set((lower[:, j] + 1) % 5)
    d = np.abs(np.asarray(_apply(depth)(dparams, h, changed) - logits)).max(
        axis=(0, 2))
    # level j + 1 and later see level j (their logits move); levels <= j do not.
    assert (d[:j] == 0).all() and (d[j:] > 0).all()
  d = np.abs(np.asarray(_apply(depth)(dparams, h + 1.0, lower) - logits))
  assert (d.max(axis=(0, 2)) > 0).all()                    # every level sees the backbone


def test_sample_dual_lm_greedy_matches_the_full_forward(dual):
  backbone, bparams, depth, dparams, prefix, _ = dual
  codes = jax.jit(lambda b, d, x, r: codec_lm.sample_dual_lm(
      backbone, b, depth, d, x, 3, r, temperature=0.0))(bparams, dparams, prefix,
                                                        jax.random.key(0))
  assert codes.shape == (2, 3, 3)
  (logits, hidden) = _apply(backbone)(bparams, prefix,
                                    codec_lm.frame_lm_inputs(codes, SIZES))
  assert logits.shape == (2, 3, 1, 6)
  assert (np.asarray(jnp.argmax(logits[:, :, 0], -1)) == np.asarray(codes[..., 0])).all()
  dl = _apply(depth)(dparams, hidden.reshape(6, 16), codes.reshape(6, 3)[:, :2])
  assert (np.asarray(jnp.argmax(dl, -1)) == np.asarray(codes.reshape(6, 3)[:, 1:])).all()
