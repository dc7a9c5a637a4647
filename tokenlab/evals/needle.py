"""Needle threading (Roberts, Han & Albanie, arXiv 2411.05000): haystacks of key-value pairs
with exact answers, and an evaluator for any tokenlab LM.

The paper's haystacks are JSON objects of UUID keys and UUID values; a needle is one pair,
and the tasks ask for values by key:

  single            one key              -> its value
  multiple          several keys         -> their values, in the order asked
  conditional       a condition on keys  -> the values of every key meeting it (keys that
                                            contain a given character, as in the paper), in
                                            context order
  threading         a start key          -> follow the thread: each value is the next key;
                                            h hops
  multi_threading   several start keys   -> every thread, each h hops

Here the haystack is the same structure written compactly so that toy byte-level models see
many pairs per context: keys are `key_len` characters of a 62-letter alphabet
(0-9a-zA-Z; "UUID-like", the paper's UUIDs have 32 hex characters) and values are keys of
the same haystack, a pair is `key:value,`, the haystack ends with a newline, then the
query and the answer:

  3f:a1,07:c2,a1:5e,...,c9:07,\\n      haystack (num_pairs pairs, keys distinct)
  07:                                  single: query `key:`      answer `c2`
  07,c9:                               multiple                  answer `c2,07`
  *a*:                                 conditional               answer `5e` (keys with an a)
  3f>                                  threading                 answer `a1>5e` (2 hops)
  3f,c9>                               multi_threading           answer `a1>5e,07>c2`

Threads write every hop (`a1>5e`), not only the final value as in the paper: a model without
chain-of-thought would otherwise need one attention lookup per hop in a single forward pass,
which a two-layer toy model cannot do; each hop here is one retrieval conditioned on the
previous hop. Thread pairs sit at random positions of the haystack (the paper's threads run
forward or backward through the context; random order contains both).

Scoring is the paper's exact match, computed without decoding: greedy decoding reproduces the
answer exactly iff the argmax of every answer token under teacher forcing is the true token
(the first wrong argmax is where greedy decoding leaves the answer). So one forward pass per
haystack scores it. Prompt and answer are tokenized separately and concatenated, so any
tokenizer works (the bytes tokenizer gives the plain byte string).

`tokenlab needle --run RUN` evaluates a trained LM run on a grid of context lengths x needle
depths (single needle) and of context lengths x hops (threading), writes needle.json, needle.md
and a heat map PNG like the paper's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np

from tokenlab.data.synthetic import StepIterator

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"   # key characters
TASKS = ("single", "multiple", "conditional", "threading", "multi_threading")
LogitsFn = Callable[[np.ndarray], np.ndarray]   # tokens (B, L) int32 -> logits (B, L, V)


@dataclasses.dataclass(frozen=True)
class Haystack:
  """One example: `context` (haystack + newline), `prompt` (the query), `answer` (exact).

  depth: where the needle sits in the haystack, 0 = first pair, 1 = last pair (the first
  needle for several); distance: bytes from the start of the farthest needle pair to the end
  of the prompt (how far back the query must look); hops: lookups per thread (1 for
  single); candidates: every value in the haystack (what a uniform guess draws from).
  """
  task: str
  context: str
  prompt: str
  answer: str
  depth: float
  distance: int
  hops: int
  num_pairs: int
  candidates: tuple[str, ...]

  @property
  def text(self) -> str:
    return self.context + self.prompt + self.answer + "\n"


def pair_len(key_len: int) -> int:
  """Bytes of one `key:value,` pair."""
  return 2 * key_len + 2


def _keys(n: int, key_len: int, rng: np.random.Generator, exclude: Sequence[str] = ()
          ) -> list[str]:
  """n distinct random keys of key_len ALPHABET characters, none in `exclude`."""
  space = len(ALPHABET) ** key_len
  bad = {_index(k) for k in exclude}
  if n + len(bad) > space:
    raise ValueError(f"{n} distinct keys of {key_len} characters do not fit "
                     f"({space} exist); raise key_len or use fewer pairs")
  out: list[int] = []
  seen = set(bad)
  while len(out) < n:
    for x in rng.integers(0, space, 2 * (n - len(out)) + 4):
      x = int(x)
      if x not in seen:
        seen.add(x)
        out.append(x)
        if len(out) == n:
          break
  return [_key(x, key_len) for x in out]


def _key(x: int, key_len: int) -> str:
  """The key of index x (base len(ALPHABET), key_len digits)."""
  chars = []
  for _ in range(key_len):
    x, r = divmod(x, len(ALPHABET))
    chars.append(ALPHABET[r])
  return "".join(reversed(chars))


def _index(key: str) -> int:
  x = 0
  for ch in key:
    x = x * len(ALPHABET) + ALPHABET.index(ch)
  return x


def make_haystack(task: str, num_pairs: int, rng: np.random.Generator, *, key_len: int = 1,
                  hops: int = 1, threads: int = 2, needles: int = 3,
                  depth: float | None = None) -> Haystack:
  """One haystack of `num_pairs` pairs for `task` (see the module docstring).

  hops: thread length (threading, multi_threading); threads: threads of multi_threading;
  needles: keys asked by `multiple`; depth (single only): the needle's relative position in
  [0, 1] (None = uniform at random).
  """
  if task not in TASKS:
    raise ValueError(f"unknown needle task '{task}'; use one of {', '.join(TASKS)}")
  n_threads = threads if task == "multi_threading" else 1
  h = hops if task in ("threading", "multi_threading") else 1
  # Thread keys: c0 -> c1 -> ... -> ch per thread; the final value ch is never a key (the
  # thread ends there). Distractor keys avoid every thread key.
  chains = []
  if task in ("threading", "multi_threading"):
    flat = _keys(n_threads * (h + 1), key_len, rng)
    chains = [flat[t * (h + 1):(t + 1) * (h + 1)] for t in range(n_threads)]
    needle_pairs = [(c[j], c[j + 1]) for c in chains for j in range(h)]
    if len(needle_pairs) > num_pairs:
      raise ValueError(f"{len(needle_pairs)} thread pairs do not fit {num_pairs} pairs")
    keys = _keys(num_pairs - len(needle_pairs), key_len, rng, exclude=flat)
    # Distractor values are keys of the haystack too, as thread values are (so a thread
    # cannot be told apart by its values, only followed key by key).
    pool = keys + [c[j] for c in chains for j in range(1, h)]
    pairs = needle_pairs + [(k, pool[int(rng.integers(len(pool)))]) for k in keys]
    order = rng.permutation(num_pairs)
    pairs = [pairs[i] for i in order]
    needle_at = [int(np.where(order == i)[0][0]) for i in range(len(needle_pairs))]
  else:
    keys = _keys(num_pairs, key_len, rng)
    values = [keys[int(i)] for i in rng.integers(0, num_pairs, num_pairs)]
    pairs = list(zip(keys, values))
    if task == "single":
      pos = (int(rng.integers(num_pairs)) if depth is None
             else int(round(float(depth) * (num_pairs - 1))))
      needle_at = [pos]
    elif task == "multiple":
      needle_at = [int(i) for i in rng.choice(num_pairs, min(needles, num_pairs),
                                              replace=False)]
    else:   # conditional: the keys containing a character (one of a random pair's key)
      key = pairs[int(rng.integers(num_pairs))][0]
      char = key[int(rng.integers(key_len))]
      needle_at = [i for i, (k, _) in enumerate(pairs) if char in k]
  context = "".join(f"{k}:{v}," for k, v in pairs) + "\n"
  if task == "single":
    k, v = pairs[needle_at[0]]
    prompt, answer = f"{k}:", v
  elif task == "multiple":
    prompt = ",".join(pairs[i][0] for i in needle_at) + ":"
    answer = ",".join(pairs[i][1] for i in needle_at)
  elif task == "conditional":
    prompt = f"*{char}*:"
    answer = ",".join(pairs[i][1] for i in needle_at)
  else:
    prompt = ",".join(c[0] for c in chains) + ">"
    answer = ",".join(">".join(c[1:]) for c in chains)
  p = pair_len(key_len)
  end = len(context) + len(prompt)
  distance = end - min(needle_at) * p
  depth_out = needle_at[0] / max(num_pairs - 1, 1)
  return Haystack(task, context, prompt, answer, float(depth_out), int(distance), h,
                  num_pairs, tuple(v for _, v in pairs))


def pairs_for_length(length: int, task: str, *, key_len: int = 1, hops: int = 1,
                     threads: int = 2, needles: int = 3) -> int:
  """The most pairs whose whole example (haystack, query, answer, newline) fits `length`
  bytes."""
  k, p = key_len, pair_len(key_len)
  n_threads = threads if task == "multi_threading" else 1
  if task == "single":
    tail = 2 * k + 2
  elif task == "multiple":
    tail = 2 * needles * (k + 1) + 1
  elif task == "conditional":
    tail = 3 + 16 * (k + 1)   # room for a generous answer; longer ones are rare
  else:
    tail = n_threads * (k + 1) + n_threads * hops * (k + 1) + 1
  return max((length - 1 - tail) // p, 1)


# ----------------------------------------------------------------------------- training data


def encode_example(tok, ex: Haystack) -> tuple[list[int], int]:
  """(token ids of the whole example, index of the first answer token). The prompt side and
  the answer side (answer + newline) are tokenized separately."""
  head = list(tok.encode((ex.context + ex.prompt).encode()))
  tail = list(tok.encode((ex.answer + "\n").encode()))
  return head + tail, len(head)


@dataclasses.dataclass(frozen=True)
class TaskMix:
  """What the training stream asks: tasks with weights, hop counts, threads, key length."""
  tasks: tuple[str, ...] = ("single", "threading", "multi_threading")
  weights: tuple[float, ...] = (0.4, 0.4, 0.2)
  max_hops: int = 3
  threads: int = 2
  key_len: int = 1
  min_pairs: int = 4


def graph_query(mapping: dict[str, str], task: str, rng: np.random.Generator, *, hops: int,
                threads: int) -> tuple[str, str]:
  """(prompt, answer) of one query on a haystack whose every value is also a key (`mapping`
  key -> value), so a thread of any length can start at any key."""
  keys = list(mapping)
  h = hops if task in ("threading", "multi_threading") else 1
  starts = [keys[int(i)] for i in rng.choice(len(keys), threads if task == "multi_threading"
                                              else 1, replace=False)]
  chains = []
  for k in starts:
    chain = []
    for _ in range(h):
      k = mapping[k]
      chain.append(k)
    chains.append(chain)
  if task == "single":
    return f"{starts[0]}:", chains[0][0]
  if task in ("threading", "multi_threading"):
    return ",".join(starts) + ">", ",".join(">".join(c) for c in chains)
  raise ValueError(f"the training stream asks single, threading and multi_threading, not "
                   f"'{task}'")


class HaystackStream(StepIterator):
  """Checkpointable batches {inputs, targets, loss_mask} (B, seq_len): one haystack per row,
  then queries on it until the row is full.

  The haystack has a number of pairs uniform from min_pairs up to what leaves room for one
  single-needle query (so every context length up to seq_len is trained; a longer query at
  the end of a row is cut off, its visible answer tokens still trained), every value is also one of its
  keys (a random map, so threads of any length exist from every key); each query line draws
  a task from `mix` and hops uniform in 1..max_hops. Several queries per row give the model
  several answers to learn from per haystack. The loss mask keeps the answer tokens and
  their newline only: the haystack's random keys and values carry nothing to predict.
  Rows are right-padded with token 0. Batch i depends only on (seed, i).
  """

  def __init__(self, tokenizer, mix: TaskMix, batch_size: int, seq_len: int, seed: int,
               num_batches: int | None = None):
    self.tok, self.mix, self.batch_size, self.seq_len = tokenizer, mix, batch_size, seq_len
    self.seed, self.num_batches, self.step = seed, num_batches, 0

  def row(self, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """(tokens, per-token loss weight) of one row, at most seq_len + 1 tokens."""
    m, L = self.mix, self.seq_len + 1
    weights = np.asarray(m.weights) / sum(m.weights)
    room = 2 * m.key_len + 2   # one single-needle query line; longer ones may be cut off
    most = min(max((L - 1 - room) // pair_len(m.key_len), m.min_pairs),
               len(ALPHABET) ** m.key_len)
    n = int(rng.integers(m.min_pairs, most + 1))
    keys = _keys(n, m.key_len, rng)
    mapping = {k: keys[int(i)] for k, i in zip(keys, rng.integers(0, n, n))}
    ids = list(self.tok.encode(("".join(f"{k}:{v}," for k, v in mapping.items()) + "\n")
                               .encode()))
    mask = [0.0] * len(ids)
    while len(ids) < L:
      task = m.tasks[int(rng.choice(len(m.tasks), p=weights))]
      prompt, answer = graph_query(mapping, task, rng, hops=int(rng.integers(1, m.max_hops + 1)),
                                   threads=min(m.threads, n))
      head = list(self.tok.encode(prompt.encode()))
      tail = list(self.tok.encode((answer + "\n").encode()))
      ids += head + tail
      mask += [0.0] * len(head) + [1.0] * len(tail)
    return ids[:L], mask[:L]

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    rng = np.random.default_rng((self.seed, self.step))
    self.step += 1
    L = self.seq_len
    ids = np.zeros((self.batch_size, L + 1), np.int32)
    mask = np.zeros((self.batch_size, L), np.float32)
    for b in range(self.batch_size):
      toks, weight = self.row(rng)
      ids[b, :len(toks)] = toks
      mask[b, :len(toks) - 1] = weight[1:]   # the weight of each target token
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask}


# ----------------------------------------------------------------------------- evaluation


def batch_examples(tok, examples: Sequence[Haystack], length: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(inputs (N, length) int32, targets (N, length) int32, answer mask (N, length) bool):
  teacher-forced rows whose mask marks the answer tokens (not the closing newline)."""
  n = len(examples)
  inputs = np.zeros((n, length), np.int32)
  targets = np.zeros((n, length), np.int32)
  mask = np.zeros((n, length), bool)
  for i, ex in enumerate(examples):
    toks, start = encode_example(tok, ex)
    n_answer = len(tok.encode(ex.answer.encode()))
    if len(toks) - 1 > length:
      raise ValueError(f"an example of {len(toks)} tokens does not fit length {length}")
    inputs[i, :len(toks) - 1] = toks[:-1]
    targets[i, :len(toks) - 1] = toks[1:]
    mask[i, start - 1:start - 1 + n_answer] = True
  return inputs, targets, mask


