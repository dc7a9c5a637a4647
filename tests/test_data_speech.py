"""The `speech` dataset (espeak-ng, built offline) and the mel spectrogram of tokenlab.nn.audio."""

import jax
import numpy as np
import pytest

from tokenlab import data
from tokenlab.data import espeak, sources, speech
from tokenlab.errors import ConfigError
from tokenlab.nn import audio

# A tiny corpus: 12 utterances, two voices x two variants, one speaker held out.
OPTS = {"num_train": 9, "num_validation": 3, "voices": "en-us,en-gb", "variants": "base,klatt",
        "validation_speaker": "en-gb+klatt"}


def _cfg(data_dir, **keys):
  cfg = data.default_data_config("speech")
  cfg.data_dir = str(data_dir)
  cfg.options.update(OPTS)
  cfg.update(keys)
  return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(data config, options, {split: records}) of the tiny corpus, built once."""
  cfg = _cfg(tmp_path_factory.mktemp("tfds_speech"))
  resolved = data.config.resolve(cfg)
  records = {}
  for split in ("train", "validation"):
    src = sources.data_source(resolved, split)
    records[split] = [src[i] for i in range(len(src))]
  return cfg, resolved["options"], records


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def test_alignments_fit_the_audio_and_every_word_has_phonemes(built):
  _, options, records = built
  assert [len(records[s]) for s in ("train", "validation")] == [9, 3]
  for rec in records["train"] + records["validation"]:
    wave = np.asarray(rec["waveform"])
    assert wave.dtype == np.int16 and len(wave) <= speech.max_samples(options)
    words = _text(rec["text"]).split(" ")
    assert [speech.WORDS[i] for i in rec["words"]] == words
    ps, pe = rec["phoneme_starts"], rec["phoneme_ends"]
    assert 0 <= ps[0] and pe[-1] <= len(wave) and (ps <= pe).all()
    assert (pe[:-1] <= ps[1:]).all()  # Phonemes in order, never overlapping.
    # An empty phoneme is one espeak-ng speaks inside the previous one of the same word.
    empty = np.nonzero(ps == pe)[0]
    assert len(empty) <= 2 and (empty > 0).all()
    assert (rec["phoneme_word"][empty] == rec["phoneme_word"][empty - 1]).all()
    # Every word owns >= 1 phoneme, in word order; the stored strings match the ids.
    assert (np.bincount(rec["phoneme_word"], minlength=len(words)) >= 1).all()
    assert (np.diff(rec["phoneme_word"]) >= 0).all()
    assert _text(rec["phonemes"]).split(" ") == [speech.PHONEMES[i] for i in rec["phoneme_ids"]]
    ws, we = rec["word_starts"], rec["word_ends"]
    assert len(ws) == len(words) and 0 <= ws[0] and we[-1] <= len(wave)
    assert (ws < we).all() and (we[:-1] <= ws[1:]).all()  # In order, non-overlapping.
    # The spans point at speech: espeak-ng's lead-in before the first phoneme is silent,
    # every word is loud (word RMS over 40 default records: min 0.014, median 0.084).
    x = wave.astype(np.float64) / 32768
    assert np.abs(x[:ps[0]]).max(initial=0) < 1e-3
    for s, e in zip(ws, we):
      assert np.sqrt(np.mean(x[s:e] ** 2)) > 0.005, (rec["text"], s, e)


def test_records_are_a_pure_function_of_seed_split_index(built):
  _, options, records = built
  # espeak-ng keeps state between utterances in one process and seeds its noise from the
  # clock; records must not care. A fresh espeak-ng server (another process, another
  # second), after other speakers ran, gives the stored record bit for bit.
  espeak.shutdown()
  speech.synthesize("seven three five", "en-gb+f3", 300, 0)
  stored = records["train"][4]
  again = speech.record(options, "train", int(stored["index"]))
  for key in ("waveform", "phoneme_ids", "phoneme_starts", "phoneme_ends", "word_starts"):
    np.testing.assert_array_equal(again[key], stored[key])
  a = speech.synthesize("the red ball is to the left", "en-us+f3", 175, 50)
  speech.synthesize("pick up the blue cup", "en-gb+klatt", 140, 65)
  b = speech.synthesize("the red ball is to the left", "en-us+f3", 175, 50)
  np.testing.assert_array_equal(a["waveform"], b["waveform"])
  np.testing.assert_array_equal(a["phoneme_starts"], b["phoneme_starts"])
  # Rate is a real control: the same sentence at 140 wpm is longer than at 210.
  slow = speech.synthesize("the red ball is to the left", "en-us", 140, 50)
  fast = speech.synthesize("the red ball is to the left", "en-us", 210, 50)
  assert len(slow["waveform"]) > 1.2 * len(fast["waveform"])


def test_validation_sentences_and_speaker_are_held_out(built):
  _, options, records = built
  train = {speech.utterance(options, "train", i)["text"] for i in range(400)}
  val_utts = [speech.utterance(options, "validation", i) for i in range(100)]
  assert not train & {u["text"] for u in val_utts}
  assert not {_text(r["text"]) for r in records["train"]} & {
      _text(r["text"]) for r in records["validation"]}
  held = speech.speakers(options).index("en-gb+klatt")
  assert {u["speaker"] for u in val_utts} == {held}
  assert held not in {speech.utterance(options, "train", i)["speaker"] for i in range(400)}
  assert len({speech.utterance(options, "train", i)["template"] for i in range(400)}) == 4


def _independent_log_mel(x, sr, n_fft, hop, n_mels, scale):
  """A numpy STFT frame by frame and a filterbank written out per filter and bin from the
  mel formulas (float64)."""
  padded = np.pad(x, n_fft // 2)  # Centred frames, zero padding.
  window = np.hanning(n_fft + 1)[:-1]  # The periodic Hann window.
  frames = [padded[t:t + n_fft] * window for t in range(0, len(padded) - n_fft + 1, hop)]
  power = np.abs(np.fft.rfft(np.array(frames), axis=1)).T ** 2
  if scale == "htk":
    to_mel = lambda f: 2595 * np.log10(1 + f / 700)
    to_hz = lambda m: 700 * (10 ** (m / 2595) - 1)
  else:  # Slaney: 3 mel per 200 Hz up to 1 kHz, then 27 mel per factor 6.4.
    to_mel = lambda f: 3 * f / 200 if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)
    to_hz = lambda m: 200 * m / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)
  edges = [to_hz(m) for m in np.linspace(0, to_mel(sr / 2), n_mels + 2)]
  fb = np.zeros((n_fft // 2 + 1, n_mels))
  for m in range(n_mels):
    lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
    for k in range(n_fft // 2 + 1):
      f = k * sr / n_fft
      if lo < f <= mid:
        fb[k, m] = (f - lo) / (mid - lo)
      elif mid < f < hi:
        fb[k, m] = (hi - f) / (hi - mid)
    fb[:, m] *= 2 / (hi - lo)
  return np.log(np.maximum(power.T @ fb, 1e-5))


def test_resample_keeps_the_band_below_8_khz_and_removes_the_rest():
  t = np.arange(11025) / 22050  # 0.5 s at espeak-ng's rate.
  for hz, want_rms in ((440, 0.7071), (5000, 0.7071), (9000, 0.0)):
    y = speech.resample(np.sin(2 * np.pi * hz * t), 22050, 16000)
    assert y.shape == (8000,)
    inner = slice(100, -100)  # Away from the zero padding at the ends.
    if want_rms:
      want = np.sin(2 * np.pi * hz * np.arange(8000) / 16000)
      assert np.abs(y - want)[inner].max() < 1e-4
    assert abs(np.sqrt(np.mean(y[inner] ** 2)) - want_rms) < 1e-3  # 9 kHz: above 8 kHz


# Jitted: one compile per scale is cheaper than the first eager call's per-op compiles.
_log_mel = jax.jit(audio.log_mel_spectrogram, static_argnames=("n_mels", "scale"))


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_log_mel_matches_an_independent_formula(built, scale):
  _, _, records = built
  x = np.asarray(records["train"][0]["waveform"], np.float64)[:8000] / 32768
  got = np.asarray(_log_mel(x, n_mels=40, scale=scale))
  want = _independent_log_mel(x, 16000, 400, 160, 40, scale)
  assert got.shape == want.shape == (audio.num_frames(8000), 40)
  loud = want > -6  # Relative error of power is what float32 keeps; compare where audible.
  np.testing.assert_allclose(got[loud], want[loud], atol=2e-3)
  np.testing.assert_allclose(got, want, atol=0.05)
  # A 1 kHz tone: every frame peaks in the filter whose centre is nearest to 1 kHz.
  t = np.arange(8000) / 16000  # The shape of x: one compile per scale.
  tone = np.asarray(_log_mel(np.sin(2 * np.pi * 1000 * t), n_mels=40, scale=scale))
  centres = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(8000, scale), 42), scale)[1:-1]
  assert (tone[3:-3].argmax(-1) == np.abs(centres - 1000).argmin()).all()


def test_pipeline_batch_shapes_padding_and_mel(built):
  cfg, options, records = built
  cfg = _cfg(cfg.data_dir, mel_bins=40)
  it = data.make_iterator(cfg, split="validation", batch_size=4, seed=0, shuffle=False,
                          num_epochs=1)
  batch = next(it)
  spec = data.batch_spec(cfg, 4)
  assert set(batch) == set(spec)
  for key, value in batch.items():
    assert value.shape == spec[key].shape and value.dtype == spec[key].dtype, key
  s = speech.max_samples(options)
  assert batch["waveform"].shape == (4, s) and batch["mel"].shape[:2] == (4, s // 160 + 1)
  assert batch["words"].shape == (4, speech.MAX_WORDS)
  assert batch["phonemes"].shape == (4, speech.MAX_PHONEMES)
  np.testing.assert_array_equal(batch["mask"], [1, 1, 1, 0])  # 3 records + 1 padding row.
  for row, rec in enumerate(records["validation"]):
    n, n_w, n_p = len(rec["waveform"]), len(rec["words"]), len(rec["phoneme_ids"])
    assert batch["lengths"][row] == n and not batch["waveform"][row, n:].any()
    np.testing.assert_allclose(batch["waveform"][row, :n], rec["waveform"] / 32768)
    np.testing.assert_array_equal(batch["word_mask"][row], np.arange(speech.MAX_WORDS) < n_w)
    np.testing.assert_array_equal(batch["phonemes"][row, :n_p], rec["phoneme_ids"])
    assert not batch["phonemes"][row, n_p:].any() and batch["phoneme_mask"][row].sum() == n_p
    assert batch["mel_lengths"][row] == -(-n // 160)
  assert not batch["lengths"][3] and not batch["word_mask"][3].any()


def test_collect_split_keeps_real_rows_in_order_with_one_batch_shape(built):
  cfg, _, records = built
  shapes = []

  def rows(batch):
    shapes.append(batch["lengths"].shape)
    return {"lengths": batch["lengths"], "twice": 2 * batch["lengths"]}

  # 3 validation records in batches of 2: the second batch has one padding row, dropped.
  out = data.collect_split(cfg, "validation", rows, batch_size=2)
  want = [len(rec["waveform"]) for rec in records["validation"]]
  np.testing.assert_array_equal(out["lengths"], want)
  np.testing.assert_array_equal(out["twice"], 2 * np.array(want))
  assert shapes == [(2,), (2,)]                       # fn always sees whole batches
  whole = data.collect_split(cfg, "validation", batch_size=2)   # no fn: the batch's fields
  np.testing.assert_array_equal(whole["lengths"], want)
  assert len(whole["mask"]) == 3 and whole["mask"].all()


@pytest.mark.parametrize("keys, match", [
    ({"options": {"voices": "en-us,de"}}, "English espeak-ng voices"),
    ({"options": {"variants": "base,robot9"}}, "not an espeak-ng variant"),
    ({"options": {"rates": "175,999"}}, "80..450"),
    ({"options": {"validation_speaker": "en-us+m3"}}, "not one of the speakers"),
    ({"mel_bins": 4}, "8..256"),
])
def test_bad_options_give_one_clear_config_error(keys, match):
  cfg = {"name": "speech", **keys}
  with pytest.raises(ConfigError, match=match):
    data.validate_data_config(cfg)
  with pytest.raises(ConfigError, match="audio datasets"):
    data.validate_data_config({"name": "markov", "mel_bins": 40})
