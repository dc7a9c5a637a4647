"""The elastic training stream (tokenlab/data/elastic.py): global batches independent of the
process count, per-shard checkpoint states restoring on another process count."""

import numpy as np
import pytest
from etils import epath

from tokenlab import data
from tokenlab.data import elastic
from tokenlab.errors import ConfigError, TokenlabError
from tokenlab.train.checkpoint import DataStateHandler


@pytest.fixture(scope="module")
def markov_cfg(tmp_path_factory):
  cfg = data.default_data_config("markov")
  cfg.data_dir = str(tmp_path_factory.mktemp("tfds"))
  cfg.options.update({"num_train": 64, "num_validation": 8, "length": 48})
  cfg.seq_len = 32
  return cfg


def _stream(cfg, global_batch, process_index, process_count, shards=4, seed=3):
  def shard(k, num_shards, rows):
    return data.make_iterator(cfg, split="train", batch_size=rows,
                              seed=elastic.shard_seed(seed, k), process_index=k,
                              process_count=num_shards)
  return elastic.sharded_iterator(shard, global_batch=global_batch, requested_shards=shards,
                                  process_index=process_index, process_count=process_count)


def _global(streams):
  """One global batch: the processes' local batches stacked in process order."""
  parts = [next(s) for s in streams]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_auto_shards_is_the_same_for_the_usual_process_counts():
  assert {elastic.auto_shards(b, p) for b in (8, 16, 32) for p in (1, 2, 4, 8)} == {8}
  assert elastic.auto_shards(6, 1) == 6 and elastic.auto_shards(256, 16) == 16
  assert elastic.owned_shards(8, 1, 4) == [2, 3]
  with pytest.raises(ConfigError, match="does not divide config.train.batch_size=8"):
    elastic.resolve_shards(3, 8, 1)
  with pytest.raises(ConfigError, match="not divisible by the 4 processes"):
    elastic.resolve_shards(2, 8, 4)


def test_global_batches_do_not_depend_on_the_process_count(markov_cfg):
  one = [_stream(markov_cfg, 8, 0, 1)]
  two = [_stream(markov_cfg, 8, p, 2) for p in range(2)]
  four = [_stream(markov_cfg, 8, p, 4) for p in range(4)]
  seen = set()
  for _ in range(4):
    g = _global(one)
    _equal(g, _global(two))
    _equal(g, _global(four))
    assert g["inputs"].shape == (8, 32)
    seen |= {r.tobytes() for r in g["inputs"]}
  assert len(seen) == 32   # no row repeats within the first 4 steps (64 documents)


def test_shards_are_disjoint_and_decorrelated(markov_cfg):
  def records(k):   # the documents' first bytes are not unique: compare whole rows
    it = data.make_iterator(markov_cfg, split="train", batch_size=4, seed=elastic.shard_seed(3, k),
                            process_index=k, process_count=4, num_epochs=1)
    return {r.tobytes() for b in it for r, m in zip(b["inputs"], b["loss_mask"]) if m.all()}
  rows = [records(k) for k in range(4)]
  assert all(rows) and not any(rows[i] & rows[j] for i in range(4) for j in range(i + 1, 4))
  assert elastic.shard_seed(3, 0) != elastic.shard_seed(3, 1)


def _save(streams, directory):
  for s in streams:
    DataStateHandler().save(directory, args=type("A", (), {"item": s})())


def _restore(stream, directory):
  return DataStateHandler().restore(directory, args=type("A", (), {"item": stream})())


@pytest.mark.parametrize("before,after", [(2, 1), (1, 4)])
def test_states_saved_by_p_processes_restore_on_another_count(markov_cfg, tmp_path, before,
                                                              after):
  reference = _stream(markov_cfg, 8, 0, 1)
  expected = [next(reference) for _ in range(5)][3:]
  streams = [_stream(markov_cfg, 8, p, before) for p in range(before)]
  for _ in range(3):
    _global(streams)
  directory = epath.Path(tmp_path)
  _save(streams, directory)   # each "process" writes the files of its own shards
  assert len(list(directory.glob("shard_*-of-00004.json"))) == 4
  resumed = [_restore(_stream(markov_cfg, 8, p, after), directory) for p in range(after)]
  for want in expected:
    _equal(want, _global(resumed))


def test_auto_adopts_the_checkpoints_shard_count_and_explicit_mismatch_is_refused(markov_cfg,
                                                                                 tmp_path):
  directory = epath.Path(tmp_path)
  saved = _stream(markov_cfg, 4, 0, 1, shards=2)
  next(saved)
  _save([saved], directory)
  want = next(saved)
  auto = _restore(_stream(markov_cfg, 4, 0, 1, shards=0), directory)   # auto would be 4
  assert auto.num_shards == 2
  _equal(want, next(auto))
  with pytest.raises(TokenlabError, match="set config.data.shards=2"):
    _restore(_stream(markov_cfg, 4, 0, 1, shards=4), directory)
