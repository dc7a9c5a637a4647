"""Training progress for people and for log files.

On a terminal: a tqdm bar with loss, tokens/s and MFU. When stderr is not a terminal (a pod's
log file, `> log.txt`, CI): one plain line per logged step and per eval, never the carriage
returns a bar uses, so log files stay readable and greppable.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
  """Reports training progress; see the module docstring."""

  def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None):
    self.stream = stream or sys.stderr
    self.total = total
    self.bar = None
    self.t0 = time.perf_counter()
    if _is_terminal(self.stream):
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True,
                      unit="step", file=self.stream)

  def update(self, n: int = 1) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def log(self, step: int, scalars: dict[str, Any]) -> None:
    """A logged step: the bar's postfix, or one line."""
    loss, tok_s = scalars.get("train/loss"), scalars.get("perf/tokens_per_sec")
    mfu = scalars.get("perf/mfu")
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:.0f}", mfu=f"{100 * mfu:.1f}%")
      return
    parts = [f"step {step}/{self.total}", f"loss {loss:.4f}"]
    if tok_s is not None:
      parts.append(f"{tok_s:.0f} tokens/s")
    if mfu is not None:
      parts.append(f"MFU {100 * mfu:.1f}%")
    parts.append(f"{time.perf_counter() - self.t0:.0f}s")
    self.write("train: " + ", ".join(parts))

  def write(self, message: str) -> None:
    if self.bar is not None:
      self.bar.write(message, file=self.stream)
    else:
      print(message, file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False
