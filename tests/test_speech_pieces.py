"""The shared speech pieces of the speech-LM reproductions (tokenlab/repro/speech_pieces.py)."""

import os

from tokenlab import repro
from tokenlab.repro import Context
from tokenlab.repro.speech_pieces import shared_context, train_speech_pieces


def _files(root) -> dict[str, int]:
  """Modification times of every file but config.json (the trainer rewrites it on resume)."""
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, names in os.walk(root) for f in names if f != "config.json"}


def test_shared_pieces_live_under_the_root_at_seed_0_and_are_not_a_reproduction(tmp_path):
  ctx = Context(name="x", workdir=str(tmp_path / "seed2"), seed=2, quick=True,
                root=str(tmp_path))
  shared = shared_context(ctx)
  assert shared.seed == 0 and shared.path("codec") == str(tmp_path / "shared" / "codec")
  assert "speech_pieces" not in repro.names() and "sampling" not in repro.names()


def test_prefilled_pieces_are_reused_and_loadable(tmp_path, tiny_speech_pieces):
  from tokenlab.evals.audio import load_recognizer
  from tokenlab.train.inference import load_frozen_tokenizer
  tiny_speech_pieces(tmp_path, units=4)
  ctx = Context(name="x", workdir=str(tmp_path / "seed1"), seed=1, quick=True,
                root=str(tmp_path))
  before = _files(tmp_path / "shared")
  pieces = train_speech_pieces(ctx, units=4)     # finds every piece finished: trains nothing
  assert _files(tmp_path / "shared") == before   # no checkpoint, metric or unit written again
  assert pieces.size == "tiny" and pieces.units == 4
  assert os.path.basename(pieces.codec) == "codec_quantizer_rvq_bitrate_mid"
  codec = load_frozen_tokenizer(pieces.codec)
  assert codec.method.codebook_sizes == (16, 16)          # tiny codebooks, bitrate=mid: 2 levels
  assert os.path.exists(os.path.join(pieces.ssl, "units", "k4.npz"))
  assert load_recognizer(pieces.recognizer) is not None
