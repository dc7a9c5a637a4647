"""Mini-reproductions: `tokenlab repro NAME [--workdir DIR] [--seed S] [--seeds N] [--quick]`.

Every reproduction follows one protocol (`tokenlab/repro/protocol.py`), enforced here. A
module `tokenlab/repro/<name>.py` declares, before anything runs:

    CLAIM: str                          # the paper's key claim, in one sentence
    BASELINES: tuple[str, ...]          # the trivial-baseline arms (uniform, answer prior,
                                        #   count n-gram, untrained network, ...)
    CHECKS: tuple[Check, ...]           # prerequisites and claim checks, as data
    SEEDS: int = 3                      # seeds of a full run (--seeds overrides)
    def run_seed(ctx: Context) -> Trial # trains/measures every arm for ctx.seed
    def finish(ctx, trials) -> (figures, notes)        # optional: PNGs and notes
    HISTORY: str = ""                   # earlier designs and their results, kept

The runner validates the declaration, runs `run_seed` once per seed (arms in
WORKDIR/seed<S>/), averages every row over seeds (mean, std), judges each check on the mean
with the spread stated, computes the verdict from the checks (held / partly / did not hold /
not assessable), prints the table and writes WORKDIR/repro.md, repro.json and the PNGs. With
--quick one seed runs a handful of steps to smoke-test the pipeline; its checks are shown but
the verdict is "not assessed (--quick)": a quick run claims nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import pkgutil
import time
from typing import Any, Iterator

from tokenlab.argparsing import Parser
from tokenlab.errors import TokenlabError, nearest
from tokenlab.repro.protocol import (HELD, NOT_ASSESSABLE, NOT_ASSESSED, NOT_HELD,
                                     PARTLY, VERDICTS, Check, CheckResult,
                                     aggregate, claim, evaluate, prerequisite, seed_values,
                                     validate, verdict)

__all__ = ["HELD", "PARTLY", "NOT_HELD", "NOT_ASSESSABLE", "NOT_ASSESSED", "VERDICTS",
           "Check", "claim", "prerequisite", "Context", "Trial", "Result", "run", "names",
           "compile_cache"]

Row = tuple[str, str, Any]


@dataclasses.dataclass
class Trial:
  """What one seed measured: rows (arm, metric, value) and anything `finish` plots."""
  rows: list[Row]
  data: Any = None


@dataclasses.dataclass
class Result:
  """A reproduction's outcome: aggregated rows, the judged checks and the verdict."""
  claim: str
  rows: list[tuple[str, str, Any, float | None, list[Any]]]   # arm, metric, mean, std, per seed
  verdict: str
  reason: str = ""
  checks: list[CheckResult] = dataclasses.field(default_factory=list)
  seeds: list[int] = dataclasses.field(default_factory=list)
  baselines: tuple[str, ...] = ()
  figures: list[str] = dataclasses.field(default_factory=list)   # PNG paths (in workdir)
  notes: str = ""
  history: str = ""


@dataclasses.dataclass
class Context:
  name: str
  workdir: str        # this seed's folder (arms live in WORKDIR/seed<S>/<arm>)
  seed: int
  quick: bool
  root: str = ""      # the reproduction's workdir (repro.md, PNGs)

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def out(self, *parts: str) -> str:
    """A path in the reproduction's workdir (for figures that summarise all seeds)."""
    return os.path.join(self.root or self.workdir, *parts)

  def steps(self, full: int, quick: int = 3) -> int:
    """The step budget of an arm: `full` normally, `quick` under --quick."""
    return quick if self.quick else full

  def train(self, experiment: str, arm: str, overrides: list[str] | tuple[str, ...] = (),
            **train_kwargs: Any) -> dict[str, Any]:
    """Trains one arm with the real trainer into WORKDIR/seed<S>/<arm>; returns its last
    metrics. `experiment` is 'experiments/<file>.py[:arg]' (resolved like the CLI does). The
    arm is seeded with the context's seed; a finished arm is resumed (reused), not retrained.
    """
    from tokenlab.config import load_config
    from tokenlab.train.loop import train
    overrides = [f"--config.seed={self.seed}", "--config.train.progress=false", *overrides]
    config = load_config(experiment, overrides)
    t = time.perf_counter()
    print(f"[{self.name}] seed {self.seed}: training arm '{arm}' ({config.train.steps} "
          f"steps) ...", flush=True)
    result = train(config, self.path(arm), **train_kwargs)
    print(f"[{self.name}] seed {self.seed}: arm '{arm}' done in "
          f"{time.perf_counter() - t:.0f}s", flush=True)
    return result


