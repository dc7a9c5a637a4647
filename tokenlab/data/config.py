"""The `config.data` block: defaults, validation, and resolution to plain values.

Keys (every experiment has them under `config.data`):
  name          dataset: one of registry.DATASETS
  tokenizer     'bytes' | 'sentencepiece' | 'bpe' | 'lib' (ignored by image datasets)
  vocab_size    wanted vocabulary of a trained tokenizer; 256 for 'bytes'
  seq_len       tokens per packed row
  data_dir      where built data and tokenizers live ('' = $TOKENLAB_DATA_DIR or
                ~/.cache/tokenlab/tfds); may be gs://...
  options       builder options of the dataset (defaults: `default_data_config(name)`)
  worker_count  grain worker processes (0 = in the main process)
  shards        logical shards of the training stream (0 = auto, see tokenlab/data/elastic.py):
                the global batch at step s is a function of (seed, s, shards) only, whatever
                the number of processes; the process count must divide it
  augment       train-split image augmentations, comma-separated: '' (none), 'flip', 'crop',
                'flip,crop', 'clutter' (0..2 solid distractor squares: shapes, mnist);
                each dataset allows those in its registry `augmentations`
  mel_bins      audio datasets: 0 (no mel), else batches add the log-mel spectrogram with
                this many bins (tokenlab/nn/audio.py; 25 ms window, 10 ms hop)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from tokenlab.data import registry
from tokenlab.errors import ConfigError, nearest

KEYS = ("name", "tokenizer", "vocab_size", "seq_len", "data_dir", "options", "worker_count",
        "augment", "shards", "mel_bins")
_DEFAULTS = {"tokenizer": "bytes", "vocab_size": 256, "seq_len": 256, "data_dir": "",
             "worker_count": 0, "augment": "", "shards": 0, "mel_bins": 0}


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """Returns the full data config of dataset `name` with every key at its default."""
  spec = _spec(name)
  cfg = ml_collections.ConfigDict({"name": name, **_DEFAULTS})
  cfg.options = ml_collections.ConfigDict(dict(spec.default_options))
  return cfg


def _spec(name: str) -> registry.DatasetSpec:
  if name not in registry.DATASETS:
    names = ", ".join(registry.DATASETS)
    raise ConfigError(f"unknown dataset '{name}'{nearest(str(name), registry.DATASETS)}; "
                      f"set config.data.name to one of: {names}")
  return registry.DATASETS[name]


def _as_dict(cfg: Any) -> dict[str, Any]:
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg.to_dict()
  if isinstance(cfg, Mapping):
    return {k: _as_dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}
  raise ConfigError(f"config.data must be a ConfigDict or dict, not {type(cfg).__name__}")


def _check_type(where: str, value: Any, default: Any) -> None:
  """Raises ConfigError unless `value` has the type of `default` (ints pass as floats)."""
  if isinstance(default, bool) or isinstance(default, str):
    ok = isinstance(value, type(default))
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  else:
    ok = True
  if not ok:
    raise ConfigError(f"{where}={value!r} must be a {type(default).__name__} "
                      f"(like {default!r}); fix it in the experiment or the override")


def resolve(data_cfg: Any) -> dict[str, Any]:
  """Validates `data_cfg` and returns it as a plain dict with every key and option filled.

  Raises:
    ConfigError: unknown dataset, key, option or tokenizer; a value of the wrong type or
      out of range. The message names the fix.
  """
  cfg = _as_dict(data_cfg)
  for key in cfg:
    if key not in KEYS:
      raise ConfigError(f"unknown key config.data.{key}{nearest(key, KEYS)}; "
                        f"valid keys: {', '.join(KEYS)}")
  spec = _spec(cfg.get("name", ""))
  out = {"name": spec.name, **_DEFAULTS}
  for key, default in _DEFAULTS.items():
    if key in cfg:
      _check_type(f"config.data.{key}", cfg[key], default)
      out[key] = cfg[key]
  options = dict(spec.default_options)
  given = cfg.get("options") or {}
  if not isinstance(given, Mapping):
    raise ConfigError("config.data.options must be a ConfigDict of builder options")
  for key, value in given.items():
    if key not in options:
      raise ConfigError(f"unknown option config.data.options.{key} for dataset "
                        f"'{spec.name}'{nearest(key, options)}; valid options: "
                        f"{', '.join(options)}")
    _check_type(f"config.data.options.{key}", value, options[key])
    # Floats stay floats so 1 and 1.0 name the same build.
    options[key] = float(value) if isinstance(options[key], float) else value
  out["options"] = options
  if out["tokenizer"] not in registry.TOKENIZERS:
    raise ConfigError(f"unknown tokenizer '{out['tokenizer']}'"
                      f"{nearest(out['tokenizer'], registry.TOKENIZERS)}; set "
                      f"config.data.tokenizer to one of: {', '.join(registry.TOKENIZERS)}")
  if spec.kind == "text":
    if out["tokenizer"] == "bytes" and out["vocab_size"] != 256:
      raise ConfigError(f"the bytes tokenizer has 256 tokens, not config.data.vocab_size="
                        f"{out['vocab_size']}; set config.data.vocab_size=256")
    if out["vocab_size"] < 2:
      raise ConfigError("config.data.vocab_size must be >= 2")
    if out["seq_len"] < 2:
      raise ConfigError(f"config.data.seq_len={out['seq_len']} must be >= 2")
  for aug in augmentations(out):
    if aug not in spec.augmentations:
      allowed = ", ".join(spec.augmentations) or "none"
      raise ConfigError(f"config.data.augment names '{aug}', which dataset '{spec.name}' does "
                        f"not allow (allowed: {allowed}); change config.data.augment")
  if out["worker_count"] < 0:
    raise ConfigError("config.data.worker_count must be >= 0 (0 = no worker processes)")
  if out["shards"] < 0:
    raise ConfigError(f"config.data.shards={out['shards']} must be >= 0 (0 = auto)")
  if out["mel_bins"] and spec.kind != "audio":
    raise ConfigError(f"config.data.mel_bins applies to audio datasets (speech), not "
                      f"'{spec.name}' ({spec.kind}); set config.data.mel_bins=0")
  if out["mel_bins"] and not 8 <= out["mel_bins"] <= 256:
    raise ConfigError(f"config.data.mel_bins={out['mel_bins']} must be 0 (no mel) or 8..256")
  spec.load().check_options(options)
  return out


def augmentations(cfg: Mapping[str, Any]) -> list[str]:
  """Returns the augmentation names of a data config's `augment` string, in order."""
  return [a.strip() for a in str(cfg.get("augment", "")).split(",") if a.strip()]


def validate_data_config(data_cfg: Any) -> None:
  """Raises ConfigError (one line naming the fix) if `data_cfg` is not a valid data config."""
  resolve(data_cfg)
