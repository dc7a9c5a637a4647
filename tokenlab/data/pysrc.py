"""`pysrc`: real text, the Python 3.11.7 standard-library source files of a pinned snapshot.

The snapshot (`assets/pysrc_snapshot.tar.xz`, made by `assets/make_pysrc_snapshot.py`, PSF
licence in `assets/PSF_LICENSE.txt`) ships with tokenlab, so the corpus is identical on every
machine; every file is checked against `assets/pysrc_manifest.json` when read. One record is
one file. A file goes to validation when a hash of its path falls under
`validation_percent`, so the split never changes as files are added or removed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError, TokenlabError

ARCHIVE = "pysrc_snapshot.tar.xz"
MANIFEST = "pysrc_manifest.json"


def _assets():
  # assets/ is package data of tokenlab.data (no __init__.py), found relative to it.
  return resources.files("tokenlab.data").joinpath("assets")


def manifest() -> dict[str, Any]:
  """Returns the snapshot's manifest: python_version, archive_sha256, files [{path, sha256}]."""
  return json.loads(_assets().joinpath(MANIFEST).read_text())


@functools.lru_cache(maxsize=1)
def files() -> dict[str, bytes]:
  """Returns {path: file bytes} of the snapshot, checked against the manifest.

  Raises:
    TokenlabError: the archive or a file does not match its manifest checksum.
  """
  man = manifest()
  archive = _assets().joinpath(ARCHIVE).read_bytes()
  if hashlib.sha256(archive).hexdigest() != man["archive_sha256"]:
    raise TokenlabError(f"{ARCHIVE} does not match its manifest checksum; reinstall tokenlab "
                        "or re-make it with tokenlab/data/assets/make_pysrc_snapshot.py")
  out = {}
  with tarfile.open(fileobj=io.BytesIO(archive), mode="r:xz") as tar:
    for member in tar.getmembers():
      out[member.name] = tar.extractfile(member).read()
  for entry in man["files"]:
    data = out.get(entry["path"])
    if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
      raise TokenlabError(f"pysrc file {entry['path']} is missing or altered in {ARCHIVE}; "
                          "re-make the snapshot with make_pysrc_snapshot.py")
  return {entry["path"]: out[entry["path"]] for entry in man["files"]}


def split_of(path: str, validation_percent: int) -> str:
  """Returns 'validation' or 'train' for a file, from a stable hash of its path."""
  bucket = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) % 100
  return "validation" if bucket < validation_percent else "train"


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError for a validation_percent outside 1..50."""
  if not 1 <= options["validation_percent"] <= 50:
    raise ConfigError(f"pysrc option validation_percent={options['validation_percent']} "
                      "must be in 1..50; set data.options.validation_percent=5")


def split_files(split: str, options: Mapping[str, Any]) -> dict[str, bytes]:
  """Returns {path: bytes} of the files in `split`, sorted by path."""
  check_options(options)
  pct = options["validation_percent"]
  return {p: d for p, d in files().items() if split_of(p, pct) == split}


def unigram_entropy_bits(split: str = "train", validation_percent: int = 5) -> float:
  """Returns the split's unigram byte entropy, bits per byte (a floor for no-context models).

  A language model's validation bits per byte can be compared with this: any gain below it
  comes from context.
  """
  data = b"".join(split_files(split, {"validation_percent": validation_percent}).values())
  counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
  prob = counts[counts > 0] / counts.sum()
  return float(-(prob * np.log2(prob)).sum())


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_pysrc`: records {'path', 'text'} (one per source file)."""
  name = "tokenlab_pysrc"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    return tfds.features.FeaturesDict({"path": tfds.features.Text(),
                                       "text": tfds.features.Text()})

  def examples(self, split, options) -> Iterator[tuple[str, dict]]:
    for path, data in split_files(split, options).items():
      yield path, {"path": path, "text": data.decode("utf-8")}


def document(record: Mapping[str, Any]) -> bytes:
  """Returns the document bytes of one record."""
  return record["text"]


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns the corpus's unigram byte entropies for `tokenlab data build`."""
  pct = options["validation_percent"]
  sizes = {s: sum(len(d) for d in split_files(s, options).values()) for s in storage.SPLITS}
  return {"train_bytes": sizes["train"], "validation_bytes": sizes["validation"],
          "unigram_entropy_bits(train)": unigram_entropy_bits("train", pct),
          "unigram_entropy_bits(validation)": unigram_entropy_bits("validation", pct)}
