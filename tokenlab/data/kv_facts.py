"""Key-value facts with exact answers: associative recall near and far (the far-context task of
extensible tokenization, issue 21).

A fact is one token F(k, v) ("key k has value v"); a query is two tokens, the key Q(k) and
the answer V(v). Facts are drawn per row, so an answer can only be known from the row itself
(associative recall): a query's answer is the value of the fact with its key, earlier in the
row. One token per fact makes recall a one-step lookup (the query's key matches a fact token;
its value is copied). Measured here (BUILD_NOTES): a 2-layer d=64 LM trained on the answers
only learns it in ~400 steps; two-token "k v" facts with the loss on every token had formed
no recall circuit after 1,500 steps (the masked loss was not tried on them).

  far part:   `far_len` tokens: `far_facts` facts with distinct keys (the facts to
              remember) at random places among filler tokens (drawn uniformly from
              `num_filler` ids: text around the facts, which carries nothing to remember)
  near part:  `near_facts` facts with new keys, then `queries` queries; each asks, at
              random, a key of the far part (prob `far_repeat`, answer kind FAR) or of the
              near part's facts (answer kind NEAR)

  row:   f F f f F ... f | F F | Q(k) V(v) Q(k) V(v) ...
  kind:  0 0 0 0 0 ... 0 | 0 0 |  0    K     0    K      (K = FAR / NEAR on the answers)

Vocabulary: PAD 0, keys Q(k) = KEY0 + k, values V(v) = val0 + v, facts F(k, v) = fact0 +
k * num_values + v, filler f = fill0 .. fill0 + num_filler - 1. A short row (inside an LM's
window) trains recall; a long far part (beyond the window) is what a context-extension
method must bring back.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tokenlab.data.synthetic import SplitStreamIterator

PAD = 0
KEY0 = 1
FAR, NEAR = 1, 2   # kinds of an answer position (0 elsewhere)


@dataclasses.dataclass(frozen=True)
class KVFactsTask:
  """Shapes and sampler of the task (see the module docstring)."""
  num_keys: int = 16
  num_values: int = 8
  num_filler: int = 16
  far_len: int = 32
  far_facts: int = 8
  near_facts: int = 2
  queries: int = 7
  far_repeat: float = 0.7

  def __post_init__(self):
    if self.far_facts + self.near_facts > self.num_keys:
      raise ValueError(f"{self.far_facts} + {self.near_facts} facts need as many distinct "
                       f"keys; num_keys={self.num_keys} is too few")
    if self.far_facts > self.far_len:
      raise ValueError(f"{self.far_facts} far facts do not fit far_len={self.far_len}")

  @property
  def val0(self) -> int:
    return KEY0 + self.num_keys

  @property
  def fact0(self) -> int:
    return self.val0 + self.num_values

  @property
  def fill0(self) -> int:
    return self.fact0 + self.num_keys * self.num_values

  @property
  def vocab_size(self) -> int:
    return self.fill0 + self.num_filler

  @property
  def near_len(self) -> int:
    return self.near_facts + 2 * self.queries

  def fact(self, key: int, value: int) -> int:
    return self.fact0 + key * self.num_values + value

  def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One row: tokens (far_len + near_len,) int32 and kinds (same,) int32 (FAR / NEAR on
    answer positions, 0 elsewhere)."""
    keys = rng.permutation(self.num_keys)[:self.far_facts + self.near_facts]
    values = rng.integers(self.num_values, size=len(keys))
    far, near = np.arange(self.far_facts), np.arange(self.far_facts, len(keys))
    facts = [self.fact(k, v) for k, v in zip(keys, values)]
    tokens = list(self.fill0 + rng.integers(self.num_filler, size=self.far_len))
    for i, at in enumerate(np.sort(rng.choice(self.far_len, self.far_facts, replace=False))):
      tokens[at] = facts[i]
    tokens += facts[self.far_facts:]
    kinds = [0] * len(tokens)
    for _ in range(self.queries):
      from_far = len(near) == 0 or rng.random() < self.far_repeat
      i = int(rng.choice(far if from_far else near))
      tokens += [KEY0 + int(keys[i]), self.val0 + int(values[i])]
      kinds += [0, FAR if from_far else NEAR]
    return np.array(tokens, np.int32), np.array(kinds, np.int32)


class KVFactsIterator(SplitStreamIterator):
  """Checkpointable batches of whole rows: {tokens (B, far_len + near_len) int32, kinds
  (same) int32}; `to_batch` turns them into a method's batch. Streams: SplitStreamIterator.
  """

  def __init__(self, task: KVFactsTask, batch_size: int, seed: int, to_batch=None, *,
               split: str = "train", data_seed: int = 0, num_batches: int | None = None):
    super().__init__(batch_size, seed, split=split, data_seed=data_seed,
                     num_batches=num_batches)
    self.task, self.to_batch = task, to_batch

  def __next__(self):
    rng = self.next_rng()
    rows = [self.task.sample(rng) for _ in range(self.batch_size)]
    out = {"tokens": np.stack([r[0] for r in rows]), "kinds": np.stack([r[1] for r in rows])}
    return self.to_batch(out) if self.to_batch else out
