"""ECHOPulse (tokenlab/methods/echopulse.py): the cross-attention block, MaskGIT training masks,
fixed-order (token-by-token) decoding, condition dropout / the null condition, the pulse
read-back scores, and the mini-reproduction's pipeline."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from tokenlab.methods.echopulse import (EchoPulse, EchoPulseConfig, condition_scores, pearson,
                                        pulse_clips, pulse_options)
from tokenlab.nn.cross_attention import CrossAttention
from tokenlab.nn.maskgit import ordered_decode, training_mask

CFG = EchoPulseConfig(grid=(2, 2, 2), codebook_size=8, num_frames=4, d_model=16, num_heads=2,
                      num_layers=1, maskgit_steps=3)


def test_cross_attention_masked_context_and_key_order():
  """Masked context entries change nothing; the order of the context entries changes nothing
  (attention is a weighted sum over keys); the context does change the output."""
  rng = np.random.default_rng(0)   # numpy draws: no eager random program to compile
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  ctx = rng.normal(size=(2, 3, 6)).astype(np.float32)
  keep = jnp.array([[True, True, False], [True, True, False]])
  layer = CrossAttention(num_heads=2, head_dim=4)
  # Random parameters of the init's shapes (eval_shape: no init program to compile).
  shapes = meta.unbox(jax.eval_shape(layer.init, jax.random.key(2), x, ctx, keep))
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
  perm = jnp.array([1, 0, 2])

  @jax.jit
  def outputs(ctx):
    run = lambda c, k: layer.apply(params, x, c, k)
    return (run(ctx, keep), run(ctx.at[:, 2].set(9.0), keep), run(ctx[:, perm], keep[:, perm]),
            run(ctx.at[:, 0].set(9.0), keep))

  base, masked_changed, permuted, seen_changed = outputs(ctx)
  np.testing.assert_allclose(masked_changed, base, atol=1e-5)
  np.testing.assert_allclose(permuted, base, atol=1e-5)
  assert float(jnp.max(jnp.abs(seen_changed - base))) > 1e-3


def test_training_mask_follows_the_cosine_schedule():
  """ceil(N cos(pi r / 2)) masked codes, r ~ U(0, 1): between 1 and N per row, mean masked
  fraction near E[cos(pi r / 2)] = 2 / pi."""
  masks = np.asarray(jax.jit(lambda r: training_mask(r, 4000, 16))(jax.random.key(0)))
  counts = masks.sum(-1)
  assert counts.min() >= 1 and counts.max() <= 16
  assert abs(counts.mean() / 16 - 2 / np.pi) < 0.03
  # Each count equals ceil(16 cos(pi r / 2)) for some r: the quantiles match the cosine's.
  r = np.linspace(0, 1, 100001)[:-1]
  expected = np.bincount(np.clip(np.ceil(16 * np.cos(0.5 * np.pi * r)), 1, 16).astype(int),
                         minlength=17) / len(r)
  observed = np.bincount(counts, minlength=17) / len(counts)
  assert np.max(np.abs(observed - expected)) < 0.03


def test_ordered_decode_raster_order_and_guidance():
  """Token-by-token decoding fills position i at step i (raster order, one code per network
  call): an oracle that answers 'how many codes are decided' writes 0, 1, 2, ... With k codes
  per step, position i is written at step i // k. Guidance scale 0 follows the null rows."""
  vocab, n = 8, 6

  def counting_oracle(tokens):      # every position predicts (#decided) mod vocab
    decided = jnp.sum(tokens != vocab, axis=-1)
    return 10.0 * jax.nn.one_hot(decided % vocab, vocab)[:, None, :].repeat(n, 1)

  run = jax.jit(lambda s: (
      ordered_decode(counting_oracle, (2, n), mask_id=vocab, rng=jax.random.key(0),
                     temperature=0.0),
      ordered_decode(counting_oracle, (2, n), mask_id=vocab, rng=jax.random.key(0),
                     tokens_per_step=2, temperature=0.0),
      ordered_decode(lambda t: jnp.concatenate([jnp.zeros((2, n, vocab)).at[..., 3].set(9.0),
                                                jnp.zeros((2, n, vocab)).at[..., 5].set(9.0)]),
                     (2, n), mask_id=vocab, rng=jax.random.key(0), temperature=0.0,
                     cfg_scale=s)))
  one, two, guided = run(0.0)
  np.testing.assert_array_equal(one, np.tile(np.arange(n), (2, 1)))
  np.testing.assert_array_equal(two, np.tile(np.arange(n) // 2 * 2, (2, 1)))
  np.testing.assert_array_equal(guided, 5)      # s = 0: null + 0 (cond - null) = null
  with pytest.raises(ValueError, match="divide"):
    ordered_decode(counting_oracle, (2, n), mask_id=vocab, rng=jax.random.key(0),
                   tokens_per_step=4)


@pytest.fixture(scope="module")
def model():
  """A tiny EchoPulse, its parameters, and one compiled program of everything the unit tests
  ask of it (the loss, null / conditional logits)."""
  method = EchoPulse(CFG)
  batch = {"codes": jnp.asarray(np.random.default_rng(0).integers(0, 8, (4, 8)), jnp.int32),
           "signal": jnp.asarray(np.random.default_rng(1).normal(size=(4, 4)), jnp.float32)}
  # Random parameters of the init's shapes (eval_shape traces, nothing compiles): the tests
  # below need a network, not its initialiser (the quick reproduction trains one).
  shapes = meta.unbox(jax.eval_shape(method.init, jax.random.key(0), batch))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), s.dtype), shapes)
  other = batch["signal"] + 1.0
  tokens = jnp.where(jnp.arange(8) % 2 == 0, batch["codes"], 8)
  last_changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 8)

  @jax.jit
  def program(params):
    # One apply over five row sets: (signal, other) x (null, conditional), and the
    # conditional rows with the last code changed.
    signals = jnp.concatenate([batch["signal"], other, batch["signal"], other, batch["signal"]])
    null = jnp.arange(20) < 8
    rows = jnp.concatenate([jnp.tile(tokens, (4, 1)), last_changed])
    logits = method.module.apply({"params": params}, rows, signals, null)
    loss, metrics = method.loss(params, batch, jax.random.key(1))
    return {"loss": loss, "metrics": metrics,
            "null_a": logits[:4], "null_b": logits[4:8], "cond_a": logits[8:12],
            "cond_b": logits[12:16], "cond_last": logits[16:]}

  return method, params, program(params)


