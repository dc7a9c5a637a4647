"""The tokenizer-transfer harness (issue 20): initialiser invariants, exact swaps, frozen
adaptation, and `tokenlab transfer` end to end on one tiny trained run."""

import json
import os

import numpy as np
import pytest
from flax import traverse_util

from tokenlab.config import load_config
from tokenlab.data.tokenizers import BPETokenizer, SentencePieceTokenizer
from tokenlab.errors import TokenlabError
from tokenlab.train.inference import load_config_from_workdir
from tokenlab.train.init_from import load_params
from tokenlab.transfer import harness
from tokenlab.transfer.initializers import (Embeddings, decompose, get_initializer,
                                            shared_tokens, vocab_bytes)

DOCS = [s.encode() for s in (
    "Delete selected items", "Add another item", "the items were deleted", "Übersicht der "
    "Änderungen", "Straße und Grüße", "Select all items", "delete", "Germany", "January",
    "Save and add another", "Save and continue editing", "Change password")] * 3


def _flat(tree):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _rows(vocab, d=6, seed=0):
  rng = np.random.default_rng(seed)
  return Embeddings(rng.normal(size=(vocab, d)).astype(np.float32),
                    rng.normal(size=(vocab, d)).astype(np.float32))


@pytest.mark.parametrize("new_kind", ["bpe", "sentencepiece"])
def test_mean_subtokens_keeps_shared_rows_and_averages_pieces(new_kind):
  # T0: SentencePiece with byte pieces; it cannot encode half a UTF-8 character, so the
  # byte-level BPE tokens that split 'Ü' take the greedy-match path. New: BPE or SP.
  old_tok = SentencePieceTokenizer.train(DOCS, 330)
  new_tok = (BPETokenizer.train(DOCS, 300) if new_kind == "bpe"
             else SentencePieceTokenizer.train(DOCS, 90))
  old, fresh = _rows(old_tok.vocab_size, seed=1), _rows(new_tok.vocab_size, seed=2)
  new = get_initializer("mean_subtokens")(old_tok, old, new_tok, fresh=fresh, aux={})
  shared = shared_tokens(old_tok, new_tok)
  old_bytes, new_bytes = vocab_bytes(old_tok), vocab_bytes(new_tok)
  assert len(shared) > 10 and len(shared) < new_tok.vocab_size
  averaged = 0
  for j, b in enumerate(new_bytes):
    if j in shared:
      assert old_bytes[shared[j]] == b
      np.testing.assert_array_equal(new.input[j], old.input[shared[j]])
      np.testing.assert_array_equal(new.output[j], old.output[shared[j]])
      continue
    pieces = decompose(old_tok, b)
    if pieces is None:   # no T0 spelling: the fresh row
      np.testing.assert_array_equal(new.input[j], fresh.input[j])
      continue
    assert b"".join(old_bytes[i] for i in pieces) == b   # the pieces spell the token
    np.testing.assert_allclose(new.input[j], old.input[pieces].mean(0), rtol=1e-6)
    np.testing.assert_allclose(new.output[j], old.output[pieces].mean(0), rtol=1e-6)
    averaged += len(pieces) > 1
  assert averaged > 5
  # A token that is not whole UTF-8 (BPE may cut a character) is spelled by greedy longest
  # match; T0's byte pieces spell the cut character.
  cut = "Straß".encode()[:-1]   # b"Stra\xc3"
  pieces = decompose(old_tok, cut)
  assert not _utf8(cut) and b"".join(old_bytes[i] for i in pieces) == cut
  assert old_bytes[pieces[-1]] == b"\xc3"


def _utf8(b):
  try:
    b.decode("utf-8")
    return True
  except UnicodeDecodeError:
    return False


def test_shared_tokens_of_a_tokenizer_with_itself_is_the_identity():
  tok = SentencePieceTokenizer.train(DOCS, 300)   # byte pieces and equal-bytes pieces
  assert len(set(vocab_bytes(tok))) < tok.vocab_size
  assert shared_tokens(tok, tok) == {i: i for i in range(tok.vocab_size)}


