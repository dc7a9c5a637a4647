"""Tokenizers: lossless round trips, token_bytes consistency, BPE exactness, caching."""

import pickle

import numpy as np
import pytest

from tokenlab import data
from tokenlab.data import markov, pysrc
from tokenlab.data.tokenizers import (BPETokenizer, BytesTokenizer, SentencePieceTokenizer,
                                      tokenizer_path)
from tokenlab.data.tokenizers.bpe import merge_pair
from tokenlab.errors import TokenlabError


def _markov_docs(num=60, length=512):
  opts = {"k": 4, "p": 0.8, "q": 0.8, "length": length, "num_train": num,
          "num_validation": 1, "seed": 0}
  return [bytes(d + ord("0")) for d in markov.documents("train", opts)]


@pytest.fixture(scope="module")
def pysrc_docs():
  files = pysrc.split_files("train", {"validation_percent": 5})
  return [files[p] for p in sorted(files)[:25]]


def _check_round_trip(tok, doc: bytes):
  ids = tok.encode(doc)
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert ((ids >= 0) & (ids < tok.vocab_size)).all()
  assert tok.decode(ids) == doc
  assert b"".join(tok.token_bytes(int(i)) for i in ids) == doc
  assert tok.token_lengths()[ids].sum() == len(doc)
  return ids


def test_bytes_tokenizer_round_trips_random_bytes():
  tok = BytesTokenizer()
  doc = np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes()
  ids = _check_round_trip(tok, doc)
  assert tok.vocab_size == 256 and len(ids) == 5000 and ids[3] == doc[3]


def test_merge_pair_is_left_to_right_without_overlap():
  ids = np.array([1, 1, 1, 2, 1, 1, 1, 1, -1, 1, 1, 2])
  np.testing.assert_array_equal(merge_pair(ids, 1, 1, 9), [9, 1, 2, 9, 9, -1, 9, 2])
  np.testing.assert_array_equal(merge_pair(ids, 1, 2, 7), [1, 1, 7, 1, 1, 1, 1, -1, 1, 7])


def test_bpe_learns_the_obvious_merges_and_never_crosses_documents():
  # 'ab' is in every document; 'ba' only appears across document boundaries.
  tok = BPETokenizer.train([b"ab", b"ab", b"ab", b"xy"], vocab_size=6)
  assert tok.alphabet == list(b"abxy")
  assert tok.merges == [(0, 1)]  # Stops: no other pair occurs twice.
  assert tok.vocab_size == 5 and tok.token_bytes(4) == b"ab"
  np.testing.assert_array_equal(tok.encode(b"abab"), [4, 4])


def test_bpe_encoding_reproduces_training_segmentation():
  docs = _markov_docs(num=20, length=256)
  tok = BPETokenizer.train(docs, vocab_size=40)
  assert tok.vocab_size == 40 and tok.alphabet == [48, 49]
  # Re-apply the merges in order, as training did, and compare with encode().
  for doc in docs[:5]:
    ids = np.frombuffer(doc, np.uint8).astype(np.int64) - 48
    for rank, (a, b) in enumerate(tok.merges):
      ids = merge_pair(ids, a, b, 2 + rank)
    np.testing.assert_array_equal(tok.encode(doc), ids)
  assert np.mean([len(tok.encode(d)) for d in docs]) < 256 / 3  # It compresses.


def test_bpe_round_trips_random_and_real_text_and_serialises(pysrc_docs):
  rand = [np.random.default_rng(i).integers(0, 256, 3000, np.uint8).tobytes()
          for i in range(3)]
  tok = BPETokenizer.train(rand + pysrc_docs[:5], vocab_size=300)
  assert tok.alphabet == list(range(256))  # vocab > 256: the full byte alphabet.
  for doc in rand + pysrc_docs[5:8] + [b"", b"\x00"]:
    _check_round_trip(tok, doc)
  again = BPETokenizer.from_json(tok.to_json())
  for doc in pysrc_docs[5:8]:
    np.testing.assert_array_equal(again.encode(doc), tok.encode(doc))
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(tok)).encode(rand[0]),
                                tok.encode(rand[0]))


def test_bpe_small_alphabet_rejects_unseen_bytes():
  tok = BPETokenizer.train(_markov_docs(num=5, length=64), vocab_size=8)
  with pytest.raises(TokenlabError, match="byte 0x32 is not in"):
    tok.encode(b"0012")


def test_sentencepiece_round_trips_markov_real_and_random_unicode(pysrc_docs):
  small = SentencePieceTokenizer.train(_markov_docs(), vocab_size=32)
  assert small.vocab_size <= 32
  for doc in _markov_docs(num=3, length=777):
    ids = _check_round_trip(small, doc)
    assert len(ids) < len(doc) / 2
  tok = SentencePieceTokenizer.train(pysrc_docs, vocab_size=600)
  assert tok.vocab_size == 600
  val = pysrc.split_files("validation", {"validation_percent": 5})
  for doc in list(val.values())[:2]:
    ids = _check_round_trip(tok, doc)
    assert len(ids) < len(doc) / 1.5
  rng = np.random.default_rng(0)
  text = "".join(chr(c) for c in rng.integers(32, 0x3000, 400)) + "  \n\n\t x\u00e9\u4e2d"
  _check_round_trip(tok, text.encode("utf-8"))  # Unseen characters go through bytes.
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone.encode(doc), tok.encode(doc))


def test_get_tokenizer_trains_once_and_caches_by_options_and_vocab(tmp_path):
  cfg = data.default_data_config("markov")
  cfg.data_dir = str(tmp_path)
  cfg.options.update({"num_train": 30, "num_validation": 2, "length": 256})
  cfg.tokenizer, cfg.vocab_size = "bpe", 24
  tok = data.get_tokenizer(cfg)
  path = tokenizer_path(data.config.resolve(cfg))
  assert path.exists() and tok.vocab_size == 24 == data.vocab_size(cfg)
  # A fresh load from the file (not the in-process cache) encodes the same way.
  loaded = BPETokenizer.from_json(path.read_text())
  doc = _markov_docs(num=1, length=300)[0]
  np.testing.assert_array_equal(loaded.encode(doc), tok.encode(doc))
  cfg.vocab_size = 20
  assert tokenizer_path(data.config.resolve(cfg)) != path
  assert data.get_tokenizer(cfg).vocab_size == 20
  cfg.options.k = 8
  assert tokenizer_path(data.config.resolve(cfg)).name != path.name
  cfg.tokenizer, cfg.vocab_size = "sentencepiece", 24
  sp = data.get_tokenizer(cfg)
  assert isinstance(sp, SentencePieceTokenizer) and sp.vocab_size <= 24
  assert tokenizer_path(data.config.resolve(cfg)).exists()


def test_bpe_encode_batch_equals_encode_per_document(pysrc_docs):
  docs = _markov_docs(num=30, length=200) + [b"", b"0", b"01"]
  tok = BPETokenizer.train(docs, vocab_size=64)
  batch = tok.encode_batch(docs)
  assert len(batch) == len(docs)
  for ids, doc in zip(batch, docs):
    np.testing.assert_array_equal(ids, tok.encode(doc))
  big = BPETokenizer.train(pysrc_docs[:4], vocab_size=400)
  for ids, doc in zip(big.encode_batch(pysrc_docs[4:7]), pysrc_docs[4:7]):
    np.testing.assert_array_equal(ids, big.encode(doc))
    # encode() of a long file takes the apply-every-merge path; a short slice the
    # lowest-rank-first path: both must agree with the batch on the same text.
    np.testing.assert_array_equal(big.encode(doc[:50]), big.encode_batch([doc[:50]])[0])