def test_null_condition_ignores_the_signal(model):
  """Condition dropout's null context replaces the ECG embedding: the null model's logits do
  not depend on the signal; the conditional model's do."""
  _, _, out = model
  np.testing.assert_allclose(out["null_a"], out["null_b"], atol=1e-6)
  assert float(jnp.max(jnp.abs(out["cond_a"] - out["cond_b"]))) > 1e-4


def test_generator_is_bidirectional(model):
  """MaskGIT's transformer sees every code: changing the last code changes the first code's
  prediction (a causal model would not)."""
  _, _, out = model
  assert float(jnp.max(jnp.abs(out["cond_last"][:, 0] - out["cond_a"][:, 0]))) > 1e-5


def test_loss_and_evaluation_counts(model):
  """The MaskGIT loss is a cross-entropy near ln K at small random weights; MaskGIT needs T
  network evaluations, token by token N (N / k with k codes per step). (The samplers run in
  test_repro_quick: every arm's codes are decoded and scored there.)"""
  method, _, out = model
  assert abs(float(out["loss"]) - np.log(8)) < 0.5
  assert set(out["metrics"]) == {"loss", "masked_accuracy"}
  assert method.network_evaluations("maskgit") == 3
  assert method.network_evaluations("token_by_token") == 8
  assert method.network_evaluations("token_by_token", tokens_per_step=2) == 4


def test_condition_scores_read_the_blob():
  """Real pulse clips score correlation > 0.99 with their signal and radius MAE < 0.1 px; a
  clip at one constant radius scores correlation 0; shuffled signals score far lower."""
  options = pulse_options({"size": 16, "num_frames": 8, "num_validation": 6})
  clips = pulse_clips("validation", options)
  real = condition_scores(clips["video"], clips["signal"], clips["radius"])
  assert real["corr"] > 0.99 and real["mae"] < 0.1
  still = np.repeat(clips["video"][:, :1], 8, axis=1)
  flat = condition_scores(np.repeat(still[:1], 6, axis=0), clips["signal"], clips["radius"])
  assert flat["corr"] == 0.0 and flat["mae"] > 0.1
  rng = np.random.default_rng(0)
  shuffled = rng.permuted(clips["signal"].ravel()).reshape(clips["signal"].shape)
  assert condition_scores(clips["video"], shuffled, clips["radius"])["corr"] < 0.5
  assert pearson(np.arange(5), 2 * np.arange(5) + 1) == pytest.approx(1.0)


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import echopulse as mod
  report = repro.run("echopulse", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "samples.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  rows = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  assert rows[(mod.MEAN, mod.CORR)] == 0.0 and rows[(mod.REAL, mod.CORR)] > 0.99
  assert rows[(mod.TBT, mod.NFE)] == 16 > rows[(mod.MG, mod.NFE)] == 4
  assert np.isfinite(rows[(mod.SPEED, mod.RATIO)])
