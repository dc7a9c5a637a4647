"""CharBench (Uzan & Pinter, arXiv 2508.02591): character-level tasks with exact answers.

Tasks over words, each with one exact integer answer:

  count   how many times character c occurs in the word      "between count e=3"
  locate  the 0-based index of c's first occurrence          "between find w=3"

A task is one text line `<word> <verb> <c>=<answer>\\n`; the word opens the line, so its
segmentation into tokens is the tokenizer's segmentation of the word after a newline.

What is here (generic, for any tokenlab tokenizer and LM):
  * `words()`: a fixed English-ish word list from the comments and identifiers of the
    embedded `pysrc` corpus (no download), split into train / test words by a hash;
  * `make_examples(words, task, n, rng)`: examples with exact answers and the properties the
    paper analyses (word length, true count, the length of the token holding the queried
    character under a given tokenizer: `annotate`);
  * `TaskStream`: a checkpointable iterator of packed LM rows of task lines (to train on);
  * `evaluate(logits_fn, tokenizer, examples)`: the answer of an LM = argmax over the task's
    candidate answers of log P(prompt + answer + newline) (the whole line's tokenization,
    so any tokenizer works), and correctness per example;
  * `analysis(examples, correct)`: accuracy by word length, by true count, by the length of
    the token holding the queried character, and the correlations of correctness with them.

Simplified vs the paper: the paper prompts large pretrained LMs in natural language over a
large word list; here small LMs are trained on the task lines themselves (train words) and
evaluated on held-out words, with answers chosen by likelihood over the candidate set rather
than parsed from free generation. The analysis (correctness vs word length, true count and
containing-token length) is the paper's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from tokenlab.data.synthetic import StepIterator

TASKS = {"count": "count", "locate": "find"}
MAX_WORD = 12


@functools.lru_cache(maxsize=4)
def words(split: str, min_len: int = 3, max_len: int = 10, min_freq: int = 3) -> tuple[str, ...]:
  """Lower-case alphabetic words of `pysrc` (train / test by a hash of the word), sorted."""
  from tokenlab.data import pysrc
  counts: Counter = Counter()
  for text in pysrc.files().values():
    counts.update(re.findall(rb"[a-z]+", text))
  out = []
  for w, c in counts.items():
    if c >= min_freq and min_len <= len(w) <= max_len:
      w = w.decode()
      h = int(hashlib.sha1(w.encode()).hexdigest()[:8], 16) % 10
      if (h < 2) == (split == "test"):
        out.append(w)
  return tuple(sorted(out))


@dataclasses.dataclass
class Example:
  word: str
  task: str          # 'count' | 'locate'
  char: str
  answer: int
  true_count: int    # occurrences of char in word
  token_len: int = 0  # length (bytes) of the token holding the queried character (annotate)

  @property
  def prompt(self) -> str:
    return f"{self.word} {TASKS[self.task]} {self.char}="

  @property
  def line(self) -> str:
    return f"{self.prompt}{self.answer}\n"

  @property
  def query_index(self) -> int:
    """Index in the word of the queried character (first occurrence; 0 if absent)."""
    return max(self.word.find(self.char), 0)


def make_example(word: str, task: str, rng: np.random.Generator) -> Example:
  """One example: a character of the word (count: 1 in 5 is a letter not in the word)."""
  if task not in TASKS:
    raise ValueError(f"unknown CharBench task '{task}'; tasks: {', '.join(TASKS)}")
  if task == "count" and rng.random() < 0.2:
    absent = sorted(set("abcdefghijklmnopqrstuvwxyz") - set(word))
    c = absent[rng.integers(len(absent))] if absent else word[0]
  else:
    c = word[rng.integers(len(word))]
  answer = word.count(c) if task == "count" else word.find(c)
  return Example(word, task, c, answer, word.count(c))


def make_examples(word_list: Sequence[str], task: str, n: int,
                  rng: np.random.Generator) -> list[Example]:
  return [make_example(word_list[rng.integers(len(word_list))], task, rng) for _ in range(n)]


def annotate(examples: Sequence[Example], tokenizer) -> list[Example]:
  """Sets `token_len`: the byte length of the token of `tokenizer` that holds the queried
  character, in the segmentation of the line as the model sees it (after a newline)."""
  for ex in examples:
    ids = tokenizer.encode(("\n" + ex.prompt).encode())
    target = 1 + ex.query_index          # byte offset of the character ("\n" first)
    pos = 0
    for t in ids:
      b = tokenizer.token_bytes(int(t))
      if pos <= target < pos + len(b):
        ex.token_len = len(b)
        break
      pos += len(b)
  return examples


class TaskStream(StepIterator):
  """Checkpointable batches {inputs, targets, loss_mask} of task lines packed into rows.

  Lines alternate over `tasks`, words are drawn from `word_list`; batch i depends only on
  (seed, i). Every row starts at a line boundary (after a newline). With `answer_loss` the
  loss mask keeps only the targets that are tokens holding a byte of an answer (or its
  newline): the model is trained on the answers, not on predicting the next word.
  """

  def __init__(self, tokenizer, word_list: Sequence[str], batch_size: int, seq_len: int,
               seed: int, tasks: Sequence[str] = ("count", "locate"),
               num_batches: int | None = None, answer_loss: bool = False):
    self.tok, self.words, self.batch_size, self.seq_len = tokenizer, list(word_list), \
        batch_size, seq_len
    self.seed, self.tasks, self.num_batches, self.step = seed, tuple(tasks), num_batches, 0
    self.answer_loss = answer_loss

  def _row(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids: list[int] = list(self.tok.encode(b"\n"))
    mask: list[float] = [0.0] * len(ids)
    while len(ids) < self.seq_len + 1:
      ex = make_example(self.words[rng.integers(len(self.words))],
                        self.tasks[rng.integers(len(self.tasks))], rng)
      toks = list(self.tok.encode(ex.line.encode()))
      ids += toks
      end, start = 0, len(ex.prompt.encode())
      for t in toks:
        end += len(self.tok.token_bytes(int(t)))
        mask.append(1.0 if end > start else 0.0)
    return (np.asarray(ids[:self.seq_len + 1], np.int32),
            np.asarray(mask[1:self.seq_len + 1], np.float32))

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    rng = np.random.default_rng((self.seed, self.step))
    self.step += 1
    rows = [self._row(rng) for _ in range(self.batch_size)]
    x = np.stack([r[0] for r in rows])
    mask = (np.stack([r[1] for r in rows]) if self.answer_loss
            else np.ones((self.batch_size, self.seq_len), np.float32))
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": mask}


def candidates(task: str) -> list[int]:
  """The candidate answers of a task (an LM picks the likeliest)."""
  return list(range(MAX_WORD + 1)) if task == "count" else list(range(MAX_WORD))


LogitsFn = Callable[[np.ndarray], np.ndarray]   # tokens (B, L) -> logits (B, L, V)


def evaluate(logits_fn: LogitsFn, tokenizer, examples: Sequence[Example], *,
             batch_size: int = 256, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(predicted answers, correct) of an LM on `examples`.

  The LM's answer is argmax over `candidates(task)` of log P(line) for the line
  "\\n<prompt><candidate>\\n", summed over its tokens after the leading newline token(s), so
  the comparison is between whole byte strings under any tokenizer.
  """
  strings, owners = [], []
  for i, ex in enumerate(examples):
    for c in candidates(ex.task):
      strings.append(tokenizer.encode(f"\n{ex.prompt}{c}\n".encode()))
      owners.append((i, c))
  n_ctx = len(tokenizer.encode(b"\n"))
  L = length or max(len(s) for s in strings)
  scores = np.zeros(len(strings))
  for lo in range(0, len(strings), batch_size):
    chunk = strings[lo:lo + batch_size]
    tokens = np.zeros((batch_size, L), np.int32)
    mask = np.zeros((batch_size, L - 1), np.float32)
    for j, s in enumerate(chunk):
      s = s[:L]
      tokens[j, :len(s)] = s
      mask[j, n_ctx - 1:len(s) - 1] = 1.0
    logits = np.asarray(logits_fn(tokens), np.float64)[:, :-1]
    logp = logits - _logsumexp(logits)
    tok_lp = np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    scores[lo:lo + len(chunk)] = (tok_lp * mask).sum(axis=1)[:len(chunk)]
  best = {}
  for (i, c), s in zip(owners, scores):
    if i not in best or s > best[i][1]:
      best[i] = (c, s)
  pred = np.array([best[i][0] for i in range(len(examples))])
  correct = pred == np.array([ex.answer for ex in examples])
  return pred, correct


