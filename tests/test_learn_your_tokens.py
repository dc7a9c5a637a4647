"""Learn Your Tokens: word segmentation, per-word pooling, causality, byte sampler."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.learn_your_tokens import (LearnYourTokens, LearnYourTokensConfig,
                                                 segment_words)

CFG = LearnYourTokensConfig(d_model=16, num_heads=2, encoder_layers=1, main_layers=1,
                            decoder_layers=1, max_word_len=6, max_words=0.5)
TEXT = b"def foo(x):\n    return abcdefghij + x\n"


def _tokens(text=TEXT, n=40):
  row = np.frombuffer(text.ljust(n)[:n], np.uint8).astype(np.int32)
  return jnp.asarray(np.stack([row, row[::-1]]))


@pytest.fixture(scope="module")
def model():
  m = LearnYourTokens(CFG)
  return m, jax.jit(m.init)(jax.random.key(0), {"inputs": _tokens()})  # one program, not op by op


def test_words_are_whitespace_delimited_and_cut_at_max_len():
  tokens = _tokens()
  wid, pos = segment_words(tokens, None, CFG.max_word_len)
  row = bytes(np.asarray(tokens[0], np.uint8))
  words = [bytes(row[i] for i in np.nonzero(np.asarray(wid[0]) == w)[0])
           for w in range(int(wid[0].max()) + 1)]
  assert words[:6] == [b"def ", b"foo(x)", b":\n    ", b"return", b" ", b"abcdef"]
  assert b"".join(words) == row
  assert int(pos.max()) == CFG.max_word_len - 1
  seg = jnp.asarray(np.r_[np.ones(20), 2 * np.ones(20)][None].astype(np.int32))
  wid2, pos2 = segment_words(tokens[:1], seg, CFG.max_word_len)
  assert int(pos2[0, 20]) == 0 and wid2[0, 20] != wid2[0, 19]   # documents cut words


def test_word_vector_depends_only_on_its_own_characters(model):
  m, params = model
  tokens = _tokens()
  _, _, chars, _, _ = m.words(tokens)
  enc = lambda c: m.module.apply({"params": params}, c, method=m.module.encode_words)
  v = enc(chars)
  # The paper's check by perturbation: change word 1's characters, only v_1 moves.
  changed = chars.at[0, 1, :3].set(jnp.array([ord("z"), ord("q"), ord("k")]))
  v2 = enc(changed)
  np.testing.assert_allclose(np.delete(np.asarray(v2[0]), 1, 0),
                             np.delete(np.asarray(v[0]), 1, 0), atol=1e-6)
  assert float(jnp.abs(v2[0, 1] - v[0, 1]).max()) > 1e-4


def test_next_word_prediction_sees_only_earlier_words(model):
  m, params = model
  tokens = _tokens()
  logits, chars, lengths, _, wid = m.word_logits(params, tokens)
  later = tokens.at[0, 30:].set(ord("Q"))                   # rewrite bytes of later words
  logits2, _, _, _, wid2 = m.word_logits(params, later)
  i = int(wid[0, 30])
  np.testing.assert_allclose(logits[0, :i], logits2[0, :i], atol=1e-5)
  targets, mask = m.word_targets(chars, lengths)
  assert int(targets[0, 0, int(lengths[0, 0])]) == 256      # EOW after the last character
  assert float(mask.sum()) == float(lengths.sum() + (lengths > 0).sum())


def test_loss_metrics_and_byte_distribution(model):
  m, params = model
  tokens = _tokens()
  batch = {"inputs": tokens, "segment_ids": jnp.ones_like(tokens)}
  loss, metrics = m.loss(params, batch, None)
  assert abs(float(loss) - np.log(257)) < 1.0
  np.testing.assert_allclose(float(metrics["bytes_per_word"].total), 80)   # every byte
  assert float(metrics["word_overflow"].value()) == 0
  lp = m.byte_logprobs(params, tokens, jnp.array([25, 40]))
  chex.assert_shape(lp, (2, 40, 256))
  np.testing.assert_allclose(jax.scipy.special.logsumexp(lp[:, :24], -1), 0, atol=1e-4)
  # Bytes after valid_len do not change the distribution before it.
  lp2 = m.byte_logprobs(params, tokens.at[:, 25:].set(ord("x")), jnp.array([25, 40]))
  np.testing.assert_allclose(lp[0, :25], lp2[0, :25], atol=1e-5)


def test_greedy_sampling_keeps_the_prompt_and_follows_the_byte_distribution(model):
  m, params = model
  buf = _tokens()[:, :16]
  t = 5

  def sample_and_score(p, b, r):   # one compiled program: the sampler and the byte law
    out = m.sample(p, b, jnp.array([5, 8]), r, temperature=0.0)
    return out, m.byte_logprobs(p, out, jnp.array([t, t]))

  out, lp = jax.jit(sample_and_score)(params, buf, jax.random.key(0))
  chex.assert_shape(out, (2, 16))
  np.testing.assert_array_equal(out[0, :5], buf[0, :5])
  np.testing.assert_array_equal(out[1, :8], buf[1, :8])
  assert int(out[0, t]) == int(jnp.argmax(lp[0, t - 1]))


def test_repro_quick(tmp_path):
  import json
  from tokenlab import repro
  from tokenlab.repro import learn_your_tokens as lyt
  report = repro.run("learn_your_tokens", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED and report.seeds == [0]
  assert (tmp_path / "repro.md").exists() and (tmp_path / "lyt_exact_match.png").exists()
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in lyt.CHECKS}
  values = {(r[0], r[1]): r[2] for r in report.rows}
  assert values[("all", "words scored")] > 0
  # Every arm is scored on the same words; bits/byte of an exact byte law: positive, finite,
  # and uniform is 8 bits/byte.
  for arm in ("lyt", "byte", "bpe", "byte n-gram (counts)"):
    assert 0.0 < values[(arm, "word bits/byte, all")] < 20.0, arm
    assert 0.0 <= values[(arm, "next-word exact match, all")] <= 1.0, arm
  assert abs(values[("uniform", "word bits/byte, all")] - 8.0) < 1e-9
