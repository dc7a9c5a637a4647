"""Exact byte-level probabilities (tokenlab.evals.byte_level, method byte_probs).

The lemma is checked exactly (float64 rounding) against brute-force enumeration over *all*
token encodings of strings of length <= 8, for an LM that gives non-canonical encodings zero
probability (the lemma's premise; a trained LM approximates it).
"""

import itertools
import math

import numpy as np
import pytest

from tokenlab.data.tokenizers import BPETokenizer, BytesTokenizer
from tokenlab.evals import byte_level
from tokenlab.evals.byte_level import ByteLevelLM, ensemble_next_byte


def _bpe(alphabet: bytes, vocab: int, seed: int = 0) -> BPETokenizer:
  rng = np.random.default_rng(seed)
  a = np.frombuffer(alphabet, np.uint8)
  docs = []
  for _ in range(40):
    # Runs make repeated pairs, so merges such as 00, 000, 0101 appear.
    x = [a[0]]
    for _ in range(60):
      x.append(x[-1] if rng.random() < 0.6 else rng.choice(a))
    docs.append(bytes(np.array(x, np.uint8)))
  return BPETokenizer.train(docs, vocab)


class ToyLM:
  """Random next-token logits depending on the last two tokens; `canonical` zeroes (and
  renormalises away) every next token that would make the query part non-canonical."""

  def __init__(self, tok, seed=0, canonical=True):
    self.tok, self.canonical = tok, canonical
    self.V = tok.vocab_size
    self.table = np.random.default_rng(seed).normal(size=(self.V, self.V, self.V)) * 1.5
    self.bl = ByteLevelLM(tok, self)   # only for its cached encode
    self.calls = 0

  def row(self, seq):
    logits = self.table[seq[-2] if len(seq) > 1 else 0, seq[-1]].copy()
    if self.canonical:
      q = tuple(seq[1:])  # position 0 is the context: a hard boundary
      prefix = b"".join(self.bl.pieces[t] for t in q)
      for u in range(self.V):
        if self.bl.encode(prefix + self.bl.pieces[u]) != q + (u,):
          logits[u] = -np.inf
    return logits - byte_level._logsumexp(logits)

  def __call__(self, seqs):
    self.calls += 1
    return [np.stack([self.row(s[:j + 1]) for j in range(len(s))]) for s in seqs]


def brute_force_prefix_prob(lm: ToyLM, ctx: int, x: bytes) -> float:
  """P(bytes after ctx start with x): sum over every token sequence (no encoder involved)."""
  pieces = [lm.tok.token_bytes(i) for i in range(lm.V)]
  total = 0.0

  def dfs(seq, decoded, lp):
    nonlocal total
    if len(decoded) >= len(x):
      total += math.exp(lp)
      return
    row = lm.row((ctx,) + seq)
    for u in range(lm.V):
      new = decoded + pieces[u]
      if np.isfinite(row[u]) and (x.startswith(new) or new.startswith(x)):
        dfs(seq + (u,), new, lp + row[u])

  dfs((), b"", 0.0)
  return total


def _strings(alphabet: bytes, max_len: int):
  for n in range(1, max_len + 1):
    for s in itertools.product(alphabet, repeat=n):
      yield bytes(s)


@pytest.fixture(scope="module")
def binary():
  tok = _bpe(b"01", 10)
  return tok, ToyLM(tok, seed=1)


def test_bpe_canonical_encodings_are_prefix_closed(binary):
  tok, _ = binary
  bl = ByteLevelLM(tok, None)
  for s in _strings(b"01", 8):
    enc = bl.encode(s)
    for m in range(1, len(enc)):
      assert bl.is_valid(enc[:m]), (s, enc)


def test_lemma_equals_brute_force_on_all_short_strings(binary):
  tok, lm = binary
  bl = ByteLevelLM(tok, lm)
  rng = np.random.default_rng(0)
  strings = list(_strings(b"01", 5)) + [bytes(rng.choice([48, 49], n).astype(np.uint8)) for n in (6, 7, 8, 8)]
  items = [((3,), s) for s in strings]
  lemma = [lp for lp, _ in bl.evaluate(items)]
  for s, lp in zip(strings, lemma):
    np.testing.assert_allclose(math.exp(lp), brute_force_prefix_prob(lm, 3, s), rtol=1e-10,
                               err_msg=repr(s))