def test_bad_requests_name_the_fix():
  with pytest.raises(TokenlabError, match="KIND:VOCAB"):
    harness.parse_target("wordpiece:100")
  with pytest.raises(TokenlabError, match="mean_subtokens"):
    get_initializer("mean_subtoken")
  a, b = BPETokenizer.train(DOCS, 300), BPETokenizer.train(DOCS, 280)
  with pytest.raises(TokenlabError, match="own tokenizer"):
    get_initializer("identity")(a, _rows(a.vocab_size), b, fresh=_rows(b.vocab_size), aux={})
  assert harness.parse_target("sentencepiece:512@de").slug == "sentencepiece512-de"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """One tiny T0 run (SentencePiece 512 on English) shared by the tests below. Its parameters
  are the model's initialisation written by `save_run` (no training: every check here is
  structural, and a training compile would double this file's time); the trainer's own
  evaluation is compared with the harness's on the adapted run below."""
  workdir = str(tmp_path_factory.mktemp("t0"))
  config = load_config("experiments/transfer.py:size=tiny")
  harness.save_run(config, harness.fresh_params(config.model, seed=3), workdir)
  return workdir


def test_identity_swap_reproduces_the_run_exactly(base_run):
  config, params = load_config_from_workdir(base_run), load_params(base_run)
  docs = harness.held_out_documents(config.data)
  from tokenlab.data import get_tokenizer
  tok = get_tokenizer(config.data)
  before = harness.evaluate(config, params, tok, docs)
  for init in ("identity", "mean_subtokens"):   # every token shared: both are the identity
    new_config, new_params = harness.swap_tokenizer(config, params, config.data, init)
    for k, v in _flat(params).items():
      np.testing.assert_array_equal(_flat(new_params)[k], v, err_msg=f"{init}: {k}")
  after = harness.evaluate(new_config, new_params, tok, docs)
  assert after == before
  assert before["scored_chars"] > 1000
  # Untrained: about log2(512) bits per token, spread over the token's characters.
  assert 9.0 * 0.5 < before["bits_per_char"] * before["scored_chars"] / before[
      "scored_tokens"] < 9.0 * 1.1


def test_cli_transfer_end_to_end_and_embeddings_only_adaptation(base_run, tmp_path):
  from tokenlab.cli import main
  src = base_run
  out = str(tmp_path / "transfer")
  assert main(["transfer", "--from", src, "--tokenizer", "bpe:300", "--init",
               "mean_subtokens,identity", "--workdir", out, "--steps", "2", "--mode",
               "embeddings", "--lr", "1e-2"]) == 0
  with open(os.path.join(out, "results.json")) as f:
    rows = json.load(f)["rows"]
  assert [r["init"] for r in rows] == ["T0", "mean_subtokens", "identity"]
  t0, row, refused = rows
  # identity refuses another vocabulary: a row saying why, no adaptation, the rest ran.
  assert "own tokenizer" in refused["zero_shot"]["error"] and "embeddings" not in refused
  assert "| bpe:300 | identity | 2 |" in open(os.path.join(out, "results.md")).read()
  assert row["new_vocab"] == 300 and row["embeddings"]["bits_per_char"] > 0
  assert row["length_ratio"] == pytest.approx(row["tokens_per_char"] / t0["tokens_per_char"])
  assert "| bpe:300 | mean_subtokens | 2 |" in open(os.path.join(out, "results.md")).read()
  # Embeddings-only adaptation moved embedding rows and nothing else, bit for bit.
  where = os.path.join(out, "bpe300", "mean_subtokens")
  swapped = _flat(load_params(os.path.join(where, "swapped")))
  adapted = _flat(load_params(os.path.join(where, "adapt_embeddings_2")))
  assert swapped.keys() == adapted.keys()
  for k, v in swapped.items():
    if k.startswith(("embed/", "lm_head/")):
      assert not np.array_equal(adapted[k], v), f"{k} did not train"
    else:
      np.testing.assert_array_equal(adapted[k], v, err_msg=k)
  # The harness scores the adapted run as the trainer's own final evaluation did (same text,
  # same packing and batches: bits per char and per byte are comparable with training logs).
  with open(os.path.join(where, "adapt_embeddings_2", "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f if "eval/bits_per_byte" in line][-1]
  np.testing.assert_allclose(row["embeddings"]["bits_per_byte"], logged["eval/bits_per_byte"],
                             rtol=1e-6)
  # The swapped run is a run: its non-embedding arrays are T0's own.
  source = _flat(load_params(src))
  for k, v in source.items():
    if not k.startswith(("embed/", "lm_head/")):
      np.testing.assert_array_equal(swapped[k], v, err_msg=k)
