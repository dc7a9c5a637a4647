"""Re-makes the pinned `pysrc` corpus snapshot shipped in this folder.

The snapshot is a fixed, sorted list of Python standard-library source files taken from
CPython 3.11.7 (top-level modules plus a few small packages, tests excluded), packed as a
byte-for-byte reproducible tar.xz (sorted members, zeroed mtimes and owners). It writes:

  pysrc_snapshot.tar.xz   the files, paths relative to the stdlib root
  pysrc_manifest.json     python version, file list with sizes and sha256, archive sha256
  PSF_LICENSE.txt         the licence the files are distributed under

Usage (from the repository root):

  python tokenlab/data/assets/make_pysrc_snapshot.py \
      --stdlib /root/.pyenv/versions/3.11.7/lib/python3.11

With the same CPython version the output is identical (the manifest checksums say so).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import pathlib
import sys
import tarfile

PYTHON_VERSION = "3.11.7"
# Small packages added to the top-level modules for variety (json, logging, urls, ...).
PACKAGES = ("collections", "concurrent", "json", "logging", "urllib")
# Machine-specific, generated or joke modules: not representative source text.
EXCLUDE = ("_sysconfigdata", "this.py", "antigravity.py", "__hello__.py", "__phello__")
MAX_FILE_BYTES = 200_000  # Keeps one huge file (e.g. _pydecimal.py) from dominating a split.

ARCHIVE = "pysrc_snapshot.tar.xz"
MANIFEST = "pysrc_manifest.json"
LICENSE = "PSF_LICENSE.txt"


def select_files(stdlib: pathlib.Path) -> list[str]:
  """Returns the sorted relative paths of the snapshot's files."""
  candidates = list(stdlib.glob("*.py"))
  for package in PACKAGES:
    candidates += (stdlib / package).rglob("*.py")
  paths = []
  for path in candidates:
    rel = path.relative_to(stdlib).as_posix()
    if any(part.startswith("test") for part in rel.split("/")[:-1]):
      continue
    if any(rel.startswith(e) or rel == e for e in EXCLUDE):
      continue
    if path.stat().st_size > MAX_FILE_BYTES:
      continue
    paths.append(rel)
  return sorted(paths)


def make_archive(stdlib: pathlib.Path, paths: list[str]) -> bytes:
  """Returns the reproducible tar.xz bytes of `paths` under `stdlib`."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for rel in paths:
      data = (stdlib / rel).read_bytes()
      info = tarfile.TarInfo(rel)
      info.size, info.mtime, info.mode = len(data), 0, 0o644
      info.uid = info.gid = 0
      info.uname = info.gname = ""
      tar.addfile(info, io.BytesIO(data))
  return lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ,
                       preset=9 | lzma.PRESET_EXTREME)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stdlib", required=True, type=pathlib.Path,
                      help="CPython 3.11.7 standard-library folder")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent)
  args = parser.parse_args(argv)
  paths = select_files(args.stdlib)
  archive = make_archive(args.stdlib, paths)
  files = []
  for rel in paths:
    data = (args.stdlib / rel).read_bytes()
    files.append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
  manifest = {
      "python_version": PYTHON_VERSION,
      "archive": ARCHIVE,
      "archive_sha256": hashlib.sha256(archive).hexdigest(),
      "total_bytes": sum(f["bytes"] for f in files),
      "files": files,
  }
  (args.out / ARCHIVE).write_bytes(archive)
  (args.out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
  (args.out / LICENSE).write_bytes((args.stdlib / "LICENSE.txt").read_bytes())
  print(f"{len(files)} files, {manifest['total_bytes']} bytes -> {len(archive)} bytes xz")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
