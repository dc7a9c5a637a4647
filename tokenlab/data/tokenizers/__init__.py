"""Tokenizers: bytes, sentencepiece, a plain byte-level BPE and LiB, behind one interface.

`get_tokenizer(data_cfg)` returns the tokenizer a data config names. Trained tokenizers are
trained once on the dataset's train split and cached in the data dir under
`tokenizers/<dataset>-<options hash>-<kind><vocab>.<ext>`, so every process and every run
with the same dataset, options and vocabulary shares one file. Training holds a file lock
(local disks) and the file is written under a temporary name then renamed, so concurrent
processes never read half a file.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from etils import epath

from tokenlab.data.tokenizers.base import Tokenizer
from tokenlab.data.tokenizers.bpe import BPETokenizer
from tokenlab.data.tokenizers.bytes_tokenizer import BytesTokenizer
from tokenlab.data.tokenizers.lib import LiBTokenizer
from tokenlab.data.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = ["Tokenizer", "BytesTokenizer", "BPETokenizer", "LiBTokenizer",
           "SentencePieceTokenizer", "get_tokenizer", "tokenizer_path", "train_documents"]

_MAX_TRAIN_BYTES = 16 << 20  # Trained tokenizers see at most this much of the train split.
_CACHE: dict[str, Tokenizer] = {}


def tokenizer_path(cfg: dict[str, Any]) -> epath.Path:
  """Returns where the trained tokenizer of a resolved data config is cached."""
  from tokenlab.data import storage  # pylint: disable=g-import-not-at-top
  ext = "json" if cfg["tokenizer"] in ("bpe", "lib") else "model"
  name = (f"{cfg['name']}-{storage.options_hash(cfg['options'])}-"
          f"{cfg['tokenizer']}{cfg['vocab_size']}.{ext}")
  return epath.Path(storage.resolve_data_dir(cfg["data_dir"])) / "tokenizers" / name


def train_documents(cfg: dict[str, Any]) -> list[bytes]:
  """Returns the train split's documents (up to 16 MiB, in stored order) of a resolved cfg."""
  from tokenlab.data import sources  # pylint: disable=g-import-not-at-top
  src = sources.data_source(cfg, "train")
  doc = sources.document_fn(cfg)
  docs, total = [], 0
  for i in range(len(src)):
    docs.append(bytes(doc(src[i])))
    total += len(docs[-1])
    if total >= _MAX_TRAIN_BYTES:
      break
  return docs


def _load(kind: str, data: bytes) -> Tokenizer:
  if kind == "bpe":
    return BPETokenizer.from_json(data.decode())
  if kind == "lib":
    return LiBTokenizer.from_json(data.decode())
  return SentencePieceTokenizer(data)


def _train(kind: str, docs: list[bytes], vocab_size: int) -> tuple[Tokenizer, bytes]:
  if kind == "bpe":
    tok = BPETokenizer.train(docs, vocab_size)
    return tok, tok.to_json().encode()
  if kind == "lib":   # LiB's learner with its defaults, seed 0 (tokenlab/data/tokenizers/lib.py)
    tok = LiBTokenizer.train(docs, vocab_size)
    return tok, tok.to_json().encode()
  tok = SentencePieceTokenizer.train(docs, vocab_size)
  return tok, tok.model_proto


def get_tokenizer(data_cfg: Any) -> Tokenizer:
  """Returns the tokenizer of a data config, training and caching it on first use.

  Args:
    data_cfg: a data config (ConfigDict or dict; validated here).

  Returns:
    The tokenizer; for image datasets, the bytes tokenizer (unused).
  """
  from tokenlab.data import config, storage  # pylint: disable=g-import-not-at-top
  cfg = config.resolve(data_cfg)
  kind = cfg["tokenizer"]
  if kind == "bytes":
    return BytesTokenizer()
  path = tokenizer_path(cfg)
  key = os.fspath(path)
  if key in _CACHE:
    return _CACHE[key]
  if not path.exists():
    with storage.build_lock(path.parent / f".{path.name}.lock"):
      if not path.exists():
        tok, blob = _train(kind, train_documents(cfg), cfg["vocab_size"])
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(blob)
        tmp.rename(path)
        _CACHE[key] = tok
        return tok
  tok = _load(kind, path.read_bytes())
  _CACHE[key] = tok
  return tok
