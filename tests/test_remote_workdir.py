"""A gs:// workdir (issue 13): `tokenlab train` to completion, a resume, and `tokenlab plot`,
with every workdir file going through `etils.epath` (fsspec) rather than local file I/O.

There is no network here, so the "gs" fsspec protocol is a test double: an fsspec filesystem
that stores gs://bucket/... under a temporary directory (epath's gs:// backend is fsspec's
"gcs" protocol when tensorflow is absent), and orbax's TensorStore driver for gs:// (its own
GCS client, not fsspec) is pointed at the same directory; orbax's bucket query (the
google-cloud-storage API) answers "flat bucket". tokenlab code that used os.* on
the URL would write a local "gs:" directory or miss the files; the test checks it does not.
What is not tested: the real GCS clients (gcsfs or tf.io.gfile, TensorStore's gcs driver).
"""

import importlib
import json
import os

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from tokenlab import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(REPO, "experiments/transformer_lm.py:size=tiny")


class _FakeGCS(LocalFileSystem):
  """gs://bucket/path -> ROOT/bucket/path on the local disk."""
  protocol = ("gcs", "gs")
  root = ""

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        return f"{cls.root}/{path[len(prefix):]}".rstrip("/")
    return super()._strip_protocol(path)

  def unstrip_protocol(self, name):
    return "gs://" + name[len(self.root) + 1:] if name.startswith(self.root) else name


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  root = tmp_path / "bucket_store"
  root.mkdir()
  monkeypatch.setattr(_FakeGCS, "root", str(root))
  fsspec.register_implementation("gcs", _FakeGCS, clobber=True)
  fsspec.register_implementation("gs", _FakeGCS, clobber=True)
  from orbax.checkpoint._src.path import gcs_utils

  def kvstore(path):
    bucket, blob = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": f"{root}/{bucket}/{blob}"}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
  # Asks the GCS API (google-cloud-storage) about the bucket; the fake bucket is flat.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root
  registry = importlib.import_module("fsspec.registry")   # `fsspec.registry` is a view
  registry._registry.pop("gcs", None)   # fsspec's own gcsfs entry comes back
  registry._registry.pop("gs", None)
  assert not any(cwd.iterdir()), list(cwd.iterdir())   # nothing written to a local "gs:"


def _train_argv(workdir, data_dir, steps):
  return ["train", "--config", EXP, "--workdir", workdir, f"--config.train.steps={steps}",
          f"--config.data.data_dir={data_dir}", "--config.train.progress=false",
          "--config.train.log_every=2", "--config.checkpoint.every_steps=4",
          "--config.checkpoint.async_save=false", "--config.train.eval_every=0"]


def _train(workdir, data_dir, steps):
  assert cli.main(_train_argv(workdir, data_dir, steps)) == 0


def test_workdir_metrics_and_plot_in_a_gs_workdir(fake_gcs):
  """The workdir layer alone: open (lock), config.json, metrics rows, TensorBoard events,
  reading the rows back and `tokenlab plot`, all on gs://."""
  from tokenlab.config import load_config
  from tokenlab.train.metrics import read_metrics
  from tokenlab.train.workdir import Workdir
  config = load_config(EXP)
  run = fake_gcs / "bucket" / "w"
  with Workdir("gs://bucket/w").open() as wd:
    wd.write_config(config)
    writer = wd.metrics_writer()
    for step in (1, 2):
      writer.write(step, {"train/loss": 3.0 - step, "eval/loss": float("nan")})
    writer.close()
  assert not (run / "train.lock").exists()       # released on close
  assert json.loads((run / "config.json").read_text())["model"]["name"] == config.model.name
  rows = read_metrics("gs://bucket/w")
  assert [r["step"] for r in rows] == [1, 2] and rows[-1]["train/loss"] == 1.0
  assert rows[-1]["eval/loss"] is None          # non-finite written as null, remotely too
  assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
  assert cli.main(["plot", "gs://bucket/w"]) == 0
  assert (run / "plots" / "summary.png").stat().st_size > 0


def test_train_resume_and_plot_in_a_gs_workdir(fake_gcs, tmp_path, capsys):
  data_dir = str(tmp_path / "tfds")
  run = fake_gcs / "bucket" / "run"
  rc = cli.main(_train_argv("gs://bucket/run", data_dir, 4))
  err = capsys.readouterr().err
  save_failed = "saving the checkpoint of step 4 into gs://bucket/run/checkpoints failed" in err
  if rc != 0 and save_failed and ("CopyRange not supported" in err
                                  or "FileNotFoundError" in err):
    # The known gap, reported as an expected failure while it lasts (and the rest of this test
    # runs, unchanged, the day the double supports it): orbax's gcs save path does not work
    # against the file-driver double. Alone it stops at CopyRange; in a full xdist run it has
    # also stopped one step earlier with a FileNotFoundError inside the double's store (seen
    # once, session 8). Any other failure, or a failure before the save, still fails. Raised
    # without a traceback: pytest parsing source for one raced orbax's threads on CPython
    # 3.11.7 ("AST constructor recursion depth mismatch", an internal error of the whole run).
    raise pytest.xfail.Exception(
        "orbax's save into the test double fails: TensorStore's file driver has no CopyRange, "
        "which its gcs path uses; untested end to end until a double (or a bucket) supports "
        "it", pytrace=False)
  assert rc == 0, err
  assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "tb",
                                              "checkpoints"}
  assert not (run / "train.lock").exists()       # released at the end
  assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
  _train("gs://bucket/run", data_dir, 8)          # resumes from step 4
  steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 8 and steps == sorted(set(steps)), steps   # 4 -> 8, no step twice
  assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
  assert "8" in {p.name for p in (run / "checkpoints").iterdir()}
  assert cli.main(["plot", "gs://bucket/run"]) == 0
  assert (run / "plots" / "summary.png").stat().st_size > 0


def test_an_unsupported_url_scheme_is_one_clear_error(tmp_path):
  from tokenlab.errors import TokenlabError
  from tokenlab.train.workdir import Workdir
  with pytest.raises(TokenlabError, match=f"pass the path itself: {tmp_path}/run"):
    Workdir(f"file://{tmp_path}/run")
  with pytest.raises(TokenlabError, match="'ftp://' URLs are not supported.*gs://"):
    Workdir("ftp://host/run")
  assert not (tmp_path / "run").exists()
