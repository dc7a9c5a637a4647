"""Extensible tokenization (tokenlab.methods.extensible_tokenization) and its key-value facts
(tokenlab.data.kv_facts): the mechanism's invariants, then the quick reproduction."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.data.kv_facts import FAR, KEY0, NEAR, KVFactsIterator, KVFactsTask
from tokenlab.methods import extensible_tokenization as et

TASK = KVFactsTask(num_keys=8, num_values=4, num_filler=4, far_len=8, far_facts=2,
                   near_facts=1, queries=2)
CFG = et.ExtensibleTokenizationConfig(vocab_size=TASK.vocab_size, d_model=16, num_layers=1,
                                      num_heads=2, chunk_len=4, scales=(1, 2),
                                      embedder_layers=1)
DRAW = jax.random.key(0)   # an rng that draws k = 2 (asserted)


@pytest.fixture(scope="module")
def setup():
  """The method, one batch of 3 rows and its parameters: the embedder's from its own init
  (one small compile), the LM's drawn in numpy (N(0, 0.02), norm scales 1: transformer_lm's
  init is not what is tested here, and skipping it saves a compile)."""
  import flax.linen as nn
  method = et.ExtensibleTokenization(CFG)
  batch = next(KVFactsIterator(TASK, 3, 0, lambda r: et.extended_batch(r, TASK.far_len)))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  shapes = nn.unbox(jax.eval_shape(method.lm.init, jax.random.key(0), batch["inputs"]))
  rng = np.random.default_rng(0)
  draw = lambda path, s: (np.ones(s.shape, s.dtype) if "scale" in jax.tree_util.keystr(path)
                          else (0.02 * rng.standard_normal(s.shape)).astype(s.dtype))
  lm = jax.tree_util.tree_map_with_path(draw, shapes["params"])
  far = jnp.zeros(batch["far"].shape + (CFG.d_model,))
  embedder = et.numpy_params(jax.jit(method.embedder.init, static_argnums=2)(
      jax.random.key(1), far, 1)["params"])
  return method, batch, {"lm": lm, "embedder": embedder}


def test_kv_rows_have_exact_answers():
  task = KVFactsTask()
  rng = np.random.default_rng(1)
  for _ in range(20):
    tokens, kinds = task.sample(rng)
    assert tokens.shape == kinds.shape == (task.far_len + task.near_len,)
    facts = {}   # key -> (value, position) of every fact token
    for i, t in enumerate(tokens[:task.far_len + task.near_facts]):
      if task.fact0 <= t < task.fill0:
        key, value = divmod(int(t) - task.fact0, task.num_values)
        assert key not in facts   # distinct keys
        facts[key] = (value, i)
      else:
        assert i < task.far_len and t >= task.fill0   # filler only in the far part
    assert sum(pos < task.far_len for _, pos in facts.values()) == task.far_facts
    queries = tokens[task.far_len + task.near_facts:].reshape(-1, 2)
    qkinds = kinds[task.far_len + task.near_facts:].reshape(-1, 2)
    assert (kinds[:task.far_len + task.near_facts] == 0).all() and (qkinds[:, 0] == 0).all()
    for (q, a), (_, kind) in zip(queries, qkinds):
      value, pos = facts[int(q) - KEY0]
      assert a == task.val0 + value
      assert kind == (FAR if pos < task.far_len else NEAR)


def test_batches_shift_and_mask_answers():
  rows = next(KVFactsIterator(TASK, 2, 0))
  b = et.extended_batch(rows, TASK.far_len)
  np.testing.assert_array_equal(b["far"], rows["tokens"][:, :TASK.far_len])
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  answers = b["targets"][b["loss_mask"] > 0]
  assert ((answers >= TASK.val0) & (answers < TASK.fact0)).all()
  np.testing.assert_array_equal(b["far_mask"] + b["near_mask"], b["loss_mask"])
  # Held-out rows are a stream of their own.
  val = next(KVFactsIterator(TASK, 2, 0, split="validation"))
  assert not np.array_equal(val["tokens"], rows["tokens"])


def test_pool_is_the_mean_of_k_consecutive_rows():
  x = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)
  np.testing.assert_array_equal(et.pool(x, 1), x)
  np.testing.assert_allclose(et.pool(x, 4)[:, 1], x[:, 4:8].mean(1))
  with pytest.raises(ValueError):
    et.pool(x, 3)


def _moved(params, seed):
  """params with a random (non-zero) embedder correction: a 'trained' embedder."""
  kernel = params["embedder"]["out"]["kernel"]
  rng = np.random.default_rng(seed)
  out = {"kernel": rng.normal(size=kernel.shape).astype(np.float32)}
  return {**params, "embedder": {**params["embedder"], "out": out}}


@pytest.fixture(scope="module")
def outputs(setup):
  """One compiled forward: the recent tokens' logits at k = 1, 2 and their losses, the frozen
  LM's on the raw full context, the gradient of the training loss and the loss at 8 drawn k;
  for the init parameters and for a moved embedder."""
  method, batch, params = setup

  @jax.jit
  def forward(p):
    ext = {k: method.logits(p, batch, k) for k in CFG.scales}
    full = method.lm_logits(p["lm"], jnp.concatenate([batch["far"], batch["inputs"]], 1))
    per_k = jnp.stack([et.lm_loss(ext[k], batch)[0] for k in CFG.scales])
    # The training loss at the k that DRAW draws, and its gradients.
    drawn, grads = jax.value_and_grad(lambda q: method.loss(q, batch, DRAW)[0])(p)
    # The far context with one token of chunk 1 (position 5) changed.
    far = batch["far"]
    changed = far.at[:, 5].set(jnp.where(far[:, 5] == TASK.fill0, TASK.fill0 + 1, TASK.fill0))
    slots = [method.extensible_embeddings(p, f, 1) for f in (far, changed)]
    return {"ext": ext, "full": full[:, TASK.far_len:], "per_k": per_k, "grads": grads,
            "slots": slots, "drawn": drawn}
  return forward(params), forward(_moved(params, 0))


def test_identity_embedder_at_k1_gives_the_full_context_output(setup, outputs):
  """The paper's check: k = 1 with an identity embedder (the zero-initialised correction)
  gives exactly the frozen LM's output on the raw full context."""
  params = setup[2]
  init, moved = outputs
  assert not np.any(params["embedder"]["out"]["kernel"])
  np.testing.assert_array_equal(init["ext"][1], init["full"])
  # A trained (non-zero) correction changes the output: the check can fail.
  assert not np.allclose(moved["ext"][1], moved["full"], atol=1e-3)
  np.testing.assert_array_equal(moved["full"], init["full"])   # the LM is the same
  # k = 2 halves the prefix: the recent tokens' logits keep their shape.
  assert init["ext"][2].shape == init["ext"][1].shape


