"""Where embedded datasets are stored and how they are built, safely, on first use.

Each embedded dataset is a tfds `GeneratorBasedBuilder` written as array_record. Its builder
options become a tfds `BuilderConfig` whose name is a hash of the options, so the built data
lives in `DATA_DIR/tokenlab_<name>/<options hash>/<version>/` and different options never
collide. All paths go through tfds/epath, so `data_dir` may be a `gs://` bucket.

Concurrency: tfds writes into a temporary `incomplete.*` folder and renames it when done, so
a reader never sees half a dataset. On a local disk, builders of the same dataset also take
an exclusive file lock, so two processes starting at once build it once; the second waits and
then reads. On remote storage (no locks) both may build; the loser's rename fails, and it
then reads the winner's copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from tokenlab.errors import TokenlabError

ENV_DATA_DIR = "TOKENLAB_DATA_DIR"
SPLITS = ("train", "validation")


def resolve_data_dir(data_dir: str = "") -> str:
  """Returns `data_dir`, else $TOKENLAB_DATA_DIR, else ~/.cache/tokenlab/tfds."""
  if data_dir:
    return str(data_dir)
  return os.environ.get(ENV_DATA_DIR) or os.path.expanduser("~/.cache/tokenlab/tfds")


def canonical_options(options: Mapping[str, Any]) -> str:
  """Returns the options as canonical JSON (sorted keys), the identity of a build."""
  return json.dumps({k: options[k] for k in sorted(options)}, sort_keys=True)


def options_hash(options: Mapping[str, Any]) -> str:
  """Returns a short stable hash of the options, used as the tfds config name."""
  return "o" + hashlib.sha256(canonical_options(options).encode()).hexdigest()[:12]


@dataclasses.dataclass(eq=False)
class OptionsConfig(tfds.core.BuilderConfig):
  """A tfds builder config carrying tokenlab's builder options."""
  options: dict = dataclasses.field(default_factory=dict)


class OptionsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the embedded builders: splits 'train' and 'validation' from the options.

  Subclasses define `features(options)` (a tfds FeaturesDict) and
  `examples(split, options)` yielding (key, example) pairs.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # tfds looks next to the builder's code for download checksums; embedded builders
    # download nothing, and the lookup needs the `importlib_resources` backport.
    return None

  def features(self, options: Mapping[str, Any]) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def examples(self, split: str, options: Mapping[str, Any]) -> Iterator[tuple[Any, dict]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    options = self.builder_config.options
    return tfds.core.DatasetInfo(
        builder=self, features=self.features(options),
        description=f"tokenlab embedded dataset; options {canonical_options(options)}")

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: data is generated or ships with tokenlab.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    yield from self.examples(split, self.builder_config.options)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Silences tfds's progress bars and 'custom data configuration' log lines."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  bars = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    tfds.display_progress_bar(bars)
    absl_logger.setLevel(level)


@contextlib.contextmanager
def build_lock(path: epath.Path) -> Iterator[None]:
  """Exclusive lock on `path` for local disks; a no-op on remote storage."""
  if "://" in os.fspath(path):
    yield
    return
  import fcntl  # Local only; imported here so the module stays importable anywhere.
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(os.fspath(path), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _make_builder(cls: type[OptionsBuilder], options: Mapping[str, Any],
                  data_dir: str) -> tuple[OptionsBuilder, bool]:
  """Returns (builder, whether its data is already built)."""
  config = OptionsConfig(name=options_hash(options), options=dict(options),
                         description=canonical_options(options))
  with _quiet():
    builder = cls(data_dir=data_dir, config=config, file_format="array_record")
    return builder, builder.is_prepared()


def prepare(cls: type[OptionsBuilder], options: Mapping[str, Any],
            data_dir: str = "") -> OptionsBuilder:
  """Returns the builder for `options`, building its data first if it is not there.

  Args:
    cls: the dataset's builder class.
    options: the complete, validated builder options.
    data_dir: root data dir ('' = default, see `resolve_data_dir`).

  Returns:
    A prepared builder: `builder.as_data_source(split)` gives random access to records.
  """
  data_dir = resolve_data_dir(data_dir)
  builder, ready = _make_builder(cls, options, data_dir)
  if ready:
    return builder
  lock = epath.Path(data_dir) / f".{builder.name}.{builder.builder_config.name}.lock"
  with build_lock(lock):
    builder, ready = _make_builder(cls, options, data_dir)  # Another process may have built it.
    if not ready:
      try:
        # tfds prints "Downloading and preparing..." banners; tokenlab reports builds itself.
        with _quiet(), contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare()
      except Exception:  # pylint: disable=broad-except
        # Remote storage: another process may have renamed its copy in first (the error
        # type depends on the filesystem); use that copy, else the error was real.
        if not _make_builder(cls, options, data_dir)[1]:
          raise
  # A fresh builder reads the finished dataset_info.json (split sizes) from disk.
  builder, ready = _make_builder(cls, options, data_dir)
  if not ready:
    raise TokenlabError(f"building {builder.name} into {data_dir} failed; check that the "
                        "data dir is writable or set data.data_dir / $TOKENLAB_DATA_DIR")
  return builder
