"""DualSpeechLM (tokenlab/methods/dualspeechlm.py): the USTokenizer's losses, the dual LM's
layouts (understanding rows, generation rows with the USToken before the acoustic tokens of
the same frame), its cached decoders, and the quick reproduction."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.method import random_params
from tokenlab.methods import dualspeechlm as dsl
from tokenlab.methods.dualspeechlm import DualSpeechLM, DualSpeechLMConfig, DualCodecLM

B, N, F, W = 3, 6, 12, 8


def _lm(speech_input="ustokens", **kw) -> DualSpeechLM:
  return DualSpeechLM(DualSpeechLMConfig(stage="lm", speech_input=speech_input, d_model=16,
                                         num_layers=1, num_heads=2, codec_codebook=8,
                                         codec_levels=2, us_codebook=5, **kw))


def _batch(seed=0) -> dict:
  r = np.random.default_rng(seed)
  return {"features": r.normal(size=(B, N, F)).astype(np.float32),
          "codes": r.integers(0, 8, (B, N, 2)).astype(np.int32),
          "us_codes": r.integers(0, 5, (B, N)).astype(np.int32),
          "num_tokens": np.array([6, 4, 2], np.int32),
          "words": np.array([[3, 4, 5, 0, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12, 13, 14],
                             [20, 21, 0, 0, 0, 0, 0, 0]], np.int32),
          "num_words": np.array([3, 8, 2], np.int32), "mask": np.ones(B, np.float32)}


@pytest.fixture(scope="module")
def dual():
  """A random dual LM (one init for every test that needs one)."""
  m = _lm()
  return m, random_params(m, _batch(), scale=0.3)   # shapes by eval_shape: nothing compiled


@pytest.fixture(scope="module")
def understand(dual):
  """The understanding forward (speech, text) -> text logits, compiled once."""
  m, params = dual
  return jax.jit(lambda s, t: m.module().apply({"params": params}, s, t,
                                               method=DualCodecLM.understand))


def test_text_targets_and_prompts():
  words, n = jnp.asarray(_batch()["words"]), jnp.asarray(_batch()["num_words"])
  t, mask = dsl.text_targets(words, n)
  np.testing.assert_array_equal(t[0, :5], [3, 4, 5, dsl.EOS, 0])
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0, 0, 0, 0])
  assert t[1, 8] == dsl.EOS and mask[1].sum() == 9
  p = dsl.tts_prefix(words, n)
  # Left-aligned [TTS, words, SEP]: every row's speech starts right after its SEP.
  np.testing.assert_array_equal(p[0], [0, 0, 0, 0, 0, dsl.TTS, 3, 4, 5, dsl.SEP])
  np.testing.assert_array_equal(p[1], [dsl.TTS, 7, 8, 9, 10, 11, 12, 13, 14, dsl.SEP])
  ends = dsl.frame_levels(jnp.zeros((1, 4, 2), jnp.int32), jnp.array([2]), (5, 8))
  np.testing.assert_array_equal(ends[0], [[0, 0], [0, 0], [5, 8], [5, 8]])


def test_tokenizer_loss_is_the_weighted_sum_and_the_text_loss_reaches_the_encoder():
  """loss = commit_weight x commitment + recon_weight x feature MSE + text_weight x text NLL
  (so text_weight 0 is the reconstruction-only VQ), and the text loss's gradient reaches the
  adapter through the straight-through VQ: it shapes which token a frame gets."""
  batch = _batch()
  m = DualSpeechLM(DualSpeechLMConfig(stage="tokenizer", us_codebook=4, us_latent=4,
                                      us_width=8, d_model=16, num_heads=2, text_weight=5.0,
                                      recon_weight=45.0, commit_weight=1.0))
  v = random_params(m, batch, scale=0.3)
  state = {dsl.STATS: v[dsl.STATS]}

  def text_nll(p):
    loss, metrics, _ = m.loss(p, batch, jax.random.key(1), state)
    return metrics["text_nll"].value(), (loss, metrics)

  g, (loss, metrics) = jax.jit(jax.grad(text_nll, has_aux=True))(v["params"])
  expected = (metrics["commit"] + 45.0 * metrics["feature_mse"].value()
              + 5.0 * metrics["text_nll"].value())
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  norm = lambda t: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(t)))
  assert norm(g["adapter_in"]) > 1e-4 and norm(g["adapter_out"]) > 1e-4
  assert norm(g["dec_in"]) == 0.0                     # the feature decoder is not on its path


def test_generation_predicts_a_frames_ustoken_before_its_acoustic_tokens(dual):
  """Chain of condition in the delay layout: acoustic level 0 of frame t (delayed step t + 1)
  sees the USToken of frame t; nothing at steps <= t does."""
  m, params = dual
  batch = _batch()
  frames = m._frames({k: jnp.asarray(v) for k, v in batch.items()})
  t = 2

  def logits(fr):
    inputs, _ = dsl.delay_lm_inputs(fr, m.frame_sizes)
    prefix = dsl.tts_prefix(jnp.asarray(batch["words"]), jnp.asarray(batch["num_words"]))
    return m.module().apply({"params": params}, prefix, inputs)[0]

  logits = jax.jit(logits)
  a = logits(frames)
  b = logits(frames.at[0, t, 0].set((frames[0, t, 0] + 1) % 5))   # another USToken at frame t
  np.testing.assert_array_equal(a[0, :t + 1], b[0, :t + 1])     # steps <= t: unchanged
  assert not np.allclose(a[0, t + 1, 1], b[0, t + 1, 1])         # acoustic 0 of frame t moved
  np.testing.assert_array_equal(a[1:], b[1:])


def test_understanding_is_causal_in_the_words_and_reads_the_speech(dual, understand):
  m, _ = dual
  x = m._lm_inputs({k: jnp.asarray(v) for k, v in _batch().items()})
  f = understand
  a = f(x["speech"], x["text"])
  b = f(x["speech"], x["text"].at[:, 3].set(9))                 # a later word changed
  np.testing.assert_array_equal(a[:, :3], b[:, :3])
  c = f(x["speech"].at[:, 0].set((x["speech"][:, 0] + 1) % 5), x["text"])
  assert not np.allclose(a[:, 0], c[:, 0])


def test_cached_greedy_transcription_is_a_fixed_point_of_the_full_forward(dual, understand):
  """The cached decoder (prefill [ASR, speech, SEP], then one word per step) writes what the
  full forward's argmax gives when fed its own output."""
  m, params = dual
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  out = jax.jit(m.transcribe)(params, batch)
  assert out.shape == (B, W + 1)
  x = m._lm_inputs(batch)
  text = jnp.concatenate([x["text"][:, :1], out[:, :-1]], 1)
  full = understand(x["speech"], text)
  np.testing.assert_array_equal(jnp.argmax(full, -1), out)


