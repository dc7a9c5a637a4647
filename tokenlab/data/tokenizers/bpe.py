"""A plain byte-level BPE: trainer, encoder, and a JSON file format.

Ids 0..len(alphabet)-1 are the single bytes of the alphabet (sorted); merge j makes id
len(alphabet)+j from the pair (a, b). The alphabet is either all 256 bytes or only the bytes
seen in training: small vocabularies (the Markov experiments use 16..256 tokens over '0'/'1')
need the latter; encoding a byte outside the alphabet is then an error.

Training counts adjacent pairs inside documents (never across them), merges the most frequent
pair everywhere (ties: the smallest (a, b)), and repeats, until the vocabulary is full or no
pair occurs twice. A merge is applied left to right without overlaps, so 'aaa' with the merge
(a, a) becomes [aa, a]. Encoding applies, while any applies, the lowest-rank merge present;
this reproduces exactly the segmentation training produced on its own corpus.

All loops are over merges, never over bytes: each step is a few numpy passes over the ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

from tokenlab.data.tokenizers.base import Tokenizer
from tokenlab.errors import TokenlabError

_NO_RANK = np.iinfo(np.int64).max
# Above this many (vocab_size ** 2) pair keys, counting uses np.unique instead of bincount.
_MAX_BINCOUNT = 1 << 24


def merge_pair(ids: np.ndarray, a: int, b: int, new_id: int) -> np.ndarray:
  """Replaces each (a, b) in `ids` by `new_id`, left to right, without overlaps.

  Args:
    ids: int array (n,); negative values are separators that never match.
    a, b: the pair to merge.
    new_id: the id that replaces it.

  Returns:
    The merged ids, same dtype, (n - number of merges,).
  """
  if len(ids) < 2:
    return ids
  hit = (ids[:-1] == a) & (ids[1:] == b)
  pos = np.flatnonzero(hit)
  if len(pos) == 0:
    return ids
  if a == b:
    # In a run of hits at i, i+1, ... (a run of a's), greedy left-to-right keeps every other.
    starts = np.flatnonzero(hit & ~np.concatenate([[False], hit[:-1]]))
    run_start = starts[np.searchsorted(starts, pos, side="right") - 1]
    pos = pos[(pos - run_start) % 2 == 0]
  keep = np.ones(len(ids), bool)
  keep[pos + 1] = False
  out = ids.copy()
  out[pos] = new_id
  return out[keep]


class BPETokenizer(Tokenizer):
  """Byte-level BPE over an alphabet of bytes plus learned merges."""

  def __init__(self, alphabet: Sequence[int], merges: Sequence[tuple[int, int]]):
    """Builds the tokenizer.

    Args:
      alphabet: the distinct base bytes, sorted.
      merges: (a, b) id pairs in rank order; merge j makes id len(alphabet) + j.
    """
    self.alphabet = [int(x) for x in alphabet]
    if sorted(set(self.alphabet)) != self.alphabet:
      raise ValueError("alphabet must be sorted distinct byte values")
    self.merges = [(int(a), int(b)) for a, b in merges]
    self.vocab_size = len(self.alphabet) + len(self.merges)
    self._byte_to_id = np.full(256, -1, np.int64)
    self._byte_to_id[self.alphabet] = np.arange(len(self.alphabet))
    self._pieces = [bytes([x]) for x in self.alphabet]
    for a, b in self.merges:
      if not (0 <= a < len(self._pieces) and 0 <= b < len(self._pieces)):
        raise ValueError(f"merge ({a}, {b}) refers to an id not yet made")
      self._pieces.append(self._pieces[a] + self._pieces[b])
    keys = np.array([a * self.vocab_size + b for a, b in self.merges], np.int64)
    order = np.argsort(keys, kind="stable")
    self._keys, self._ranks = keys[order], order.astype(np.int64)

  # --- training -------------------------------------------------------------------------

  @classmethod
  def train(cls, docs: Iterable[bytes], vocab_size: int,
            alphabet: str = "auto") -> BPETokenizer:
    """Learns merges from documents.

    Args:
      docs: training documents (pairs never cross a document boundary).
      vocab_size: wanted vocabulary size (alphabet + merges); training stops early when no
        pair occurs twice.
      alphabet: 'all' (256 bytes), 'seen' (bytes in `docs`), or 'auto' = 'all' when
        vocab_size > 256 else 'seen'.

    Returns:
      The trained tokenizer.
    """
    docs = [bytes(d) for d in docs]
    seen = sorted(set().union(*(set(d) for d in docs))) if docs else []
    if alphabet == "auto":
      alphabet = "all" if vocab_size > 256 else "seen"
    base = list(range(256)) if alphabet == "all" else seen
    if vocab_size < len(base):
      raise TokenlabError(f"BPE vocab_size={vocab_size} is below its alphabet of {len(base)} "
                          f"bytes; set data.vocab_size >= {len(base)}")
    lut = np.full(256, -1, np.int64)
    lut[base] = np.arange(len(base))
    # One array for all documents, separated by -1 so no pair spans two of them.
    parts = []
    for d in docs:
      parts += [lut[np.frombuffer(d, np.uint8)], np.array([-1])]
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    merges = []
    for new_id in range(len(base), vocab_size):
      if len(ids) < 2:
        break
      left, right = ids[:-1], ids[1:]
      valid = (left >= 0) & (right >= 0)
      keys = left[valid] * vocab_size + right[valid]
      if len(keys) == 0:
        break
      if new_id * vocab_size <= _MAX_BINCOUNT:
        counts = np.bincount(keys)
        best = int(np.argmax(counts))  # First maximum = smallest (a, b) among ties.
        count = counts[best]
      else:
        uniq, counts = np.unique(keys, return_counts=True)
        best, count = int(uniq[np.argmax(counts)]), counts.max()
      if count < 2:
        break
      a, b = divmod(best, vocab_size)
      merges.append((a, b))
      ids = merge_pair(ids, a, b, new_id)
    return cls(base, merges)

  # --- encoding -------------------------------------------------------------------------

  def _byte_ids(self, data: bytes) -> np.ndarray:
    ids = self._byte_to_id[np.frombuffer(bytes(data), np.uint8)]
    if len(ids) and ids.min() < 0:
      bad = bytes(data)[int(np.argmin(ids))]
      raise TokenlabError(f"byte {bad:#04x} is not in this BPE tokenizer's alphabet (trained "
                          "on other bytes); use data.vocab_size > 256 for a full-byte alphabet")
    return ids

  def _apply_merges(self, ids: np.ndarray) -> np.ndarray:
    """Merges `ids` (int64, -1 = document separator) down to tokens."""
    n_alpha = len(self.alphabet)
    if len(ids) > 8 * len(self.merges):
      # Long input: nearly every merge occurs, so applying all of them in rank order (two
      # compares per merge) beats searching for the lowest-rank pair present each step.
      for rank, (a, b) in enumerate(self.merges):
        ids = merge_pair(ids, a, b, n_alpha + rank)
      return ids
    while len(ids) >= 2 and len(self._keys):
      left, right = ids[:-1], ids[1:]
      keys = left * self.vocab_size + right
      idx = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
      found = (self._keys[idx] == keys) & (left >= 0) & (right >= 0)
      ranks = np.where(found, self._ranks[idx], _NO_RANK)
      rank = int(ranks.min())
      if rank == _NO_RANK:
        break
      a, b = self.merges[rank]
      ids = merge_pair(ids, a, b, n_alpha + rank)
    return ids

  def encode(self, data: bytes) -> np.ndarray:
    return self._apply_merges(self._byte_ids(data)).astype(np.int32)

  def encode_batch(self, docs: Sequence[bytes]) -> list[np.ndarray]:
    """Encodes many documents in one pass (the loop runs once for all of them).

    Same result as [encode(d) for d in docs], much faster for many short documents.
    """
    parts = []
    for d in docs:
      parts += [self._byte_ids(d), np.array([-1])]
    if not parts:
      return []
    ids = self._apply_merges(np.concatenate(parts))
    cuts = np.flatnonzero(ids < 0)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [ids[a:b].astype(np.int32) for a, b in zip(starts, cuts)]

  def token_bytes(self, token_id: int) -> bytes:
    return self._pieces[token_id]

  # --- files ----------------------------------------------------------------------------

  def to_json(self) -> str:
    """Returns the tokenizer as JSON text ({'type', 'alphabet', 'merges'})."""
    return json.dumps({"type": "bpe", "alphabet": self.alphabet, "merges": self.merges})

  @classmethod
  def from_json(cls, text: str) -> BPETokenizer:
    """Returns the tokenizer that `to_json` wrote."""
    obj = json.loads(text)
    if obj.get("type") != "bpe":
      raise TokenlabError("not a tokenlab BPE file; delete it to retrain")
    return cls(obj["alphabet"], [tuple(m) for m in obj["merges"]])
