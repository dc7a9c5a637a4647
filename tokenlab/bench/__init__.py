"""Benchmarks run by `tokenlab bench NAME`.

Each benchmark is a module `tokenlab.bench.NAME` with a function `main(argv: list[str]) -> int`
that measures the subject side by side with a named peer in one run and prints ratios.
"""

from __future__ import annotations

import importlib
import pkgutil


def available() -> list[str]:
  """Names of the benchmarks that ship with tokenlab."""
  import tokenlab.bench as pkg
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def usage() -> str:
  """`tokenlab bench --help`: what the command does, the benchmarks, one example."""
  lines = ["usage: tokenlab bench NAME [flags]   (tokenlab bench NAME --help for its flags)", "",
           "Runs a benchmark: the subject and a named peer measured in the same run, printed "
           "as ratios.", "", "benchmarks:"]
  for name in available():
    doc = (importlib.import_module(f"tokenlab.bench.{name}").__doc__ or "").strip()
    lines.append(f"  {name:20s} {doc.splitlines()[0] if doc else ''}")
  lines += ["", "example:", "  tokenlab bench decode"]
  return "\n".join(lines)


def run(name: str, argv: list[str]) -> int:
  from tokenlab.errors import TokenlabError, nearest
  names = available()
  if name not in names:
    raise TokenlabError(f"unknown benchmark '{name}'{nearest(name, names)}; available: {', '.join(names)}")
  return int(importlib.import_module(f"tokenlab.bench.{name}").main(argv) or 0)
