"""`tfds`: any prepared tfds text dataset in the data dir, read through the same pipeline.

This is how real corpora come in at scale: prepare them once with tfds (array_record format)
into a bucket, then point `config.data.data_dir` at it (e.g. `gs://bucket/tfds`) and name the
dataset in `config.data.options.tfds_name` ('lm1b', 'wiki40b/en:1.3.0', ...). Nothing is
downloaded or built here; records are read by random access like the embedded datasets, one
document per record from the feature `text_key`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from tokenlab.data import storage
from tokenlab.errors import ConfigError, TokenlabError


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError when no tfds dataset is named."""
  if not options["tfds_name"]:
    raise ConfigError("dataset 'tfds' needs config.data.options.tfds_name, the prepared tfds "
                      "dataset to read (e.g. 'lm1b' or 'wiki40b/en:1.3.0')")


def candidate_data_dirs(data_dir: str = "") -> list[str]:
  """Where a prepared tfds dataset is looked for, in order: `data.data_dir` when set (only
  there), else $TOKENLAB_DATA_DIR, $TFDS_DATA_DIR, ~/tensorflow_datasets (tfds' own default)
  and tokenlab's cache ~/.cache/tokenlab/tfds."""
  if data_dir:
    return [str(data_dir)]
  dirs = [os.environ.get(storage.ENV_DATA_DIR, ""), os.environ.get("TFDS_DATA_DIR", ""),
          os.path.expanduser("~/tensorflow_datasets"), storage.resolve_data_dir("")]
  return list(dict.fromkeys(d for d in dirs if d))


def data_source(options: Mapping[str, Any], data_dir: str, split: str) -> Sequence[dict]:
  """Returns the tfds split mapped from tokenlab's `split` ('train' | 'validation'), from the
  first of `candidate_data_dirs` that holds the dataset."""
  check_options(options)
  name = options["tfds_name"]
  tfds_split = options["train_split" if split == "train" else "validation_split"]
  dirs = candidate_data_dirs(data_dir)
  found = next((d for d in dirs if _prepared(name, d)), None)
  if found is None:
    raise TokenlabError(
        f"tfds dataset '{name}' is not prepared in {' or '.join(dirs)}; prepare it with tfds "
        f"in array_record format (`tfds build {name.split(':')[0]} --file_format=array_record "
        f"--data_dir DIR`), or set data.data_dir / $TFDS_DATA_DIR, or fix "
        f"data.options.tfds_name")
  formats = _file_formats(name, found)
  if formats and "array_record" not in formats:
    raise TokenlabError(
        f"tfds dataset '{name}' in {found} is stored as {', '.join(formats)}, which grain "
        f"cannot read by random access; convert it once with `tfds convert_format "
        f"--dataset_version_dir {_version_dir(name, found)} --out_file_format array_record "
        f"--out_dir NEW_DIR/...` and point data.data_dir at NEW_DIR")
  try:
    return tfds.data_source(name, split=tfds_split, data_dir=found)
  except Exception as e:  # tfds raises many types for "not there"; all mean the same here.
    raise TokenlabError(
        f"cannot read tfds dataset '{name}' split '{tfds_split}' from {found} "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check "
        f"data.options.train_split / validation_split") from None


def _version_dir(name: str, data_dir: str) -> str:
  try:
    return str(tfds.builder(name, data_dir=data_dir).data_dir)
  except Exception:  # Unknown name: no such directory.
    return ""


def _prepared(name: str, data_dir: str) -> bool:
  """Whether data_dir holds a prepared copy of `name` (its dataset_info.json)."""
  path = _version_dir(name, data_dir)
  return bool(path) and epath.Path(path, "dataset_info.json").exists()


def _file_formats(name: str, data_dir: str) -> list[str]:
  """The file formats of the prepared copy ('array_record', 'tfrecord', ...)."""
  try:
    info = json.loads(epath.Path(_version_dir(name, data_dir), "dataset_info.json").read_text())
  except (OSError, ValueError):
    return []
  fmt = info.get("fileFormat") or info.get("file_format")
  return [str(fmt).lower()] if fmt else []


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
