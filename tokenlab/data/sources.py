"""Random-access data sources of the embedded datasets (built on first use)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenlab.data import registry, storage
from tokenlab.errors import ConfigError


def builder(cfg: dict[str, Any]) -> storage.OptionsBuilder:
  """Returns the prepared tfds builder of a resolved data config (building it if needed)."""
  module = registry.DATASETS[cfg["name"]].load()
  return storage.prepare(module.Builder, cfg["options"], cfg["data_dir"])


def data_source(cfg: dict[str, Any], split: str) -> Sequence[dict[str, Any]]:
  """Returns the split of a resolved data config as a random-access source of records."""
  if split not in storage.SPLITS:
    raise ConfigError(f"unknown split '{split}'; use one of: {', '.join(storage.SPLITS)}")
  return builder(cfg).as_data_source(split=split)
