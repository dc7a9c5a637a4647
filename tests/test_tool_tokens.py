"""Tests of tool tokens (tokenlab/methods/tool_tokens.py), the harness's extend_vocabulary
and the reproduction. Tiny shapes; the model pieces share one module-scoped set of
parameters and one gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab import repro
from tokenlab.method import random_params
from tokenlab.methods.tool_tokens import (FREEZE, SLOTS, ToolIterator, ToolTask, ToolTokens,
                                          ToolTokensConfig, WordTokenizer, prior_matrix,
                                          tool_token)
from tokenlab.methods.transformer_lm import lm_loss
from tokenlab.repro.tool_tokens import counts_accuracy, keyword_accuracy
from tokenlab.transfer import get_initializer
from tokenlab.transfer.harness import extend_vocabulary, get_embeddings
from tokenlab.transfer.initializers import Embeddings

TASK = ToolTask()
T = TASK.num_tools


def _method(**kw) -> ToolTokens:
  return ToolTokens(ToolTokensConfig(vocab_size=TASK.base_vocab, d_model=16, num_layers=1,
                                     num_heads=2, **kw))


@pytest.fixture(scope="module")
def model():
  """(method, params with distinct tool and prior rows, a batch of demonstrations)."""
  method = _method(reg_weight=0.5)
  batch = TASK.call_rows(TASK.few_shot(1, seed=0))
  params = random_params(method, {"inputs": batch["inputs"]}, seed=1)
  return method, params, batch


@pytest.fixture(scope="module")
def loss_and_grads(model):
  """One compile: the loss, metrics and gradients at reg_weight 0.5 and 0, and the extended
  LM's own loss (lm_loss of its logits)."""
  method, params, batch = model
  plain = ToolTokens(dataclasses.replace(method.config, reg_weight=0.0))

  def both(p):
    rng = jax.random.key(0)
    (loss, metrics), grads = jax.value_and_grad(lambda q: method.loss(q, batch, rng),
                                                has_aux=True)(p)
    loss0, grads0 = jax.value_and_grad(lambda q: plain.loss(q, batch, rng)[0])(p)
    return loss, metrics, grads, loss0, grads0, lm_loss(method.logits(p, batch), batch)[0]
  shape = jax.eval_shape(method.logits, params, batch).shape
  return jax.jit(both)(params) + (shape,)


def test_task_rows_put_the_tool_token_at_the_call_position():
  tok = TASK.full_tokenizer
  assert TASK.tokenizer.vocab_size == TASK.base_vocab == tok.vocab_size - T
  assert tok.encode(b"use the <calculator>")[-1] == TASK.base_vocab
  rows = TASK.call_rows(TASK.few_shot(2, seed=3))
  n = len(rows["tool"])
  assert n == 2 * T and sorted(set(rows["tool"].tolist())) == list(range(T))
  at = rows["targets"][np.arange(n), rows["call_pos"]]
  np.testing.assert_array_equal(at, TASK.base_vocab + rows["tool"])
  assert (rows["inputs"][np.arange(n), rows["call_pos"]] == tok.ids["the"]).all()
  # The text format: call_pos predicts the first name word (the last input is 'the').
  words = TASK.name_rows(TASK.few_shot(1, seed=3))
  last = words["inputs"][np.arange(T), words["call_pos"]]
  assert (last == TASK.tokenizer.ids["the"]).all()
  # Demonstrations are the seed's: the trainer's iterator draws only from them.
  it = ToolIterator(TASK, "tools", 8, seed=3, shots=2)
  batch = next(it)
  assert {tuple(r) for r in batch["inputs"]} <= {tuple(r) for r in rows["inputs"]}
  assert TASK.few_shot(2, seed=3) != TASK.few_shot(2, seed=4)


def test_prior_row_is_the_mean_of_the_name_and_description_rows(model):
  method, params, _ = model
  lm = params["lm"]
  prior = method.prior(lm)
  emb, out = np.asarray(lm["embed"]["embedding"]), np.asarray(lm["lm_head"]["kernel"]).T
  for t, tool in enumerate(TASK.tools):
    words = f"{tool.name} {tool.description}".split()
    ids = [TASK.tokenizer.ids[w] for w in words]
    np.testing.assert_allclose(prior.input[t], emb[ids].mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prior.output[t], out[ids].mean(0), rtol=1e-5, atol=1e-7)
  # A word twice in the text counts twice.
  tok = WordTokenizer(["a", "b"])
  np.testing.assert_allclose(prior_matrix(tok, ["a a b"])[0, 3:], [2 / 3, 1 / 3])


