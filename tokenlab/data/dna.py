"""`dna`: a synthetic genome whose information density varies by region (MergeDNA's premise).

Each record is one window of `length` bases over {A, C, G, T} made of three kinds of region,
with a per-base label:

  0 background: independent uniform bases (2 bits per base, incompressible);
  1 tandem repeat: a unit of 1-6 bases repeated to 12-96 bases, each base mutated to a
    different base with probability `mutation_rate` (nearly free to predict after one unit);
  2 motif: one of `num_motifs` fixed motifs of `motif_length` bases (drawn once from `seed`,
    shared by both splits), planted exactly, each with probability `motif_prob` per window.

`motif_present[m]` says whether motif m was planted (for linear-probe tests). Regions never
overlap: motifs are placed first, then repeats in the free space. Window i of a split is drawn
from its own generator seeded by (seed, split, i), so any window can be re-made alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError

BASES = b"ACGT"
BACKGROUND, REPEAT, MOTIF = 0, 1, 2
_UNIT_LENGTHS = (1, 6)    # Inclusive range of repeat unit lengths.
_REPEAT_LENGTHS = (12, 96)  # Inclusive range of repeat region lengths.
_PLACEMENT_TRIES = 20


@dataclasses.dataclass
class Window:
  """One generated window.

  Attributes:
    codes: uint8 (length,) base codes 0..3 (index into BASES).
    labels: uint8 (length,) region label per base.
    motif_present: int32 (num_motifs,) 1 where the motif was planted.
    regions: (start, stop, label, detail) per placed region; detail is the motif index for
      motifs and the repeat unit (uint8 codes) for repeats.
  """
  codes: np.ndarray
  labels: np.ndarray
  motif_present: np.ndarray
  regions: list[tuple[int, int, int, Any]]

  @property
  def text(self) -> bytes:
    return np.frombuffer(BASES, np.uint8)[self.codes].tobytes()


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError when the options cannot make valid windows."""
  length, m, ml = options["length"], options["num_motifs"], options["motif_length"]
  if not 4 <= ml <= 64:
    raise ConfigError(f"dna option motif_length={ml} must be in 4..64; "
                      "set data.options.motif_length=12")
  if m < 1 or m * ml * 2 > length:
    raise ConfigError(f"dna options num_motifs={m} x motif_length={ml} do not fit twice in "
                      f"length={length}; use fewer motifs or a longer data.options.length")
  for name in ("motif_prob", "mutation_rate"):
    if not 0.0 <= options[name] <= 1.0:
      raise ConfigError(f"dna option {name}={options[name]} must be a probability in [0, 1]")
  if options["repeats_per_kb"] < 0:
    raise ConfigError("dna option repeats_per_kb must be >= 0")
  if options["num_train"] < 1 or options["num_validation"] < 1:
    raise ConfigError("dna options num_train and num_validation must be >= 1")


def motifs(options: Mapping[str, Any]) -> np.ndarray:
  """Returns the fixed motifs as uint8 codes (num_motifs, motif_length), distinct."""
  rng = np.random.default_rng([options["seed"], 1_000_003])
  while True:
    out = rng.integers(0, 4, (options["num_motifs"], options["motif_length"]), np.uint8)
    if len({m.tobytes() for m in out}) == len(out):
      return out


def _place(rng: np.random.Generator, free: np.ndarray, size: int) -> int | None:
  """Returns a start where `size` free bases begin (marking them taken), or None."""
  for _ in range(_PLACEMENT_TRIES):
    start = int(rng.integers(0, len(free) - size + 1))
    if free[start:start + size].all():
      free[start:start + size] = False
      return start
  return None


def generate_window(options: Mapping[str, Any], split: str, index: int) -> Window:
  """Re-makes window `index` of `split` exactly (see module docstring)."""
  length = options["length"]
  rng = np.random.default_rng([options["seed"], storage.SPLITS.index(split), index])
  codes = rng.integers(0, 4, length, np.uint8)
  labels = np.zeros(length, np.uint8)
  free = np.ones(length, bool)
  regions = []
  motif_set = motifs(options)
  present = np.zeros(len(motif_set), np.int32)
  for m, motif in enumerate(motif_set):
    if rng.random() < options["motif_prob"]:
      start = _place(rng, free, len(motif))
      if start is not None:
        codes[start:start + len(motif)] = motif
        labels[start:start + len(motif)] = MOTIF
        present[m] = 1
        regions.append((start, start + len(motif), MOTIF, m))
  for _ in range(rng.poisson(options["repeats_per_kb"] * length / 1000)):
    unit = rng.integers(0, 4, int(rng.integers(_UNIT_LENGTHS[0], _UNIT_LENGTHS[1] + 1)),
                        np.uint8)
    size = int(rng.integers(_REPEAT_LENGTHS[0], _REPEAT_LENGTHS[1] + 1))
    size = min(size, length // 4)
    start = _place(rng, free, size)
    if start is None:
      continue
    region = np.resize(unit, size)
    mutate = rng.random(size) < options["mutation_rate"]
    # Adding 1..3 mod 4 always changes the base.
    region[mutate] = (region[mutate] + rng.integers(1, 4, int(mutate.sum()))) % 4
    codes[start:start + size] = region
    labels[start:start + size] = REPEAT
    regions.append((start, start + size, REPEAT, unit))
  return Window(codes, labels, present, sorted(regions, key=lambda r: r[0]))


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_dna`: records {'index', 'sequence', 'labels', 'motif_present'}."""
  name = "tokenlab_dna"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    return tfds.features.FeaturesDict({
        "index": np.int64,
        "sequence": tfds.features.Text(),
        "labels": tfds.features.Tensor(shape=(options["length"],), dtype=np.uint8),
        "motif_present": tfds.features.Tensor(shape=(options["num_motifs"],), dtype=np.int32),
    })

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    check_options(options)
    num = options["num_train"] if split == "train" else options["num_validation"]
    for i in range(num):
      w = generate_window(options, split, i)
      yield i, {"index": i, "sequence": w.text.decode("ascii"), "labels": w.labels,
                "motif_present": w.motif_present}


def document(record: Mapping[str, Any]) -> bytes:
  """Returns the document bytes (bases) of one record."""
  return record["sequence"]


def byte_labels(record: Mapping[str, Any]) -> np.ndarray:
  """Returns the region label of each byte of `document(record)`, int32 (length,)."""
  return np.asarray(record["labels"], np.int32)


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns the label fractions of the first validation windows, for `tokenlab data build`."""
  labels = np.concatenate([generate_window(options, "validation", i).labels
                           for i in range(min(50, options["num_validation"]))])
  return {f"fraction_{name}": float((labels == v).mean())
          for v, name in enumerate(("background", "repeat", "motif"))}
