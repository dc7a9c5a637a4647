"""Toward a Theory of Tokenization: exact source quantities, unigram-over-tokens, LZW."""

import math
import os

import numpy as np

from tokenlab.data import markov
from tokenlab.data.tokenizers import BPETokenizer
from tokenlab.data.tokenizers.lzw import LZWTokenizer
from tokenlab.methods.tokenization_theory import (UnigramTokenModel, bits_per_char,
                                                  empirical_conditional_entropy_bits)


def _docs(k, p, q, num=200, length=1024, seed=0):
  x = markov.generate(k, p, q, length, num, np.random.default_rng(seed))
  return [(d + ord("0")).tobytes() for d in x]


def test_exact_entropies():
  assert math.isclose(markov.entropy_rate_bits(0.8, 0.8), 0.7219280948873623, rel_tol=1e-12)
  assert markov.unigram_entropy_bits(0.8, 0.8) == 1.0
  assert math.isclose(markov.entropy_rate_bits(0.9, 0.9), 0.4689955935892812, rel_tol=1e-12)
  # Asymmetric: pi = (q, p)/(p+q) = (1/3, 2/3).
  assert math.isclose(markov.unigram_entropy_bits(0.8, 0.4),
                      -(1 / 3) * math.log2(1 / 3) - (2 / 3) * math.log2(2 / 3), rel_tol=1e-12)


def test_generator_matches_the_exact_entropies():
  for k, p, q in ((4, 0.8, 0.8), (2, 0.8, 0.4)):
    docs = _docs(k, p, q)
    est = empirical_conditional_entropy_bits(docs, k)
    assert abs(est - markov.entropy_rate_bits(p, q)) < 0.01, (k, est)
    # The unigram model over characters (vocab 2) gives the unigram entropy H(pi).
    chars = LZWTokenizer([b"0", b"1"])
    m = UnigramTokenModel(2).fit(chars.encode_batch(docs))
    got = m.bits_per_char(chars.encode_batch(_docs(k, p, q, seed=1)), chars.token_lengths())
    assert abs(got - markov.unigram_entropy_bits(p, q)) < 0.01, (k, got)


def test_unigram_model_by_hand():
  m = UnigramTokenModel(3, alpha=0.5).fit([np.array([0, 0, 1]), np.array([0])])
  np.testing.assert_allclose(np.exp(m.logprobs), np.array([3.5, 1.5, 0.5]) / 5.5)
  lengths = np.array([1, 2, 3])
  want = -(math.log2(3.5 / 5.5) + math.log2(1.5 / 5.5)) / 3
  assert math.isclose(m.bits_per_char([np.array([0, 1])], lengths), want, rel_tol=1e-12)
  assert math.isclose(bits_per_char(math.log(2.0) * 6, 4), 1.5)


def test_unigram_over_tokens_beats_unigram_over_chars_on_a_kth_order_source():
  train, val = _docs(4, 0.8, 0.8, num=60), _docs(4, 0.8, 0.8, num=20, seed=1)
  results = {}
  for vocab in (2, 64):
    tok = BPETokenizer.train(train, vocab)
    m = UnigramTokenModel(tok.vocab_size).fit(tok.encode_batch(train))
    results[vocab] = m.bits_per_char(tok.encode_batch(val), tok.token_lengths())
  assert abs(results[2] - 1.0) < 0.01
  assert results[64] < results[2] - 0.03, results


def test_lzw_dictionary_and_greedy_encoding():
  tok = LZWTokenizer.train([b"abababab"], 100)
  assert tok.pieces == [b"a", b"b", b"ab", b"ba", b"aba", b"abab"]
  assert tok.encode(b"ababab").tolist() == [5, 2]          # greedy longest match
  # Prefix-closed dictionary; encode/decode round trip on Markov text.
  docs = _docs(4, 0.8, 0.8, num=20, length=512)
  tok = LZWTokenizer.train(docs, 128)
  assert tok.vocab_size == 128
  pieces = set(tok.pieces)
  assert all(p[:j] in pieces for p in pieces for j in range(1, len(p)))
  for d in docs[:5]:
    assert tok.decode(tok.encode(d)) == d


def test_experiment_variants_and_registration():
  from tokenlab import registry
  from tokenlab.config import load_config
  for arg in ("size=tiny", "size=tiny,tokenizer=bpe,vocab=16,k=8,p=0.9,q=0.9", "size=base"):
    c = load_config(f"experiments/tokenization_theory.py:{arg}")
    assert c.model.vocab_size == c.data.vocab_size
  assert registry.get_method_class("tokenization_theory").__name__ == "TokenizationTheoryLM"


def test_repro_quick(tmp_path):
  import json
  from tokenlab import repro
  from tokenlab.repro import tokenization_theory as tt
  report = repro.run("tokenization_theory", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED and report.seeds == [0]
  assert os.path.exists(tmp_path / "repro.md") and os.path.exists(tmp_path / "bits_per_char.png")
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in tt.CHECKS}
  assert set(data["baselines"]) == set(tt.BASELINES)
  values = {(r[0], r[1]): r[2] for r in report.rows}
  assert math.isclose(values[("source", "entropy rate H (exact)")], 0.7219280948873623)
  # The count baselines are measured (about 1 bit/char on this source: x_n depends on x_{n-4}).
  for arm in ("unigram chars (counts)", "bigram chars (counts)"):
    assert 0.9 < values[(arm, "bits/char")] < 1.1, (arm, values[(arm, "bits/char")])
  # The check on the one arm a quick run trains (BPE-16) is measured; the others say what is
  # missing.
  measured = {c["name"] for c in data["checks"] if "not measured" not in c["detail"]}
  assert measured == {"bpe16_beats_bigram_counts"}, data["checks"]