def test_prefix_logprobs_is_the_lemma_without_the_next_byte_law(binary):
  tok, lm = binary
  bl = ByteLevelLM(tok, lm)
  strings = [b"", b"0", b"0110", b"00000000", b"10101"]
  got = bl.prefix_logprobs([((3,), s) for s in strings])
  assert got[0] == 0.0
  for s, lp in zip(strings[1:], got[1:]):
    np.testing.assert_allclose(math.exp(lp), brute_force_prefix_prob(lm, 3, s), rtol=1e-10,
                               err_msg=repr(s))


def test_prefix_probabilities_of_all_strings_of_a_length_sum_to_one(binary):
  tok, lm = binary
  bl = ByteLevelLM(tok, lm)
  for n in (1, 3, 6):
    out = bl.evaluate([((5,), s) for s in _strings(b"01", n) if len(s) == n])
    np.testing.assert_allclose(sum(math.exp(lp) for lp, _ in out), 1.0, rtol=1e-10)


def test_next_byte_law_sums_to_one_and_marginalises_exactly(binary):
  tok, lm = binary
  bl = ByteLevelLM(tok, lm)
  for x in [b"0", b"01", b"0001", b"1111", b"0100110", b"00000000"]:
    lp, joint = bl.evaluate([((2,), x)])[0]
    np.testing.assert_allclose(np.exp(joint).sum(), math.exp(lp), rtol=1e-10)
    probs = bl.next_byte_probs([((2,), x)])[0]
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-12)
    for b in (48, 49):
      np.testing.assert_allclose(
          probs[b], brute_force_prefix_prob(lm, 2, x + bytes([b]))
          / brute_force_prefix_prob(lm, 2, x), rtol=1e-9)
    assert probs[[i for i in range(256) if i not in (48, 49)]].sum() == 0


def test_lemma_on_a_three_letter_alphabet():
  tok = _bpe(b"abc", 12, seed=3)
  lm = ToyLM(tok, seed=2)
  bl = ByteLevelLM(tok, lm)
  for s in [b"a", b"ab", b"cab", b"aabb", b"abcab", b"ccccc", b"abacabac"]:
    np.testing.assert_allclose(math.exp(bl.prefix_logprob((1,), s)),
                               brute_force_prefix_prob(lm, 1, s), rtol=1e-10, err_msg=repr(s))


def test_non_canonical_model_differs_and_batching_is_one_call(binary):
  tok, _ = binary
  raw = ToyLM(tok, seed=1, canonical=False)
  bl = ByteLevelLM(tok, raw)
  # The lemma assumes no mass on non-canonical encodings; a raw model has some, so the
  # canonical-cover sum is then below the sum over all encodings.
  x = b"000101"
  assert math.exp(bl.prefix_logprob((3,), x)) < brute_force_prefix_prob(raw, 3, x)
  raw.calls = 0
  bl.next_byte_probs([((3,), b"01"), ((4,), b"0011"), ((3,), b"1")])
  assert raw.calls == 1