@contextlib.contextmanager
def compile_cache(path: str) -> Iterator[None]:
  """JAX's persistent compilation cache in `path` while the block runs (then restored).

  The arms of every seed compile the same programs; with the cache, seeds after the first
  load them instead of compiling again (compiles dominate these small CPU runs).
  """
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  cc.reset_cache()
  try:
    yield
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    cc.reset_cache()


def names() -> list[str]:
  import tokenlab.repro as pkg
  # The harness and the pieces reproductions share, not reproductions.
  skip = {"protocol", "baselines", "sampling", "speech_pieces"}
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                if not m.name.startswith("_") and m.name not in skip)


def _fmt(v: Any) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(rows: list[tuple]) -> str:
  """Markdown table of aggregated rows (arm, metric, mean, std, per-seed)."""
  multi = any(r[3] is not None for r in rows)
  head = ("arm", "metric", "mean", "std", "seeds") if multi else ("arm", "metric", "value")
  cells = [head]
  for arm, metric, mean, std, per in rows:
    if multi:
      cells.append((str(arm), str(metric), _fmt(mean), "" if std is None else f"{std:.2g}",
                    " / ".join(_fmt(v) for v in per) if std is not None else ""))
    else:
      cells.append((str(arm), str(metric), _fmt(mean)))
  return _markdown(cells)


def _markdown(cells: list[tuple[str, ...]]) -> str:
  cells = [tuple(c.replace("|", "\\|") for c in row) for row in cells]   # 'KL(p||q)' stays a cell
  widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
  lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
  lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def format_checks(results: list[CheckResult]) -> str:
  cells = [("kind", "check", "statement", "comparison", "measured", "passed")]
  for r in results:
    c = r.check
    cells.append((c.kind, c.name, c.statement, c.comparison(), r.detail,
                  "yes" if r.passed else "no"))
  return _markdown(cells)


def load(name: str):
  """Imports the reproduction module `name` and validates its declaration."""
  if name not in names():
    raise TokenlabError(f"unknown reproduction '{name}'{nearest(name, names())}; "
                        f"available: {', '.join(names()) or 'none yet'}")
  module = importlib.import_module(f"tokenlab.repro.{name}")
  for attr in ("CLAIM", "BASELINES", "CHECKS", "run_seed"):
    if not hasattr(module, attr):
      raise TokenlabError(f"tokenlab/repro/{name}.py does not follow the protocol: it has no "
                          f"{attr} (see tokenlab/repro/__init__.py)")
  try:
    validate(module.CHECKS, module.BASELINES)
  except ValueError as e:
    raise TokenlabError(f"tokenlab/repro/{name}.py: {e}") from None
  return module


def judge(checks: tuple[Check, ...], trials: list[Trial]) -> tuple[list[CheckResult], str, str]:
  """Evaluates every declared check over the seeds' trials; returns (results, verdict,
  reason)."""
  per_seed = [seed_values(t.rows) for t in trials]
  results = [evaluate(c, per_seed) for c in checks]
  v, reason = verdict(results)
  return results, v, reason


def run(name: str, workdir: str | None = None, seed: int = 0, quick: bool = False,
        seeds: int | None = None) -> Result:
  """Runs the mini-reproduction `name` over its seeds; writes repro.md (+ PNGs), repro.json."""
  module = load(name)
  n = seeds if seeds is not None else (1 if quick else getattr(module, "SEEDS", 3))
  if n < 1:
    raise TokenlabError(f"--seeds {n}: give at least 1 seed")
  workdir = workdir or os.path.join("runs", "repro", name + ("_quick" if quick else ""))
  os.makedirs(workdir, exist_ok=True)
  seed_list = [seed + i for i in range(n)]
  t = time.perf_counter()
  trials = []
  for i, s in enumerate(seed_list):
    print(f"[{name}] seed {s} ({i + 1} of {n})", flush=True)
    ctx = Context(name=name, workdir=os.path.join(workdir, f"seed{s}"), seed=s, quick=quick,
                  root=workdir)
    os.makedirs(ctx.workdir, exist_ok=True)
    trial = module.run_seed(ctx)
    trials.append(trial if isinstance(trial, Trial) else Trial(list(trial)))
  results, v, reason = judge(module.CHECKS, trials)
  if quick:
    v, reason = NOT_ASSESSED, "a quick run smoke-tests the pipeline and claims nothing"
  root_ctx = Context(name=name, workdir=workdir, seed=seed, quick=quick, root=workdir)
  figures, notes = (module.finish(root_ctx, trials) if hasattr(module, "finish") else ([], ""))
  seconds = time.perf_counter() - t
  report = Result(module.CLAIM, aggregate([t.rows for t in trials]), v, reason, results,
                  seed_list, tuple(module.BASELINES), list(figures), notes or "",
                  getattr(module, "HISTORY", ""))
  command = (f"tokenlab repro {name} --workdir {workdir} --seed {seed} --seeds {n}"
             + (" --quick" if quick else ""))
  _write(report, name, workdir, command, seconds, quick)
  # A quick run plots one arm's summary: enough to smoke-test the plots (matplotlib costs
  # ~0.5 s a figure, and an arm has about six).
  plot_arms(workdir, limit=1 if quick else None, summary_only=quick)
  return report


