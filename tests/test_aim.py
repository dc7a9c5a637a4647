"""AIM (method aim): exact answers, the reduction counts and FLOPs, the reduced prefill on a
batch sharded over the 4 test devices, and the quick reproduction (whose VLM trains in the
real trainer on those 4 devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tokenlab.data import shapes
from tokenlab.errors import ConfigError
from tokenlab.method import random_params
from tokenlab.methods import aim as A

# 16x16 images of 4x4 patches: 16 visual tokens; 3 LLM layers, so the paper's schedule (full
# until half depth, then linear to 0) keeps 8 / 4 / 0 of the 8 merged tokens. No vision
# encoder layer (patch embedding and projector only): what these tests check happens in the
# LLM and in the reductions, and one fewer block is less to trace and compile.
CFG = A.AIMConfig(image_size=16, vision_dim=16, vision_layers=0, d_model=16, num_layers=3,
                  num_heads=2, mlp_dim=32)


def test_answers_are_the_labels_read_back_from_the_pixels():
  rng = np.random.default_rng(0)
  labels = [shapes.sample_labels(rng, 32, 3) for _ in range(24)]
  batch = {k: jnp.asarray(np.stack([l[k] for l in labels])) for k in
           ("label", "colour", "count", "positions")}
  rep, qtypes = A.all_questions(batch)
  assert rep["label"].shape == (96,) and list(qtypes[:5]) == [0, 1, 2, 3, 0]
  words = [A.VOCAB[i] for i in np.asarray(A.answers(rep, qtypes, 32))]
  quadrants = set()
  for i, lab in enumerate(labels):
    got = shapes.attributes(shapes.render(32, lab["label"], lab["colour"], lab["positions"]))
    top = got["positions"][0] + 4                     # the top-most object's centre (s = 8)
    where = A.QUADRANTS[2 * int(2 * top[0] >= 32) + int(2 * top[1] >= 32)]
    assert words[4 * i: 4 * i + 4] == [shapes.SHAPES[got["shape"]], shapes.COLOURS[got["colour"]],
                                       str(got["count"]), where]
    quadrants.add(where)
  assert len(quadrants) == 4                          # every answer of the 'where' type occurs
  q = np.asarray(A.questions(jnp.arange(4)))
  assert [[A.VOCAB[t] for t in row] for row in q] == [list(x) for x in A.QUESTIONS]


def test_token_counts_and_counted_prefill_flops():
  assert A.merge_rounds(64, 16) == [32, 16]           # AIM's two rounds keep 25%
  assert A.merge_rounds(64, 4) == [32, 16, 8, 4] and A.merge_rounds(64, 48) == [16]
  base = A.AIMConfig()
  aim = A.AIMConfig(merge_keep=16, prune="pagerank")
  assert A.visual_counts(base) == [64] * 4
  assert A.visual_counts(aim) == [16, 16, 8, 0]
  assert A.visual_counts(A.AIMConfig(use_image=False)) == [0] * 4
  # One layer of n = 64 + 3 tokens by hand: projections 8 n d^2, attention 4 n^2 d, SwiGLU
  # 6 n d mlp, the answer head 2 d V.
  one = A.AIMConfig(num_layers=1, d_model=8, mlp_dim=16)
  n, v = 67, len(A.VOCAB)
  assert A.prefill_flops(one) == 8 * n * 64 + 4 * n * n * 8 + 6 * n * 8 * 16 + 2 * 8 * v
  full, cut = A.prefill_flops(base), A.prefill_flops(aim)
  rand = A.prefill_flops(A.AIMConfig(merge_keep=16, prune="random"))
  assert full / cut > 5                               # several-fold, the PageRank cost included
  assert rand < cut < A.prefill_flops(A.AIMConfig(merge_keep=16))


def test_pre_llm_reductions_at_equal_counts():
  x = np.random.default_rng(1).normal(size=(1, 16, 4)).astype(np.float32)
  pairs = np.repeat(x[:, :8], 2, axis=1)     # tokens 2i and 2i+1 (ToMe's sets A, B) identical
  # One program for the four reductions (one compile instead of many eager dispatches).
  run = jax.jit(lambda x, pairs, key: (
      A.reduce_visual(x, 4, "pool", key, (4, 4)), A.reduce_visual(x, 8, "pool", key, (4, 4)),
      A.reduce_visual(x, 8, "random", key, (4, 4)), A.reduce_visual(pairs, 8, "tome", key,
                                                                   (4, 4))))
  (pool4, f4), (pool8, f8), (kept, fk), (merged, fm) = jax.tree.map(
      np.asarray, run(x, pairs, jax.random.key(0)))
  # Average pooling: 2x2 squares of the 4x4 grid for 4 tokens, row pairs for 8; each token's
  # first patch (the RoPE position with keep_positions) is its square's / pair's first.
  want = x.reshape(4, 4, 4).reshape(2, 2, 2, 2, 4).mean(axis=(1, 3)).reshape(1, 4, 4)
  np.testing.assert_allclose(pool4, want, rtol=1e-6)
  np.testing.assert_array_equal(f4, [[0, 2, 8, 10]])
  np.testing.assert_allclose(pool8, x.reshape(1, 8, 2, 4).mean(2), rtol=1e-6)
  np.testing.assert_array_equal(f8, [np.arange(0, 16, 2)])
  # Random keeping: 8 of the rows, in order, at their own indices.
  idx = [int(np.flatnonzero((x[0] == row).all(1))[0]) for row in kept[0]]
  assert len(set(idx)) == 8 and idx == sorted(idx) and list(fk[0]) == idx
  # ToMe merging: one round of r = 8 merges each identical pair exactly: the 8 distinct tokens
  # remain, in order, each first at the pair's A token.
  np.testing.assert_allclose(merged, x[:, :8], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(fm, [np.arange(0, 16, 2)])


@pytest.fixture(scope="module")
def sharded():
  """Random parameters (no init compile) and a batch of 8 sharded over the 4 test devices."""
  method = A.AIM(CFG)
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(8, 16, 16, 3)).astype(np.float32)
  batch = {"image": images, "label": np.zeros(8, np.int32)}
  params = random_params(method, batch, scale=0.5)
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
  return method, params, put(images), put(np.arange(8, dtype=np.int32) % 4)


def test_aim_prefill_on_a_sharded_batch_protects_text_and_keeps_order(sharded):
  """AIM (merging to 8 of 16, then PageRank pruning 8 / 4 / 0 in the 3 layers) and its random-
  pruning baseline, jitted on a batch split 4 ways: every layer reads the scheduled number of
  tokens, the 3 question tokens always, survivors keep their positions (PageRank with
  keep_positions: question at 16-18, merged tokens at patches < 16; random: renumbered)."""
  assert jax.device_count() == 4
  method, params, images, qtypes = sharded
  arms = (("pagerank", True, [16, 17, 18]), ("random", False, [8, 9, 10]))
  variants = [method.variant(merge_keep=8, prune=prune, keep_positions=keep_pos)
              for prune, keep_pos, _ in arms]
  # Both variants in one program (one compile), run with two keys.
  both = jax.jit(lambda p, x, q, key: [v.trace(p, x, q, key) for v in variants])
  first_run, second_run = (both(params, images, qtypes, jax.random.key(s)) for s in (1, 2))
  for (prune, keep_pos, text), v, (logits, seen), (_, seen2) in zip(arms, variants, first_run,
                                                                    second_run):
    assert v.visual_counts() == [8, 4, 0]
    assert logits.shape == (8, len(A.VOCAB)) and len(logits.sharding.device_set) == 4
    assert np.isfinite(np.asarray(logits)).all()
    assert [s.shape for s in seen] == [(8, 11), (8, 7), (8, 3)]
    first = np.asarray(seen[0])
    for s in map(np.asarray, seen):
      np.testing.assert_array_equal(s[:, -3:], np.broadcast_to(text, (8, 3)))
      assert (s[:, :-3] < text[0]).all()
      for row, row0 in zip(s, first):   # a subsequence of the first layer's tokens, in order
        where = [list(row0).index(p) for p in row]
        assert len(set(row)) == len(row) and where == sorted(where)
    if not keep_pos:
      np.testing.assert_array_equal(first, np.broadcast_to(np.arange(11), (8, 11)))
    again = np.asarray(seen2[1])
    if prune == "pagerank":   # a function of the attention, not of the rng
      np.testing.assert_array_equal(again, np.asarray(seen[1]))
      pagerank_kept = np.asarray(seen[1])
    else:
      assert not np.array_equal(again, np.asarray(seen[1]))
      assert not np.array_equal(pagerank_kept, np.asarray(seen[1]))


def test_reduction_is_training_free_and_config_errors_name_the_fix():
  method = A.AIM(CFG)
  batch = {"image": jnp.zeros((2, 16, 16, 3))}
  shapes_of = lambda m: jax.tree.map(lambda a: a.shape, jax.eval_shape(
      m.init, jax.random.key(0), batch))
  assert shapes_of(method) == shapes_of(method.variant(merge_keep=4, pre="pool",
                                                       prune="pagerank"))
  with pytest.raises(ConfigError, match="pre"):
    A.AIM(A.AIMConfig(pre="cluster"))
  with pytest.raises(ConfigError, match="prune"):
    A.AIM(A.AIMConfig(prune="attention"))
  with pytest.raises(ConfigError, match="merge_keep"):
    A.AIM(A.AIMConfig(merge_keep=65))
  with pytest.raises(ConfigError, match="num_layers"):
    A.AIM(A.AIMConfig(prune="random", num_layers=1))
  with pytest.raises(ConfigError, match="prune_start"):
    A.AIM(A.AIMConfig(prune="pagerank", prune_start=0))


def test_repro_quick(tmp_path):
  """The quick reproduction: the VLM trains 2 steps in the real trainer on the default mesh
  (data = -1: the 4 test devices, the batch split 4 ways), then full AIM evaluates."""
  import json
  from tokenlab import repro
  report = repro.run("aim", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  rows = [json.loads(line) for line in open(tmp_path / "seed0" / "vlm" / "metrics.jsonl")]
  assert [r["info/devices"] for r in rows if "info/devices" in r] == [4]
  final = [r for r in rows if "eval/accuracy_where" in r][-1]
  assert np.isfinite(final["eval/loss"]) and final["eval/visual_tokens_last_layer"] == 64
  got = {(r[0], r[1]): r[2] for r in report.rows}
  assert got[(A_ARM := "AIM merge 16 + PageRank prune", "visual tokens in")] == 16
  assert got[(A_ARM, "FLOPs reduction vs full")] > 5
  assert 0 <= got[("answer prior per type", "accuracy")] <= 1
  assert (tmp_path / "repro.md").exists() and (tmp_path / "aim_tradeoff.png").exists()