def token_correct(logits_fn: LogitsFn, tok, examples: Sequence[Haystack], length: int,
                  batch_size: int = 64) -> list[np.ndarray]:
  """Per example, (answer tokens,) bool: is each answer token the argmax under teacher
  forcing. Rows are padded to `length` and batches to `batch_size`, so `logits_fn` sees one
  shape (one compile)."""
  inputs, targets, mask = batch_examples(tok, examples, length)
  out: list[np.ndarray] = []
  for lo in range(0, len(examples), batch_size):
    x = np.zeros((batch_size, length), np.int32)
    chunk = inputs[lo:lo + batch_size]
    x[:len(chunk)] = chunk
    pred = np.asarray(np.argmax(np.asarray(logits_fn(x)), -1))[:len(chunk)]
    for j in range(len(chunk)):
      m = mask[lo + j]
      out.append(pred[j][m] == targets[lo + j][m])
  return out


def exact_match(logits_fn: LogitsFn, tok, examples: Sequence[Haystack], length: int,
                batch_size: int = 64) -> np.ndarray:
  """(N,) bool: greedy decoding would write each example's answer exactly (every answer token
  is the argmax under teacher forcing)."""
  return np.array([ok.all() for ok in token_correct(logits_fn, tok, examples, length,
                                                    batch_size)], bool)


