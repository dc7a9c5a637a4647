"""The interface every tokenizer implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np


class Tokenizer(abc.ABC):
  """Maps bytes to token ids and back.

  Attributes:
    vocab_size: number of token ids; every id is in [0, vocab_size).
  """
  vocab_size: int

  @abc.abstractmethod
  def encode(self, data: bytes) -> np.ndarray:
    """Returns the token ids of `data`, int32 (num_tokens,)."""

  def encode_batch(self, docs: Sequence[bytes]) -> list[np.ndarray]:
    """Returns [encode(d) for d in docs]; tokenizers may do it faster."""
    return [self.encode(d) for d in docs]

  def decode(self, ids) -> bytes:
    """Returns the bytes that the token ids (any int sequence) stand for."""
    return b"".join(self.token_bytes(int(i)) for i in np.asarray(ids).reshape(-1))

  @abc.abstractmethod
  def token_bytes(self, token_id: int) -> bytes:
    """Returns the bytes one token stands for (b'' for control tokens)."""

  def token_lengths(self) -> np.ndarray:
    """Returns the byte length of every token, int32 (vocab_size,)."""
    if getattr(self, "_lengths", None) is None:
      self._lengths = np.array([len(self.token_bytes(i)) for i in range(self.vocab_size)],
                               np.int32)
    return self._lengths
