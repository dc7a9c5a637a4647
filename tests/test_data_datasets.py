"""The embedded datasets: pysrc snapshot integrity, dna labels, digits, builds and the CLI."""

import hashlib
import shutil
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from tokenlab import data
from tokenlab.data import cli, config, dna, digits, pysrc, sources
from tokenlab.errors import TokenlabError

SMALL_DNA = {"length": 256, "num_train": 12, "num_validation": 6, "num_motifs": 3,
             "motif_length": 10, "motif_prob": 0.7, "repeats_per_kb": 12.0}


def _cfg(name, data_dir, **options):
  cfg = data.default_data_config(name)
  cfg.data_dir = str(data_dir)
  cfg.options.update(options)
  return cfg


# --- pysrc -------------------------------------------------------------------------------

def test_pysrc_snapshot_matches_its_manifest():
  man = pysrc.manifest()
  assets = resources.files("tokenlab.data").joinpath("assets")
  archive = assets.joinpath(man["archive"]).read_bytes()
  assert hashlib.sha256(archive).hexdigest() == man["archive_sha256"]
  files = pysrc.files()
  assert list(files) == [f["path"] for f in man["files"]] == sorted(files)
  for entry in man["files"]:
    assert hashlib.sha256(files[entry["path"]]).hexdigest() == entry["sha256"]
  total = sum(len(d) for d in files.values())
  assert total == man["total_bytes"] and 3e6 < total < 6e6
  assert len(archive) < 1.5e6
  licence = assets.joinpath("PSF_LICENSE.txt").read_text()
  assert "PYTHON SOFTWARE FOUNDATION LICENSE" in licence


def test_pysrc_detects_a_tampered_file(monkeypatch):
  man = pysrc.manifest()
  man["files"][3]["sha256"] = "0" * 64
  monkeypatch.setattr(pysrc, "manifest", lambda: man)
  pysrc.files.cache_clear()
  try:
    with pytest.raises(TokenlabError, match=man["files"][3]["path"]):
      pysrc.files()
  finally:
    pysrc.files.cache_clear()


def test_pysrc_split_by_file_and_entropy():
  opts = {"validation_percent": 5}
  train, val = pysrc.split_files("train", opts), pysrc.split_files("validation", opts)
  assert not set(train) & set(val) and len(train) + len(val) == len(pysrc.files())
  frac = sum(map(len, val.values())) / sum(map(len, pysrc.files().values()))
  assert 0.02 < frac < 0.12
  data_ = b"".join(train.values())
  counts = np.bincount(np.frombuffer(data_, np.uint8), minlength=256) / len(data_)
  direct = -sum(p * np.log2(p) for p in counts if p > 0)
  assert pysrc.unigram_entropy_bits("train") == pytest.approx(direct)
  assert 4.0 < direct < 5.5  # Source code: far below 8 bits, above plain English's ~4.


# --- dna ---------------------------------------------------------------------------------

def test_dna_records_match_the_generator_and_labels_are_consistent(tmp_path):
  cfg = config.resolve(_cfg("dna", tmp_path, **SMALL_DNA))
  opts = cfg["options"]
  motif_set = dna.motifs(opts)
  src = sources.data_source(cfg, "train")
  assert len(src) == 12
  kinds = set()
  for i in range(len(src)):
    rec = src[i]
    w = dna.generate_window(opts, "train", int(rec["index"]))
    assert rec["sequence"] == w.text  # Deterministic: re-made alone from (seed, split, i).
    np.testing.assert_array_equal(rec["labels"], w.labels)
    np.testing.assert_array_equal(rec["motif_present"], w.motif_present)
    codes = np.frombuffer(b"".join(bytes([dna.BASES.index(c)]) for c in rec["sequence"]),
                          np.uint8)
    covered = np.zeros(len(codes), bool)
    for start, stop, label, detail in w.regions:
      kinds.add(label)
      assert not covered[start:stop].any()  # Regions never overlap.
      covered[start:stop] = True
      assert (w.labels[start:stop] == label).all()
      if label == dna.MOTIF:
        np.testing.assert_array_equal(codes[start:stop], motif_set[detail])
      else:  # A tandem repeat: the unit tiled, up to rare mutations.
        mismatch = (codes[start:stop] != np.resize(detail, stop - start)).mean()
        assert mismatch <= 0.15
    assert (w.labels[~covered] == dna.BACKGROUND).all()
    planted = {d for _, _, lab, d in w.regions if lab == dna.MOTIF}
    assert planted == set(np.flatnonzero(w.motif_present))
  assert kinds == {dna.REPEAT, dna.MOTIF}


