"""CAFT (method caft) and the auxiliary multi-token heads (tokenlab.nn.multi_token_heads)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.method import random_params as _params
from tokenlab.methods.caft import CAFT, CAFTConfig, concept_metrics
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.multi_token_heads import shifted_targets

CFG = CAFTConfig(vocab_size=16, d_model=16, num_layers=1, num_heads=2, num_aux_heads=2,
                 alpha=0.5, gamma=0.8)


def _batch(seed=0, b=2, n=10):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 16, (b, n + 1)).astype(np.int32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": np.ones((b, n), np.float32)}


@pytest.fixture(scope="module")
def model():
  method = CAFT(CFG)
  batch = _batch()
  return method, batch, _params(method, batch)


def test_label_shift_per_head():
  targets = jnp.arange(1, 7)[None]              # targets[t] = token t+1
  mask = jnp.ones((1, 6))
  t0, m0 = shifted_targets(targets, mask, 0)
  np.testing.assert_array_equal(t0, targets)
  t2, m2 = shifted_targets(targets, mask, 2)    # head 2 at t predicts token t+3
  np.testing.assert_array_equal(t2[0, :4], [3, 4, 5, 6])
  np.testing.assert_array_equal(m2[0], [1, 1, 1, 1, 0, 0])
  seg = jnp.array([[1, 1, 1, 2, 2, 2]])
  _, m1 = shifted_targets(targets, mask, 1, seg)
  np.testing.assert_array_equal(m1[0], [1, 1, 0, 1, 1, 0])   # no label across documents


def test_heads_dropped_at_inference_give_the_base_models_logits(model):
  method, batch, params = model
  logits = jax.jit(method.logits)(params, batch)
  all_logits = jax.jit(method.all_logits)(params, batch)
  assert all_logits.shape == (1 + CFG.num_aux_heads, 2, 10, 16)
  np.testing.assert_allclose(all_logits[0], logits, atol=1e-5)
  base_cfg = TransformerLMConfig(vocab_size=16, d_model=16, num_layers=1, num_heads=2)
  base = TransformerLM(base_cfg)
  base_params = {k: v for k, v in params.items() if k != "aux_heads"}
  np.testing.assert_allclose(jax.jit(base.logits)(base_params, batch), logits, atol=1e-5)


def test_loss_is_ce0_plus_weighted_head_losses_and_alpha_zero_is_next_token(model):
  method, batch, params = model
  loss, metrics = jax.jit(method.loss)(params, batch, jax.random.key(0))
  logits = np.asarray(jax.jit(method.all_logits)(params, batch), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = 0.0
  for i in range(3):
    n = 10 - i
    ce = -np.mean(np.take_along_axis(logp[i, :, :n], batch["targets"][:, i:, None], -1))
    want += ce if i == 0 else CFG.alpha * CFG.gamma ** i * ce
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert "head_2_loss" in metrics

  ntp = CAFT(dataclasses.replace(CFG, alpha=0.0))
  grad_fn = jax.jit(jax.grad(lambda p: ntp.loss(p, batch, jax.random.key(0))[0]))
  g = grad_fn(params)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g["aux_heads"]))
  base_loss, _ = lm_loss(jax.jit(method.logits)(params, batch), batch)
  np.testing.assert_allclose(jax.jit(ntp.loss)(params, batch, jax.random.key(0))[0], base_loss,
                             rtol=1e-6)


def test_stage_one_trains_only_the_heads(model):
  _, batch, params = model
  heads = CAFT(dataclasses.replace(CFG, stage="heads"))
  g = jax.jit(jax.grad(lambda p: heads.loss(p, batch, jax.random.key(0))[0]))(params)
  for k, v in g.items():
    biggest = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(v))
    assert (biggest > 0) == (k == "aux_heads"), k


def test_concept_metrics_and_world():
  from tokenlab.methods.caft import ConceptIterator, ConceptWorld
  logits = jnp.full((1, 6, 4), -5.0)
  targets = jnp.array([[1, 2, 3, 1, 2, 0]])
  pred = jnp.array([1, 2, 3, 1, 0, 0])      # second occurrence gets its last token wrong
  logits = logits.at[0, jnp.arange(6), pred].set(5.0)
  batch = {"targets": targets, "concept_occ": jnp.array([[0, 0, 0, 1, 1, -1]]),
           "concept_first": jnp.array([[1, 0, 0, 1, 0, 0]])}
  m = concept_metrics(logits, batch)
  np.testing.assert_allclose(m["concept_exact"].value(), 0.5)
  np.testing.assert_allclose(m["concept_first_acc"].value(), 1.0)

  world = ConceptWorld.make(seed=0)
  it = ConceptIterator(world, 4, 32, 0, concept_rate=0.0)
  general = next(it)
  assert (general["concept_occ"] == -1).all()
  dom = ConceptIterator(world, 4, 32, 0, concept_rate=0.3, num_train=6)
  b = next(dom)
  state = dom.get_state()
  b2 = next(dom)
  dom.set_state(state)
  np.testing.assert_array_equal(next(dom)["inputs"], b2["inputs"])
  x = np.concatenate([b["inputs"][:, :1], b["targets"]], 1)
  for row, occ in zip(x[:, 1:], b["concept_occ"]):   # concept tokens are concept words
    for j in set(occ[occ >= 0]):
      toks = tuple(row[occ == j])
      assert any(c[:len(toks)] == toks for c in world.concepts)


def test_experiment_variants():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=tiny,stage=heads", "size=small,alpha=0", "size=base"):
    c = load_config(f"experiments/caft.py:{arg}")
    assert c.model.name == "caft"
  assert load_config("experiments/caft.py:stage=heads").optimizer.weight_decay == 0.0
  assert load_config("experiments/caft.py:stage=pretrain").model.alpha == 0.0


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import caft as mod
  report = repro.run("caft", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "caft.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  rows = {(r["arm"], r["metric"]): r["mean"] for r in data["rows"]}
  assert rows[(mod.UNIFORM, mod.NLL)] == pytest.approx(np.log(64))
  assert 0.0 <= rows[(mod.NGRAM, mod.EXACT)] <= 1.0 and (mod.CAFT, mod.NLL) in rows


def test_ngram_scores_match_the_networks_concept_metrics():
  """The n-gram baseline is scored with the network's metric definitions: a model that
  puts all mass on the truth scores NLL 0 and exact match 1; the concept metrics of a
  network with the n-gram's log-probabilities as logits equal the n-gram's scores."""
  from tokenlab.config import load_config
  from tokenlab.methods.caft import iterator_fns
  from tokenlab.repro import caft as mod
  from tokenlab.repro.baselines import NGram
  c = load_config("experiments/caft.py:size=tiny,stage=finetune",
                  ["--config.train.eval_batches=1"])
  train_fn, eval_fn = iterator_fns(c)
  batch = next(iter(eval_fn(4, 0)))
  ng = NGram(2, 64, 0.1).fit([r[0] for r in train_fn(4, 0).fixed])
  got = mod.ngram_scores(ng, [batch])
  x = batch["inputs"]
  logp = np.log([[[ng.prob(list(x[n, :t + 1]), v) for v in range(64)]
                  for t in range(x.shape[1])] for n in range(len(x))])
  want = {k: float(v.value()) for k, v in concept_metrics(jnp.asarray(logp), batch).items()}
  assert got["eval/concept_nll"] == pytest.approx(want["concept_nll"], rel=1e-4)
  assert got["eval/concept_exact"] == pytest.approx(want["concept_exact"], abs=1e-6)
  assert got["eval/concept_first_acc"] == pytest.approx(want["concept_first_acc"], abs=1e-6)