def plot_arms(workdir: str, limit: int | None = None, summary_only: bool = False) -> list[str]:
  """`tokenlab plot` for every trained arm (WORKDIR/seed<S>/<arm>/plots), or the first
  `limit` (only their summary.png with `summary_only`); returns the summary PNGs. Runs after
  repro.md is written, so a plotting error loses no result."""
  from tokenlab.plotting import plot_workdir
  arms = []
  for seed_dir in sorted(d for d in os.listdir(workdir) if d.startswith("seed")):
    root = os.path.join(workdir, seed_dir)
    arms += [os.path.join(root, arm) for arm in sorted(os.listdir(root))
             if os.path.isfile(os.path.join(root, arm, "metrics.jsonl"))]
  return [plot_workdir(arm, summary_only=summary_only)[0] for arm in arms[:limit]]


def _write(report: Result, name: str, workdir: str, command: str, seconds: float,
           quick: bool) -> None:
  table, checks = format_table(report.rows), format_checks(report.checks)
  md = [f"# Mini-reproduction: {name}", "", f"Claim: {report.claim}", "",
        f"Command: `{command}` ({seconds:.0f} s)", "",
        f"Seeds: {', '.join(map(str, report.seeds))}. Trivial baselines (arms): "
        f"{', '.join(report.baselines)}.", "", table, "",
        "Checks (declared in `tokenlab/repro/" + name + ".py` before the run):", "", checks, "",
        f"Verdict: **{report.verdict}** ({report.reason})"]
  if report.notes:
    md += ["", report.notes]
  if report.history:
    md += ["", "## Earlier designs", "", report.history]
  for fig in report.figures:
    md += ["", f"![{os.path.basename(fig)}]({os.path.relpath(fig, workdir)})"]
  with open(os.path.join(workdir, "repro.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  with open(os.path.join(workdir, "repro.json"), "w") as f:
    json.dump({"name": name, "claim": report.claim, "verdict": report.verdict,
               "reason": report.reason, "command": command, "seconds": seconds,
               "seeds": report.seeds, "quick": quick, "baselines": list(report.baselines),
               "checks": [r.to_json() for r in report.checks],
               "rows": [{"arm": a, "metric": m, "mean": mean, "std": std, "per_seed": per}
                        for a, m, mean, std, per in report.rows],
               "figures": [os.path.relpath(f, workdir) for f in report.figures],
               "notes": report.notes, "history": report.history}, f, indent=2)
  print(f"\n{name}: {report.claim}\n{table}\n\n{checks}\n\nverdict: {report.verdict} "
        f"({report.reason})\nwrote {os.path.join(workdir, 'repro.md')} in {seconds:.0f}s")


def main(argv: list[str]) -> int:
  parser = Parser(prog="tokenlab repro", description=__doc__.splitlines()[0],
                  epilog="examples:\n  tokenlab repro            # list them\n"
                         "  tokenlab repro fourier_head --quick\n"
                         "  tokenlab repro fourier_head --workdir runs/repro/fourier_head "
                         "--seeds 3\n")
  parser.add_argument("name", nargs="?")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--seed", type=int, default=0, help="first seed (seeds S, S+1, ...)")
  parser.add_argument("--seeds", type=int, default=None,
                      help="number of seeds (default: the reproduction's SEEDS; 1 with --quick)")
  parser.add_argument("--quick", action="store_true",
                      help="a few steps per arm: smoke-tests the pipeline, claims nothing")
  args = parser.parse_args(argv)
  if args.name is None:
    print("available reproductions: " + (", ".join(names()) or "none yet"))
    return 0
  run(args.name, args.workdir, args.seed, args.quick, args.seeds)
  return 0
