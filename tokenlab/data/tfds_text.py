"""`tfds`: any prepared tfds text dataset in the data dir, read through the same pipeline.

This is how real corpora come in at scale: prepare them once with tfds (array_record format)
into a bucket, then point `config.data.data_dir` at it (e.g. `gs://bucket/tfds`) and name the
dataset in `config.data.options.tfds_name` ('lm1b', 'wiki40b/en:1.3.0', ...). Nothing is
downloaded or built here; records are read by random access like the embedded datasets, one
document per record from the feature `text_key`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError, TokenlabError


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError when no tfds dataset is named."""
  if not options["tfds_name"]:
    raise ConfigError("dataset 'tfds' needs config.data.options.tfds_name, the prepared tfds "
                      "dataset to read (e.g. 'lm1b' or 'wiki40b/en:1.3.0')")


def data_source(options: Mapping[str, Any], data_dir: str, split: str) -> Sequence[dict]:
  """Returns the tfds split mapped from tokenlab's `split` ('train' | 'validation')."""
  check_options(options)
  tfds_split = options["train_split" if split == "train" else "validation_split"]
  data_dir = storage.resolve_data_dir(data_dir)
  try:
    return tfds.data_source(options["tfds_name"], split=tfds_split, data_dir=data_dir)
  except Exception as e:  # tfds raises many types for "not there"; all mean the same here.
    raise TokenlabError(
        f"cannot read tfds dataset '{options['tfds_name']}' split '{tfds_split}' from "
        f"{data_dir} ({type(e).__name__}); prepare it there with tfds in array_record "
        "format, or fix data.options.tfds_name / data.data_dir") from None


def document(record: Mapping[str, Any], text_key: str = "text") -> bytes:
  """Returns the document bytes of one record (feature `text_key`)."""
  if text_key not in record:
    raise TokenlabError(f"tfds records have no feature '{text_key}' (they have "
                        f"{', '.join(record)}); set data.options.text_key")
  text = record[text_key]
  return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """No exact statistics are known for an external dataset."""
  del options
  return {}
