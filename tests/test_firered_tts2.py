"""FireRedTTS-2 (tokenlab/methods/firered_tts2.py): the sequence layout (phoneme prefix, end of
speech), the depth decoder's training on a fraction of the real frames, first-packet
evaluation counts, trimming of generated speech, the flat sampler's end of speech, and the
quick reproduction with `tokenlab sample` writing WAV files. The depth decoder's causality
over levels and the samplers' cache consistency are tested in tests/test_codec_lm.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenlab.methods.firered_tts2 import FireRedTTS2, FireRedTTS2Config
from tokenlab.nn import codec_lm

SMALL = dict(codebook_sizes=(6, 6, 6), max_frames=5, max_phonemes=4, d_model=16, num_layers=1,
             num_heads=2, mlp_dim=16, depth_d_model=8, depth_heads=2, depth_mlp_dim=8)


def _method(arch: str, **kw) -> FireRedTTS2:
  return FireRedTTS2(FireRedTTS2Config(arch=arch, **{**SMALL, **kw}))


def _batch() -> dict:
  rng = np.random.default_rng(0)
  return {"phonemes": np.array([[3, 4, 5, 6, 7, 0], [9, 8, 0, 0, 0, 0]], np.int32),
          "codes": rng.integers(0, 6, (2, 7, 3)).astype(np.int32),
          "num_frames": np.array([2, 7], np.int32)}


def test_prefix_is_the_phonemes_left_padded_and_cropped_to_the_last_max_phonemes():
  m = _method("dual")
  out = np.asarray(m.prefix(_batch()["phonemes"]))
  assert out.tolist() == [[4, 5, 6, 7], [0, 0, 9, 8]]


def test_frames_end_with_one_end_of_speech_code_at_level_0_then_padding():
  m = _method("dual")
  codes, n = m.codes(_batch())
  assert codes.shape == (2, 5, 3) and n.tolist() == [2, 5]    # cropped to max_frames
  frames, mask = (np.asarray(x) for x in m.frames(codes, n))
  assert frames.shape == (2, 6, 3) and m.eos_id == 6 and m.pad_id == 7
  assert (frames[0, :2] == np.asarray(codes)[0, :2]).all()
  assert frames[0, 2].tolist() == [6, 7, 7] and (frames[0, 3:] == 7).all()
  assert frames[1, 5].tolist() == [6, 7, 7]
  # Targets: every real code, and level 0 (only) of the end frame.
  assert mask[0].sum() == 2 * 3 + 1 and mask[0, 2].tolist() == [True, False, False]
  assert mask[1].sum() == 5 * 3 + 1


def test_dual_loss_trains_the_depth_decoder_on_a_fraction_of_real_frames_only():
  # Row 0 is padding (mask 0); row 1 has 5 real frames. A fraction 0.5 of the 2 x 6 frame
  # slots is 6 slots: more than the real frames, so all 5 real frames and one padding slot
  # are drawn, and the padding slot (padding ids) weighs nothing and stays finite.
  batch = dict(_batch(), mask=np.array([0.0, 1.0], np.float32))
  m = _method("dual", depth_fraction=0.5)
  params = jax.jit(m.init)(jax.random.key(0), batch)
  _, metrics = jax.jit(m.loss)(params, batch, jax.random.key(1))
  assert float(metrics["nll_level_1"].count) == 5 == float(metrics["nll_level_2"].count)
  assert float(metrics["nll_level_0"].count) == 5 + 1           # real frames + the end frame
  assert np.isfinite(float(metrics["loss"].total))
  assert np.isfinite(float(metrics["nll_per_code"].total))
  assert float(metrics["nll_per_code"].count) == 6 + 2 * 5


def test_flat_loss_counts_the_same_target_codes_as_the_dual_model():
  batch = _batch()
  m = _method("flat")
  params = jax.jit(m.init)(jax.random.key(0), batch)
  metrics = jax.jit(m.eval_metrics)(params, batch, jax.random.key(1))
  assert float(metrics["nll_per_code"].count) == (2 + 5) * 3 + 2
  assert float(metrics["nll_level_0"].count) == 2 + 1 + 5 + 1


def test_first_packet_needs_k_backbone_steps_flat_and_one_plus_k_minus_1_depth_steps_dual():
  assert _method("flat").first_packet_evaluations() == {"backbone": 3, "depth": 0}
  assert _method("dual").first_packet_evaluations() == {"backbone": 1, "depth": 2}


def test_trim_ends_a_row_at_its_first_end_of_speech_frame():
  m = _method("dual")
  raw = np.ones((3, 6, 3), np.int32)
  raw[0, 2, 0] = m.eos_id
  raw[0, 4, 0] = m.eos_id
  raw[1, 0, 0] = m.eos_id
  raw[2, 1, 1] = 7                                           # out of the codebook: -> 0
  gen = m.trim(jnp.asarray(raw))
  assert np.asarray(gen.num_frames).tolist() == [2, 0, 5]    # no end: max_frames
  codes = np.asarray(gen.codes)
  assert codes.shape == (3, 5, 3) and (codes[0, 2:] == 0).all() and (codes[0, :2] == 1).all()
  assert (codes[1] == 0).all() and codes[2, 1, 1] == 0 and codes[2, 1, 0] == 1


def test_flat_sampler_pads_level_0_after_the_end_of_speech():
  # Greedy decoding of an untrained model repeats a code; calling that code the end id makes
  # every later level-0 entry padding, while without eos_id it keeps being drawn.
  m = _method("flat")
  params = jax.jit(m.init)(jax.random.key(0), _batch())
  prefix = m.prefix(_batch()["phonemes"])
  sample = jax.jit(lambda e: codec_lm.sample_delay_lm(m.lm, params["lm"], prefix, 5,
                                                      jax.random.key(0), temperature=0.0,
                                                      eos_id=e), static_argnums=0)
  free = np.asarray(sample(None))
  eos = int(free[0, 0, 0])
  out = np.asarray(sample(eos))
  assert out[0, 0, 0] == eos and (out[0, 1:, 0] == m.pad_id).all()
  assert (out[:, 0] == free[:, 0]).all()                     # identical up to the end


def test_config_errors_name_the_fix():
  from tokenlab.errors import ConfigError
  with pytest.raises(ConfigError, match="arch"):
    _method("deep")
  with pytest.raises(ConfigError, match="depth_fraction"):
    _method("dual", depth_fraction=0.0)
  with pytest.raises(ConfigError, match=">= 2"):
    _method("dual", codebook_sizes=(8,))


def test_repro_quick(tmp_path, tiny_speech_pieces):
  import json
  from tokenlab import cli, repro
  from tokenlab.repro import firered_tts2 as mod
  tiny_speech_pieces(tmp_path, codec_arg=mod.QUICK_CODEC_ARG)
  report = repro.run("firered_tts2", workdir=str(tmp_path), quick=True)
  assert report.verdict == repro.NOT_ASSESSED
  data = json.loads((tmp_path / "repro.json").read_text())
  assert {c["name"] for c in data["checks"]} == {c.name for c in mod.CHECKS}
  assert all("not measured" not in c["detail"] for c in data["checks"]), data["checks"]
  rows = {(r[0], r[1]): r[2] for r in report.rows}
  for arm in (mod.DUAL, mod.FLAT, mod.UNTRAINED, mod.SILENCE, mod.RESYNTH):
    assert 0.0 <= rows[(arm, mod.PER)] < 5.0
  assert rows[(mod.FLAT, mod.EVALS)] == 2 and rows[(mod.DUAL, mod.EVALS)] == 2   # K = 2
  # `tokenlab sample` on the tiny dual run writes WAV files of generated speech.
  out = tmp_path / "wavs"
  assert cli.main(["sample", "--workdir", str(tmp_path / "seed0" / "dual"), "--num", "1",
                   "--out", str(out)]) == 0
  assert (out / "sample_0.wav").stat().st_size > 44
