"""Random-access data sources of the datasets, and how to get a record's document."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from tokenlab.data import registry, storage
from tokenlab.errors import ConfigError, TokenlabError


def builder(cfg: dict[str, Any]) -> storage.OptionsBuilder:
  """Returns the prepared tfds builder of an embedded dataset (building it if needed)."""
  module = registry.DATASETS[cfg["name"]].load()
  if not hasattr(module, "Builder"):
    raise TokenlabError(f"dataset '{cfg['name']}' is read from tfds as prepared, not built by "
                        "tokenlab; prepare it with tfds into the data dir")
  return storage.prepare(module.Builder, cfg["options"], cfg["data_dir"])


def data_source(cfg: dict[str, Any], split: str) -> Sequence[dict[str, Any]]:
  """Returns the split of a resolved data config as a random-access source of records."""
  if split not in storage.SPLITS:
    raise ConfigError(f"unknown split '{split}'; use one of: {', '.join(storage.SPLITS)}")
  module = registry.DATASETS[cfg["name"]].load()
  if hasattr(module, "data_source"):
    return module.data_source(cfg["options"], cfg["data_dir"], split)
  return builder(cfg).as_data_source(split=split)


def document_fn(cfg: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
  """Returns record -> document bytes for a resolved text data config (picklable)."""
  module = registry.DATASETS[cfg["name"]].load()
  if "text_key" in cfg["options"]:
    return functools.partial(module.document, text_key=cfg["options"]["text_key"])
  return module.document
