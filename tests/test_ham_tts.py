"""HAM-TTS (tokenlab/methods/ham_tts.py): the frame streams (END from the last frame on), the
prefixes ([text] left-aligned; [text; units] with the units past the phoneme ids), the loss
(only real frames and the first END count; masked rows count nothing), the units reach the
stage-2 LM and only with condition='units', synthesis through both stages (END-closed
streams, the oracle's units used as given), the unigram baseline, `tokenlab sample` WAVs and
the quick reproduction."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.config import load_config
from tokenlab.method import random_params
from tokenlab.methods import ham_tts
from tokenlab.registry import build_method

_T, _L = 8, 12             # tiny max_text, max_frames for the unit tests
_K_UNITS, _CODES, _LEVELS = 5, 6, 2


def _method(stage: str, condition: str = "units") -> ham_tts.HamTTS:
  c = load_config(f"experiments/ham_tts.py:size=tiny,stage={stage},condition={condition},"
                  f"units={_K_UNITS},codebook={_CODES},levels={_LEVELS}")
  c.model.max_text, c.model.max_frames = _T, _L
  return build_method(c.model)


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Three utterances of 3, 6 and 9 real frames (END after), 2-6 phonemes."""
  rng = np.random.default_rng(seed)
  frames = np.array([3, 6, 9], np.int32)
  units, codes = ham_tts.frame_streams(
      rng.integers(0, _K_UNITS, (3, _L)), rng.integers(0, _CODES, (3, _L, _LEVELS)), frames,
      _L, _K_UNITS, _CODES)
  phonemes = np.zeros((3, _T), np.int32)
  for i, n in enumerate((2, 4, 6)):
    phonemes[i, :n] = rng.integers(1, ham_tts.NUM_PHONEME_IDS, n)
  return {"phonemes": phonemes, "units": units, "codes": codes, "frames": frames,
          "mask": np.ones(3, np.float32)}


@pytest.fixture(scope="module")
def models():
  """Both stages and both stage-2 conditions with random parameters (shapes from an abstract
  init: nothing compiled)."""
  return {name: (m, random_params(m, _batch(), seed=1, scale=0.5))
          for name, m in (("units", _method("units")), ("tts", _method("tts", "units")),
                          ("text", _method("tts", "text")))}


def test_frame_streams_put_end_from_the_last_frame_on():
  units = np.arange(20).reshape(2, 10) % _K_UNITS
  codes = np.stack([units, units + 1], -1) % _CODES
  u, c = ham_tts.frame_streams(units, codes, np.array([4, 7]), 9, _K_UNITS, _CODES)
  assert u.shape == (2, 9) and c.shape == (2, 9, 2)
  np.testing.assert_array_equal(u[0, :4], units[0, :4])
  assert np.all(u[0, 4:] == _K_UNITS) and np.all(c[0, 4:] == _CODES)
  np.testing.assert_array_equal(c[1, :7], codes[1, :7])
  assert np.all(u[1, 7:] == _K_UNITS) and np.all(c[1, 7:] == _CODES)
  np.testing.assert_array_equal(ham_tts.stream_lengths(jnp.asarray(u), _K_UNITS), [4, 7])
  with pytest.raises(Exception, match="max_frames"):   # no room for END
    ham_tts.frame_streams(units, codes, np.array([4, 9]), 9, _K_UNITS, _CODES)


def test_close_stream_ends_every_row_at_its_first_end():
  s = jnp.array([[1, 2, 5, 3, 5, 1], [0, 1, 2, 3, 4, 0]])
  np.testing.assert_array_equal(ham_tts.close_stream(s, 5),
                                [[1, 2, 5, 5, 5, 5], [0, 1, 2, 3, 4, 0]])
  np.testing.assert_array_equal(ham_tts.stream_lengths(s, 5), [2, 6])


def test_prefix_left_aligns_the_text_and_the_unit_column_is_frame_aligned(models):
  b = _batch()
  tts, text = models["tts"][0], models["text"][0]
  prefix = np.asarray(tts.prefix(b["phonemes"]))
  assert prefix.shape == (3, _T)
  for i, n in enumerate((2, 4, 6)):     # every row's text ends right before the speech
    np.testing.assert_array_equal(prefix[i, _T - n:], b["phonemes"][i, :n])
    assert np.all(prefix[i, :_T - n] == 0)
  # The known column: step s carries frame s's unit, END on the K - 1 steps past the frames.
  col = np.asarray(tts.given(b["units"], 3))
  assert col.shape == (3, _L + _LEVELS - 1, 1)
  np.testing.assert_array_equal(col[:, :_L, 0], b["units"])
  assert np.all(col[:, _L:] == _K_UNITS)
  # Without units: the same column, held at END (same parameters and FLOPs, no information).
  assert np.all(np.asarray(text.given(b["units"], 3)) == _K_UNITS)
  assert models["units"][0].given(b["units"], 3) is None        # stage 1 reads the text only
  same = jax.tree.map(lambda a, c: a.shape == c.shape, models["tts"][1], models["text"][1])
  assert all(jax.tree.leaves(same))


