"""VIOLET (tokenlab/methods/violet.py): MVM masks are 3-D cubes, masked patches are zeroed at
the input, the MVM loss counts masked positions only, VTM negatives, the contrastive loss,
retrieval recall, the caption vocabulary, config errors, and the quick reproduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.errors import ConfigError
from tokenlab.method import random_params
from tokenlab.methods.violet import (Violet, VioletConfig, VioletModule, contrastive_loss,
                                     mlm_mask, negative_captions, retrieval_recall)

# Clips of 4 frames of 16x16 pixels in 8x8 patches: a 4 x 2 x 2 token grid.
_CFG = dict(d_model=8, num_heads=2, video_layers=0, cross_layers=1, text_layers=1,
            text_vocab=12, max_text_len=6, codebook_size=5, vtm_candidates=2,
            contrastive_weight=1.0, mvm_ratio=0.3, mvm_cube=(2, 2, 2))


def _batch(n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  caption = rng.integers(1, 12, (n, 6)).astype(np.int32)
  caption[:, 4:] = 0
  return {"video": rng.random((n, 4, 16, 16, 3), dtype=np.float32), "caption": caption,
          "codes": rng.integers(0, 5, (n, 4, 2, 2)).astype(np.int32),
          "mask": np.ones(n, np.float32)}


@pytest.fixture(scope="module")
def model():
  """(method, params, jitted loss) of a tiny model. Random parameters of the init's shapes
  (eval_shape: the init program, ~3 s of compile at -O0, never runs): the tests below need a
  network, not its initialiser (the quick reproduction trains one)."""
  method = Violet(VioletConfig(**_CFG))
  params = random_params(method, _batch())
  return method, params, jax.jit(method.loss)


def test_mvm_masks_are_3d_cubes_covering_the_ratio():
  method = Violet(VioletConfig(**_CFG))
  # Jitted: one program, not one compile per op.
  masks = np.asarray(jax.jit(method.mvm_mask, static_argnums=1)(jax.random.key(3),
                                                                 (8, 4, 32, 32, 3)))
  assert masks.shape == (8, 4, 4, 4)                 # 32x32 frames in 8x8 patches
  for m in masks:
    assert np.ceil(0.3 * m.size) <= m.sum() < np.ceil(0.3 * m.size) + 8
    full = np.zeros((3, 3, 3), bool)                 # corners of fully masked 2x2x2 cubes
    for t, y, x in np.ndindex(3, 3, 3):
      full[t, y, x] = m[t:t + 2, y:y + 2, x:x + 2].all()
    # Every masked position lies inside a fully masked cube.
    for t, y, x in np.argwhere(m):
      assert full[max(t - 1, 0):t + 1, max(y - 1, 0):y + 1, max(x - 1, 0):x + 1].any()


def test_masked_patches_are_zeroed_at_the_input(model):
  method, params, _ = model
  batch = _batch()
  masked = np.zeros((4, 4, 2, 2), bool)
  masked[:, 1:3, 0, 1] = True                        # a 2-frame column of patches
  enc = jax.jit(lambda v, m: method.module.apply({"params": params}, v, m,
                                                 method=VioletModule.encode_video))
  changed = batch["video"].copy()
  changed[:, 1:3, 0:8, 8:16] = 7.0                   # new pixels in exactly those patches
  a, b = enc(batch["video"], masked), enc(changed, masked)
  np.testing.assert_allclose(a, b, atol=1e-6)        # masked content never reaches the model
  zeroed = batch["video"].copy()
  zeroed[:, 1:3, 0:8, 8:16] = 0.0
  np.testing.assert_allclose(a, enc(zeroed, np.zeros_like(masked)), atol=1e-6)
  assert not np.allclose(a, enc(batch["video"], np.zeros_like(masked)), atol=1e-4)


def test_mvm_loss_counts_only_masked_positions(model):
  method, params, loss = model
  batch, rng = _batch(), jax.random.key(5)
  where = np.asarray(jax.jit(lambda r: method.mvm_mask(jax.random.split(r, 3)[2],
                                                       batch["video"].shape))(rng))
  assert where.any() and not where.all()
  base = loss(params, batch, rng)[1]
  outside = dict(batch, codes=np.where(where, batch["codes"], (batch["codes"] + 1) % 5))
  inside = dict(batch, codes=np.where(where, (batch["codes"] + 1) % 5, batch["codes"]))
  got_out, got_in = loss(params, outside, rng)[1], loss(params, inside, rng)[1]
  value = lambda m: float(m["mvm_loss"].value())
  assert value(got_out) == pytest.approx(value(base), abs=1e-6)
  assert abs(value(got_in) - value(base)) > 1e-4
  assert float(base["mvm_masked_share"].value()) == pytest.approx(where.mean())
  # No MVM: nothing masked, no MVM term (the ablation arm).
  off = Violet(VioletConfig(**{**_CFG, "mvm_weight": 0.0}))
  metrics = jax.eval_shape(off.loss, params, batch, rng)[1]   # traced, not compiled
  assert "mvm_loss" not in metrics and "vtm_loss" in metrics


def test_vtm_negatives_are_other_clips():
  cand = np.asarray(jax.jit(negative_captions, static_argnums=(1, 2))(jax.random.key(1), 6, 4))
  assert cand.shape == (6, 4)
  np.testing.assert_array_equal(cand[:, 0], np.arange(6))
  for i, row in enumerate(cand):
    assert len(set(row)) == 4 and i not in row[1:]
  with pytest.raises(ValueError, match="vtm_candidates"):
    negative_captions(jax.random.key(1), 3, 4)


def test_mlm_mask_picks_real_words_only():
  caption = jnp.array([[3, 4, 5, 6, 7, 8, 9, 0], [3, 0, 0, 0, 0, 0, 0, 0]])
  m = np.asarray(jax.jit(mlm_mask, static_argnums=2)(jax.random.key(2), caption, 0.15))
  assert m.sum(1).tolist() == [2, 1] and not (m & (np.asarray(caption) == 0)).any()


def test_contrastive_loss_matches_numpy_and_skips_duplicate_captions():
  rng = np.random.default_rng(0)
  v, t = rng.normal(size=(2, 3, 4)).astype(np.float32)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  logits = v @ t.T / 0.5
  lse = lambda x, a: np.log(np.exp(x).sum(a))
  want = np.mean((lse(logits, 0) - np.diag(logits) + lse(logits, 1) - np.diag(logits)) / 2)
  loss = jax.jit(contrastive_loss, static_argnums=2)    # one program, not one per op
  none = np.zeros((3, 3), bool)
  got, _ = loss(v, t, 0.5, none, np.ones(3, np.float32))
  assert float(got) == pytest.approx(want, rel=1e-5)
  # Rows 0 and 1 share a caption: neither is the other's negative.
  same = none.copy()
  same[0, 1] = same[1, 0] = True
  got2, per = loss(v, t, 0.5, same, np.ones(3, np.float32))
  assert float(got2) < float(got) and np.isfinite(np.asarray(per)).all()


def test_retrieval_recall():
  perfect = np.eye(5) + 0.1
  assert retrieval_recall(perfect)["mean R@1"] == 1.0
  flat = retrieval_recall(np.zeros((10, 10)))      # a constant scorer: exactly chance
  assert flat["t2v R@1"] == pytest.approx(0.1) and flat["v2t R@5"] == pytest.approx(0.5)
  s = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  r = retrieval_recall(s, ks=(1, 2))
  # v2t: clip 0 scores caption 1 above its own (miss at 1, hit at 2); t2v: caption 1 scores
  # clip 0 above its own clip 1 (miss at 1, hit at 2); the rest are first.
  assert r["v2t R@1"] == pytest.approx(2 / 3) and r["v2t R@2"] == 1.0
  assert r["t2v R@1"] == pytest.approx(2 / 3) and r["t2v R@2"] == 1.0


def test_scores_and_caption_vocabulary(model):
  from tokenlab.data import moving_shapes
  from tokenlab.repro.violet import DATA, vocabulary, word_ids
  method, params, _ = model
  batch = _batch()
  s = np.asarray(jax.jit(method.score_matrix)(params, batch["video"], batch["caption"]))
  assert s.shape == (4, 4) and np.isfinite(s).all()
  options = {**DATA, "num_train": 40, "num_validation": 1}
  caps = [moving_shapes.clip_labels("train", i, options)["caption"] for i in range(40)]
  ids = word_ids(caps, 16)
  words = vocabulary()
  back = [" ".join(words[i - 1] for i in row if i).replace(" ,", ",") for row in ids]
  assert back == caps
  with pytest.raises(ValueError, match="words"):
    word_ids(caps[:1], 3)


def test_config_errors_name_the_fix():
  with pytest.raises(ConfigError, match="retrieval"):
    Violet(VioletConfig(retrieval="dot"))
  with pytest.raises(ConfigError, match="num_heads"):
    Violet(VioletConfig(d_model=10, num_heads=4))
  with pytest.raises(ConfigError, match="patch_size"):
    Violet(VioletConfig(patch_size=5)).grid((1, 4, 16, 16, 3))
  with pytest.raises(ConfigError, match="tokenizer_workdir"):
    Violet(VioletConfig()).targets({"video": np.zeros((1, 4, 16, 16, 3), np.float32)})


def test_repro_quick(tmp_path):
  from tokenlab import repro
  result = repro.run("violet", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  values = {(r[0], r[1]): r[2] for r in result.rows}
  assert 0.0 <= values[("VTM + MLM + MVM", "mean R@5")] <= 1.0
  assert values[("chance", "mean R@1")] == pytest.approx(1 / 8)
  assert (tmp_path / "repro.md").exists() and (tmp_path / "violet_recall.png").exists()