def test_chunks_are_encoded_independently_and_causally(outputs):
  a, b = outputs[1]["slots"]   # a moved embedder, k = 1: one output per far token
  np.testing.assert_array_equal(a[:, :5], b[:, :5])      # chunk 0, and position 4 (causal)
  assert not np.allclose(a[:, 5:], b[:, 5:])             # the changed chunk's own outputs


def test_only_the_embedder_learns_and_k_is_drawn_per_batch(setup, outputs):
  method = setup[0]
  for out in outputs:
    grads = out["grads"]
    assert all(not np.any(g) for g in jax.tree.leaves(grads["lm"]))
    assert np.any(grads["embedder"]["out"]["kernel"])
  moved = outputs[1]   # the stack's weights learn once the correction is non-zero
  assert np.any(moved["grads"]["embedder"]["decoder"]["layer_0"]["mlp"]["down"]["kernel"])
  # k is drawn per batch, uniformly over the scales; a batch's loss is the loss at its k.
  index = np.asarray(jax.vmap(method.draw_scale)(jax.random.split(jax.random.key(0), 400)))
  np.testing.assert_allclose(np.bincount(index, minlength=2) / 400, [0.5, 0.5], atol=0.08)
  per_k = np.asarray(moved["per_k"])
  assert abs(per_k[0] - per_k[1]) > 1e-4
  assert int(method.draw_scale(DRAW)) == 1
  np.testing.assert_allclose(moved["drawn"], per_k[1], rtol=1e-6)


def test_lm_run_parameters_go_to_the_frozen_lm(setup):
  method, _, params = setup
  lm = jax.tree.map(lambda x: x + 1.0, params["lm"])
  out = method.adopt_params(params, lm)
  for a, b in zip(jax.tree.leaves(out["lm"]), jax.tree.leaves(lm)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(out["embedder"]), jax.tree.leaves(params["embedder"])):
    np.testing.assert_array_equal(a, b)


def test_context_cost_per_far_token_falls_with_k(setup):
  method = setup[0]
  costs = [method.context_flops_per_token(k, 16) for k in (1, 2, 4)]
  assert costs[0] > costs[1] > costs[2]
  lm = et.TransformerLM(et.lm_config(CFG)).flops_per_token(16) / 3
  np.testing.assert_allclose(costs[1] - costs[2], lm / 4, rtol=1e-9)


def test_repro_quick(tmp_path):
  from tokenlab import repro
  from tokenlab.repro import extensible_tokenization as mod
  report = repro.run("extensible_tokenization", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists()
  assert (tmp_path / "extensible_tokenization.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert data["baselines"] == list(mod.BASELINES) and data["seeds"] == [0]
  measured = {(r["arm"], r["metric"]) for r in data["rows"]}
  assert {(mod.ext(2), mod.FAR), (mod.TRUNC, mod.FAR), (mod.untrained(2), mod.NLL),
          (mod.PRIOR, mod.NEAR), (mod.FULL, mod.FLOPS)} <= measured
