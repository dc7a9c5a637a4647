"""TokenBridge (tokenlab/methods/tokenbridge.py): per-dimension quantization, the channel-wise
autoregressive head, the causal spatial backbone, the count prior, and the quick repro."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.image_tokenizer import GaussianPosterior
from tokenlab.methods.tokenbridge import (ChannelARHead, TokenBridgeConfig, TokenBridgeModule,
                                         standardize_stats)
from tokenlab.nn.quantizers import GaussianQuantile, gaussian_quantile_bins
from tokenlab.repro.tokenbridge import count_prior_sample

# Inits compile several times faster with an "unsafe_rbg" key than with threefry on CPU.
_KEY = jax.random.key(0, impl="unsafe_rbg")


@pytest.mark.parametrize("bins", [2, 16, 64])
def test_bins_are_monotone_and_centres_inside_their_bins(bins):
  edges, mids = gaussian_quantile_bins(bins)
  assert edges.shape == (bins - 1,) and mids.shape == (bins,)
  assert np.all(np.diff(edges) > 0) and np.all(np.diff(mids) > 0)
  assert np.all(mids[:-1] < edges) and np.all(edges < mids[1:])
  # Equal-probability bins: the codes of many standard-normal draws are about uniform.
  z = np.random.default_rng(0).normal(size=(200_000, 1)).astype(np.float32)
  counts = np.bincount(np.asarray(GaussianQuantile(1, bins)(jnp.asarray(z)).codes[:, 0]),
                       minlength=bins)
  np.testing.assert_allclose(counts / len(z), 1.0 / bins, atol=0.1 / bins)


def test_dequantize_quantize_is_the_identity_at_bin_centres():
  q = GaussianQuantile(3, 16)
  codes = jnp.asarray(np.random.default_rng(1).integers(0, 16, size=(5, 7, 3)), jnp.int32)
  centres = q.decode(codes)
  again = q(centres)
  np.testing.assert_array_equal(again.codes, codes)
  np.testing.assert_array_equal(again.values, centres)
  # A value moved towards its neighbour's centre but not past the edge keeps its code.
  _, mids = gaussian_quantile_bins(16)
  edges = gaussian_quantile_bins(16)[0]
  inside = jnp.asarray(0.5 * (mids[3] + edges[3]), jnp.float32)
  assert int(q(jnp.full((1, 3), inside)).codes[0, 0]) == 3


def test_kl_bottleneck_returns_the_mean_at_eval_and_zero_kl_at_the_prior():
  z = jnp.concatenate([jnp.ones((2, 4, 3)) * 0.7, jnp.zeros((2, 4, 3))], -1)
  out = GaussianPosterior(3)(z, train=False)
  np.testing.assert_allclose(out.values, 0.7)
  np.testing.assert_allclose(out.codes, 0.7)
  np.testing.assert_allclose(out.loss, 0.5 * 0.49, rtol=1e-6)   # KL of N(0.7, 1) || N(0, 1)
  sampled = GaussianPosterior(3).apply({}, z, train=True, rngs={"quantizer": jax.random.key(0)})
  assert float(jnp.std(sampled.values - 0.7)) > 0.5                 # std 1 noise in training
  mean, std = standardize_stats(np.random.default_rng(0).normal(3.0, 2.0, (4000, 2)))
  np.testing.assert_allclose(mean, 3.0, atol=0.1)
  np.testing.assert_allclose(std, 2.0, atol=0.1)


def test_channel_head_is_causal_over_channels():
  head = ChannelARHead(bins=8, d_model=16, num_layers=1, num_heads=2)
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
  codes = jnp.asarray(rng.integers(0, 8, size=(2, 3, 4)), jnp.int32)
  params = jax.jit(head.init)(_KEY, h, codes)
  fn = jax.jit(head.apply)
  base = fn(params, h, codes)
  assert base.shape == (2, 3, 4, 8)
  for c in range(4):
    changed = fn(params, h, codes.at[..., c].set((codes[..., c] + 3) % 8))
    np.testing.assert_allclose(changed[..., :c + 1, :], base[..., :c + 1, :], atol=1e-6)
    if c < 3:   # the next channel does read it
      assert float(jnp.max(jnp.abs(changed[..., c + 1, :] - base[..., c + 1, :]))) > 1e-4
  # The condition reaches every channel, the first included.
  moved = fn(params, h + 1.0, codes)
  assert float(jnp.min(jnp.max(jnp.abs(moved - base), axis=-1))) > 1e-5


def test_backbone_is_causal_over_positions_and_reads_the_class():
  cfg = TokenBridgeConfig(tokenizer_workdir="-", bins=8, d_model=16, num_layers=1, num_heads=2)
  module = TokenBridgeModule(cfg, channels=3, num_codes=0)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 8, size=(2, 6, 3)), jnp.int32)
  labels = jnp.asarray([1, 4], jnp.int32)
  params = jax.jit(module.init)(_KEY, tokens, labels)
  cond = jax.jit(lambda t, y: module.apply(params, t, y, method=TokenBridgeModule.condition))
  base = cond(tokens, labels)
  j = 3
  changed = cond(tokens.at[:, j].set((tokens[:, j] + 1) % 8), labels)
  np.testing.assert_allclose(changed[:, :j + 1], base[:, :j + 1], atol=1e-6)
  assert float(jnp.max(jnp.abs(changed[:, j + 1] - base[:, j + 1]))) > 1e-4
  relabelled = cond(tokens, jnp.asarray([2, 4], jnp.int32))
  assert float(jnp.max(jnp.abs(relabelled[0, 0] - base[0, 0]))) > 1e-4
  np.testing.assert_allclose(relabelled[1], base[1], atol=1e-6)


@pytest.mark.parametrize("head", ["flow", "softmax"])
def test_comparison_heads_shapes(head):
  cfg = TokenBridgeConfig(tokenizer_workdir="-", head=head, d_model=16, num_layers=1,
                          num_heads=2, flow_width=16)
  module = TokenBridgeModule(cfg, channels=3, num_codes=64)
  labels = jnp.zeros((2,), jnp.int32)
  if head == "flow":
    x = jnp.zeros((2, 6, 3))
    out = jax.eval_shape(lambda: module.init_with_output(_KEY, x, labels, x, jnp.zeros((2, 6)))[0])
    assert out.shape == ()                                     # the flow-matching loss
  else:
    codes = jnp.zeros((2, 6), jnp.int32)
    out = jax.eval_shape(lambda: module.init_with_output(_KEY, codes, labels)[0])
    assert out.shape == (2, 6, 64)                             # one softmax per position


def test_count_prior_draws_each_slot_from_its_class():
  tokens = np.array([[0, 1], [0, 2], [5, 6], [5, 7]])
  labels = np.array([0, 0, 1, 1])
  out = count_prior_sample(tokens, labels, np.array([0, 1, 1, 0] * 50), seed=0)
  assert set(out[0::4, 0]) == {0} and set(out[1::4, 0]) == {5}
  assert set(out[0::4, 1]) == {1, 2} and set(out[1::4, 1]) == {6, 7}


def test_repro_quick(tmp_path):
  from tokenlab import repro
  result = repro.run("tokenbridge", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  values = {(arm, metric): mean for arm, metric, mean, _, _ in result.rows}
  # --quick trains the continuous tokenizer and the TokenBridge generator only.
  for key in [("continuous AE (KL)", "PSNR dB (validation)"),
              ("TokenBridge quantized (16 bins)", "PSNR dB (validation)"),
              ("TokenBridge AR (channel head)", "FD-classifier"),
              ("TokenBridge AR (channel head)", "NLL bits per image (validation)"),
              ("untrained TokenBridge network", "class accuracy"),
              ("count prior (quantile indices)", "FD-classifier")]:
    assert np.isfinite(values[key]), key
  assert (tmp_path / "repro.md").exists() and (tmp_path / "samples.png").exists()
