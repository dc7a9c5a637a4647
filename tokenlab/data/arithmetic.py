"""Multi-digit addition as (prompt, answer) token sequences: a small, exactly-scored
generation task (used by method self_generated_tokens; reusable by any prompt/answer method).

Vocabulary (`VOCAB_SIZE` = 16):

  0..9  the digits            10 '+'            11 '='
  12    <eos> (ends answers)  13 <pad>          14 <bos>          15 unused

A problem a + b with `num_digits`-wide operands is

  prompt: <bos> a_digits '+' b_digits '='      (prompt_len = 2 * num_digits + 3)
  answer: s_digits <eos>                        (answer_len = num_digits + 2)

Operands are zero-padded to `num_digits` and the sum to `num_digits + 1`, so every problem
of a task has the same length (no padding inside a batch). With `reverse=True` (the default)
every number is written least-significant digit first: then the carry flows in generation
order and each answer digit depends only on the operand digits at its position and the carry
from the one before, which a left-to-right decoder can compute without look-ahead (plain order
needs the carries of all later positions first). 17 + 5, num_digits=3, reversed:
`<bos> 7 1 0 + 5 0 0 = 2 2 0 0 <eos>`.

`carry_bias` makes problems harder: each operand digit pair is drawn, with that probability,
among pairs whose sum is >= 9 (a carry is made or passed on), so long carry chains appear.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PLUS, EQUALS, EOS, PAD, BOS = 10, 11, 12, 13, 14
VOCAB_SIZE = 16
SYMBOLS = {PLUS: "+", EQUALS: "=", EOS: "$", PAD: "_", BOS: "^"}


@dataclasses.dataclass(frozen=True)
class AdditionTask:
  """Addition of non-negative integers of at most `num_digits` digits."""
  num_digits: int = 6
  reverse: bool = True

  @property
  def prompt_len(self) -> int:
    return 2 * self.num_digits + 3

  @property
  def answer_len(self) -> int:
    return self.num_digits + 2

  @property
  def seq_len(self) -> int:
    """Tokens of a whole problem (prompt + answer)."""
    return self.prompt_len + self.answer_len

  def _digits(self, values: np.ndarray, width: int) -> np.ndarray:
    """(n,) ints -> (n, width) digits in the task's order."""
    powers = 10 ** np.arange(width, dtype=np.int64)          # least-significant first
    digits = (values[:, None].astype(np.int64) // powers) % 10
    return digits if self.reverse else digits[:, ::-1]

  def encode(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Operands (n,) -> (prompts (n, prompt_len), answers (n, answer_len)) int32."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    n, w = len(a), self.num_digits
    if np.any(a >= 10 ** w) or np.any(b >= 10 ** w) or np.any(a < 0) or np.any(b < 0):
      raise ValueError(f"operands must be in [0, 10^{w})")
    col = lambda v: np.full((n, 1), v, np.int64)
    prompts = np.concatenate([col(BOS), self._digits(a, w), col(PLUS), self._digits(b, w),
                              col(EQUALS)], 1)
    answers = np.concatenate([self._digits(a + b, w + 1), col(EOS)], 1)
    return prompts.astype(np.int32), answers.astype(np.int32)

  def decode_answer(self, answer: np.ndarray) -> int | None:
    """An answer's tokens (answer_len,) -> the integer it states, or None if malformed
    (a non-digit among the digits, or no <eos> where it belongs)."""
    answer = np.asarray(answer)
    digits, end = answer[:-1], answer[-1]
    if end != EOS or np.any(digits > 9):
      return None
    digits = digits if self.reverse else digits[::-1]
    return int(sum(int(d) * 10 ** i for i, d in enumerate(digits)))

  def sample_operands(self, rng: np.random.Generator, n: int, *, full_width: bool = False,
                      carry_bias: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n operand pairs. Each operand's digit count is uniform in 1..num_digits (or exactly
    num_digits with `full_width`), its digits uniform; with `carry_bias` > 0 each position
    where both operands have a digit is, with that probability, redrawn among pairs
    summing to >= 9."""
    w = self.num_digits
    lengths = (np.full((n, 2), w) if full_width else rng.integers(1, w + 1, (n, 2)))
    digits = rng.integers(0, 10, (n, 2, w))
    if carry_bias > 0:
      hi = rng.integers(0, 10, (n, w))
      lo = 9 - hi + rng.integers(0, hi + 1)    # 9 - hi <= lo <= 9: pair sum >= 9
      biased = rng.random((n, w)) < carry_bias
      digits[:, 0] = np.where(biased, hi, digits[:, 0])
      digits[:, 1] = np.where(biased, lo, digits[:, 1])
    pos = np.arange(w)
    digits = np.where(pos[None, None] < lengths[..., None], digits, 0)
    # The leading digit of a k-digit operand is non-zero (k > 1), so lengths are exact.
    top = digits[np.arange(n)[:, None], np.arange(2)[None], lengths - 1]
    digits[np.arange(n)[:, None], np.arange(2)[None], lengths - 1] = np.where(
        (top == 0) & (lengths > 1), rng.integers(1, 10, (n, 2)), top)
    values = (digits * 10 ** pos).sum(-1)
    return values[:, 0], values[:, 1]

  def problems(self, rng: np.random.Generator, n: int, **kwargs) -> np.ndarray:
    """n whole problems (n, seq_len): prompt then answer; kwargs as in sample_operands."""
    return np.concatenate(self.encode(*self.sample_operands(rng, n, **kwargs)), 1)

  def lm_batch(self, problems: np.ndarray) -> dict[str, np.ndarray]:
    """Problems (n, seq_len) -> next-token batch {inputs, targets, loss_mask} of length
    seq_len - 1, with the loss on the answer tokens only (the prompt is given)."""
    n = len(problems)
    mask = np.zeros((n, self.seq_len - 1), np.float32)
    mask[:, self.prompt_len - 1:] = 1.0     # target t is token t + 1: answers start at P
    return {"inputs": problems[:, :-1], "targets": problems[:, 1:], "loss_mask": mask}

  def render(self, tokens: np.ndarray) -> str:
    """Tokens -> a readable string (digits, '+', '=', '$' = <eos>, '^' = <bos>)."""
    return "".join(SYMBOLS.get(int(t), str(int(t))) for t in tokens)


def carries(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """The number of carries of each addition a + b (n,), a measure of its difficulty."""
  a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
  count = np.zeros(a.shape, np.int64)
  carry = np.zeros(a.shape, np.int64)
  while np.any((a > 0) | (b > 0) | (carry > 0)):
    s = a % 10 + b % 10 + carry
    carry = (s >= 10).astype(np.int64)
    count += carry
    a, b = a // 10, b // 10
  return count
