"""The one place a training run opens its workdir: checks, lock, config.json, metrics.

    wd = Workdir(path)
    wd.check(config)          # reads only: a different config, a file in the way, ...
    with wd.open():           # creates it, takes the lock, checks checkpoints/ is writable
      ...                     # restore
      wd.write_config(config) # only once the run has started
      writer = wd.metrics_writer()

Nothing is written before `open()`, and `open()` runs after every validation, so a refused
run leaves the workdir as it was (the lock file is removed again on the way out).

The lock is WORKDIR/train.lock, holding the pid and host of the run that holds it, with an
exclusive `flock` on it for as long as the run lives: a second training in the same workdir
is refused naming the first's pid and host, and a lock left by a process that died (SIGKILL,
preemption, a crashed host) is free again, because the kernel drops a dead process's locks.

A workdir may also be any URL `etils.epath` opens (gs://bucket/run, s3://..., the same paths
orbax writes checkpoints to): every file here goes through `epath`. An object store has no
flock and no way to tell whether the pid in a lock file is alive, so there the lock is a
record, not an exclusion: train.lock names the holder; a run that finds one left by another
run warns (naming its pid, host and start time) and takes it over, since a preempted pod run
that restarts must be able to resume. Two live runs in one remote workdir are not prevented:
launch one job per workdir.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any

from etils import epath
from ml_collections import ConfigDict

from tokenlab import config as config_lib
from tokenlab.errors import TokenlabError

LOCK_NAME = "train.lock"

# Keys that may change between runs in one workdir without invalidating its checkpoints.
RESUMABLE_CHANGES = ("resume", "train.progress", "train.log_every", "train.eval_every",
                     "train.eval_batches", "checkpoint.every_steps", "checkpoint.keep",
                     "checkpoint.async_save", "train.steps", "train.max_skipped_fraction")


def config_changes(previous: ConfigDict, config: ConfigDict) -> list[str]:
  """Keys that differ between two configs of one workdir, other than the resumable ones."""
  return [k for k in config_lib.config_diff(previous, config)
          if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)]


def is_remote(path: str) -> bool:
  """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
  return "://" in str(path)


def check_url(path: str) -> None:
  """TokenlabError naming the fix when `path` is a URL whose scheme epath cannot open."""
  if not is_remote(path):
    return
  from etils.epath import register  # pylint: disable=g-import-not-at-top
  scheme = str(path).split("://", 1)[0] + "://"
  known = sorted(getattr(register, "_URI_PREFIXES_TO_CLS", {}))
  if known and scheme not in known:
    local = str(path).split("://", 1)[1] if scheme == "file://" else ""
    raise TokenlabError(
        f"workdir {path}: '{scheme}' URLs are not supported (etils.epath opens "
        f"{', '.join(known)})" + (f"; for a local directory pass the path itself: {local}"
                                  if local else "; use a local path or one of those"))


def join(path: str, *names: str) -> str:
  """os.path.join for local paths and URLs alike (a URL stays a URL)."""
  return str(epath.Path(path).joinpath(*names)) if is_remote(path) else os.path.join(path, *names)


def _is_main() -> bool:
  import jax
  return jax.process_index() == 0