def test_dna_batches_carry_target_labels(tmp_path):
  cfg = _cfg("dna", tmp_path, **SMALL_DNA)
  cfg.seq_len = 128
  batches = list(data.make_iterator(cfg, split="validation", batch_size=4, seed=0,
                                    shuffle=False, num_epochs=1))
  labels = np.concatenate([b["labels"][b["loss_mask"] > 0] for b in batches])
  targets = np.concatenate([b["targets"][b["loss_mask"] > 0] for b in batches])
  opts = config.resolve(cfg)["options"]
  src = sources.data_source(config.resolve(cfg), "validation")
  # Stored order, each window minus its first base (never a target).
  want_labels = np.concatenate([src[i]["labels"][1:] for i in range(len(src))])
  want_bases = b"".join(src[i]["sequence"][1:] for i in range(len(src)))
  np.testing.assert_array_equal(labels, want_labels)
  assert targets.astype(np.uint8).tobytes() == want_bases
  assert all((b["labels"][b["loss_mask"] == 0] == -1).all() for b in batches)
  spec = data.batch_spec(cfg, 4)
  assert {k: (s.shape, s.dtype) for k, s in spec.items()} == {
      k: (v.shape, v.dtype) for k, v in batches[0].items()}
  assert len(want_labels) == 6 * (opts["length"] - 1)


# --- digits ------------------------------------------------------------------------------

def test_digits_upsampled_split_and_batches(tmp_path):
  opts = {"size": 16, "validation_percent": 10, "seed": 0}
  train, val = digits.split_indices("train", opts), digits.split_indices("validation", opts)
  assert len(train) + len(val) == 1797 and not set(train) & set(val) and len(val) == 180
  x, y = digits.images(16)
  x8, _ = digits.images(8)
  assert x.shape == (1797, 16, 16, 1) and x.min() >= 0 and x.max() <= 1
  # Bilinear with pixel centres aligned: scipy's zoom in grid mode is an independent
  # reference (sklearn depends on scipy).
  from scipy import ndimage
  ref = [ndimage.zoom(img[..., 0].astype(np.float64), 2, order=1, grid_mode=True,
                      mode="nearest") for img in x8[:10]]
  np.testing.assert_allclose(x[:10, ..., 0], np.stack(ref), atol=1e-6)
  cfg = _cfg("digits", tmp_path, size=16)
  batches = list(data.make_iterator(cfg, split="validation", batch_size=64, seed=0,
                                    shuffle=False, num_epochs=1))
  assert [b["image"].shape for b in batches] == [(64, 16, 16, 1)] * 3
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert mask.sum() == 180 and (labels[mask == 0] == -1).all()
  spec = data.batch_spec(cfg, 64)
  assert {k: (s.shape, s.dtype) for k, s in spec.items()} == {
      k: (v.shape, v.dtype) for k, v in batches[0].items()}
  assert sorted(labels[mask > 0]) == sorted(y[val])


# --- builds ------------------------------------------------------------------------------

def test_options_pick_the_build_dir(tmp_path):
  a = sources.builder(config.resolve(_cfg("markov", tmp_path, num_train=5, num_validation=2,
                                          length=32)))
  b = sources.builder(config.resolve(_cfg("markov", tmp_path, num_train=5, num_validation=2,
                                          length=32, k=2)))
  assert a.data_dir != b.data_dir
  ta, tb = a.as_data_source("train")[0]["text"], b.as_data_source("train")[0]["text"]
  assert len(ta) == len(tb) == 32 and ta != tb


_BUILD = """
import sys
from tokenlab import data
from tokenlab.data import config, sources
cfg = data.default_data_config("markov")
cfg.data_dir = sys.argv[1]
cfg.options.update({"num_train": 300, "num_validation": 20, "length": 512})
b = sources.builder(config.resolve(cfg))
print(len(b.as_data_source("train")), b.data_dir)
"""


