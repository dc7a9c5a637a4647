"""tokenlab's data: embedded datasets as tfds builders, tokenizers, and the grain pipeline.

Public API:

  validate_data_config(data_cfg)      ConfigError naming the fix for a bad `config.data`
  default_data_config(name)           the full default `config.data` of a dataset
  make_iterator(data_cfg, split=..., batch_size=..., seed=..., ...)
                                      a checkpointable iterator of batches (see pipeline.py)
  vocab_size(data_cfg)                the tokenizer's number of ids
  batch_spec(data_cfg, batch_size)    {field: jax.ShapeDtypeStruct} of a batch, nothing built
  get_tokenizer(data_cfg)             the tokenizer (bytes | sentencepiece | bpe)
  DATASETS                            name -> DatasetSpec (kind, default options)

Datasets (`tokenlab data list`): markov, pysrc, dna, digits, mnist, shapes, photos,
moving_digits, moving_shapes, pulse (video), multilingual are embedded: each is built on first use into the data dir (`config.data.data_dir`, else
$TOKENLAB_DATA_DIR, else ~/.cache/tokenlab/tfds). `tfds` reads any text dataset already prepared there by tfds
(array_record), e.g. `data_dir=gs://bucket/tfds`, through the same pipeline.
Heavy imports (tfds, grain) happen on first use, not on `import tokenlab.data`.
"""

from __future__ import annotations

from typing import Any, Callable

from tokenlab.data.config import default_data_config, validate_data_config
from tokenlab.data.registry import DATASETS, TOKENIZERS

__all__ = ["DATASETS", "TOKENIZERS", "default_data_config", "validate_data_config",
           "make_iterator", "collect_split", "vocab_size", "get_tokenizer", "batch_spec"]


def make_iterator(data_cfg: Any, *, split: str, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None):
  """Returns a checkpointable grain iterator of batches; see `pipeline.make_iterator`."""
  from tokenlab.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.make_iterator(data_cfg, split=split, batch_size=batch_size, seed=seed,
                                process_index=process_index, process_count=process_count,
                                shuffle=shuffle, num_epochs=num_epochs)


def collect_split(data_cfg: Any, split: str, fn: Callable[[dict], dict] | None = None, *,
                  batch_size: int = 16) -> dict[str, Any]:
  """One pass over `split` in stored order: `fn(batch)` (default: the batch itself) maps each
  batch (all `batch_size` rows, padding included, so a jitted `fn` compiles once) to
  {name: array with one row per batch row}; returns each name's rows of real examples
  (batch 'mask' > 0) concatenated as numpy arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  parts: dict[str, list] = {}
  for batch in make_iterator(data_cfg, split=split, batch_size=batch_size, seed=0,
                             shuffle=False, num_epochs=1):
    keep = np.asarray(batch["mask"]) > 0
    for name, value in (fn(batch) if fn else batch).items():
      parts.setdefault(name, []).append(np.asarray(value)[keep])
  return {name: np.concatenate(rows) for name, rows in parts.items()}


def vocab_size(data_cfg: Any) -> int:
  """Returns the number of token ids of the config's tokenizer (training it if needed)."""
  return get_tokenizer(data_cfg).vocab_size


def get_tokenizer(data_cfg: Any):
  """Returns the config's tokenizer, trained and cached on first use."""
  from tokenlab.data import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.get_tokenizer(data_cfg)


def batch_spec(data_cfg: Any, batch_size: int) -> dict[str, Any]:
  """Returns {field: jax.ShapeDtypeStruct} of one batch of `batch_size` rows.

  Builds no data and trains no tokenizer, so plans and AOT compiles can use it. Text:
  inputs, targets, segment_ids, positions, target_bytes int32 and loss_mask float32, each
  (batch_size, seq_len), plus labels int32 for dna. Images: image float32
  (batch_size, height, width, channels), label int32 and mask float32 (batch_size,), plus
  the dataset's `batch_fields` (shapes: colour, count, positions) int32.
  Video: video float32 (batch_size, T, height, width, channels), mask float32 (batch_size,),
  and the dataset's `label_fields` (name -> per-clip shape and dtype).
  Audio: the module's `batch_spec` (speech: waveform, lengths, word and phoneme labels
  with masks, optional mel).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tokenlab.data import config  # pylint: disable=g-import-not-at-top
  cfg = config.resolve(data_cfg)
  if DATASETS[cfg["name"]].kind == "image":
    module = DATASETS[cfg["name"]].load()
    shape = (module.image_shape(cfg["options"]) if hasattr(module, "image_shape")
             else (cfg["options"]["size"], cfg["options"]["size"], 1))
    spec = {"image": jax.ShapeDtypeStruct((batch_size, *shape), np.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), np.int32),
            "mask": jax.ShapeDtypeStruct((batch_size,), np.float32)}
    if hasattr(module, "batch_fields"):
      for key, field_shape in module.batch_fields(cfg["options"]).items():
        spec[key] = jax.ShapeDtypeStruct((batch_size, *field_shape), np.int32)
    return spec
  if DATASETS[cfg["name"]].kind == "audio":
    module = DATASETS[cfg["name"]].load()
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in
            module.batch_spec(cfg["options"], batch_size, cfg["mel_bins"]).items()}
  if DATASETS[cfg["name"]].kind == "video":
    module = DATASETS[cfg["name"]].load()
    spec = {"video": jax.ShapeDtypeStruct((batch_size, *module.video_shape(cfg["options"])),
                                          np.float32),
            "mask": jax.ShapeDtypeStruct((batch_size,), np.float32)}
    for key, (field_shape, dtype) in module.label_fields(cfg["options"]).items():
      spec[key] = jax.ShapeDtypeStruct((batch_size, *field_shape), dtype)
    return spec
  shape = (batch_size, cfg["seq_len"])
  ints = ["inputs", "targets", "segment_ids", "positions", "target_bytes"]
  if cfg["name"] == "dna":
    ints.append("labels")
  spec = {k: jax.ShapeDtypeStruct(shape, np.int32) for k in ints}
  spec["loss_mask"] = jax.ShapeDtypeStruct(shape, np.float32)
  return spec
