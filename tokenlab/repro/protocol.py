"""The reproduction protocol as code: checks declared before the run, and the verdict they give.

A mini-reproduction declares, at module level and before anything is trained,

    BASELINES = ("uniform", "bigram (counts)", "untrained")      # trivial-baseline arm names
    CHECKS = (
        prerequisite("beats_bigram", "the Fourier N=4 arm predicts better than counts",
                     ("fourier_N4", "NLL nats"), "<", ("bigram (counts)", "NLL nats")),
        claim("lower_kl", "the best Fourier head is closer to the truth than the linear head",
              ("best fourier", "KL nats"), "<", ("linear", "KL nats")),
    )

Each check compares one measured (arm, metric) with another, or with a constant, optionally
by a margin `by`. Every seed gives one signed margin d_s (positive = the comparison holds by
that much beyond `by`); the check is judged on the mean over seeds, with the spread stated:

- passed      mean(d) > 0, and where the seeds give a spread (n >= 2) and n < 3, the mean
              margin exceeds the standard deviation of d (a margin inside the seed spread needs
              at least 3 seeds);
- failed      otherwise, including a missing or non-finite metric.

The verdict follows from the checks alone (`verdict`):

    not assessable   a prerequisite failed (the trained arms did not clearly beat their
                     trivial baselines, or the task is saturated): the claim cannot be judged;
    held             every prerequisite and every claim check passed;
    partly           prerequisites passed, some claim checks passed;
    did not hold     prerequisites passed, no claim check passed.

`validate` refuses a declaration that cannot give an honest verdict: no claim check, no
prerequisite against a declared baseline arm, or a baseline no check uses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

HELD, PARTLY, NOT_HELD = "held", "partly", "did not hold"
NOT_ASSESSABLE = "not assessable"
NOT_ASSESSED = "not assessed (--quick)"
VERDICTS = (HELD, PARTLY, NOT_HELD, NOT_ASSESSABLE, NOT_ASSESSED)

PREREQUISITE, CLAIM = "prerequisite", "claim"
_OPS = {"<": -1.0, "<=": -1.0, ">": 1.0, ">=": 1.0}
MIN_SEEDS_WITHIN_SPREAD = 3

Ref = tuple[str, str]   # (arm, metric), as in the rows of a run


@dataclasses.dataclass(frozen=True)
class Check:
  """One comparison declared before the run: `lhs op rhs` (by at least `by`).

  lhs/rhs are (arm, metric) pairs naming rows of the run, or (rhs only) a constant. For `<`
  the signed margin of a seed is rhs - lhs - by; for `>` it is lhs - rhs - by.
  """
  name: str
  kind: str            # PREREQUISITE | CLAIM
  statement: str       # the check in words, as a reader should understand it
  lhs: Ref
  op: str
  rhs: Ref | float
  by: float = 0.0

  def __post_init__(self):
    if self.kind not in (PREREQUISITE, CLAIM):
      raise ValueError(f"check '{self.name}': kind must be '{PREREQUISITE}' or '{CLAIM}', "
                       f"not '{self.kind}'")
    if self.op not in _OPS:
      raise ValueError(f"check '{self.name}': op must be one of {', '.join(_OPS)}")
    for side in (self.lhs,) + ((self.rhs,) if not _is_number(self.rhs) else ()):
      if not (isinstance(side, tuple) and len(side) == 2 and all(isinstance(s, str)
                                                                 for s in side)):
        raise ValueError(f"check '{self.name}': {side!r} is not an (arm, metric) pair")

  @property
  def arms(self) -> tuple[str, ...]:
    return (self.lhs[0],) + (() if _is_number(self.rhs) else (self.rhs[0],))

  def comparison(self) -> str:
    """The comparison in one line, e.g. `fourier_N4 · NLL nats < uniform · NLL nats`."""
    side = lambda r: f"{r:g}" if _is_number(r) else f"{r[0]} · {r[1]}"
    # lhs < rhs - by   or   lhs > rhs + by  (a negative `by` allows lhs that far the other way)
    shift = -self.by if self.op.startswith("<") else self.by
    by = f" {'+' if shift > 0 else '-'} {abs(shift):g}" if self.by else ""
    return f"{side(self.lhs)} {self.op} {side(self.rhs)}{by}"


def prerequisite(name: str, statement: str, lhs: Ref, op: str, rhs: Ref | float,
                 by: float = 0.0) -> Check:
  """A check that the run can judge the claim at all (beats trivial baselines, not saturated)."""
  return Check(name, PREREQUISITE, statement, lhs, op, rhs, by)


def claim(name: str, statement: str, lhs: Ref, op: str, rhs: Ref | float,
          by: float = 0.0) -> Check:
  """A check of the paper's claim in miniature."""
  return Check(name, CLAIM, statement, lhs, op, rhs, by)


@dataclasses.dataclass
class CheckResult:
  check: Check
  passed: bool
  detail: str
  margin: float           # mean signed margin over seeds (nan if a value is missing)
  spread: float | None    # std of the per-seed margins (None with one seed)
  values: tuple[float, float] = (math.nan, math.nan)   # mean lhs, mean rhs

  def to_json(self) -> dict[str, Any]:
    c = self.check
    return {"name": c.name, "kind": c.kind, "statement": c.statement,
            "comparison": c.comparison(), "passed": self.passed, "detail": self.detail,
            "margin": _finite_or_none(self.margin), "spread": _finite_or_none(self.spread)}


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite_or_none(x: float | None) -> float | None:
  return x if x is not None and math.isfinite(x) else None


