"""Mini-reproductions: `tokenlab repro NAME [--workdir DIR] [--seed S] [--quick]`.

Each paper method has a module `tokenlab/repro/<name>.py` with

    CLAIM: str                      # the paper's key claim, in one sentence
    def run(ctx: Context) -> Report

`run` trains the few arms the claim needs through the real trainer (`ctx.train`), measures
them, and returns a Report: rows of (arm, metric, value), a verdict computed from the measured
numbers (held / did not hold / partly), and figures. The runner prints the table, writes
WORKDIR/repro.md and the PNGs. With --quick every arm runs a handful of steps to smoke-test the
pipeline and the verdict is "not assessed (--quick)": a quick run claims nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pkgutil
import time
from typing import Any, Callable

from tokenlab.errors import TokenlabError, nearest

HELD, NOT_HELD, PARTLY, NOT_ASSESSED = "held", "did not hold", "partly", "not assessed (--quick)"


@dataclasses.dataclass
class Report:
  claim: str
  rows: list[tuple[str, str, float | str]]
  verdict: str                       # HELD | NOT_HELD | PARTLY (the runner sets NOT_ASSESSED)
  reason: str = ""                   # how the verdict follows from the rows
  figures: list[str] = dataclasses.field(default_factory=list)   # PNG paths (in workdir)
  notes: str = ""                    # simplifications, likely reasons, anything a reader needs


@dataclasses.dataclass
class Context:
  name: str
  workdir: str
  seed: int
  quick: bool

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def steps(self, full: int, quick: int = 3) -> int:
    """The step budget of an arm: `full` normally, `quick` under --quick."""
    return quick if self.quick else full

  def train(self, experiment: str, arm: str, overrides: list[str] | tuple[str, ...] = (),
            **train_kwargs: Any) -> dict[str, Any]:
    """Trains one arm with the real trainer into WORKDIR/<arm>; returns its last metrics.

    `experiment` is 'experiments/<file>.py[:arg]' (resolved like the CLI does). The arm is
    seeded with --seed; an existing finished arm is resumed (i.e. reused), not retrained.
    """
    from tokenlab.cli import resolve_experiment
    from tokenlab.config import load_config
    from tokenlab.train.loop import train
    overrides = [f"--config.seed={self.seed}", "--config.train.progress=false", *overrides]
    config = load_config(resolve_experiment(experiment), overrides)
    t = time.perf_counter()
    print(f"[{self.name}] training arm '{arm}' ({config.train.steps} steps) ...", flush=True)
    result = train(config, self.path(arm), **train_kwargs)
    print(f"[{self.name}] arm '{arm}' done in {time.perf_counter() - t:.0f}s", flush=True)
    return result


def names() -> list[str]:
  import tokenlab.repro as pkg
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def format_table(rows: list[tuple[str, str, Any]]) -> str:
  def fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)
  cells = [("arm", "metric", "value")] + [(str(a), str(m), fmt(v)) for a, m, v in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(3)]
  lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def run(name: str, workdir: str | None = None, seed: int = 0, quick: bool = False) -> Report:
  """Runs the mini-reproduction `name`; writes repro.md (+ PNGs) and repro.json."""
  if name not in names():
    raise TokenlabError(f"unknown reproduction '{name}'{nearest(name, names())}; "
                        f"available: {', '.join(names()) or 'none yet'}")
  module = importlib.import_module(f"tokenlab.repro.{name}")
  workdir = workdir or os.path.join("runs", "repro", name + ("_quick" if quick else ""))
  os.makedirs(workdir, exist_ok=True)
  ctx = Context(name=name, workdir=workdir, seed=seed, quick=quick)
  t = time.perf_counter()
  report: Report = module.run(ctx)
  seconds = time.perf_counter() - t
  if quick:
    report.verdict = NOT_ASSESSED
  table = format_table(report.rows)
  command = f"tokenlab repro {name} --workdir {workdir} --seed {seed}" + (" --quick" if quick
                                                                             else "")
  md = [f"# Mini-reproduction: {name}", "", f"Claim: {report.claim}", "",
        f"Command: `{command}` ({seconds:.0f} s)", "", table, "",
        f"Verdict: **{report.verdict}**" + (f": {report.reason}" if report.reason else "")]
  if report.notes:
    md += ["", report.notes]
  for fig in report.figures:
    md += ["", f"![{os.path.basename(fig)}]({os.path.relpath(fig, workdir)})"]
  with open(os.path.join(workdir, "repro.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  with open(os.path.join(workdir, "repro.json"), "w") as f:
    json.dump({"name": name, "claim": report.claim, "verdict": report.verdict,
               "reason": report.reason, "seconds": seconds, "seed": seed, "quick": quick,
               "rows": [list(r) for r in report.rows], "figures": report.figures}, f, indent=2)
  print(f"\n{name}: {report.claim}\n{table}\nverdict: {report.verdict}"
        + (f" ({report.reason})" if report.reason else "")
        + f"\nwrote {os.path.join(workdir, 'repro.md')} in {seconds:.0f}s")
  return report


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="tokenlab repro", description=__doc__.splitlines()[0])
  parser.add_argument("name", nargs="?")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true",
                      help="a few steps per arm: smoke-tests the pipeline, claims nothing")
  args = parser.parse_args(argv)
  if args.name is None:
    print("available reproductions: " + (", ".join(names()) or "none yet"))
    return 0
  run(args.name, args.workdir, args.seed, args.quick)
  return 0
