"""The grain pipeline: batch layout, determinism, per-process sharding, exact eval, restore."""

import json

import numpy as np
import orbax.checkpoint as ocp
import pytest

import grain
from tokenlab import data
from tokenlab.data import markov

LENGTH = 48  # Markov document length (bytes); short so a few rows hold many documents.


@pytest.fixture(scope="module")
def markov_cfg(tmp_path_factory):
  cfg = data.default_data_config("markov")
  cfg.data_dir = str(tmp_path_factory.mktemp("tfds"))
  cfg.options.update({"num_train": 40, "num_validation": 12, "length": LENGTH})
  cfg.seq_len = 64
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _documents(batches):
  """Rebuilds the documents of an unshuffled single-epoch stream (bytes tokenizer)."""
  inputs = np.concatenate([b["inputs"][b["loss_mask"] > 0] for b in batches])
  targets = np.concatenate([b["targets"][b["loss_mask"] > 0] for b in batches])
  # Each document contributes LENGTH - 1 (input, target) pairs, in order.
  n = len(inputs) // (LENGTH - 1)
  assert n * (LENGTH - 1) == len(inputs)
  docs = []
  for i in range(n):
    sl = slice(i * (LENGTH - 1), (i + 1) * (LENGTH - 1))
    docs.append(bytes([inputs[sl][0]]) + targets[sl].astype(np.uint8).tobytes())
    assert (inputs[sl][1:] == targets[sl][:-1]).all()  # Inputs are targets shifted.
  return docs


def test_batch_layout(markov_cfg):
  b = next(data.make_iterator(markov_cfg, split="train", batch_size=3, seed=0))
  assert set(b) == {"inputs", "targets", "segment_ids", "positions", "loss_mask",
                    "target_bytes"}
  for k, v in b.items():
    assert v.shape == (3, 64), k
    assert v.dtype == (np.float32 if k == "loss_mask" else np.int32), k
  assert set(np.unique(b["inputs"])) <= {48, 49}  # '0' and '1'
  seg, pos = b["segment_ids"], b["positions"]
  # Positions count up inside a segment and restart where the segment id changes.
  same = seg[:, 1:] == seg[:, :-1]
  assert (pos[:, 1:][same] == pos[:, :-1][same] + 1).all()
  assert (pos[:, 1:][~same] == 0).all()
  assert (b["target_bytes"] == b["loss_mask"]).all()  # One byte per bytes-token.
  assert data.vocab_size(markov_cfg) == 256
  spec = data.batch_spec(markov_cfg, 3)
  assert {k: (s.shape, s.dtype) for k, s in spec.items()} == {
      k: (v.shape, v.dtype) for k, v in b.items()}


def test_same_seed_same_batches_other_seed_differs(markov_cfg):
  a = _take(data.make_iterator(markov_cfg, split="train", batch_size=2, seed=7), 5)
  b = _take(data.make_iterator(markov_cfg, split="train", batch_size=2, seed=7), 5)
  c = _take(data.make_iterator(markov_cfg, split="train", batch_size=2, seed=8), 5)
  _assert_batches_equal(a, b)
  assert any((x["inputs"] != y["inputs"]).any() for x, y in zip(a, c))


def test_eval_sees_every_validation_document_once_with_padded_last_batch(markov_cfg):
  batches = list(data.make_iterator(markov_cfg, split="validation", batch_size=4, seed=0,
                                    shuffle=False, num_epochs=1))
  assert all(b["inputs"].shape == (4, 64) for b in batches)
  assert batches[-1]["loss_mask"][-1].sum() == 0  # Padding rows are masked out.
  docs = _documents(batches)
  opts = markov_cfg.options.to_dict()
  expected = {bytes(d + ord("0")) for d in markov.documents("validation", opts)}
  assert len(docs) == 12 and set(docs) == expected
  total = sum(b["target_bytes"].sum() for b in batches)
  assert total == 12 * (LENGTH - 1)
  from tokenlab.data.pipeline import masked_batch_like
  filler = masked_batch_like(batches[0])
  assert {k: v.shape for k, v in filler.items()} == {k: v.shape for k, v in batches[0].items()}
  assert filler["loss_mask"].sum() == 0 and filler["target_bytes"].sum() == 0


