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


def run(name: str, argv: list[str]) -> int:
  from tokenlab.errors import TokenlabError, nearest
  names = available()
  if name not in names:
    raise TokenlabError(f"unknown benchmark '{name}'{nearest(name, names)}; available: {', '.join(names)}")
  return int(importlib.import_module(f"tokenlab.bench.{name}").main(argv) or 0)