class Workdir:
  """A training run's workdir; see the module docstring."""

  def __init__(self, path: str):
    check_url(path)
    self.path = path
    self.remote = is_remote(path)
    self.checkpoints = join(path if self.remote else os.path.abspath(path), "checkpoints")
    self._lock_fd: int | None = None
    self._created: list[str] = []   # directories open() made, removed again if left empty

  # -- reading only -------------------------------------------------------------------------

  def check(self, config: ConfigDict) -> None:
    """Refuses a workdir that cannot take this run; reads, never writes.

    A workdir that holds a different experiment is refused (naming the keys that differ)
    unless --config.resume=force; a workdir that is a file, under a file, or whose nearest
    existing parent is not writable is refused. (Whether another training holds it is
    `open`'s to find out: taking the lock is the only race-free test.)
    """
    workdir = self.path
    if self.remote:
      if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():
        raise TokenlabError(f"--workdir {workdir} is a file, not a directory; choose another "
                            f"workdir")
      return self._check_config(config)
    parent = os.path.abspath(workdir)
    while parent and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if os.path.exists(workdir) and not os.path.isdir(workdir) or (
        parent and not os.path.isdir(parent)):
      raise TokenlabError(f"--workdir {workdir}: {parent} is a file, not a directory; choose "
                          f"another workdir")
    if parent and not os.access(parent, os.W_OK):
      raise TokenlabError(f"--workdir {workdir}: {parent} is not writable; choose a workdir "
                          f"you can write to")
    self._check_config(config)

  def _check_config(self, config: ConfigDict) -> None:
    workdir = self.path
    path = epath.Path(join(workdir, "config.json"))
    if path.exists():
      try:
        previous = config_lib.from_json(path.read_text())
      except ValueError as e:
        raise TokenlabError(f"{path} is not valid JSON ({e}); restore it from "
                            f"config.replaced_*.json or use a new --workdir") from e
      diff = config_changes(previous, config)
      if diff and config.get("resume", "") != "force":
        raise TokenlabError(f"workdir {workdir} holds a run with a different config (keys "
                            f"{', '.join(diff[:6])}{'...' if len(diff) > 6 else ''}); use a "
                            f"new --workdir, or --config.resume=force to continue it with "
                            f"this one")

  # -- writing ------------------------------------------------------------------------------

  def open(self) -> "Workdir":
    """Creates the workdir, takes its lock and checks that checkpoints/ can be written.

    Process 0 only (the others write nothing here). Raises TokenlabError with one line when
    the workdir cannot be created or written, or another live training holds it.
    """
    if not _is_main() or self._lock_fd is not None:   # (`with wd.open():` opens once)
      return self
    if self.remote:
      return self._open_remote()
    try:
      self._makedirs(self.path)
      self._lock()
    except OSError as e:
      self.close(failed=True)
      raise TokenlabError(f"--workdir {self.path}: cannot write there ({_why(e)}); choose a "
                          f"workdir you can write to") from e
    try:
      self._makedirs(self.checkpoints)
      _check_writable(self.checkpoints, "checkpoints/")
      _check_writable(self.path, "the workdir")
    except OSError as e:
      self.close(failed=True)
      raise TokenlabError(f"{self.checkpoints} cannot be created ({_why(e)}); fix the "
                          f"workdir's permissions or use another --workdir") from e
    except BaseException:
      self.close(failed=True)
      raise
    return self

  def _open_remote(self) -> "Workdir":
    lock = epath.Path(self.lock_path)
    try:
      epath.Path(self.checkpoints).mkdir(parents=True, exist_ok=True)
      if lock.exists():
        held = _parse_lock(lock.read_text())
        print(f"tokenlab: warning: {lock} names pid {held.get('pid', '?')} on host "
              f"{held.get('host', '?')} (since {held.get('since', '?')}); a remote workdir cannot "
              f"tell whether that run is alive, so this run takes the workdir over (run one "
              f"training per workdir)", file=sys.stderr)
      lock.write_text(json.dumps(_lock_record()) + "\n")
    except OSError as e:
      raise TokenlabError(f"--workdir {self.path}: cannot write there ({_why(e)}); choose a "
                          f"workdir you can write to") from e
    self._lock_fd = -1   # held (no file descriptor: the lock is the file's content)
    return self

  def _makedirs(self, path: str) -> None:
    missing = []
    head = os.path.abspath(path)
    while head and not os.path.exists(head):
      missing.append(head)
      head = os.path.dirname(head)
    os.makedirs(path, exist_ok=True)
    self._created = missing + self._created    # deepest first

  def __enter__(self) -> "Workdir":
    return self.open()

  def __exit__(self, exc_type, *exc) -> bool:
    self.close(failed=exc_type is not None)
    return False

  def close(self, failed: bool = False) -> None:
    """Releases the lock (removes the lock file); `failed`: the run did not start, so the
    directories open() made are removed again if nothing was written into them."""
    if self._lock_fd is not None and self.remote:
      try:
        if _parse_lock(epath.Path(self.lock_path).read_text()).get("pid") == os.getpid():
          epath.Path(self.lock_path).unlink()
      except (OSError, ValueError):
        pass
      self._lock_fd = None
    if self._lock_fd is not None:
      try:
        os.unlink(self.lock_path)
      except OSError:
        pass
      os.close(self._lock_fd)
      self._lock_fd = None
    if failed:
      for path in self._created:
        try:
          os.rmdir(path)
        except OSError:
          break
    self._created = []

  @property
  def lock_path(self) -> str:
    return join(self.path, LOCK_NAME)

  def _lock(self) -> None:
    import fcntl
    while True:
      fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_lock(fd)
        os.close(fd)
        raise TokenlabError(
            f"workdir {self.path} is in use by another training (pid {holder.get('pid', '?')} "
            f"on host {holder.get('host', '?')}, since {holder.get('since', '?')}); wait for "
            f"it or stop it, or use another --workdir") from None
      try:   # The holder may have removed the file between our open and our flock: retry.
        same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    stale = _read_lock(fd)
    if stale:
      print(f"tokenlab: note: {self.lock_path} was left by pid {stale.get('pid', '?')} on host "
            f"{stale.get('host', '?')}, which is gone (killed or crashed); taking it over",
            file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_lock_record()) + "\n").encode(), 0)
    self._lock_fd = fd

  def write_config(self, config: ConfigDict) -> None:
    """Writes WORKDIR/config.json atomically, once the run has started: after validation and
    after the checkpoint restored, so a run that fails before that leaves the workdir as it
    was. A config replaced under resume=force is kept as config.replaced_<time>.json."""
    if not _is_main():
      return
    epath.Path(self.path).mkdir(parents=True, exist_ok=True)
    path = epath.Path(join(self.path, "config.json"))
    if path.exists():
      previous = config_lib.from_json(path.read_text())
      if config_changes(previous, config):  # Keep the config the checkpoints were made with.
        path.rename(join(self.path, f"config.replaced_{int(time.time())}.json"))
    if self.remote:   # an object is written whole: no partial file to replace atomically
      path.write_text(config_lib.to_json(config))
      return
    tmp = epath.Path(str(path) + ".tmp")
    tmp.write_text(config_lib.to_json(config))
    tmp.replace(path)

  def metrics_writer(self, enabled: bool = True):
    """The run's MetricsWriter (metrics.jsonl + tb/); a partial last line of metrics.jsonl
    (left by a crash mid-write) is removed first, with a warning, so nothing appends onto it."""
    from tokenlab.train.metrics import MetricsWriter, repair_metrics
    if enabled:
      repair_metrics(self.path)
    return MetricsWriter(self.path, enabled=enabled)


def _lock_record() -> dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}


def _parse_lock(text: str) -> dict[str, Any]:
  try:
    return json.loads(text) if text.strip() else {}
  except ValueError:
    return {"pid": "?", "host": "?"}


def _read_lock(fd: int) -> dict[str, Any]:
  try:
    text = os.pread(fd, 4096, 0).decode(errors="replace")
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {"pid": "?", "host": "?"}


def _check_writable(directory: str, what: str) -> None:
  """Creates and removes a file in `directory`; TokenlabError if that fails.
  A real write, not os.access: root passes os.access on read-only or immutable directories."""
  try:
    fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=directory)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise TokenlabError(f"{directory} ({what}) is not writable ({_why(e)}); checkpoints could "
                        f"not be saved: fix its permissions or use another --workdir") from e


def _why(e: OSError) -> str:
  return e.strerror or errno.errorcode.get(e.errno or 0, str(e))