def test_processes_see_disjoint_records_covering_the_split(markov_cfg):
  seen = []
  for index in range(3):
    batches = list(data.make_iterator(markov_cfg, split="validation", batch_size=2, seed=0,
                                      process_index=index, process_count=3, shuffle=False,
                                      num_epochs=1))
    seen.append(set(_documents(batches)))
  assert [len(s) for s in seen] == [4, 4, 4]
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  opts = markov_cfg.options.to_dict()
  assert set().union(*seen) == {bytes(d + 48) for d in markov.documents("validation", opts)}


def test_epochs_reshuffle_and_cover_all_training_documents(markov_cfg):
  # Two epochs through the pipeline (shuffled, then packed and row-shuffled): every
  # training document appears among the rows, and the stream ends.
  it = data.make_iterator(markov_cfg, split="train", batch_size=4, seed=3, num_epochs=2)
  batches = list(it)
  tokens = sum(b["loss_mask"].sum() for b in batches)
  assert tokens == 2 * 40 * (LENGTH - 1)


def test_iterator_restores_exactly_through_orbax(markov_cfg, tmp_path):
  it = data.make_iterator(markov_cfg, split="train", batch_size=2, seed=1)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = _take(it, 4)
  fresh = data.make_iterator(markov_cfg, split="train", batch_size=2, seed=1)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 4), expected)
  # And the state round trip without orbax, mid-window of the row shuffle.
  state = fresh.get_state()
  after = _take(fresh, 2)
  again = data.make_iterator(markov_cfg, split="train", batch_size=2, seed=1)
  again.set_state(state)
  _assert_batches_equal(_take(again, 2), after)


def test_bad_arguments_raise_user_errors(markov_cfg):
  from tokenlab.errors import TokenlabError
  with pytest.raises(TokenlabError, match="unknown split 'valid'"):
    data.make_iterator(markov_cfg, split="valid", batch_size=2, seed=0)
  with pytest.raises(TokenlabError, match="fewer than the 100 processes"):
    data.make_iterator(markov_cfg, split="validation", batch_size=2, seed=0,
                       process_index=0, process_count=100)


def test_bpe_pretokenized_split_gives_the_same_batches_as_encoding_on_the_fly(
    markov_cfg, monkeypatch):
  from tokenlab.data import pipeline
  cfg = markov_cfg.copy_and_resolve_references()
  cfg.tokenizer, cfg.vocab_size = "bpe", 32
  kw = dict(split="validation", batch_size=3, seed=0, shuffle=False, num_epochs=1)
  fast = list(data.make_iterator(cfg, **kw))
  monkeypatch.setattr(pipeline, "_pretokenize", lambda *a: None)
  slow = list(data.make_iterator(cfg, **kw))
  _assert_batches_equal(fast, slow)
  # BPE tokens stand for several bytes; all bytes but each document's first are targets.
  tok = data.get_tokenizer(cfg)
  first = sum(len(tok.token_bytes(int(tok.encode(bytes(d + 48))[0])))
              for d in markov.documents("validation", cfg.options.to_dict()))
  total = sum(b["target_bytes"].sum() for b in fast)
  assert total == 12 * LENGTH - first
  assert sum(b["loss_mask"].sum() for b in fast) < total / 2


def test_tokenize_transform_repr_stays_short():
  """grain names transforms by their repr when it builds iterator statistics; the repr must
  not print the split's records or pre-tokenized arrays (seconds per iterator)."""
  from tokenlab.data import pipeline
  from tokenlab.data.tokenizers import BytesTokenizer
  t = pipeline.TokenizeDocument([b"x" * 50] * 5000, BytesTokenizer(), bytes,
                                pretokenized=[np.arange(50)] * 5000)
  assert len(repr(t)) < 100 and len(str(t)) < 100


def test_worker_processes_give_the_same_batches_and_restore(markov_cfg):
  cfg = markov_cfg.copy_and_resolve_references()
  plain = _take(data.make_iterator(cfg, split="train", batch_size=2, seed=5), 4)
  cfg.worker_count = 1
  it = data.make_iterator(cfg, split="train", batch_size=2, seed=5)
  head = _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))  # As the orbax handler stores it.
  tail = _take(it, 2)
  _assert_batches_equal(head + tail, plain)
  it.set_state(state)  # Rewind (one worker start-up is slow enough for a unit test).
  _assert_batches_equal(_take(it, 2), tail)
  it.close()