def _logsumexp(x: np.ndarray) -> np.ndarray:
  m = x.max(axis=-1, keepdims=True)
  return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.std() == 0 or b.std() == 0:
    return float("nan")
  return float(np.corrcoef(a, b)[0, 1])


def analysis(examples: Sequence[Example], correct: np.ndarray) -> dict[str, object]:
  """Accuracy overall and by property, and Pearson correlations of correctness with
  word length, true count and containing-token length (the paper's analysis)."""
  correct = np.asarray(correct, np.float64)
  props = {"word_len": np.array([len(e.word) for e in examples]),
           "true_count": np.array([e.true_count for e in examples]),
           "token_len": np.array([e.token_len for e in examples])}
  out: dict[str, object] = {"accuracy": float(correct.mean()) if len(correct) else float("nan"),
                            "n": len(correct)}
  for name, v in props.items():
    out[f"corr_{name}"] = _corr(correct, v)
    out[f"by_{name}"] = {int(k): (float(correct[v == k].mean()), int((v == k).sum()))
                         for k in np.unique(v)}
  return out


@functools.lru_cache(maxsize=8)
def task_tokenizer(kind: str, vocab_size: int = 384, num_lines: int = 20000, seed: int = 0):
  """'bytes', or a BPE tokenizer learned on task lines of train words (one document per
  line without its newline, so no token crosses a line boundary). Deterministic."""
  from tokenlab.data.tokenizers import BPETokenizer, BytesTokenizer
  if kind == "bytes":
    return BytesTokenizer()
  if kind != "bpe":
    raise ValueError(f"unknown CharBench tokenizer '{kind}'; use 'bytes' or 'bpe'")
  rng = np.random.default_rng(seed)
  train = words("train")
  docs = [make_example(train[rng.integers(len(train))], task, rng).line[:-1].encode()
          for task in ("count", "locate") for _ in range(num_lines // 2)]
  return BPETokenizer.train(docs, vocab_size)


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn) for `tokenlab.train.loop.train` from `config.charbench`:
  task lines of train words to train on, of test words for the eval loss."""
  cb = config.charbench
  tok = task_tokenizer(cb.tokenizer, cb.bpe_vocab)
  seq = config.data.seq_len

  def train_fn(batch_size, seed):
    return TaskStream(tok, words("train"), batch_size, seq, seed)

  def eval_fn(batch_size, seed):
    return TaskStream(tok, words("test"), batch_size, seq, seed + 10_000,
                      num_batches=config.train.eval_batches or 10)
  return train_fn, eval_fn