def test_a_frames_unit_is_seen_from_the_step_that_predicts_it(models):
  # Changing the unit of frame 4 moves the logits from step 4 on (where level 0 of frame 4
  # is predicted) and never before: the units are a causal, frame-aligned condition.
  tts, params = models["tts"]
  b = _batch()
  other = {**b, "units": b["units"].copy()}
  other["units"][2, 4] = (other["units"][2, 4] + 1) % _K_UNITS
  logits = jax.jit(tts.logits)
  d = np.abs(np.asarray(logits(params, b) - logits(params, other)))[2].max(axis=(1, 2))
  assert np.all(d[:4] == 0) and d[4] > 1e-6


def test_loss_counts_real_frames_and_the_first_end_only(models):
  tts, params = models["tts"]
  loss = jax.jit(lambda p, b: tts.loss(p, b, jax.random.key(0)))
  b = _batch()
  base, metrics = loss(params, b)
  # Targets: (frames + 1) x levels codes per row.
  assert float(metrics["loss"].count) == (4 + 7 + 10) * _LEVELS
  after = {**b, "codes": b["codes"].copy()}
  after["codes"][0, 5:] = 1           # row 0: frames past its first END (frame 3)
  np.testing.assert_allclose(loss(params, after)[0], base, rtol=1e-6)
  real = {**b, "codes": b["codes"].copy()}
  real["codes"][0, 1] = (real["codes"][0, 1] + 1) % _CODES
  assert abs(float(loss(params, real)[0]) - float(base)) > 1e-6
  masked = {**b, "mask": np.array([1, 1, 0], np.float32)}
  assert float(loss(params, masked)[1]["loss"].count) == (4 + 7) * _LEVELS


def test_units_reach_the_codec_lm_only_with_condition_units(models):
  b = _batch()
  other = {**b, "units": np.where(b["units"] < _K_UNITS, (b["units"] + 1) % _K_UNITS,
                                  b["units"])}
  for name, changes in (("tts", True), ("text", False)):
    m, params = models[name]
    logits = jax.jit(m.logits)
    diff = float(jnp.max(jnp.abs(logits(params, b) - logits(params, other))))
    assert (diff > 1e-5) == changes, (name, diff)


def test_synthesis_closes_the_streams_and_uses_oracle_units(models):
  (units_lm, up), (tts, tp) = models["units"], models["tts"]
  b = _batch()
  synth = jax.jit(lambda r, u: ham_tts.synthesize(units_lm, up, tts, tp, b["phonemes"], r, u))
  codes, frames, units = jax.device_get(synth(jax.random.key(3), None))
  assert codes.shape == (3, _L, _LEVELS) and units.shape == (3, _L)
  for s, n, end in ((codes[..., 0], frames, _CODES),
                    (units, ham_tts.stream_lengths(units, _K_UNITS), _K_UNITS)):
    for row, length in zip(s, np.asarray(n)):
      assert np.all(row[length:] == end) and np.all(row[:length] < end)
  # The oracle: the given units are what stage 2 reads (closed at their END).
  _, _, used = jax.device_get(synth(jax.random.key(3), b["units"]))
  np.testing.assert_array_equal(used, b["units"])


def test_unigram_nll_matches_add_one_counts():
  from tokenlab.repro.ham_tts import unigram_nll
  train = np.array([[[0], [0], [1], [2], [2]]])   # frames 3: counts 0,0,1,2 (END=2 first)
  valid = np.array([[[1], [2], [0]]])
  nll = unigram_nll(train, np.array([3]), valid, np.array([1]), 3)
  p = (np.array([2, 1, 1]) + 1.0) / 7.0
  np.testing.assert_allclose(nll, -(np.log(p[1]) + np.log(p[2])) / 2, rtol=1e-6)


def test_config_errors_name_the_fix():
  from tokenlab.errors import ConfigError
  c = load_config("experiments/ham_tts.py:size=tiny")
  c.model.stage = "duration"
  with pytest.raises(ConfigError, match="stage"):
    build_method(c.model)
  m = _method("tts")
  with pytest.raises(ConfigError, match="iterator_fns"):
    m.init(jax.random.key(0), {"phonemes": np.zeros((1, _T), np.int32)})


def test_repro_quick(tmp_path, tiny_speech_pieces):
  from tokenlab import repro
  from tokenlab.repro.ham_tts import HAM, PER
  tiny_speech_pieces(tmp_path, units=8)
  result = repro.run("ham_tts", workdir=str(tmp_path), quick=True)
  assert result.verdict == repro.NOT_ASSESSED
  values = {(a, m): v for a, m, v, _, _ in result.rows}
  assert np.isfinite(values[(HAM, PER)])
  assert os.path.exists(tmp_path / "repro.md") and os.path.exists(tmp_path / "ham_tts_mels.png")
  # `tokenlab sample` on the stage-2 arm: units from its stage 1, codes, WAV files.
  from tokenlab import cli
  out = tmp_path / "wav"
  assert cli.main(["sample", "--workdir", str(tmp_path / "seed0" / "tts_units"), "--num", "2",
                   "--out", str(out)]) == 0
  from tokenlab.evals.audio import read_wav
  for n in range(2):
    wave, rate = read_wav(str(out / f"sample_{n}.wav"))
    assert rate == 16_000 and np.isfinite(wave).all()
  assert os.path.exists(out / "mels.png")
