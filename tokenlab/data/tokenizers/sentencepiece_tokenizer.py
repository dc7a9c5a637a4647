"""SentencePiece trained on a dataset's documents, set up to be lossless on bytes.

Normalisation is off (identity rules, no dummy prefix, spaces kept), so decoding the pieces
gives back the input exactly; '\\n' is a user-defined piece so line breaks survive training
on lines. When the vocabulary has room for all 256 byte pieces, byte fallback encodes any
character unseen in training; otherwise such a character is an error that names the fix.
Input must be UTF-8 (SentencePiece works on text).

SentencePiece's BPE model type is used, not its default unigram: the unigram trainer took
minutes on the long whitespace-free Markov sentences, BPE takes under a second.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from tokenlab.data.tokenizers.base import Tokenizer
from tokenlab.errors import TokenlabError

_SPACE = "\u2581"  # SentencePiece's visible space.
_MAX_SENTENCE = 4096  # Bytes per training sentence; longer lines are cut.
_MAX_SENTENCES = 1_000_000


def _sentences(docs: Iterable[bytes]) -> Iterator[str]:
  """Yields training sentences: the documents' lines (cut to _MAX_SENTENCE characters)."""
  for doc in docs:
    for line in doc.decode("utf-8").split("\n"):
      for start in range(0, len(line), _MAX_SENTENCE):
        yield line[start:start + _MAX_SENTENCE]


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model behind the tokenlab interface."""

  def __init__(self, model_proto: bytes):
    self.model_proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self._unk = self._sp.unk_id()
    self._pieces = [self._piece_bytes(i) for i in range(self.vocab_size)]

  def _piece_bytes(self, i: int) -> bytes:
    sp = self._sp
    if sp.is_control(i) or sp.is_unknown(i):
      return b""
    if sp.is_byte(i):
      return bytes([int(sp.id_to_piece(i)[1:-1], 16)])  # '<0xAB>'
    return sp.id_to_piece(i).replace(_SPACE, " ").encode("utf-8")

  # Pickled (e.g. into grain workers) as the model bytes; the processor is rebuilt.
  def __getstate__(self):
    return {"model_proto": self.model_proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])

  @classmethod
  def train(cls, docs: Iterable[bytes], vocab_size: int,
            num_threads: int = 2) -> SentencePieceTokenizer:
    """Trains a BPE-type model on the documents' lines.

    Args:
      docs: UTF-8 training documents.
      vocab_size: wanted vocabulary size (may end smaller on tiny alphabets/corpora).
      num_threads: trainer threads.

    Returns:
      The trained tokenizer.
    """
    docs = list(docs)
    chars = set().union(*(set(d.decode("utf-8")) for d in docs)) - {"\n"}
    # Byte pieces + the seen characters + '\n' + <unk> must fit in the vocabulary.
    byte_fallback = vocab_size >= 256 + len(chars) + 2
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=_sentences(docs), model_writer=model, vocab_size=vocab_size,
          model_type="bpe", character_coverage=1.0, byte_fallback=byte_fallback,
          normalization_rule_name="identity", add_dummy_prefix=False,
          remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
          split_digits=False, user_defined_symbols=["\n"], bos_id=-1, eos_id=-1,
          hard_vocab_limit=False, max_sentence_length=_MAX_SENTENCE * 4,
          input_sentence_size=_MAX_SENTENCES, shuffle_input_sentence=False,
          num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
      raise TokenlabError(f"sentencepiece training failed ({str(e).splitlines()[0]}); try "
                          "another data.vocab_size") from None
    return cls(model.getvalue())

  def encode(self, data: bytes) -> np.ndarray:
    ids = np.asarray(self._sp.encode(bytes(data).decode("utf-8"), out_type=int), np.int32)
    if self._unk >= 0 and (ids == self._unk).any():
      raise TokenlabError("text has characters this sentencepiece model never saw and it is "
                          "too small for byte fallback; raise data.vocab_size (>= 512)")
    return ids

  def token_bytes(self, token_id: int) -> bytes:
    return self._pieces[token_id]