def test_bytes_tokenizer_exact_naive_and_healing_agree():
  tok = BytesTokenizer()

  def fn(seqs):
    rng = np.random.default_rng(len(seqs))
    out = []
    for s in seqs:
      logits = np.stack([np.random.default_rng(int(t) + 7 * j).normal(size=256)
                         for j, t in enumerate(s)])
      out.append(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
    return out

  bl = ByteLevelLM(tok, fn)
  items = [((65,), b"hello"), ((66,), b"x")]
  exact = bl.next_byte_probs(items, "exact")
  np.testing.assert_allclose(exact, bl.next_byte_probs(items, "naive"), rtol=1e-9)
  np.testing.assert_allclose(exact, bl.next_byte_probs(items, "healing"), rtol=1e-9)
  np.testing.assert_allclose(exact[0], np.exp(fn([(65,) + tuple(b"hello")])[0][-1]),
                             rtol=1e-9)


def test_naive_prompting_is_biased_mid_token(binary):
  """With merges like 00, a prompt ending in '0' makes the naive next-token law condition on a
  token boundary the true encoding need not have; the exact law differs from it."""
  tok, lm = binary
  bl = ByteLevelLM(tok, lm)
  items = [((2,), b"0100"), ((2,), b"1110")]
  exact, naive = bl.next_byte_probs(items, "exact"), bl.next_byte_probs(items, "naive")
  assert np.abs(exact - naive).max() > 1e-3
  healing = bl.next_byte_probs(items, "healing")
  np.testing.assert_allclose(healing.sum(-1), 1.0)


def test_sampler_and_ensemble(binary):
  tok, lm = binary
  bl = ByteLevelLM(tok, lm)
  out = bl.sample_bytes((2,), b"01", 6, np.random.default_rng(0), max_query_bytes=4)
  assert len(out) == 6 and set(out) <= {48, 49}
  p = np.zeros(256); p[48] = 1.0
  q = np.zeros(256); q[48], q[49] = 0.5, 0.5
  np.testing.assert_allclose(ensemble_next_byte([p, q])[[48, 49]], [0.75, 0.25])
  prod = ensemble_next_byte([q, q], mode="product")
  np.testing.assert_allclose(prod[[48, 49]], [0.5, 0.5])


def test_lm_logprob_fn_matches_the_transformer_logits():
  import jax
  from tokenlab.methods.byte_probs import ByteProbs
  from tokenlab.methods.transformer_lm import TransformerLMConfig
  method = ByteProbs(TransformerLMConfig(vocab_size=10, d_model=16, num_layers=1, num_heads=2))
  tokens = np.array([[1, 2, 3, 4, 5, 6]], np.int32)
  # Shapes only (compiling the random init is slow on a busy CPU); numpy values.
  shapes = jax.eval_shape(method.init, jax.random.key(0), {"inputs": tokens})
  shapes = jax.tree.map(lambda x: getattr(x, "value", x), shapes,
                        is_leaf=lambda x: hasattr(x, "value"))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.3).astype(np.float32), shapes)
  logits = np.asarray(jax.jit(method.logits)(params, {"inputs": tokens}), np.float64)
  want = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  fn = byte_level.lm_logprob_fn(
      jax.jit(lambda t: method.module.apply({"params": params}, t)), max_len=16, batch_size=2,
      bucket=8)
  got = fn([[1, 2, 3], [1, 2, 3, 4, 5, 6]])
  np.testing.assert_allclose(got[1], want[0], atol=2e-5)
  np.testing.assert_allclose(got[0], want[0, :3], atol=2e-5)
  tok = _bpe(b"01", 10)
  bl = method.byte_level(params, tok, max_len=16)
  assert bl.next_byte_probs([((1,), b"01")]).shape == (1, 256)


def test_experiment_variants():
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=tiny,data=pysrc,vocab=512", "size=small,tokenizer=bytes",
              "size=base"):
    c = load_config(f"experiments/byte_probs.py:{arg}")
    assert c.model.vocab_size == c.data.vocab_size and c.model.name == "byte_probs"


def test_repro_quick(tmp_path):
  import json
  import os
  from tokenlab import repro
  from tokenlab.repro import byte_probs
  report = repro.run("byte_probs", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED and report.seeds == [0]
  assert os.path.exists(tmp_path / "repro.md") and os.path.exists(tmp_path / "byte_probs.png")
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in byte_probs.CHECKS}
  assert all("not measured" not in c["detail"] for c in data["checks"]), data["checks"]
  values = {(r[0], r[1]): r[2] for r in report.rows}
  assert {"markov bpe64 naive", "markov bpe64 healing", "markov bpe64 exact"} <= {
      a for a, _ in values}
  # The uniform baseline's KL to the truth has a closed form: mean over prompts of
  # KL(Bernoulli(p1) || 1/2) with p1 = 0.3 after '0' and 0.8 after '1'.
  kl = lambda p: p * np.log2(2 * p) + (1 - p) * np.log2(2 * (1 - p))
  got = values[("markov uniform", byte_probs.KL_ALL)]
  assert kl(0.3) - 1e-9 <= got <= kl(0.8) + 1e-9, got
