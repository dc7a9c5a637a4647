"""The identity tokenizer: one token per byte, id = byte value."""

from __future__ import annotations

import numpy as np

from tokenlab.data.tokenizers.base import Tokenizer


class BytesTokenizer(Tokenizer):
  """id = byte value; vocab_size 256."""
  vocab_size = 256

  def encode(self, data: bytes) -> np.ndarray:
    return np.frombuffer(bytes(data), np.uint8).astype(np.int32)

  def decode(self, ids) -> bytes:
    return np.asarray(ids, np.int64).reshape(-1).astype(np.uint8).tobytes()

  def token_bytes(self, token_id: int) -> bytes:
    return bytes([token_id])
