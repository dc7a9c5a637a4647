"""Arithmetic chains: multi-step computations written as tokens, with trajectories that contain
a planted critical mistake (the synthetic reasoning task of cDPO, tokenlab.methods.cdpo).

A problem is a start value and K steps (operator, operand), all mod 10 so every number is one
token. The prompt states the problem, each step closed by its step marker S_i; a trajectory
writes the running result after every step marker, then the final answer:

  prompt:   BOS a0 o1 b1 S1 o2 b2 S2 ... oK bK SK EQ      (3K + 3 tokens)
  response: S1 r1 S2 r2 ... SK rK ANS rK EOS             (2K + 3 tokens)
  with r_i = r_{i-1} o_i b_i mod 10 (r_0 = a0).

(The markers let a small transformer find step i's operands by content; without them it has
to count positions, which it learns far too slowly for a CPU reproduction.)

With `remarks=True` every step's result is followed by a harmless *remark* token that carries
no information: the common remark M0 with probability 1 - `p_rare_remark`, else one of the
rare remarks M1..M7 drawn uniformly (the same law in correct and incorrect trajectories). They
stand for a reasoning text's free phrasing: valid tokens a model finds unlikely, which a
detector that only asks "is this token unlikely?" confuses with mistakes:

  response: S1 r1 m1 S2 r2 m2 ... SK rK mK ANS rK EOS    (3K + 3 tokens)

An *incorrect* trajectory has exactly one planted mistake at step k (the critical token): r_k is
wrong and every later step is computed correctly from the wrong value, so the chain goes wrong
from there and the final answer is wrong. The mistakes stand in for a base model's habits:
  * a misconception (probability `p_misconception`, when the chain has a `*` step): at the
    first `*` step the result of `+` is written instead (r + b for r * b);
  * otherwise a slip: a random wrong digit at a uniformly drawn step.
`mixed` trajectories (the base model's samples for SFT) are incorrect with probability
`p_wrong`; with the defaults the misconception is the majority answer at a chain's first `*`,
so a model fine-tuned on them makes it greedily.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tokenlab.data.synthetic import StepIterator

PLUS, MINUS, TIMES, EQ, ANS, EOS, BOS = 10, 11, 12, 13, 14, 15, 16
STEP0, MAX_STEPS = 17, 8     # step markers S_1..S_8 are tokens 17..24
REMARK0, NUM_REMARKS = STEP0 + MAX_STEPS, 8   # remarks M0 (common), M1..M7 (rare): 25..32
VOCAB = REMARK0 + NUM_REMARKS
OPS = (PLUS, MINUS, TIMES)
KINDS = ("mixed", "correct", "incorrect")


def apply_op(op: int, r: int, b: int) -> int:
  if op == PLUS:
    return (r + b) % 10
  if op == MINUS:
    return (r - b) % 10
  return (r * b) % 10


@dataclasses.dataclass(frozen=True)
class Problem:
  start: int
  ops: tuple
  operands: tuple


@dataclasses.dataclass(frozen=True)
class ChainTask:
  """The chain layout and the mistake model; all sampling is from a numpy Generator."""
  num_steps: int = 4
  p_wrong: float = 0.6            # share of incorrect trajectories among `mixed` samples
  p_misconception: float = 0.9    # an incorrect trajectory's mistake is the `*` misconception
  remarks: bool = False           # a remark token after every step's result
  p_rare_remark: float = 0.1      # a remark is one of the rare M1..M7 (else M0)

  def __post_init__(self):
    if not 1 <= self.num_steps <= MAX_STEPS:
      raise ValueError(f"num_steps={self.num_steps} must be in 1..{MAX_STEPS}")
    if not 0.0 <= self.p_rare_remark <= 1.0:
      raise ValueError(f"p_rare_remark={self.p_rare_remark} must be in [0, 1]")

  @property
  def stride(self) -> int:
    """Response tokens per step: marker, result (and remark)."""
    return 3 if self.remarks else 2

  @property
  def prompt_len(self) -> int:
    return 3 * self.num_steps + 3

  @property
  def length(self) -> int:
    """Tokens of a whole trajectory (prompt + response)."""
    return self.prompt_len + self.stride * self.num_steps + 3

  @property
  def answer_pos(self) -> int:
    """Index of the final answer token in the trajectory."""
    return self.length - 2

  def result_pos(self, step: int) -> int:
    """Index in the trajectory of the result of step `step` (1-based)."""
    return self.prompt_len + self.stride * (step - 1) + 1

  def problem(self, rng: np.random.Generator) -> Problem:
    ops = tuple(int(o) for o in rng.choice(OPS, self.num_steps))
    operands = tuple(int(b) for b in rng.integers(1, 10, self.num_steps))
    return Problem(int(rng.integers(0, 10)), ops, operands)

  def solve(self, p: Problem, mistake: tuple[int, int] | None = None) -> list[int]:
    """Running results r_1..r_K; `mistake` = (step, value) writes `value` at that step and
    continues correctly from it."""
    r, out = p.start, []
    for i, (op, b) in enumerate(zip(p.ops, p.operands), start=1):
      r = apply_op(op, r, b)
      if mistake is not None and mistake[0] == i:
        r = mistake[1]
      out.append(r)
    return out

  def remark_tokens(self, rng: np.random.Generator) -> list[int]:
    """One remark per step (empty without remarks)."""
    if not self.remarks:
      return []
    rare = rng.random(self.num_steps) < self.p_rare_remark
    which = rng.integers(1, NUM_REMARKS, self.num_steps)
    return [REMARK0 + int(w) if r else REMARK0 for r, w in zip(rare, which)]

  def tokens(self, p: Problem, results: list[int], remarks: list[int] = ()) -> np.ndarray:
    marks = range(STEP0, STEP0 + self.num_steps)
    prompt = [BOS, p.start] + [t for step in zip(p.ops, p.operands, marks) for t in step]
    if remarks:
      response = [t for step in zip(marks, results, remarks) for t in step]
    else:
      response = [t for step in zip(marks, results) for t in step]
    return np.array(prompt + [EQ] + response + [ANS, results[-1], EOS], np.int32)

  def plant_mistake(self, p: Problem, rng: np.random.Generator) -> tuple[int, int]:
    """(step, wrong value) such that the final answer comes out wrong."""
    correct = self.solve(p)
    if TIMES in p.ops and rng.random() < self.p_misconception:
      k = p.ops.index(TIMES) + 1
      prev = correct[k - 2] if k > 1 else p.start
      value = (prev + p.operands[k - 1]) % 10
      if value != correct[k - 1] and self.solve(p, (k, value))[-1] != correct[-1]:
        return k, value
    while True:   # A slip; the last step always changes the answer, so this ends.
      k = int(rng.integers(1, self.num_steps + 1))
      value = int((correct[k - 1] + rng.integers(1, 10)) % 10)
      if self.solve(p, (k, value))[-1] != correct[-1]:
        return k, value

  def trajectory(self, p: Problem, rng: np.random.Generator, kind: str
                 ) -> tuple[np.ndarray, int]:
    """(tokens (length,), index of the planted mistake token or -1) of one trajectory."""
    wrong = kind == "incorrect" or (kind == "mixed" and rng.random() < self.p_wrong)
    if not wrong:
      return self.tokens(p, self.solve(p), self.remark_tokens(rng)), -1
    k, value = self.plant_mistake(p, rng)
    return (self.tokens(p, self.solve(p, (k, value)), self.remark_tokens(rng)),
            self.result_pos(k))


def lm_row(tokens: np.ndarray, prompt_len: int) -> dict[str, np.ndarray]:
  """Next-token row of one trajectory: loss on the response targets only."""
  n = len(tokens) - 1
  mask = (np.arange(n) >= prompt_len - 1).astype(np.float32)
  return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": mask}


class ChainIterator(StepIterator):
  """Checkpointable LM batches of trajectories of `kind` (mixed | correct | incorrect):
  {inputs, targets, loss_mask (response only), prompt_len, answer, answer_pos, critical}
  where `answer` is the correct final answer (whatever the trajectory says), `answer_pos` the
  index of the final answer token in `inputs` and `critical` the target index of the planted
  mistake (-1 if none).

  Batch n is a function of (data_seed, split, seed, n); the validation split ignores `seed`
  (every arm sees the same held-out problems) and stops after `num_batches`.
  """

  def __init__(self, task: ChainTask, batch_size: int, seed: int, *, kind: str = "mixed",
               split: str = "train", data_seed: int = 0, num_batches: int | None = None):
    if kind not in KINDS:
      raise ValueError(f"kind='{kind}' unknown; use one of {KINDS}")
    self.task, self.batch_size, self.seed, self.kind = task, batch_size, seed, kind
    self.split, self.data_seed, self.num_batches = split, data_seed, num_batches
    self.step = 0

  def __next__(self):
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    salt = 0 if self.split == "train" else 1
    rng = np.random.default_rng((self.data_seed, salt, self.seed if salt == 0 else 0,
                                 self.step))
    self.step += 1
    rows, critical, answer = [], [], []
    for _ in range(self.batch_size):
      problem = self.task.problem(rng)
      toks, pos = self.task.trajectory(problem, rng, self.kind)
      rows.append(lm_row(toks, self.task.prompt_len))
      critical.append(pos - 1 if pos >= 0 else -1)
      answer.append(self.task.solve(problem)[-1])
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    b = self.batch_size
    batch["prompt_len"] = np.full((b,), self.task.prompt_len, np.int32)
    batch["answer_pos"] = np.full((b,), self.task.answer_pos, np.int32)
    batch["answer"] = np.array(answer, np.int32)      # the correct final answer
    batch["critical"] = np.array(critical, np.int32)
    return batch