def test_two_processes_building_at_once_both_succeed(tmp_path):
  procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  lines = [o[0].strip().splitlines()[-1] for o in outs]
  assert lines[0] == lines[1] and lines[0].startswith("300 ")
  built = list((tmp_path / "tokenlab_markov").glob("*/*"))
  assert len(built) == 1 and not list(tmp_path.rglob("incomplete*"))


# --- cli ---------------------------------------------------------------------------------

def test_cli_list_build_show(tmp_path, capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in data.DATASETS)
  args = ["--option", "num_train=20", "--option", "num_validation=4", "--option",
          "length=256", "--data-dir", str(tmp_path)]
  assert cli.main(["build", "markov"] + args) == 0
  out = capsys.readouterr().out
  assert str(tmp_path) in out and "train: 20 records, 5120 bytes" in out
  assert "entropy_rate_bits: 0.7219" in out and "unigram entropy" in out
  assert cli.main(["show", "markov", "--num", "2", "--tokenizer", "bpe",
                   "--vocab-size", "16"] + args) == 0
  out = capsys.readouterr().out
  assert out.count("[train ") == 2 and "|" in out
  assert cli.main(["build", "markv"]) == 2   # errors go to stderr, exit 2
  assert "did you mean 'markov'" in capsys.readouterr().err
  assert cli.main(["build", "markov", "--option", "kk=2"]) == 2
  assert "unknown option 'kk'" in capsys.readouterr().err




# --- external tfds datasets --------------------------------------------------------------

def test_prepared_tfds_dataset_reads_like_the_embedded_one(tmp_path):
  # A prepared tfds dataset that tokenlab has no builder for: a built markov copied under
  # another name (tfds then reads it from its files alone, as it would from gs://).
  cfg = _cfg("markov", tmp_path / "a", num_train=6, num_validation=5, length=64)
  built = sources.builder(config.resolve(cfg)).data_dir
  shutil.copytree(built, tmp_path / "b" / "my_corpus" / "1.0.0")
  ext = data.default_data_config("tfds")
  ext.data_dir = str(tmp_path / "b")
  ext.options.tfds_name = "my_corpus"
  ext.seq_len = cfg.seq_len = 32
  kw = dict(split="validation", batch_size=2, seed=0, shuffle=False, num_epochs=1)
  got, want = list(data.make_iterator(ext, **kw)), list(data.make_iterator(cfg, **kw))
  assert len(got) == len(want) > 1
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_array_equal(g[k], w[k])
  ext.options.tfds_name = "no_such_corpus"
  with pytest.raises(TokenlabError, match="tfds dataset .no_such_corpus. is not prepared"):
    data.make_iterator(ext, **kw)
  with pytest.raises(TokenlabError, match="needs config.data.options.tfds_name"):
    data.validate_data_config({"name": "tfds"})


def test_prepared_tfds_dataset_found_through_tfds_data_dir_and_tfrecord_refused(
    tmp_path, monkeypatch):
  """Without data.data_dir, a prepared dataset is found in $TFDS_DATA_DIR (as tfds users
  expect); a tfrecord copy gets the conversion command instead of a traceback."""
  import json
  from tokenlab.data import tfds_text
  cfg = _cfg("markov", tmp_path / "a", num_train=6, num_validation=5, length=64)
  built = sources.builder(config.resolve(cfg)).data_dir
  shutil.copytree(built, tmp_path / "tfds" / "my_corpus" / "1.0.0")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.delenv("TOKENLAB_DATA_DIR", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert tfds_text.candidate_data_dirs("")[0] == str(tmp_path / "tfds")
  ext = data.default_data_config("tfds")
  ext.options.tfds_name = "my_corpus"
  ext.seq_len = 32
  kw = dict(split="validation", batch_size=2, seed=0, shuffle=False, num_epochs=1)
  assert len(list(data.make_iterator(ext, **kw))) > 1
  info = tmp_path / "tfds" / "my_corpus" / "1.0.0" / "dataset_info.json"
  meta = json.loads(info.read_text())
  meta["fileFormat"] = "tfrecord"
  info.write_text(json.dumps(meta))
  with pytest.raises(TokenlabError, match="stored as tfrecord.*tfds convert_format"):
    data.make_iterator(ext, **kw)
  ext.options.tfds_name = "no_such_corpus"
  with pytest.raises(TokenlabError, match="not prepared in .*tfds build no_such_corpus"):
    data.make_iterator(ext, **kw)