def parts_correct(ex: Haystack, ok: np.ndarray) -> list[bool]:
  """Exact match of each comma-separated part of the answer (each thread of multi_threading,
  each needle of multiple) from per-token correctness `ok`; byte-level tokens only (one token
  per answer character), else the whole answer's exact match for every part."""
  parts = ex.answer.split(",")
  if len(ok) != len(ex.answer):
    return [bool(ok.all())] * len(parts)
  out, i = [], 0
  for part in parts:
    out.append(bool(ok[i:i + len(part)].all()))
    i += len(part) + 1
  return out


@dataclasses.dataclass(frozen=True)
class Grid:
  """The evaluation grid: context lengths (bytes), depth bins (single needle) and hops
  (threading), `per_cell` haystacks per cell, drawn from a seed of its own."""
  lengths: tuple[int, ...] = (32, 64, 128)
  depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  hops: tuple[int, ...] = (1, 2, 3)
  threads: int = 2
  per_cell: int = 32
  key_len: int = 1
  seed: int = 12345


def grid_examples(grid: Grid) -> dict[tuple, list[Haystack]]:
  """{(kind, length, x): haystacks}: kind 'single' (x = depth), 'threading' and
  'multi_threading' (x = hops). Each example is as long as fits `length` bytes."""
  rng = np.random.default_rng(grid.seed)
  out: dict[tuple, list[Haystack]] = {}
  k = grid.key_len
  for L in grid.lengths:
    n = pairs_for_length(L, "single", key_len=k)
    for d in grid.depths:
      out[("single", L, d)] = [make_haystack("single", n, rng, key_len=k, depth=d)
                               for _ in range(grid.per_cell)]
    for task in ("threading", "multi_threading"):
      for h in grid.hops:
        n = pairs_for_length(L, task, key_len=k, hops=h, threads=grid.threads)
        t = grid.threads if task == "multi_threading" else 1
        if n < t * h:
          continue
        out[(task, L, h)] = [make_haystack(task, n, rng, key_len=k, hops=h,
                                           threads=grid.threads) for _ in range(grid.per_cell)]
  return out


