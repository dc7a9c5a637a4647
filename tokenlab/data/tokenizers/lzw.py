"""An LZW-style dictionary tokenizer (as analysed in "Toward a Theory of Tokenization in LLMs").

Training is the LZ78/LZW parse of the training documents: the dictionary starts as the
alphabet (the bytes seen); each step takes the longest dictionary entry w that prefixes the
rest of the document and adds w + (the next byte) as a new entry, until the dictionary holds
`vocab_size` entries. The dictionary is prefix-closed (every prefix of an entry is an entry).
Encoding is greedy longest-prefix matching with that dictionary, walking a trie.

Pure Python (one step per byte): fine for the Markov experiments (MBs), not for corpora.
Not registered in the data pipeline's tokenizer factory; used directly (count-based models).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from tokenlab.data.tokenizers.base import Tokenizer
from tokenlab.errors import TokenlabError


class LZWTokenizer(Tokenizer):
  """Greedy longest-match tokenizer over an LZW dictionary; ids in insertion order."""

  def __init__(self, pieces: Sequence[bytes]):
    self.pieces = [bytes(p) for p in pieces]
    self.vocab_size = len(self.pieces)
    self._trie: dict = {}
    for i, p in enumerate(self.pieces):
      node = self._trie
      for b in p:
        node = node.setdefault(b, {})
      node[-1] = i

  @classmethod
  def train(cls, docs: Iterable[bytes], vocab_size: int) -> "LZWTokenizer":
    docs = [bytes(d) for d in docs]
    alphabet = sorted(set().union(*(set(d) for d in docs))) if docs else []
    if vocab_size < len(alphabet):
      raise TokenlabError(f"LZW vocab_size={vocab_size} is below its alphabet of "
                          f"{len(alphabet)} bytes")
    tok = cls([bytes([b]) for b in alphabet])
    pieces = list(tok.pieces)
    for d in docs:
      i = 0
      while i < len(d) and len(pieces) < vocab_size:
        node, j = tok._trie, i
        while j < len(d) and d[j] in node:
          node = node[d[j]]
          j += 1
        if j < len(d):  # w = d[i:j] is in the dictionary; add w + d[j].
          node[d[j]] = {-1: len(pieces)}
          pieces.append(d[i:j + 1])
        i = j
      if len(pieces) >= vocab_size:
        break
    return cls(pieces)

  def encode(self, data: bytes) -> np.ndarray:
    data = bytes(data)
    out, i = [], 0
    while i < len(data):
      node, j, last = self._trie, i, -1
      while j < len(data) and data[j] in node:
        node = node[data[j]]
        j += 1
        if -1 in node:
          last, end = node[-1], j
      if last < 0:
        raise TokenlabError(f"byte {data[i]:#04x} is not in this LZW tokenizer's alphabet")
      out.append(last)
      i = end
    return np.array(out, np.int32)

  def token_bytes(self, token_id: int) -> bytes:
    return self.pieces[token_id]