def validate(checks: Sequence[Check], baselines: Sequence[str]) -> None:
  """Refuses declarations that cannot give an honest verdict (raises ValueError)."""
  names = [c.name for c in checks]
  if len(set(names)) != len(names):
    raise ValueError(f"check names must be unique: {names}")
  if not any(c.kind == CLAIM for c in checks):
    raise ValueError("no claim check: declare at least one claim(...)")
  if not baselines:
    raise ValueError("no trivial baseline arm: declare BASELINES (uniform, answer prior, "
                     "count n-gram, untrained network, ...)")
  prereq_arms = {a for c in checks if c.kind == PREREQUISITE for a in c.arms}
  if not prereq_arms & set(baselines):
    raise ValueError("no prerequisite compares a trained arm with a trivial baseline "
                     f"(baselines: {', '.join(baselines)})")
  used = {a for c in checks for a in c.arms}
  unused = [b for b in baselines if b not in used]
  if unused:
    raise ValueError(f"baseline arms {unused} are declared but no check uses them")


def evaluate(check: Check, seeds: Sequence[dict[Ref, float]]) -> CheckResult:
  """Judges `check` on per-seed values {(arm, metric): value} (see module docstring)."""
  sign = _OPS[check.op]
  lhs, rhs, margins = [], [], []
  for values in seeds:
    a = values.get(check.lhs)
    b = check.rhs if _is_number(check.rhs) else values.get(check.rhs)
    missing = [str(r) for r, v in ((check.lhs, a), (check.rhs, b)) if v is None]
    if missing:
      return CheckResult(check, False, f"not measured: {', '.join(missing)}", math.nan, None)
    a, b = float(a), float(b)
    lhs.append(a)
    rhs.append(b)
    margins.append(sign * (a - b) - check.by)
  n = len(margins)
  if n == 0:
    return CheckResult(check, False, "no seeds ran", math.nan, None)
  if not all(math.isfinite(m) for m in margins):
    return CheckResult(check, False, "a value is not finite", math.nan, None,
                       (_mean(lhs), _mean(rhs)))
  m = _mean(margins)
  spread = _std(margins) if n >= 2 else None
  strict = check.op in ("<", ">")
  holds = m > 0 if strict else m >= 0
  values = (_mean(lhs), _mean(rhs))
  side = lambda v, s: f"{v:.4g}" + (f" +- {s:.2g}" if s is not None else "")
  desc = (f"{side(values[0], _std(lhs) if n >= 2 else None)} vs "
          f"{side(values[1], _std(rhs) if n >= 2 else None)}"
          + (f" (by {check.by:g})" if check.by else "") + f", margin {m:+.4g}")
  if spread is not None:
    desc += f", seed spread {spread:.2g} over {n} seeds"
  else:
    desc += ", 1 seed (spread unknown)"
  if holds and spread is not None and n < MIN_SEEDS_WITHIN_SPREAD and m <= spread:
    return CheckResult(check, False, desc + f": margin within the seed spread needs >= "
                       f"{MIN_SEEDS_WITHIN_SPREAD} seeds", m, spread, values)
  return CheckResult(check, bool(holds), desc, m, spread, values)


def verdict(results: Sequence[CheckResult]) -> tuple[str, str]:
  """(verdict, reason) computed from the check results alone."""
  failed_pre = [r for r in results if r.check.kind == PREREQUISITE and not r.passed]
  claims = [r for r in results if r.check.kind == CLAIM]
  if failed_pre:
    return NOT_ASSESSABLE, "prerequisite failed: " + "; ".join(
        f"{r.check.name} ({r.check.statement}: {r.detail})" for r in failed_pre)
  passed = [r for r in claims if r.passed]
  v = HELD if len(passed) == len(claims) else PARTLY if passed else NOT_HELD
  return v, f"{len(passed)} of {len(claims)} claim checks passed" + (
      ": " + ", ".join(r.check.name for r in passed) if passed and v == PARTLY else "")


def _mean(xs: Sequence[float]) -> float:
  return sum(xs) / len(xs)


def _std(xs: Sequence[float]) -> float:
  """Sample standard deviation (ddof = 1)."""
  if len(xs) < 2 or max(xs) == min(xs):   # identical values: exactly 0, not float noise
    return 0.0
  m = _mean(xs)
  return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def aggregate(seed_rows: Sequence[Sequence[tuple[str, str, Any]]]
              ) -> list[tuple[str, str, Any, float | None, list[Any]]]:
  """Rows of all seeds -> (arm, metric, mean, std or None, per-seed values), in first-seen
  order. Text values are kept as the first seed's text (std None)."""
  order: list[Ref] = []
  per: dict[Ref, list[Any]] = {}
  for rows in seed_rows:
    for arm, metric, value in rows:
      key = (str(arm), str(metric))
      if key not in per:
        order.append(key)
        per[key] = []
      per[key].append(value)
  out = []
  for key in order:
    vals = per[key]
    nums = [float(v) for v in vals if _is_number(v) or _is_numpy_scalar(v)]
    if len(nums) == len(vals):
      out.append((*key, _mean(nums), _std(nums) if len(nums) >= 2 else None, nums))
    else:
      out.append((*key, vals[0], None, vals))
  return out


def _is_numpy_scalar(v: Any) -> bool:
  return hasattr(v, "dtype") and getattr(v, "shape", None) == () and v.dtype.kind in "fiub"


def seed_values(rows: Sequence[tuple[str, str, Any]]) -> dict[Ref, float]:
  """One seed's rows as {(arm, metric): float} (text rows dropped)."""
  out = {}
  for arm, metric, value in rows:
    if _is_number(value) or _is_numpy_scalar(value):
      out[(str(arm), str(metric))] = float(value)
  return out