def grid_token_correct(logits_fn: LogitsFn, tok, cells: dict[tuple, list[Haystack]],
                       length: int, batch_size: int = 64) -> dict[tuple, list[np.ndarray]]:
  """`token_correct` over every cell of `grid_examples(...)` at once (one shape, one
  compile), split back by cell."""
  flat = [ex for key in cells for ex in cells[key]]
  ok = token_correct(logits_fn, tok, flat, length, batch_size)
  out, i = {}, 0
  for key in cells:
    out[key] = ok[i:i + len(cells[key])]
    i += len(cells[key])
  return out


def evaluate_grid(logits_fn: LogitsFn, tok, grid: Grid, length: int | None = None,
                  batch_size: int = 64) -> dict[tuple, np.ndarray]:
  """{cell: (per_cell,) bool exact match} over `grid_examples(grid)`."""
  ok = grid_token_correct(logits_fn, tok, grid_examples(grid), length or max(grid.lengths),
                          batch_size)
  return {key: np.array([o.all() for o in oks], bool) for key, oks in ok.items()}


# ----------------------------------------------------------------------------- baselines


def uniform_accuracy(ex: Haystack) -> float:
  """Probability that guessing every looked-up value uniformly among the haystack's values
  is exactly right (single: 1/n; a thread of h hops: (1/n)^h, every thread)."""
  n = len(set(ex.candidates))
  lookups = len(ex.answer.replace(">", ",").split(","))
  return float((1.0 / n) ** lookups)


