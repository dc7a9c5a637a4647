"""Preference-pair data (DPO and its token-weighted variants): for each prompt a chosen and a
rejected response, written as two next-token rows over prompt + response with a loss mask on
the response targets.

A batch is {chosen_inputs, chosen_targets, chosen_loss_mask, rejected_inputs, ...} (each
(batch, length)) plus any per-pair extras the pairs carry (e.g. chosen_weights, answer).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tokenlab.data.synthetic import StepIterator

SIDES = ("chosen", "rejected")


def response_row(prompt: Sequence[int], response: Sequence[int], length: int,
                 pad_id: int = 0) -> dict[str, np.ndarray]:
  """Next-token row of prompt + response, padded to `length` inputs.

  Returns inputs, targets (length,) int32 and loss_mask (length,) float32, 1 exactly on the
  targets that are response tokens.
  """
  toks = list(prompt) + list(response)
  if len(toks) > length + 1:
    raise ValueError(f"prompt + response has {len(toks)} tokens; more than length + 1 = "
                     f"{length + 1}")
  toks = np.array(toks + [pad_id] * (length + 1 - len(toks)), np.int32)
  idx = np.arange(length)
  mask = (idx >= len(prompt) - 1) & (idx < len(prompt) + len(response) - 1)
  return {"inputs": toks[:-1], "targets": toks[1:], "loss_mask": mask.astype(np.float32)}


def make_pair(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int],
              length: int, pad_id: int = 0, **extras: np.ndarray) -> dict[str, np.ndarray]:
  """One preference pair as flat arrays: chosen_* and rejected_* rows plus `extras`."""
  out = {}
  for side, response in zip(SIDES, (chosen, rejected)):
    for k, v in response_row(prompt, response, length, pad_id).items():
      out[f"{side}_{k}"] = v
  out.update({k: np.asarray(v) for k, v in extras.items()})
  return out


def stack_pairs(pairs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([p[k] for p in pairs]) for k in pairs[0]}


class PairIterator(StepIterator):
  """Checkpointable batches over a fixed list of pairs (dicts of same-shaped arrays).

  shuffle=True: endless epochs, each a permutation drawn from (seed, epoch), so batch n is a
  function of (seed, n). shuffle=False: the pairs in order, `num_batches` at most, and only
  whole batches (the trainer's jitted step needs one shape).
  """

  def __init__(self, pairs: Sequence[dict[str, np.ndarray]], batch_size: int, seed: int, *,
               shuffle: bool = True, num_batches: int | None = None):
    if len(pairs) < batch_size:
      raise ValueError(f"{len(pairs)} pairs cannot fill one batch of {batch_size}")
    self.data = stack_pairs(pairs)
    self.size, self.batch_size, self.seed = len(pairs), batch_size, seed
    self.shuffle, self.num_batches = shuffle, num_batches
    self.step = 0

  def _indices(self, step: int) -> np.ndarray:
    start = step * self.batch_size
    pos = np.arange(start, start + self.batch_size)
    if not self.shuffle:
      return pos
    epochs, within = np.divmod(pos, self.size)
    perms = {int(e): np.random.default_rng((self.seed, int(e))).permutation(self.size)
             for e in np.unique(epochs)}
    return np.array([perms[int(e)][i] for e, i in zip(epochs, within)])

  def __next__(self):
    last = (self.step + 1) * self.batch_size
    if not self.shuffle and (last > self.size or (self.num_batches is not None
                                                  and self.step >= self.num_batches)):
      raise StopIteration
    idx = self._indices(self.step)
    self.step += 1
    return {k: v[idx] for k, v in self.data.items()}
