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