def _pairs(ex: Haystack) -> list[tuple[str, str]]:
  return [tuple(p.split(":")) for p in ex.context.strip().rstrip(",").split(",")]


def _answer_with(ex: Haystack, look: Callable[[str], str]) -> str:
  """The answer a lookup rule `look(key) -> value` writes for `ex` (single, threading,
  multi_threading; threads apply it hop after hop)."""
  if ex.task == "single":
    return look(ex.prompt[:-1])
  if ex.task in ("threading", "multi_threading"):
    out = []
    for key in ex.prompt[:-1].split(","):
      chain = []
      for _ in range(ex.hops):
        key = look(key)
        chain.append(key)
      out.append(">".join(chain))
    return ",".join(out)
  raise ValueError(f"lookup baselines cover single and threading tasks, not {ex.task}")


def recent_pair_baseline(ex: Haystack) -> bool:
  """Most recent pair: every lookup answers the value of the haystack's last pair (the one
  nearest the query). True iff that is the answer."""
  last = _pairs(ex)[-1][1]
  return _answer_with(ex, lambda key: last) == ex.answer


def answer_prior_baseline(ex: Haystack) -> bool:
  """Answer prior: every lookup answers the haystack's most frequent value (ties: the first
  seen); the answers of the training stream are uniform over keys, so this prior within the
  haystack is the stronger one. True iff that is the answer."""
  import collections
  top = collections.Counter(v for _, v in _pairs(ex)).most_common(1)[0][0]
  return _answer_with(ex, lambda key: top) == ex.answer


# ----------------------------------------------------------------------------- reports


def summarize(cells: dict[tuple, np.ndarray]) -> dict[str, float]:
  """Flat {'single L=128 depth=0.5': accuracy, ...} of a grid result."""
  out = {}
  for (kind, L, x), em in cells.items():
    label = "depth" if kind == "single" else "hops"
    out[f"{kind} L={L} {label}={x:g}"] = float(np.mean(em))
  return out


