"""Audio-token metrics (tokenlab/evals/audio.py) and the CTC phoneme recogniser (issue 19)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenlab.evals import audio, audio_report
from tokenlab.methods.phoneme_recognizer import (PhonemeRecognizer, PhonemeRecognizerConfig,
                                                 normalise)


def test_bitrate_is_frame_rate_times_sum_of_log2_codebook_sizes():
  assert audio.bitrate(50, [1024] * 4) == pytest.approx(2000.0)
  assert audio.bitrate(25, [256, 16]) == pytest.approx(25 * (8 + 4))
  assert audio.bitrate(100, [1000]) == pytest.approx(100 * math.log2(1000))  # FSQ 10x10x10


def test_codebook_usage_and_perplexity_count_only_real_frames():
  k = 8
  uniform = np.tile(np.arange(k), 4)[None, :, None]            # every code equally often
  stats = audio.codebook_stats(uniform, [k])
  assert stats["usage"] == pytest.approx(1.0) and stats["perplexity"] == pytest.approx(k)
  # Codebook 0 uses one code; codebook 1 (size 4) two codes equally; padding frames (past
  # the lengths) hold other codes that must not count.
  codes = np.zeros((2, 6, 2), np.int32)
  codes[:, :4, 1] = [0, 1, 0, 1]
  codes[:, 4:] = [5, 3]
  stats = audio.codebook_stats(codes, [8, 4], lengths=np.array([4, 4]))
  assert stats["usage"] == pytest.approx((1 / 8 + 2 / 4) / 2)
  assert stats["perplexity"] == pytest.approx((1 + 2) / 2)


def test_si_snr_itself_scaled_and_noise():
  rng = np.random.default_rng(0)
  t = np.arange(16000) / 16000
  x = np.stack([np.sin(2 * np.pi * 220 * t), rng.normal(size=16000)])
  assert (audio.si_snr(x, x) > 80).all()
  assert (audio.si_snr(x, -3.7 * x + 0.2) > 80).all()          # scaled and offset: the same
  noise = rng.normal(size=x.shape)
  noisy = x + 0.3 * noise                                      # ~10 dB for the unit noise row
  np.testing.assert_allclose(audio.si_snr(x, 5 * noisy), audio.si_snr(x, noisy), atol=1e-9)
  assert audio.si_snr(x[1], noisy[1]) == pytest.approx(10 * np.log10(1 / 0.09), abs=0.3)
  assert (audio.si_snr(x, noise) < -15).all()                  # independent noise
  assert abs(audio.si_snr(x[1], x[1] + noise[1])) < 0.5      # error as loud as signal: ~0 dB
  # Samples past the lengths are ignored: garbage there changes nothing.
  y = x.copy()
  y[:, 8000:] = rng.normal(size=(2, 8000)) * 100
  np.testing.assert_allclose(audio.si_snr(x, y, lengths=np.array([8000, 8000])),
                             audio.si_snr(x[:, :8000], x[:, :8000]), atol=1e-6)


def test_mel_l1_ignores_padding_frames():
  mel = np.zeros((2, 5, 3))
  recon = np.full((2, 5, 3), 9.0)
  recon[:, :2] = 0.5
  assert audio.mel_l1(mel, recon, np.array([2, 2])) == pytest.approx(0.5)


def test_frame_labels_a_frame_inside_phoneme_p_gets_p():
  # Phonemes 7 in [320, 800) and 9 in [800, 1000), a zero-length 4 at 1000, then silence.
  ph, st, en = np.array([[7, 9, 4, 0]]), np.array([[320, 800, 1000, 0]]), \
      np.array([[800, 1000, 1000, 0]])
  labels = audio.frame_labels(ph, st, en, num_frames=8)        # centres 0, 160, ..., 1120
  assert labels.tolist() == [[0, 0, 7, 7, 7, 9, 9, 0]]
  # Token frames pooling 2 mel frames: centres at 80, 400, 720, 1040.
  pooled = audio.frame_labels(ph, st, en, num_frames=4, hop=320, offset=80)
  assert pooled.tolist() == [[0, 7, 7, 0]]


def test_one_hot_code_features():
  codes = np.array([[[1, 0], [2, 3], [0, 0]]])                 # (B=1, T=3, K=2), sizes 3, 4
  feats = audio.code_features(codes, [3, 4])
  assert feats.shape == (1, 3, 7) and (feats.sum(-1) == 2).all()
  assert feats[0, 1].tolist() == [0, 0, 1, 0, 0, 0, 1]


def test_token_lm_perplexity_per_codebook_over_time():
  rng = np.random.default_rng(0)
  cyclic = np.tile(np.arange(8), 40)[None].repeat(4, 0)        # each code fixes the next
  lengths = np.full(4, cyclic.shape[1])
  low = audio.token_lm_perplexity(cyclic, lengths, cyclic, lengths, [8])
  assert low["perplexity"] < 1.5
  noise = lambda: rng.integers(0, 8, size=(4, 320))
  high = audio.token_lm_perplexity(noise(), lengths, noise(), lengths, [8])
  assert 7.0 < high["perplexity"] < 8.6                        # about the vocabulary
  assert high["bits_per_frame"] == pytest.approx(math.log2(high["perplexity"]))
  # Two codebooks (8 and 16 codes): the cyclic one costs ~0 bits, the noise one ~4; padding
  # frames past the lengths (code 15 everywhere) are never counted.
  both = np.stack([cyclic, rng.integers(0, 16, size=(4, 320))], -1)
  both[:, 300:] = 15
  two = audio.token_lm_perplexity(both, lengths - 20, both, lengths - 20, [8, 16])
  assert 3.5 < two["bits_per_frame"] < 4.7
  assert two["perplexity"] == pytest.approx(2 ** (two["bits_per_frame"] / 2))


def test_probes_read_labels_that_are_in_the_features_and_not_others():
  rng = np.random.default_rng(0)
  labels = rng.integers(1, 4, size=(20, 30))
  feats = np.eye(5, dtype=np.float32)[labels] + rng.normal(0, 0.1, size=(20, 30, 5))
  got = audio.phoneme_probe(feats[:12], labels[:12], feats[12:], labels[12:], max_train=200,
                            max_test=100)
  assert got["accuracy"] > 0.95   # constant features = majority: the report test's mean row
  # Speaker from the per-utterance mean: the speaker shifts every real frame's features.
  speaker = np.arange(20) % 2
  lengths = np.full(20, 10)
  utt = rng.normal(size=(20, 30, 3)) + speaker[:, None, None] * 2.0
  utt[:, 10:] = 50 * rng.normal(size=(20, 20, 3))              # padding: ignored by the mean
  got = audio.speaker_probe(utt[:12], lengths[:12], speaker[:12], utt[12:], lengths[12:],
                            speaker[12:])
  assert got["accuracy"] == 1.0


def test_edit_distance_and_phoneme_error_rate():
  ref = [3, 5, 7, 9]
  assert audio.error_rate([ref], [ref]) == 0.0
  assert audio.error_rate([ref], [[3, 6, 7, 9]]) == pytest.approx(1 / 4)   # one substitution
  assert audio.edit_distance(ref, [3, 7, 9]) == 1                          # a deletion
  assert audio.edit_distance(ref, [3, 5, 5, 7, 9]) == 1                    # an insertion
  assert audio.edit_distance([], [1, 2]) == 2
  assert audio.error_rate([ref, [1, 2]], [ref, []]) == pytest.approx(2 / 6)


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
  best = np.array([[0, 3, 3, 0, 3, 5, 5, 0, 8, 8]])           # 3 | 3 separated by a blank
  logits = np.eye(10)[best]
  assert audio.ctc_greedy_decode(logits, np.array([10])) == [[3, 3, 5, 8]]
  assert audio.ctc_greedy_decode(logits, np.array([6])) == [[3, 3, 5]]     # lengths respected


def test_recognizer_shapes_normalisation_and_a_tiny_training_lowers_ctc():
  # A synthetic batch: each phoneme a distinct constant mel pattern over 4 frames.
  cfg = PhonemeRecognizerConfig(stack=2, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                                max_frames=24)
  method = PhonemeRecognizer(cfg)
  rng = np.random.default_rng(0)
  patterns = rng.normal(size=(8, 6)).astype(np.float32) * 3
  labels = np.array([[1, 2, 3, 0], [4, 5, 0, 0]], np.int32)
  mel = np.full((2, 28, 6), -11.5, np.float32)                # 28 > max_frames: cropped
  for b, row in enumerate(labels):
    for i, p in enumerate(row[row > 0]):
      mel[b, 4 * i:4 * i + 4] = patterns[p]
  batch = {"mel": mel, "mel_lengths": np.array([12, 8], np.int32), "phonemes": labels,
           "phoneme_mask": (labels > 0).astype(np.float32), "mask": np.ones(2, np.float32)}
  tx = optax.adam(3e-2)

  @jax.jit
  def run(key):   # one compiled program: init, forward, 12 Adam steps
    params = jax.tree.map(lambda x: getattr(x, "value", x), method.init(key, batch),
                          is_leaf=lambda x: hasattr(x, "value"))

    def step(carry, _):
      p, s = carry
      (loss, _), g = jax.value_and_grad(method.loss, has_aux=True)(p, batch, None)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss

    _, losses = jax.lax.scan(step, (params, tx.init(params)), None, length=12)
    return (method.logits(params, batch["mel"], batch["mel_lengths"]),
            method.positions(jnp.array([12, 8, 30])),
            normalise(jnp.asarray(mel), jnp.array([12, 8])), losses)

  logits, positions, normed, losses = jax.device_get(run(jax.random.key(0)))
  # 28 frames cropped to max_frames = 24, stacked by 2: 12 positions, 71 phoneme ids.
  assert logits.shape == (2, 12, 71) and positions.tolist() == [6, 4, 12]
  np.testing.assert_allclose(normed[0, :12].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(normed[0, :12].std(0), 1, atol=3e-2)  # eps in the variance
  assert (normed[0, 12:] == 0).all()
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses


def test_fsq_digit_features_follow_the_fsq_index_basis():
  from tokenlab.nn.quantizers import FSQ
  levels = (3, 5, 2)
  codes = np.arange(30)
  values = np.asarray(FSQ(levels).decode(jnp.asarray(codes)))        # (30, 3) in [-1, 1]
  digits = audio_report.fsq_digit_features(codes[None], levels)[0]   # codes (B=1, T=30)
  assert digits.shape == (30, 10) and (digits.sum(-1) == 3).all()
  start = 0
  for d, n in enumerate(levels):   # one-hot position d orders codes like FSQ's value d
    level = digits[:, start:start + n].argmax(-1)
    assert (np.argsort(values[:, d], kind="stable") == np.argsort(level, kind="stable")).all()
    start += n


class _TwoFrameCodec:
  """A stand-in tokenizer: each pair of mel frames -> (is bin 0 loud, is bin 1 loud) as two
  codebooks of 2 codes; decode paints those bins back."""
  frame_rate_hz = 50.0

  def encode(self, variables, batch):
    mel = batch["mel"][:, ::2, :2]
    return (mel > -4).astype(jnp.int32)                            # (B, T / 2, 2)

  def decode(self, variables, codes):
    mel = jnp.full(codes.shape[:2] + (8,), -11.5).at[..., :2].set(codes * 8.0 - 11.5)
    return jnp.repeat(mel, 2, axis=1)


def test_report_rows_on_a_synthetic_corpus():
  """The report's glue (token frame labels, probes, LM, reconstruction, table) end to end
  on a 10-utterance synthetic corpus, an untrained recogniser and a stand-in codec."""
  from ml_collections import ConfigDict
  rng = np.random.default_rng(0)

  def corpus(n):
    # Phoneme 1 (bin 0 loud) in frames [2, 8), phoneme 2 (bin 1 loud) in [8, 12).
    mel = np.full((n, 16, 8), -11.5, np.float32) + rng.normal(0, 0.1, (n, 16, 8))
    mel[:, 2:8, 0] = mel[:, 8:12, 1] = -3.5
    return {"mel": mel.astype(np.float32), "mel_lengths": np.full(n, 14, np.int32),
            "waveform": rng.normal(0, 0.1, (n, 2400)).astype(np.float32),
            "lengths": np.full(n, 2200, np.int32),
            "phonemes": np.tile([1, 2, 0], (n, 1)), "speaker": np.arange(n) % 2,
            "phoneme_starts": np.tile([320, 1280, 0], (n, 1)),
            "phoneme_ends": np.tile([1280, 1920, 0], (n, 1))}

  corpora = {"train": corpus(6), "validation": corpus(4)}
  method = PhonemeRecognizer(PhonemeRecognizerConfig(stack=2, d_model=8, num_layers=1,
                                                     num_heads=1, mlp_dim=8))
  params = jax.tree.map(lambda x: getattr(x, "value", x),
                        jax.jit(method.init)(jax.random.key(0), corpora["validation"]),
                        is_leaf=lambda x: hasattr(x, "value"))
  rec = audio.Recognizer(method, params, mel_bins=8, batch_size=4)
  rows = audio_report.trivial_rows(corpora, rec, si_snr_utterances=0)
  tok = audio_report.Tokenizer("two-frame", "stand-in", ConfigDict({"model": {"name": "x"}}),
                               _TwoFrameCodec(), {}, (2, 2))
  rows.append(audio_report.tokenizer_row(tok, corpora, rec, si_snr_utterances=0))
  inp, mean, codec = rows
  assert inp["mel_l1"] == 0 and mean["mel_l1"] > 0.5 and 0 < codec["mel_l1"] < mean["mel_l1"]
  # Token frames pool 2 mel frames: centres at samples 80 + 320 j; every labelled token
  # frame's code says its phoneme, so the probe is exact; the constant row reads nothing.
  assert codec["phoneme_probe"] == 1.0 and inp["phoneme_probe"] == 1.0
  assert mean["phoneme_probe"] == mean["phoneme_probe_majority"] < 1.0
  assert codec["bits_per_second"] == 100.0 and codec["usage"] == 1.0
  assert codec["lm_perplexity"] < 2.0                                # a fixed code pattern
  assert all(0 <= r["per"] for r in rows)                            # untrained: any value
  table = audio_report.format_table(rows)
  assert table.count("\n") == 4 and "| two-frame | 100 | 100.0% |" in table


def test_audio_report_cli_refuses_what_it_cannot_run(tmp_path, capsys):
  from tokenlab.cli import main
  cases = ((["--out", str(tmp_path)], "pass --train"),                 # nothing named
           (["runs/x", "--units", "a,b"], "--units a,b"),
           ([str(tmp_path), "--recognizer", str(tmp_path)], "neither a run directory"),
           (["experiments/audio_codec.py:size=tiny", "--recognizer",
             "experiments/phoneme_recognizer.py:size=tiny"], "pass --train to train it"))
  for argv, message in cases:
    assert main(["audio-report", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err, argv


def test_wav_round_trip_and_peak_scaling(tmp_path):
  from tokenlab.evals.audio import read_wav, save_wav
  t = np.arange(1600) / 16_000
  x = 0.5 * np.sin(2 * np.pi * 440 * t)
  y, rate = read_wav(save_wav(str(tmp_path / "a.wav"), x))
  assert rate == 16_000 and len(y) == 1600
  np.testing.assert_allclose(y, x, atol=1 / 32767)          # 16-bit PCM quantisation
  y, _ = read_wav(save_wav(str(tmp_path / "b.wav"), 3 * x))  # peak 1.5: scaled, not clipped
  np.testing.assert_allclose(y, x / 0.5, atol=2e-3)
  with pytest.raises(ValueError, match="non-finite"):
    save_wav(str(tmp_path / "c.wav"), np.array([0.0, np.nan]))
  assert not (tmp_path / "c.wav").exists()