def test_padding_rows_and_frames_past_the_end_change_nothing(dual):
  """A row of batch mask 0 counts nothing; a code past num_tokens is replaced by the end id
  before the LM sees it (input or target)."""
  m, params = dual
  base = _batch()
  other = dict(base, mask=np.array([1, 1, 0], np.float32))
  changed = dict(other, words=base["words"].copy(), codes=base["codes"].copy())
  changed["words"][2] = 30
  changed["codes"][1, 5] = 3                                    # past row 1's 4 tokens
  changed["us_codes"] = base["us_codes"].copy()
  changed["us_codes"][1, 4:] = 0
  loss = jax.jit(lambda p, b: m.loss(p, b, jax.random.key(0))[0])
  l1, l2 = loss(params, other), loss(params, changed)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)


def test_generated_frames_are_cut_at_the_first_end_and_wer_counts_edits(dual):
  m, _ = dual
  fake = jnp.array([[[1, 2, 3], [1, 8, 3], [1, 4, 8]]])   # acoustic level 0 ends at frame 1
  codes, lengths = m.acoustic(fake)
  np.testing.assert_array_equal(lengths, [1])
  np.testing.assert_array_equal(codes[0], [[2, 3], [0, 3], [4, 0]])
  assert dsl.word_error_rate(np.array([[1, 2, 3]]), np.array([3]), [[1, 3]]) == 1 / 3


def test_config_errors_name_the_fix():
  from tokenlab.errors import ConfigError
  with pytest.raises(ConfigError, match="speech_input"):
    _lm(speech_input="mel")
  with pytest.raises(ConfigError, match="us_codes"):
    _lm().init(jax.random.key(0), {k: v for k, v in _batch().items() if k != "us_codes"})


def test_repro_quick(tmp_path, tiny_speech_pieces, capsys):
  from tokenlab import cli, repro
  from tokenlab.evals.audio import read_wav
  tiny_speech_pieces(tmp_path)
  result = repro.run("dualspeechlm", workdir=str(tmp_path), quick=True)
  values = {(a, m): v for a, m, v, _, _ in result.rows}
  assert 0.0 <= values[(repro.dualspeechlm.DUAL, "WER")]
  assert values[(repro.dualspeechlm.DUAL, "PER")] > 0.0
  assert result.verdict == repro.NOT_ASSESSED
  assert (tmp_path / "repro.md").exists() and (tmp_path / "dualspeechlm.png").exists()
  # `tokenlab sample` on the quick run's dual LM: generated speech as WAV files.
  out = tmp_path / "listen"
  capsys.readouterr()
  assert cli.main(["sample", "--workdir", str(tmp_path / "seed0" / "dual"), "--num", "2",
                   "--out", str(out)]) == 0
  assert sorted(os.listdir(out)) == ["mels.png", "sample_0.wav", "sample_1.wav"]
  wave, rate = read_wav(str(out / "sample_0.wav"))
  assert rate == 16_000 and np.isfinite(wave).all()
  assert capsys.readouterr().out.count("wrote ") == 3   # each WAV (with its sentence), the PNG
