"""The audio codec (tokenlab/methods/audio_codec.py) and the way back to audio
(tokenlab/nn/audio.py): Griffin-Lim and mel inversion, the bitrate formula and code shapes,
padding that never counts, clear config errors, then one 3-step run on a tiny `speech`
build through `tokenlab train` and the frozen loader (module-scoped: trained once)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab import cli, registry
from tokenlab.config import load_config
from tokenlab.errors import ConfigError
from tokenlab.method import init_variables
from tokenlab.nn import audio
from tokenlab.nn.quantizers import VQState, code_metrics, ema_update

EXP = "experiments/audio_codec.py:size=tiny"


def _method(arg=""):
  return registry.build_method(load_config(EXP + arg).model)


def test_griffin_lim_recovers_a_signal_from_its_magnitude():
  t = np.arange(3200) / 16000
  x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * (300 + 3000 * t) * t))
  x = (x * np.hanning(len(t))).astype(np.float32)

  @jax.jit
  def run(x):
    spec = audio.stft(x)
    mag = jnp.abs(spec)
    back = audio.istft(spec, length=x.shape[-1])
    convergence = [jnp.linalg.norm(jnp.abs(audio.stft(y)) - mag) / jnp.linalg.norm(mag)
                   for y in (audio.griffin_lim(mag, length=x.shape[-1], n_iter=n,
                                               rng=jax.random.key(0)) for n in (0, 32))]
    return back, convergence

  back, (random_phase, fitted) = run(x)
  np.testing.assert_allclose(back, x, atol=1e-5)     # istft inverts stft
  # Spectral convergence: random phases are far off; 32 fast Griffin-Lim steps are close.
  assert float(random_phase) > 0.3 and float(fitted) < 0.08, (random_phase, fitted)


def test_mel_inversion_is_consistent_and_non_negative():
  filters = audio.mel_filterbank(n_fft=400, n_mels=16)
  rng = np.random.default_rng(0)
  power = np.exp(rng.normal(size=(5, 201))).astype(np.float32)
  mel = power @ filters
  linear = np.asarray(audio.mel_to_linear_power(mel, filters))
  assert linear.shape == power.shape and linear.min() >= 0.0
  # The filterbank maps the recovered spectrum back onto the given bands.
  assert np.linalg.norm(linear @ filters - mel) / np.linalg.norm(mel) < 0.02


@pytest.mark.parametrize("arg,shape,bps", [
    (",quantizer=rvq,bitrate=high", (2, 26, 4), 25 * 4 * 4),          # tiny: 16 codes
    (",quantizer=rvq,bitrate=low,hz=12.5", (2, 13), 12.5 * 4),
    (",quantizer=fsq,bitrate=mid", (2, 26), 25 * math.log2(1000)),
])
def test_codes_shapes_and_bits_per_second(arg, shape, bps):
  method = _method(arg)
  mel = jax.ShapeDtypeStruct((2, 101, 16), jnp.float32)   # 101 frames: padded to whole tokens

  def codes_of(mel):
    params, state = init_variables(method, jax.random.key(0), {"mel": mel})
    params = jax.tree.map(lambda b: getattr(b, "value", b), params,
                          is_leaf=lambda b: hasattr(b, "value"))
    return method.encode({"params": params, **(state or {})}, mel)

  codes = jax.eval_shape(codes_of, mel)
  levels = shape[2] if len(shape) == 3 else 1
  assert codes.dtype == jnp.int32 and codes.shape[:2] == shape[:2]
  assert codes.shape == (shape if levels > 1 or "fsq" in arg else shape + (1,))
  assert method.bits_per_second == pytest.approx(bps)
  assert method.bits_per_second == method.frame_rate_hz * sum(
      math.log2(k) for k in method.codebook_sizes)
  assert len(method.codebook_sizes) == levels


def test_padding_never_counts():
  # The reconstruction error: frames of mask 0 contribute nothing, whatever they hold.
  from tokenlab.methods.audio_codec import masked_mel_errors
  rng = np.random.default_rng(0)
  recon, target = rng.normal(size=(2, 2, 12, 4)).astype(np.float32)
  mask = (np.arange(12)[None] < np.array([[5], [9]])).astype(np.float32)
  noisy = recon + 100.0 * (1 - mask)[..., None]
  (l1, sq, n), (l1_noisy, sq_noisy, _) = jax.jit(lambda: (
      masked_mel_errors(recon, target, mask), masked_mel_errors(noisy, target, mask)))()
  assert np.allclose((l1_noisy, sq_noisy), (l1, sq)) and n == 14 * 4
  assert l1 == pytest.approx(np.abs(recon - target)[mask > 0].sum(), rel=1e-6)
  # The EMA codebook and the code statistics: weight-0 vectors are as if absent.
  z = rng.normal(size=(6, 3)).astype(np.float32)
  codes = np.array([0, 1, 1, 2, 2, 2], np.int32)
  w = np.array([1, 1, 0, 1, 0, 0], np.float32)
  state = VQState(np.zeros((3, 3), np.float32), np.ones(3, np.float32),
                  np.zeros((3, 3), np.float32), np.zeros(3, np.int32))
  masked, kept, stats = jax.jit(lambda: (
      ema_update(state, z, codes, weights=w), ema_update(state, z[w > 0], codes[w > 0]),
      code_metrics(np.array([[0], [0], [1], [2]]), 4, 2.0, np.array([1, 1, 0, 0]))))()
  for a, b in zip(jax.tree.leaves(masked), jax.tree.leaves(kept)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert float(stats["usage"]) == 0.25 and float(stats["perplexity"]) == pytest.approx(1.0)


def test_config_errors_name_the_fix():
  method = _method()
  with pytest.raises(ConfigError, match="audio dataset"):
    method.init(jax.random.key(0), {"image": jnp.zeros((1, 8, 8, 1))})
  with pytest.raises(ConfigError, match="mel_bins=16"):
    method.init(jax.random.key(0), {"waveform": jnp.zeros((1, 160))})
  with pytest.raises(ConfigError, match="mel_bins"):
    method.init(jax.random.key(0), {"mel": jnp.zeros((1, 8, 80))})
  with pytest.raises(ConfigError, match="quantizer"):
    registry.build_method(load_config(EXP, ["--config.model.quantizer=vq"]).model)
  with pytest.raises(ConfigError, match="fsq_levels"):
    registry.build_method(load_config(EXP + ",quantizer=fsq",
                                      ["--config.model.fsq_levels=(1, 5)"]).model)
  with pytest.raises(ConfigError, match="bitrate"):
    load_config(EXP + ",bitrate=ultra")
  # A codec config pointed at an image dataset stops at the data config.
  from tokenlab.data import default_data_config
  from tokenlab.data.config import validate_data_config
  digits = default_data_config("digits")
  digits.mel_bins = 16
  with pytest.raises(ConfigError, match="audio datasets"):
    validate_data_config(digits)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("acodec")
  workdir = str(root / "run")
  args = ["--config", EXP + ",bitrate=mid", "--workdir", workdir, f"--config.data.data_dir={root / 'tfds'}",
          "--config.train.progress=false", "--config.train.log_every=1",
          "--config.checkpoint.async_save=false"]
  assert cli.main(["train", *args]) == 0
  return workdir


def test_three_steps_through_the_trainer_and_the_frozen_tokenizer(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if "train/mel_l1" in r]
  assert len(train) == 3 and all(np.isfinite(r["train/loss"]) for r in train)
  final = [r for r in rows if "eval/mel_l1" in r][-1]
  assert final["eval/bits_per_second"] == 200.0 and 0 < final["eval/usage"] <= 1
  from tokenlab import data as data_lib
  from tokenlab.train.inference import load_frozen_tokenizer
  tok = load_frozen_tokenizer(trained)
  assert tok.step == 3 and tok.method.frame_rate_hz == 25.0
  batch = next(iter(data_lib.make_iterator(tok.config.data, split="validation", batch_size=2,
                                           seed=0, shuffle=False, num_epochs=1)))
  codes, mel, recon = jax.jit(lambda b: (
      tok.encode(b), tok.decode(tok.encode(b)), tok.method.reconstruct(tok.variables, b)))(
          {k: batch[k] for k in ("mel", "mel_lengths", "mask")})
  frames = batch["mel"].shape[1]
  assert codes.shape == (2, -(-frames // 4), 2) and codes.dtype == jnp.int32
  assert 0 <= int(codes.min()) and int(codes.max()) < 16
  assert mel.shape == (2, 4 * codes.shape[1], 16)
  np.testing.assert_allclose(mel[:, :frames], recon, atol=1e-4)


def test_tokenlab_sample_writes_wav_files_and_their_mels(trained, tmp_path, capsys):
  from tokenlab.evals.audio import read_wav
  out = tmp_path / "listen"
  assert cli.main(["sample", "--workdir", trained, "--num", "1", "--out", str(out)]) == 0
  names = sorted(os.listdir(out))
  assert names == sorted([f"sample_0_{row}.wav"
                          for row in ("input", "vocoder", "codec")] + ["mels.png"])
  printed = capsys.readouterr().out
  assert printed.count("wrote ") == 4 and "(" in printed   # each WAV with its sentence
  wave, rate = read_wav(str(out / "sample_0_input.wav"))
  codec, _ = read_wav(str(out / "sample_0_codec.wav"))
  assert rate == 16_000 and len(wave) == len(codec) > 1600   # the utterance's own length
  assert np.abs(wave).max() > 0.01 and np.isfinite(codec).all()
  # A single file is refused, with the fix.
  assert cli.main(["sample", "--workdir", trained, "--out", str(tmp_path / "x.wav")]) != 0
  assert "give a folder" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()


def test_tokenlab_sample_refuses_non_finite_audio_and_writes_nothing(trained, tmp_path,
                                                                   capsys, monkeypatch):
  from tokenlab.methods.audio_codec import AudioCodec
  monkeypatch.setattr(AudioCodec, "sample", lambda self, params, batch, rng, state=None: {
      "waveform": jnp.full((1, 1, 400), jnp.nan), "lengths": jnp.full((1, 1), 400)})
  out = tmp_path / "listen"
  assert cli.main(["sample", "--workdir", trained, "--num", "1", "--out", str(out)]) != 0
  assert "non-finite" in capsys.readouterr().err and not out.exists()
