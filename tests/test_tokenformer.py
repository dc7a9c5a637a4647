"""TokenFormer (method tokenformer), the Pattention layer and progressive scaling (`grow`)."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.errors import TokenlabError
from tokenlab.method import random_params as _params
from tokenlab.methods.tokenformer import TokenFormer, TokenFormerConfig, grown_config
from tokenlab.nn.pattention import Pattention, grow_parameter_tokens, modified_softmax

CFG = TokenFormerConfig(vocab_size=16, d_model=16, num_layers=1, num_heads=2, qkv_tokens=6,
                        proj_tokens=5, ffn_tokens=12)
BIG = dataclasses.replace(CFG, qkv_tokens=12, proj_tokens=9, ffn_tokens=20)
HELD = dataclasses.replace(BIG, norm_tokens=(6, 5, 12))


def _batch(seed=0, b=2, n=10):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 16, (b, n + 1)).astype(np.int32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((b, n), np.float32)}


def _grow(cfg, small_params, batch, seed=1):
  method = TokenFormer(cfg)
  return method, method.adopt_params(_params(method, batch, seed), small_params)


@pytest.fixture(scope="module")
def small():
  method, batch = TokenFormer(CFG), _batch()
  return method, batch, _params(method, batch)


def test_modified_softmax_is_l2_norm_times_sqrt_n_then_gelu():
  a = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
  want = a / np.linalg.norm(a, axis=-1, keepdims=True) * math.sqrt(7)
  want = np.asarray(jax.nn.gelu(want, approximate=False))
  np.testing.assert_allclose(modified_softmax(a, 7), want, rtol=1e-5, atol=1e-6)
  held = modified_softmax(a, 4)                 # the factor follows norm_tokens, not the shape
  assert not np.allclose(held, want, atol=1e-3)
  zero = modified_softmax(np.zeros((2, 5), np.float32), 5)
  assert np.all(np.isfinite(zero)) and np.all(zero == 0)


def test_pattention_layer_computes_theta_of_x_keys_times_values():
  layer = Pattention(num_tokens=8, features=5)
  x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
  variables = layer.init(jax.random.key(0), x)
  boxed = variables["params"]
  assert boxed["key_tokens"].names == ("mlp", "embed")      # shardable by logical rules
  assert boxed["value_tokens"].names == ("mlp", "embed")
  p = nn.unbox(boxed)
  assert p["key_tokens"].shape == (8, 4) and p["value_tokens"].shape == (8, 5)
  want = np.asarray(modified_softmax(x @ np.asarray(p["key_tokens"]).T, 8)) @ p["value_tokens"]
  np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-5, atol=1e-6)


def test_grow_parameter_tokens_copies_old_into_first_slots():
  old = np.arange(6, dtype=np.float32).reshape(3, 2)
  fresh = np.full((5, 2), 7.0, np.float32)
  np.testing.assert_array_equal(grow_parameter_tokens(old, fresh, zero=True),
                                np.concatenate([old, np.zeros((2, 2))]))
  np.testing.assert_array_equal(grow_parameter_tokens(old, fresh, zero=False)[3:], 7.0)
  stacked = grow_parameter_tokens(np.ones((4, 3, 2), np.float32), np.zeros((4, 5, 2), np.float32),
                                  zero=True)
  assert stacked.shape == (4, 5, 2)              # scanned layers: the token axis is -2
  with pytest.raises(ValueError, match="token axis"):
    grow_parameter_tokens(np.ones((3, 2)), np.ones((5, 3)), zero=True)


def test_growth_preserves_the_function_exactly_only_with_sqrt_n_held(small):
  method, batch, params = small
  before = jax.jit(method.logits)(params, batch)
  held, grown = _grow(HELD, params, batch)
  np.testing.assert_allclose(jax.jit(held.logits)(grown, batch), before, rtol=1e-5, atol=1e-5)
  # The same grown parameters with sqrt(n_new): zero keys leave ||A_i|| as it was, but every
  # old score is rescaled by sqrt(n_new / n_old), so the function changes.
  new_scale = TokenFormer(BIG)
  changed = jax.jit(new_scale.logits)(grown, batch)
  assert float(jnp.max(jnp.abs(changed - before))) > 1e-2


def test_grow_inits_what_is_preserved_and_what_learns(small):
  method, batch, params = small
  before, _ = jax.jit(method.loss)(params, batch, jax.random.key(0))
  slots = lambda tree: tree["layer_0"]["ffn"]          # 12 old + 8 new ffn tokens
  results = {}
  # grow_init changes only adopt_params, not the forward pass: one compiled loss serves all.
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda p: TokenFormer(HELD).loss(p, batch, jax.random.key(0))[0]))
  for init in ("zero_keys", "zeros", "fresh"):
    cfg = dataclasses.replace(HELD, grow_init=init)
    _, grown = _grow(cfg, params, batch)
    np.testing.assert_array_equal(slots(grown)["key_tokens"][:12],
                                  params["layer_0"]["ffn"]["key_tokens"])
    loss, g = loss_and_grad(grown)
    new_grad = max(float(jnp.abs(slots(g)[k][12:]).max()) for k in ("key_tokens",
                                                                     "value_tokens"))
    results[init] = (abs(float(loss - before)) < 1e-5, new_grad)
  assert results["zero_keys"][0] and results["zero_keys"][1] > 1e-6
  # The paper's literal recipe (keys and values zero) preserves the function, but the new
  # tokens sit at a stationary point: their gradient is exactly zero, they never learn.
  assert results["zeros"][0] and results["zeros"][1] == 0.0
  assert not results["fresh"][0]                      # the reference's loader: not preserved


def test_adopt_params_refuses_other_shapes(small):
  method, batch, params = small
  wide = TokenFormer(dataclasses.replace(BIG, d_model=32))
  with pytest.raises(TokenlabError, match="parameter tokens|d_model"):
    wide.adopt_params(_params(wide, batch), params)


def test_scanned_layers_grow_too():
  batch = _batch()
  small = TokenFormer(dataclasses.replace(CFG, scan_layers=True, num_layers=2))
  params = _params(small, batch)
  assert params["layers"]["block"]["ffn"]["key_tokens"].shape == (2, 12, 16)
  held, grown = _grow(dataclasses.replace(HELD, scan_layers=True, num_layers=2), params, batch)
  np.testing.assert_allclose(jax.jit(held.logits)(grown, batch),
                             jax.jit(small.logits)(params, batch), rtol=1e-5, atol=1e-5)


def test_flops_count_every_pattention_and_the_head(small):
  method, batch, params = small
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  matmul = sum(v.size for p, v in flat if p[-1].key in ("key_tokens", "value_tokens", "kernel"))
  attention = CFG.num_layers * 4 * CFG.d_model * (10 + 1) / 2
  assert method.flops_per_token(10) == pytest.approx(6 * matmul + 3 * attention)


def test_experiment_variants_and_grown_config():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=small,tokens=16", "size=base"):
    c = load_config(f"experiments/tokenformer.py:{arg}")
    assert c.model.name == "tokenformer"
  c = load_config("experiments/tokenformer.py:size=small,tokens=16")
  assert (c.model.qkv_tokens, c.model.proj_tokens, c.model.ffn_tokens) == (16, 16, 64)
  assert load_config("experiments/tokenformer.py:size=base").model.scan_layers
  g = grown_config(c, src_workdir="/tmp/src", factor=4, steps=100)
  assert (g.model.qkv_tokens, g.model.ffn_tokens, tuple(g.model.norm_tokens)) == (64, 256,
                                                                                 (16, 16, 64))
  assert g.train.init_from == "/tmp/src" and g.train.steps == 100
  assert c.model.qkv_tokens == 16                     # the source config is left as it was
  assert tuple(grown_config(c, src_workdir="s", factor=2, scale="new").model.norm_tokens) == ()
  # Growing a grown run again keeps the sqrt(n) of the first model (still exact).
  assert tuple(grown_config(g, src_workdir="s", factor=2).model.norm_tokens) == (16, 16, 64)


def test_grow_command_dry_run_and_errors(tmp_path, capsys):
  from tokenlab.cli import main
  from tokenlab.config import load_config, to_json
  src = tmp_path / "src"
  src.mkdir()
  (src / "config.json").write_text(to_json(load_config("experiments/tokenformer.py:size=tiny")))
  assert main(["grow", str(src), "--workdir", str(tmp_path / "dst"), "--factor", "2",
               "--steps", "7", "--dry_run", "--config.train.eval_batches=1"]) == 0
  out = capsys.readouterr().out
  assert "model.qkv_tokens: 8 -> 16" in out and "train.steps: 4 -> 7" in out
  assert "checkpoint.every_steps: 4 -> 7" in out    # still one checkpoint per run
  assert "model.norm_tokens: [] -> [8, 8, 32]" in out and "train.init_from" in out
  assert not (tmp_path / "dst").exists()
  assert main(["grow", str(src), "--workdir", str(tmp_path / "x"), "--factor", "1"]) == 2
  assert main(["grow", str(src), "--workdir", str(src), "--factor", "2"]) == 2


def test_repro_quick_grows_a_trained_run_with_the_grow_command(tmp_path):
  """--quick runs every arm for a few steps and grows the small arm with `tokenlab grow`
  (the trainer's init_from + TokenFormer.adopt_params): the grown checkpoint holds the
  trained tokens, and the grown model starts as exactly the trained small one's function."""
  from tokenlab import repro
  from tokenlab.repro import tokenformer as tf_repro
  from tokenlab.train.init_from import load_params
  report = repro.run("tokenformer", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "tokenformer_growth.png").exists()
  assert {r.check.name for r in report.checks} == {c.name for c in tf_repro.CHECKS}
  rows = {(a, m): v for a, m, v, _, _ in report.rows}
  for arm in tf_repro.ARMS[:3] + tf_repro.BASELINES:        # scratch arms: full runs only
    assert np.isfinite(rows[(arm, tf_repro.LOSS)]), arm
  assert rows[("small_continued", "train PFLOPs (total)")] < rows[("grown",
                                                                   "train PFLOPs (total)")]
  assert "not measured" in {r.check.name: r.detail for r in report.checks}["larger_helps"]
  seed = tmp_path / "seed0"
  small, grown = load_params(str(seed / "small")), load_params(str(seed / "grown"))
  cont = load_params(str(seed / "small_continued"))
  old = small["layer_0"]["ffn"]["key_tokens"]
  new = grown["layer_0"]["ffn"]["key_tokens"]
  assert new.shape[0] > old.shape[0] and not np.allclose(new[old.shape[0]:], 0)
  assert cont["layer_0"]["ffn"]["key_tokens"].shape == old.shape     # continued, not grown
  before, at_growth = tf_repro.loss_at_growth(str(seed / "small"), str(seed / "grown"), 1)
  assert abs(at_growth - before) < 1e-4                                # exact at growth
