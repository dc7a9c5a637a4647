"""MergeDNA: the paper's checks on the learned tokenization and the loss invariants."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.kernels import local_window_merge, unmerge
from tokenlab.methods.mergedna import MASK_ID, MergeDNA, MergeDNAConfig, row_budget_merge

CFG = MergeDNAConfig(d_model=16, num_heads=2, window=8, merge_layers=2, merge_r=2,
                     latent_encoder_layers=1, latent_decoder_layers=1, local_decoder_layers=1)
N = 40


def _batch(b=2, n=N, seed=0):
  rng = np.random.default_rng(seed)
  bases = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, (b, n))].astype(np.int32)
  bases[0, 8:24] = np.frombuffer(b"AC" * 8, np.uint8)        # a tandem repeat
  seg = np.ones((b, n), np.int32)
  seg[1, -5:] = 0                                             # padding
  labels = np.zeros((b, n), np.int32)
  labels[0, 7:23] = 1
  return {"inputs": jnp.asarray(bases), "segment_ids": jnp.asarray(seg),
          "labels": jnp.asarray(labels)}


@pytest.fixture(scope="module")
def model():
  m = MergeDNA(CFG)
  return m, jax.jit(m.init)(jax.random.key(0), _batch())  # one program, not op by op


def test_source_matrix_rows_partition_bases_into_contiguous_spans(model):
  m, params = model
  t = jax.jit(m.tokenize)(params, _batch()["inputs"])
  gid, sizes = np.asarray(t["group_ids"]), np.asarray(t["sizes"])
  mtok = CFG.num_tokens(N)
  chex.assert_shape(t["tokens"], (2, mtok, CFG.d_model))
  for row in range(2):
    s = np.zeros((N, mtok))
    s[np.arange(N), gid[row]] = 1                            # source matrix S (bases x tokens)
    np.testing.assert_array_equal(s.sum(1), 1)               # every base in exactly one token
    assert gid[row, 0] == 0 and gid[row, -1] == mtok - 1     # every token is used
    assert set(np.diff(gid[row])) <= {0, 1}                  # spans are contiguous, in order
    np.testing.assert_allclose(s.sum(0), sizes[row])         # sizes = bases per token
    assert sizes[row].max() <= 2 ** CFG.merge_layers


@pytest.mark.parametrize("n,window,r", [(40, 8, 2), (37, 16, 6), (16, 4, 1)])
def test_no_merge_crosses_a_window(n, window, r):
  x = jax.random.normal(jax.random.key(n), (3, n, 8))
  _, gid, sizes = local_window_merge(x, x, window=window, r=r)
  gid = np.asarray(gid)
  for row in gid:
    for g in np.unique(row):
      members = np.nonzero(row == g)[0]
      assert len(members) <= 2 and len(set(members // window)) == 1
  np.testing.assert_allclose(np.asarray(sizes).sum(1), n)


def test_unmerge_of_merge_is_identity_for_constant_x():
  const = jnp.broadcast_to(jnp.arange(6, dtype=jnp.float32), (2, 40, 6))
  metric = jax.random.normal(jax.random.key(1), (2, 40, 4))
  merged, gid, _ = local_window_merge(const, metric, window=8, r=3)
  np.testing.assert_allclose(unmerge(merged, gid), const, atol=1e-6)
  # ... and through two composed layers (the model's source map), with sizes as weights.
  metric2 = jax.random.normal(jax.random.key(2), merged.shape)
  merged2, gid2, _ = local_window_merge(merged, metric2, window=8, r=3)
  np.testing.assert_allclose(unmerge(merged2, jnp.take_along_axis(gid2, gid, 1)), const,
                             atol=1e-6)


def test_amtm_mask_draws_k_valid_bases_with_inverse_square_group_size():
  m = MergeDNA(CFG)
  g = jnp.array([[1.0, 4, 4, 4, 4, 2, 2, 1]])
  valid = jnp.array([[1.0, 1, 1, 1, 1, 1, 1, 0]])             # last base is padding
  masks = jax.vmap(lambda r: m.amtm_mask(g, valid, 1, r)[0])(
      jax.random.split(jax.random.key(0), 4000))
  np.testing.assert_array_equal(masks.sum(1), 1)
  freq = np.asarray(masks.mean(0))
  assert freq[7] == 0
  w = np.array([1, 1 / 16, 1 / 16, 1 / 16, 1 / 16, 1 / 4, 1 / 4])
  np.testing.assert_allclose(freq[:7], w / w.sum(), atol=0.03)
  two = m.amtm_mask(g, valid, 3, jax.random.key(1))
  assert float(two.sum()) == 3 and float(two[0, 7]) == 0     # without replacement


def test_losses_finite_and_latent_mtr_does_not_train_the_local_encoder(model):
  m, params = model
  batch = _batch()
  # One compiled program: the loss terms, their metrics and the gradient of latent MTR.
  def latent_mtr(p):
    terms, metrics = m.loss_terms(p, batch, jax.random.key(3))
    return terms["latent_mtr"], (terms, metrics)
  g, (terms, metrics) = jax.jit(jax.grad(latent_mtr, has_aux=True))(params)
  for name in ("mtr", "latent_mtr", "amtm"):
    assert np.isfinite(float(terms[name]))
    assert abs(float(terms[name]) - np.log(256)) < 1.0      # near uniform at init
  # Region token lengths: base t's label is labels[t - 1].
  assert float(metrics["token_len/repeat"].count) == 16
  g = nn.meta.unbox(g)
  local = jax.tree.leaves(g["local_blocks_0"]) + jax.tree.leaves(g["embed"])
  assert all(float(jnp.abs(x).max()) == 0 for x in local)
  assert float(jnp.abs(jax.tree.leaves(g["latent_encoder"])[0]).max()) > 0
  assert float(jnp.abs(g["head"]["kernel"]).max()) > 0


def test_mlm_and_kmer_baselines():
  batch = _batch()
  mlm = MergeDNA(dataclasses.replace(CFG, objective="mlm", mask_rate=0.3))
  p = jax.jit(mlm.init)(jax.random.key(0), batch)
  loss, metrics = jax.jit(mlm.loss)(p, batch, jax.random.key(0))
  assert np.isfinite(float(loss)) and float(metrics["loss"].count) > 0
  kmer = MergeDNA(dataclasses.replace(CFG, tokenizer="kmer", kmer=4))
  t = jax.jit(kmer.tokenize)(jax.jit(kmer.init)(jax.random.key(0), batch), batch["inputs"])
  np.testing.assert_array_equal(t["group_ids"][0], np.arange(N) // 4)
  assert MASK_ID not in b"ACGT"


def test_row_budget_merge_spends_the_row_budget_where_tokens_are_similar():
  # Window 0 (tokens 0-7) is one repeated vector, windows 1-2 are random: the row's budget
  # (3 pairs per window x 3 windows = 9, minus the short last window's cap) goes to window 0
  # first, which a fixed per-window budget cannot do.
  n, window, r = 22, 8, 3
  x = np.array(jax.random.normal(jax.random.key(0), (2, n, 8)))
  x[:, :8] = x[:, :1]
  sizes = jnp.asarray(np.random.default_rng(0).integers(1, 4, (2, n)), jnp.float32)
  merged, gid, new_sizes = row_budget_merge(jnp.asarray(x), jnp.asarray(x), window=window,
                                            r=r, sizes=sizes)
  total = 3 + 3 + 3     # windows of 8, 8, 6 tokens
  chex.assert_shape(merged, (2, n - total, 8))
  gid = np.asarray(gid)
  for row in range(2):
    assert set(np.diff(gid[row])) <= {0, 1} and gid[row, -1] == n - total - 1
    per_window = [len(np.unique(gid[row, w:w + window])) for w in range(0, n, window)]
    assert per_window[0] == 4                    # 8 identical tokens: 4 pairs merged
    for g in np.unique(gid[row]):
      members = np.nonzero(gid[row] == g)[0]
      assert len(members) <= 2 and len(set(members // window)) == 1
  # Size-weighted means and sizes, as local_window_merge's.
  s = np.asarray(sizes)
  for row in range(2):
    for g in range(n - total):
      m = gid[row] == g
      np.testing.assert_allclose(merged[row, g], (x[row, m] * s[row, m, None]).sum(0)
                                 / s[row, m].sum(), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(new_sizes[row, g], s[row, m].sum())


def test_row_scope_model_keeps_the_static_token_count():
  m = MergeDNA(dataclasses.replace(CFG, merge_scope="row"))
  batch = _batch()
  params = jax.jit(m.init)(jax.random.key(0), batch)
  t = jax.jit(m.tokenize)(params, batch["inputs"])
  chex.assert_shape(t["tokens"], (2, CFG.num_tokens(N), CFG.d_model))
  np.testing.assert_allclose(np.asarray(t["sizes"]).sum(1), N)
  loss, _ = jax.jit(m.loss)(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss))
  with pytest.raises(ValueError, match="merge_scope"):
    MergeDNA(dataclasses.replace(CFG, merge_scope="global"))


def test_kmer_counts_probe_features():
  from tokenlab.repro.mergedna import kmer_counts
  bases = np.frombuffer(b"ACGTAC", np.uint8)[None].astype(np.int32)
  c = kmer_counts(bases, 2)      # AC, CG, GT, TA, AC over 5 2-mers
  assert c.shape == (1, 16)
  np.testing.assert_allclose(c[0, 0 * 4 + 1], 2 / 5)   # AC
  np.testing.assert_allclose(c.sum(), 1.0, rtol=1e-6)


def test_repro_quick(tmp_path):
  import json
  from tokenlab import repro
  from tokenlab.repro import mergedna as mergedna_repro
  report = repro.run("mergedna", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "mergedna_tokens_probe.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert [c["name"] for c in data["checks"]] == [c.name for c in mergedna_repro.CHECKS]
  rows = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  for arm in ("mergedna", "untrained mergedna", "untrained kmer", "k-mer counts probe"):
    assert 0.0 <= rows[(arm, "motif probe AUC")] <= 1.0
  assert rows[("untrained kmer", "bases per token")] > 1.0