def heatmaps(results: dict[str, dict[tuple, np.ndarray]], path: str, title: str = "",
             window: dict[str, int] | None = None, dpi: int = 90) -> str:
  """One row of heat maps per model: context length x needle depth (single needle) and
  context length x hops (threading, multi-threading), exact match in [0, 1]."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  kinds = ("single", "threading", "multi_threading")
  names = list(results)
  fig, axes = plt.subplots(len(names), 3, figsize=(13, 3.0 * len(names) + 0.6), squeeze=False)
  for r, name in enumerate(names):
    cells = results[name]
    for c, kind in enumerate(kinds):
      ax = axes[r, c]
      keys = [k for k in cells if k[0] == kind]
      if not keys:
        ax.axis("off")
        continue
      lengths = sorted({k[1] for k in keys})
      xs = sorted({k[2] for k in keys})
      grid = np.full((len(xs), len(lengths)), np.nan)
      for k in keys:
        grid[xs.index(k[2]), lengths.index(k[1])] = float(np.mean(cells[k]))
      im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
      for i in range(len(xs)):
        for j in range(len(lengths)):
          if np.isfinite(grid[i, j]):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
      ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
      ax.set_yticks(range(len(xs)), [f"{x:g}" for x in xs])
      ax.set_xlabel("context length (tokens)")
      ax.set_ylabel("needle depth" if kind == "single" else "hops")
      w = (window or {}).get(name)
      ax.set_title(f"{name}: {kind}" + (f" (window {w})" if w else ""), fontsize=9)
  fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="exact match")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------- a trained run


def logits_fn_of_run(workdir: str, batch_size: int, length: int, step: int | None = None):
  """(logits_fn, tokenizer, config) of a trained LM run: `logits_fn(tokens (B, L))` jitted
  over the run's `method.logits`."""
  import jax

  from tokenlab.data import tokenizers
  from tokenlab.errors import TokenlabError
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  config = load_config_from_workdir(workdir)
  if config.data.get("name") == "method" and config.data.get("tokenizer", "bytes") == "bytes":
    from tokenlab.data.tokenizers import BytesTokenizer
    tok = BytesTokenizer()
  else:
    tok = tokenizers.get_tokenizer(config.data)
  example = {"inputs": np.zeros((batch_size, length), np.int32)}
  run = load_trained(workdir, example, step)
  if not hasattr(run.method, "logits"):
    raise TokenlabError(f"{workdir} holds a '{config.model.name}' run, which has no "
                        f"logits(params, batch); the needle evaluator needs a next-token LM "
                        f"(e.g. transformer_lm)")
  fn = jax.jit(lambda p, t: run.method.logits(p, {"inputs": t}))
  return (lambda t: np.asarray(fn(run.params, t))), tok, config


def main(workdir: str, *, lengths: Sequence[int] = (), per_cell: int = 32, hops: int = 3,
         key_len: int = 1, out_dir: str = "", step: int | None = None,
         batch_size: int = 32) -> dict[str, float]:
  """`tokenlab needle --run RUN`: the grid on a trained run; writes needle.{json,md,png}."""
  from tokenlab.errors import TokenlabError
  from tokenlab.train.inference import load_config_from_workdir
  config = load_config_from_workdir(workdir)
  seq = int(config.data.get("seq_len", 256))
  lengths = tuple(lengths) or tuple(sorted({max(seq // 4, 32), max(seq // 2, 32), seq}))
  if max(lengths) > seq:
    print(f"note: lengths beyond the run's training seq_len ({seq}) test length "
          f"extrapolation")
  if min(lengths) < 8 * pair_len(key_len):
    raise TokenlabError(f"--lengths: the shortest context must hold a few pairs "
                        f"(>= {8 * pair_len(key_len)} bytes)")
  grid = Grid(lengths=lengths, hops=tuple(range(1, hops + 1)), per_cell=per_cell,
              key_len=key_len)
  # Room for non-byte tokenizers: a token is at most one byte of these ASCII strings.
  fn, tok, _ = logits_fn_of_run(workdir, batch_size, max(lengths), step)
  cells = evaluate_grid(fn, tok, grid, max(lengths), batch_size)
  summary = summarize(cells)
  out_dir = out_dir or os.path.join(workdir, "needle")
  os.makedirs(out_dir, exist_ok=True)
  name = os.path.basename(os.path.normpath(workdir))
  png = heatmaps({name: cells}, os.path.join(out_dir, "needle.png"),
                 title=f"needle threading: exact match, {per_cell} haystacks per cell")
  with open(os.path.join(out_dir, "needle.json"), "w") as f:
    json.dump({"run": workdir, "grid": dataclasses.asdict(grid), "accuracy": summary}, f,
              indent=2)
  lines = [f"# Needle threading on {workdir}", "", "| cell | exact match |", "|---|---|"]
  lines += [f"| {k} | {v:.3f} |" for k, v in summary.items()]
  with open(os.path.join(out_dir, "needle.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  for k, v in summary.items():
    print(f"{k:40s} {v:.3f}")
  print(f"wrote {out_dir}/needle.md, needle.json, {os.path.basename(png)}")
  return summary
