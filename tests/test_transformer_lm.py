"""The baseline LM: windowed variant, packing masks, sampling, analytic FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig

CFG = dict(vocab_size=40, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2)


def _batch(seq=24, batch=2, seed=0):
  x = np.random.default_rng(seed).integers(0, 40, (batch, seq + 1)).astype(np.int32)
  seg = np.ones((batch, seq), np.int32)
  seg[:, seq // 2:] = 2  # two packed documents per row
  pos = np.concatenate([np.arange(seq // 2), np.arange(seq - seq // 2)])[None].repeat(batch, 0)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": seg,
          "positions": pos.astype(np.int32), "loss_mask": np.ones((batch, seq), np.float32)}


def test_window_covering_the_sequence_equals_dense_causal():
  batch = _batch()
  dense = TransformerLM(TransformerLMConfig(**CFG))
  params = jax.jit(dense.init)(jax.random.key(0), batch)
  windowed = TransformerLM(TransformerLMConfig(**CFG, window=(64, 0)))
  a, b = jax.jit(dense.logits)(params, batch), jax.jit(windowed.logits)(params, batch)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  short = TransformerLM(TransformerLMConfig(**CFG, window=(3, 0)))
  assert not np.allclose(np.asarray(jax.jit(short.logits)(params, batch)), np.asarray(a),
                         atol=1e-3)


@pytest.mark.parametrize("window", [None, (4, 0)])
def test_causal_and_segments_do_not_leak(window):
  """Changing token j changes no logit before j, and nothing in the other document."""
  method = TransformerLM(TransformerLMConfig(**CFG, window=window))
  batch = _batch()
  params = jax.jit(method.init)(jax.random.key(0), batch)
  logits = jax.jit(method.logits)
  base = np.asarray(logits(params, batch))
  j = 5
  changed = dict(batch, inputs=batch["inputs"].copy())
  changed["inputs"][:, j] = (changed["inputs"][:, j] + 1) % 40
  new = np.asarray(logits(params, changed))
  np.testing.assert_allclose(new[:, :j], base[:, :j], atol=1e-6)
  np.testing.assert_allclose(new[:, 12:], base[:, 12:], atol=1e-6)  # second document
  assert not np.allclose(new[:, j], base[:, j])


def test_greedy_sampling_matches_argmax_of_logits():
  method = TransformerLM(TransformerLMConfig(**CFG))
  params = jax.jit(method.init)(jax.random.key(0), _batch())
  buf = jnp.zeros((2, 10), jnp.int32).at[:, :3].set(jnp.array([[1, 2, 3], [4, 5, 6]]))
  out = np.asarray(method.sample(params, buf, jnp.array([3, 3]), jax.random.key(1),
                                 temperature=0.0))
  np.testing.assert_array_equal(out[:, :3], np.asarray(buf[:, :3]))
  for t in range(3, 10):  # each sampled token is the argmax given the tokens before it
    logits = method.module.apply({"params": params}, jnp.asarray(out))
    np.testing.assert_array_equal(out[:, t], np.argmax(np.asarray(logits[:, t - 1]), -1))


def test_flops_per_token_counts_matmul_parameters():
  cfg = TransformerLMConfig(**CFG)
  method = TransformerLM(cfg)
  params = jax.jit(method.init)(jax.random.key(0), _batch())
  matmul = sum(x.size for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
               if x.ndim >= 2 and "embed" not in jax.tree_util.keystr(path))
  attention = cfg.num_layers * 4 * cfg.num_heads * cfg.heads_dim * (24 + 1) / 2
  assert method.flops_per_token(24) == pytest.approx(6 * matmul + 3 * attention)


@pytest.mark.parametrize("batch_size", [4, 1])
def test_pallas_window_kernel_runs_per_shard_under_a_mesh(batch_size):
  """Under a data=2 x tensor=2 mesh the Pallas kernel (interpret mode) runs inside shard_map
  on local blocks and gives the reference's logits; a batch of 1 (sampling one sequence),
  which the data axis cannot split, runs replicated over it."""
  import flax.linen as nn
  from ml_collections import ConfigDict
  from tokenlab.config import DEFAULT_SHARDING_RULES
  from tokenlab.train.mesh import make_mesh
  from tokenlab.train.partitioning import rules_from_config
  batch = _batch(seq=16, batch=batch_size)
  ref = TransformerLM(TransformerLMConfig(**CFG, window=(5, 0), attention_impl="reference"))
  pallas = TransformerLM(TransformerLMConfig(**CFG, window=(5, 0), attention_impl="pallas_gpu"))
  params = jax.jit(ref.init)(jax.random.key(0), batch)
  mesh = make_mesh(ConfigDict({"data": 2, "fsdp": 1, "tensor": 2}))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_from_config(DEFAULT_SHARDING_RULES)):
    want = jax.jit(ref.logits)(params, batch)
    got = jax.jit(pallas.logits)(params, batch)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
