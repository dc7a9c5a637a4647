"""The grain input pipeline: shard, shuffle, tokenize, pack, batch; checkpointable.

Order of operations (one process of `process_count`):

  records of the split (tfds array_record data source, random access)
  -> this process's records: indices process_index, process_index + process_count, ...
  -> shuffled with `seed` (a fresh order every epoch), repeated `num_epochs` times
  -> text: each document tokenized into next-token pairs inputs = ids[:-1],
     targets = ids[1:] (so no target ever crosses a document boundary)
  -> packed by concatenate-and-split (grain's ConcatThenSplitIterDataset): documents are
     laid end to end and cut every seq_len tokens; a document cut at a row end continues
     at the start of the next row, with positions starting again at 0; the last row of a
     finite stream is padded (segment id 0)
  -> with shuffle, packed rows are shuffled within windows of rows, so one long document
     does not fill a whole batch
  -> batches of `batch_size` (per process); a last partial batch is padded with rows whose
     loss_mask is 0 (label -1), so a finite pass sees every token exactly once.

Sequence batches: inputs, targets, segment_ids, positions, target_bytes (int32) and
loss_mask (float32), each (batch_size, seq_len); dna adds labels (int32, region label of the
target token when all its bases share one, else -1; -1 on padding). Image batches: image
float32 (batch_size, height, width, channels) in [0, 1] (channels 1 for digits/mnist, 3 for
shapes/photos), label int32 (-1 on padding), mask float32 (batch_size,); shapes adds colour,
count (batch_size,) and positions (batch_size, max_count, 2), int32 (0 on padding). Image
augmentations (`config.data.augment`: flip, crop, clutter) are grain RandomMaps on the train
split only, seeded per record and epoch, so they too are restored with the iterator state. Video batches
(moving_digits, moving_shapes, pulse): video float32 (batch_size, T, height, width, channels)
in [0, 1], mask float32 (batch_size,), and the dataset's `label_fields` (0 on padding).
Audio batches (speech): waveform float32 (batch_size, S), lengths, padded word and phoneme
labels with their masks, optional log-mel; see tokenlab/data/speech.py.

The returned iterator is a grain DatasetIterator: next(), get_state(), set_state().
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from tokenlab.data import config, registry, sources, storage
from tokenlab.data.tokenizers import BPETokenizer, Tokenizer, get_tokenizer, tokenizer_path
from tokenlab.errors import ConfigError, TokenlabError

_ROW_SHUFFLE_WINDOW = 256  # Packed rows shuffled together (train only), over all shards.
_MIN_SHUFFLE_WINDOW = 16
_READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=32)


# repr=False: grain names each transform by its repr when it builds iterator statistics, and
# the generated repr printed every record and pre-tokenized array of the split (9 s per
# trainer run of the multilingual corpus, measured in `tokenlab repro tokenadapt --quick`).
@dataclasses.dataclass(repr=False)
class TokenizeDocument(grain.transforms.Map):
  """Record index -> {inputs, targets, target_bytes[, labels]}, int32 (n-1,) each.

  Attributes:
    source: the split's records.
    tokenizer: the tokenizer.
    document: record -> document bytes.
    byte_labels: record -> region label per document byte (dna), or None.
    pretokenized: token ids of every record, or None to encode on the fly.
  """
  source: Any
  tokenizer: Tokenizer
  document: Callable[[dict[str, Any]], bytes]
  byte_labels: Callable[[dict[str, Any]], np.ndarray] | None = None
  pretokenized: list[np.ndarray] | None = None

  def __repr__(self) -> str:
    return (f"TokenizeDocument({type(self.tokenizer).__name__}, "
            f"pretokenized={self.pretokenized is not None})")

  def map(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    record = self.source[index]
    if self.pretokenized is not None:
      ids = self.pretokenized[index]
    else:
      ids = self.tokenizer.encode(self.document(record))
    lengths = self.tokenizer.token_lengths()[ids]
    out = {"inputs": ids[:-1], "targets": ids[1:], "target_bytes": lengths[1:]}
    if self.byte_labels is not None:
      out["labels"] = _token_labels(self.byte_labels(record), lengths)[1:]
    return out


# (tokenizer file, split) -> token ids of every record; filled once per process.
_PRETOKENIZED: dict[tuple[str, str], list[np.ndarray]] = {}
_PRETOKENIZE_MAX_BYTES = 256 << 20  # Splits larger than this are encoded on the fly.


def _pretokenize(cfg: dict[str, Any], split: str, source: Any,
                 tok: Tokenizer) -> list[np.ndarray] | None:
  """Encodes the whole split in one pass when the tokenizer is much faster that way (BPE)."""
  if not isinstance(tok, BPETokenizer) or cfg["name"] == "tfds":
    return None  # External tfds datasets can be any size: encode those on the fly.
  key = (str(tokenizer_path(cfg)), split)
  if key not in _PRETOKENIZED:
    document = sources.document_fn(cfg)
    docs, total = [], 0
    for i in range(len(source)):
      docs.append(bytes(document(source[i])))
      total += len(docs[-1])
      if total > _PRETOKENIZE_MAX_BYTES:
        return None
    _PRETOKENIZED[key] = tok.encode_batch(docs)
  return _PRETOKENIZED[key]


def _has_targets(example: dict[str, np.ndarray]) -> bool:
  return len(example["inputs"]) > 0  # A one-token document has nothing to predict.


@dataclasses.dataclass
class ImageExample(grain.transforms.Map):
  """Record index -> {image float32 (H, W, C) in [0, 1], label int32, mask float32 1.0, ...}.

  uint8 images are divided by 255. `extra` names int32 label fields copied from the record
  (shapes: colour, count, positions).
  """
  source: Any
  extra: tuple[str, ...] = ()

  def map(self, index: int) -> dict[str, np.ndarray]:
    record = self.source[int(index)]
    image = np.asarray(record["image"])
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(
        np.float32)
    out = {"image": image, "label": np.int32(record["label"]), "mask": np.float32(1.0)}
    for key in self.extra:
      out[key] = np.asarray(record[key], np.int32)
    return out


@dataclasses.dataclass
class VideoExample(grain.transforms.Map):
  """Record index -> {video float32 (T, H, W, C) in [0, 1], mask float32 1.0, labels}.

  `fields` is the dataset module's `label_fields`: name -> (per-clip shape, dtype); a text
  field (moving_shapes' caption) becomes its bytes, zero-padded to the field's length.
  """
  source: Any
  fields: dict[str, tuple[tuple[int, ...], Any]] = dataclasses.field(default_factory=dict)

  def map(self, index: int) -> dict[str, np.ndarray]:
    record = self.source[int(index)]
    out = {"video": np.asarray(record["video"], np.float32) / 255.0, "mask": np.float32(1.0)}
    for key, (shape, dtype) in self.fields.items():
      value = record[key]
      if isinstance(value, (bytes, str)):
        raw = value.encode() if isinstance(value, str) else value
        value = np.frombuffer(raw.ljust(shape[0], b"\0")[:shape[0]], np.uint8)
      out[key] = np.asarray(value, dtype)
    return out


@dataclasses.dataclass
class AugmentImage(grain.transforms.RandomMap):
  """Random train-time augmentation of example['image'] (H, W, C), shapes unchanged.

  Attributes:
    clutter: add 0..clutter distractor squares (uniform count; `add_clutter`), before any
      crop or flip.
    flip: mirror left-right with probability 1/2.
    crop: pad by `pad` pixels (mirrored) and cut a random H x W window, i.e. a
      translation by up to `pad` pixels each way.
    pad: the crop's padding; 0 = H // 8.
  """
  flip: bool = False
  crop: bool = False
  pad: int = 0
  clutter: int = 0

  def random_map(self, element: dict[str, np.ndarray],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = element["image"]
    if self.clutter:
      image = add_clutter(image, rng, int(rng.integers(0, self.clutter + 1)))
    if self.crop:
      h, w = image.shape[:2]
      pad = self.pad or max(1, h // 8)
      padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
      top, left = rng.integers(0, 2 * pad + 1, size=2)
      image = padded[top:top + h, left:left + w]
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {**element, "image": np.ascontiguousarray(image)}


CLUTTER_MAX = 2  # distractors per train image under `config.data.augment='clutter'`


def add_clutter(image: np.ndarray, rng: np.random.Generator, count: int,
                side: int = 0) -> np.ndarray:
  """Distractors: `count` solid side x side squares (0 = H // 8), each of one random colour
  whose channels are 0 or 1, not all 0 (RGB: red, green, blue, yellow, magenta, cyan, white;
  grey: white), pasted at uniform random positions (they may cover objects or each other).

  Clutter that carries no label: the image's class is unchanged, so a classifier has to tell
  it from the objects. image float32 (H, W, C) in [0, 1] -> a new array, same shape.
  """
  h, w, c = image.shape
  side = side or max(1, h // 8)
  out = np.array(image, np.float32, copy=True)
  for _ in range(count):
    r, col = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    code = int(rng.integers(1, 2 ** c))           # a non-black binary colour
    out[r:r + side, col:col + side] = [(code >> k) & 1 for k in range(c)]
  return out


def _token_labels(byte_labels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Returns each token's label: its bytes' label when they agree, else -1. int32 (n,)."""
  if len(lengths) == 0:
    return np.zeros(0, np.int32)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  lo = np.minimum.reduceat(byte_labels, starts)
  hi = np.maximum.reduceat(byte_labels, starts)
  return np.where(lo == hi, lo, -1).astype(np.int32)


def _finish_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Packed row (grain's names) -> the batch fields; masks padding."""
  seg = row["inputs_segment_ids"].astype(np.int32)
  real = seg > 0
  out = {"inputs": row["inputs"].astype(np.int32),
         "targets": row["targets"].astype(np.int32),
         "segment_ids": seg,
         "positions": row["inputs_positions"].astype(np.int32),
         "loss_mask": real.astype(np.float32),
         "target_bytes": np.where(real, row["target_bytes"], 0).astype(np.int32)}
  if "labels" in row:
    out["labels"] = np.where(real, row["labels"], -1).astype(np.int32)
  return out


@dataclasses.dataclass
class PadBatch:
  """Stacks examples into a batch, padding up to `batch_size` with masked examples."""
  batch_size: int

  def __call__(self, examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    for key in examples[0]:
      stacked = np.stack([ex[key] for ex in examples])
      missing = self.batch_size - len(examples)
      if missing:
        pad = np.full((missing,) + stacked.shape[1:], -1 if key in ("labels", "label") else 0,
                      stacked.dtype)
        stacked = np.concatenate([stacked, pad])
      out[key] = stacked
    return out


def masked_batch_like(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Returns a batch of the same shapes that contributes nothing (every mask 0, labels -1).

  For multi-process eval: processes can run out of batches at different steps; one that is
  done feeds these until all are, so every process runs the same number of steps.
  """
  return {k: np.full_like(v, -1 if k in ("labels", "label") else 0) for k, v in batch.items()}


def _tuple_slices(state: Any) -> Any:
  """Returns `state` with grain's packing slices turned back into tuples.

  grain's concat-then-split packer compares its remainder slices with the tuple (-1, -1);
  after a JSON round trip (how grain's orbax handler stores iterator state) they are lists,
  the comparison fails, and a restored iterator would drift. This undoes the JSON change.
  """
  if isinstance(state, dict):
    return {k: ({f: tuple(v) for f, v in val.items()} if k == "remainder_slices"
                else _tuple_slices(val)) for k, val in state.items()}
  if isinstance(state, list):
    return [_tuple_slices(v) for v in state]
  return state


class _RestorableIterator(grain.DatasetIterator):
  """Passes batches through; makes `set_state` accept JSON-round-tripped states."""

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(_tuple_slices(state))


class _RestorableDataset(grain.IterDataset):
  """Wraps a dataset so its iterators restore from JSON states (see `_tuple_slices`)."""

  def __iter__(self) -> grain.DatasetIterator:
    return _RestorableIterator(self._parent.__iter__())


def make_dataset(data_cfg: Any, *, split: str, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                 num_epochs: int | None = None) -> grain.IterDataset:
  """Returns the batched grain IterDataset; see `make_iterator` for the arguments."""
  cfg = config.resolve(data_cfg)
  if split not in storage.SPLITS:
    raise ConfigError(f"unknown split '{split}'; use one of: {', '.join(storage.SPLITS)}")
  if batch_size < 1:
    raise ConfigError(f"batch_size={batch_size} must be >= 1 (it is the per-process batch)")
  if not 0 <= process_index < process_count:
    raise TokenlabError(f"process_index={process_index} is outside 0..{process_count - 1}")
  spec = registry.DATASETS[cfg["name"]]
  src = sources.data_source(cfg, split)
  if len(src) < process_count:
    raise TokenlabError(f"{cfg['name']}/{split} has {len(src)} records, fewer than the "
                        f"{process_count} processes; make the split larger")
  # The pipeline runs on record indices; records are read (and tokenized) in the map.
  ds = grain.MapDataset.range(len(src))[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if spec.kind == "image":
    module = spec.load()
    extra = tuple(module.batch_fields(cfg["options"])) if hasattr(module, "batch_fields") else ()
    ds = ds.map(ImageExample(src, extra))
    augs = config.augmentations(cfg)
    if augs and split == "train":
      ds = ds.random_map(AugmentImage(flip="flip" in augs, crop="crop" in augs,
                                      clutter=CLUTTER_MAX if "clutter" in augs else 0),
                         seed=seed)
    ids = ds.to_iter_dataset(_READ)
  elif spec.kind == "audio":
    ids = ds.map(spec.load().Example(src, cfg["options"])).to_iter_dataset(_READ)
  elif spec.kind == "video":
    ids = ds.map(VideoExample(src, spec.load().label_fields(cfg["options"]))).to_iter_dataset(
        _READ)
  else:
    tok = get_tokenizer(cfg)
    byte_labels = getattr(spec.load(), "byte_labels", None)
    with_labels = byte_labels is not None
    tokenize = TokenizeDocument(src, tok, sources.document_fn(cfg), byte_labels,
                                _pretokenize(cfg, split, src, tok))
    ids = ds.map(tokenize).to_iter_dataset(_READ)
    ids = ids.filter(_has_targets)
    keys = ["inputs", "targets", "target_bytes"] + (["labels"] if with_labels else [])
    ids = grain.experimental.ConcatThenSplitIterDataset(
        ids, length_struct={k: cfg["seq_len"] for k in keys})
    ids = ids.map(_finish_row)
    if shuffle:
      # One stream of `process_count` (the elastic stream's shards): each fills a window of
      # its own, so the batch draws from about _ROW_SHUFFLE_WINDOW rows in all (a window is
      # filled before the first row comes out, on every start and restore).
      window = max(_MIN_SHUFFLE_WINDOW, _ROW_SHUFFLE_WINDOW // process_count)
      ids = grain.experimental.WindowShuffleIterDataset(ids, window_size=window, seed=seed)
  ids = ids.batch(batch_size, drop_remainder=False, batch_fn=PadBatch(batch_size))
  if cfg["worker_count"] > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; tokenlab's CLI does not parse absl flags.
      flags.FLAGS.mark_as_parsed()
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg["worker_count"]))
  if spec.kind == "audio" and cfg["mel_bins"]:
    # One jitted call per batch, in this process: after the prefetch, never in a worker.
    ids = ids.map(spec.load().AddMel(cfg["mel_bins"]))
  return _RestorableDataset(ids)


def make_iterator(data_cfg: Any, *, split: str, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """Returns a checkpointable iterator of batches (dicts of numpy arrays).

  Args:
    data_cfg: the data config (`config.data`).
    split: 'train' or 'validation'.
    batch_size: examples (packed rows) per batch on THIS process (global // process_count).
    seed: shuffling seed; the same seed gives the same batches.
    process_index, process_count: this process sees records process_index::process_count.
    shuffle: shuffle records (every epoch anew) and packed rows; False keeps stored order.
    num_epochs: passes over the records; None = forever. With a finite number the last
      batch is padded (loss_mask 0), so every target is seen exactly once per epoch.

  Returns:
    A grain DatasetIterator: next(it), it.get_state(), it.set_state(state).
  """
  return iter(make_dataset(data_cfg, split=split, batch_size=batch_size, seed=seed,
                           process_index=process_index, process_count=process_count,
                           shuffle=shuffle, num_epochs=num_epochs))