def test_harness_initializer_gives_the_same_prior(model):
  method, params, _ = model
  old = get_embeddings(params["lm"])
  d = old.input.shape[1]
  fresh = Embeddings(np.full((T + TASK.base_vocab, d), 7.0, np.float32),
                     np.full((T + TASK.base_vocab, d), 7.0, np.float32))
  made = get_initializer("tool_tokens")(
      TASK.tokenizer, old, TASK.full_tokenizer, fresh=fresh,
      aux={"descriptions": {tool_token(t): text for t, text in zip(TASK.tools,
                                                                    TASK.prior_texts())}})
  v0 = TASK.base_vocab
  np.testing.assert_array_equal(made.input[3:v0], old.input[3:])   # shared words kept
  prior = method.prior(params["lm"])
  np.testing.assert_allclose(made.input[v0:], prior.input, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(made.output[v0:], prior.output, rtol=1e-5, atol=1e-7)
  # Without a description a new token keeps its fresh row.
  bare = get_initializer("tool_tokens")(TASK.tokenizer, old, TASK.full_tokenizer,
                                        fresh=fresh, aux={})
  assert (bare.input[v0:] == 7.0).all()


def test_extend_vocabulary_appends_rows_and_keeps_the_rest():
  rng = np.random.default_rng(0)
  f32 = lambda *s: rng.normal(size=s).astype(np.float32)
  params = {"embed": {"embedding": f32(5, 3)}, "lm_head": {"kernel": f32(3, 5)},
            "decoder": {"w": np.ones(2)}}
  new = Embeddings(f32(2, 3), f32(2, 3))
  out = extend_vocabulary(params, new)
  assert out["decoder"] is params["decoder"]
  np.testing.assert_array_equal(out["embed"]["embedding"][:5], params["embed"]["embedding"])
  np.testing.assert_array_equal(out["embed"]["embedding"][5:], new.input)
  np.testing.assert_array_equal(out["lm_head"]["kernel"][:, :5], params["lm_head"]["kernel"])
  np.testing.assert_array_equal(out["lm_head"]["kernel"][:, 5:], new.output.T)
  with pytest.raises(Exception, match="output"):
    extend_vocabulary(params, Embeddings(new.input, None))


def test_loss_is_extended_lm_loss_plus_the_l2_pull(model, loss_and_grads):
  _, params, batch = model
  loss, metrics, grads, loss0, grads0, ce, shape = loss_and_grads
  assert tuple(shape) == (*batch["inputs"].shape, TASK.base_vocab + T)
  reg = sum(np.sum((np.asarray(params["tools"][k]) - np.asarray(params["prior"][k])) ** 2)
            for k in ("input", "output"))
  assert reg > 1.0
  np.testing.assert_allclose(float(loss), float(ce) + 0.5 * reg, rtol=1e-5)
  # reg_weight 0 is plain fine-tuning of the rows: the loss is the extended LM's loss.
  np.testing.assert_allclose(float(loss0), float(ce), rtol=1e-6)
  # The regulariser's gradient: 2 * weight * (W - W_prior), added to the CE gradient.
  for k in ("input", "output"):
    np.testing.assert_allclose(
        np.asarray(grads["tools"][k]) - np.asarray(grads0["tools"][k]),
        2 * 0.5 * (np.asarray(params["tools"][k]) - np.asarray(params["prior"][k])),
        rtol=1e-4, atol=1e-6)
  # The LM and the prior get the same gradient either way (the pull is on the rows only).
  for a, b in zip(jax.tree.leaves(grads["lm"]), jax.tree.leaves(grads0["lm"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert 0.0 <= float(metrics["tool_acc"].value()) <= 1.0


def test_only_tool_rows_are_updated(model, loss_and_grads):
  from ml_collections import ConfigDict
  from tokenlab.config import base_config
  from tokenlab.train.optimizer import make_optimizer
  _, params, _ = model
  grads = loss_and_grads[2]
  # The LM does get gradients: the freeze, not a zero gradient, keeps it.
  assert float(jnp.abs(grads["lm"]["embed"]["embedding"]).max()) > 0
  opt = ConfigDict(base_config().optimizer.to_dict())
  tx = make_optimizer(opt, 10, 1.0, FREEZE)


  @jax.jit
  def two_steps(p):   # one compile instead of every optimizer op eagerly
    state = tx.init(p)
    for _ in range(2):
      updates, state = tx.update(grads, state, p)
      p = jax.tree.map(lambda a, u: a + u, p, updates)
    return p
  new = two_steps(params)
  for part in ("lm", "prior"):
    for a, b in zip(jax.tree.leaves(params[part]), jax.tree.leaves(new[part])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for k in ("input", "output"):
    assert not np.array_equal(np.asarray(params["tools"][k]), np.asarray(new["tools"][k]))


def test_adopt_params_starts_at_the_prior_or_at_random(model):
  _, params, _ = model
  loaded = {"lm": jax.tree.map(lambda x: np.asarray(x) + 1.0, params["lm"])}
  for init in ("prior", "random"):
    method = _method(init=init)
    out = method.adopt_params(params, loaded)
    for a, b in zip(jax.tree.leaves(out["lm"]), jax.tree.leaves(loaded["lm"])):
      np.testing.assert_array_equal(np.asarray(a), b)
    prior = method.prior(out["lm"])
    np.testing.assert_array_equal(np.asarray(out["prior"]["input"]), np.asarray(prior.input))
    want = out["prior"] if init == "prior" else params["tools"]
    for k in ("input", "output"):
      np.testing.assert_array_equal(np.asarray(out["tools"][k]), np.asarray(want[k]))
  with pytest.raises(Exception, match="pretrain"):
    _method().adopt_params(params, {"embed": {}})


def test_trivial_baselines_on_hand_made_queries():
  # keyword: 'numbers' is in the calculator's description only; 'a' ties nobody.
  queries = [("add numbers", [], 0), ("zzz", [], 3)]
  assert keyword_accuracy(TASK, queries[:1]) == 1.0
  assert keyword_accuracy(TASK, queries[1:]) == pytest.approx(1 / T)   # all tie
  demos = [("what is 3 plus 4", [], 0), ("translate book to french", [], 3)]
  assert counts_accuracy(demos, [("what is 9 plus 1", [], 0)], T) == 1.0
  assert counts_accuracy(demos, [("translate river to german", [], 3)], T) == 1.0


def test_repro_quick(tmp_path):
  result = repro.run("tool_tokens", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  rows = {(a, m): mean for a, m, mean, _, _ in result.rows}
  # The real trainer kept every LM array bit-identical and moved the tool rows.
  # The second design's loop (the trainer's optimizer on the tool rows) keeps the LM
  # bit-identical; the trainer arm that checks FREEZE on the trainer runs in full runs only.
  for arm in ("prior+reg", "prior", "random"):
    assert rows[(arm, "LM arrays changed, 1-shot")] == 0
    assert 0.0 <= rows[(arm, "tool accuracy, 1-shot, 2 steps")] <= 1.0
  assert rows[("prior+reg", "tool rows moved from the prior (L2), 1-shot")] > 0
  # Step 0 is the start: both prior arms equal, the random arm is the untrained baseline.
  assert (rows[("prior+reg", "tool accuracy, 1-shot, 0 steps")]
          == rows[("prior", "tool accuracy, 1-shot, 0 steps")])
  assert (rows[("random", "tool accuracy, 1-shot, 0 steps")]
          == rows[("untrained rows (random, 0 steps)", "tool accuracy")])


def test_held_out_templates_are_never_demonstrated():
  from tokenlab.repro.tool_tokens import EVAL_TEMPLATES, TRAIN_TEMPLATES
  assert not set(TRAIN_TEMPLATES) & set(EVAL_TEMPLATES)
  def template_of(tool, query):
    for i, tpl in enumerate(TASK.tools[tool].templates):
      words = tpl.split()
      if len(words) == len(query.split()) and all(
          w in SLOTS or w == q for w, q in zip(words, query.split())):
        return i
  demos = TASK.few_shot(8, seed=5, templates=TRAIN_TEMPLATES)
  assert {template_of(t, q) for q, _, t in demos} == set(TRAIN_TEMPLATES)
  evals = TASK.eval_queries(templates=EVAL_TEMPLATES)
  assert len(evals) == 48 * T and {template_of(t, q) for q, _, t in evals} == {2}
  # Without a restriction the draws are the first design's (same generator stream).
  assert TASK.few_shot(2, seed=3) == TASK.few_shot(2, seed=3, templates=None)
  assert {template_of(t, q) for q, _, t in TASK.eval_queries()} == {0, 1, 2}
