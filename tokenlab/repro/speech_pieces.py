"""The frozen speech pieces the speech-LM reproductions share, trained once per reproduction.

FireRedTTS-2, HAM-TTS and DualSpeechLM all generate codec tokens, turn them into mels with
the codec's decoder and judge the result with the CTC phoneme recogniser; HAM-TTS also needs
speech_ssl's k-means units. These pieces are measuring instruments and inputs, not the arms
under test, so one reproduction trains each of them once (seed 0, into
ROOT/shared/<piece>) and every seed and arm reads the same frozen copies: the seed spread
then measures the arms, not the instruments. A finished piece is reused on a rerun (the
trainer resumes a finished run without training it again); each codec argument has its own
folder (ROOT/shared/codec_<arg>).

  pieces = train_speech_pieces(ctx, units=50)
  codec = load_frozen_tokenizer(pieces.codec)            # tokenlab.train.inference
  recognizer = load_recognizer(pieces.recognizer)        # tokenlab.evals.audio
  units = load_frozen_tokenizer(pieces.ssl, units=pieces.units)

Sizes follow the reproduction: `--quick` trains the experiments' size=tiny (the tiny speech
corpus, 16 mel bins, 3 steps), a full run their size=cpu (the default 400 + 100 utterance
corpus, 80 mel bins, the steps of the audio-token benchmark in BUILD_NOTES.md), so an LM
experiment of the same size reads the same corpus and mel bins.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

from tokenlab.repro import Context

CODEC = "experiments/audio_codec.py"
RECOGNIZER = "experiments/phoneme_recognizer.py"
SSL = "experiments/speech_ssl.py"


@dataclasses.dataclass(frozen=True)
class SpeechPieces:
  """Workdirs of the shared pieces (None where not requested) and the size they were
  trained at ('tiny' or 'cpu')."""
  codec: str
  recognizer: str | None
  ssl: str | None
  units: int | None
  size: str


def shared_context(ctx: Context) -> Context:
  """The context the shared pieces train in: ROOT/shared/<piece>, seed 0, whatever the
  calling seed (so every seed finds the pieces the first seed trained)."""
  return dataclasses.replace(ctx, workdir=ctx.out("shared"), seed=0)


def train_speech_pieces(ctx: Context, *, codec_arg: str = "quantizer=rvq,bitrate=mid",
                        recognizer: bool = True, units: int | None = None,
                        codec_overrides: Sequence[str] = (),
                        recognizer_overrides: Sequence[str] = (),
                        ssl_overrides: Sequence[str] = ()) -> SpeechPieces:
  """Trains (or reuses) the shared codec, and when asked the phoneme recogniser and the
  speech_ssl encoder with `units` k-means units fitted after training.

  `codec_arg` is the codec experiment's argument after `size=` (e.g.
  'quantizer=rvq,bitrate=high' for 4 RVQ levels); the `*_overrides` are `--config.KEY=V`
  flags for the pieces' experiments (e.g. fewer steps). Returns their workdirs."""
  size = "tiny" if ctx.quick else "cpu"
  shared = shared_context(ctx)
  # One folder per codec argument: a finished run is reused, never retrained with another
  # config, so two codecs must not share a folder.
  codec = "codec_" + re.sub(r"[^A-Za-z0-9.]+", "_", codec_arg) if codec_arg else "codec"
  shared.train(f"{CODEC}:size={size},{codec_arg}" if codec_arg else f"{CODEC}:size={size}",
               codec, list(codec_overrides))
  recognizer_dir = ssl_dir = None
  if recognizer:
    shared.train(f"{RECOGNIZER}:size={size}", "recognizer", list(recognizer_overrides))
    recognizer_dir = shared.path("recognizer")
  if units is not None:
    if units < 2:
      raise ValueError(f"units={units}: k-means needs at least 2 units")
    shared.train(f"{SSL}:size={size}", "ssl", list(ssl_overrides))
    ssl_dir = shared.path("ssl")
    if not os.path.exists(os.path.join(ssl_dir, "units", f"k{units}.npz")):
      from tokenlab.methods.speech_ssl import fit_units  # pylint: disable=g-import-not-at-top
      fit_units(ssl_dir, units)
  return SpeechPieces(codec=shared.path(codec), recognizer=recognizer_dir, ssl=ssl_dir,
                      units=units, size=size)
