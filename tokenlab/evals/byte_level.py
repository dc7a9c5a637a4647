"""Exact byte-level probabilities from any tokenized LM (the Byte-Token Representation Lemma).

Phan, Havasi, Muckley, Ullrich, Amos, Kiela (arXiv 2410.09303), "Exact Byte-Level
Probabilities from Tokenized Language Models for FIM-Tasks and Model Ensembles".

A tokenized LM defines a process over token sequences, hence (by decoding) over bytes. The
probability that the bytes start with x = x_1..x_n is a sum over the *cover encodings* of x:
token sequences t_1..t_m whose first m-1 tokens decode to a proper prefix x_1..x_i (i < n) and
whose last token starts with the rest x_{i+1}..x_n (it may run past the end):

    P(x) = sum_{covers t} P(t_1..t_m).

An LM trained on canonical (tokenizer-produced) encodings gives non-canonical ones
probability ~0, and canonical encodings are prefix-closed for BPE and the bytes tokenizer, so
the first m-1 tokens of a cover are exactly encode(x_1..x_i): there are at most n x |V|
covers, one forward pass per split point i. The next-byte distribution follows by grouping the
covers by the byte just after x (covers ending exactly at x contribute the first byte of the
next token), and a byte-level sampler by drawing from it byte by byte.

Everything works for any tokenlab tokenizer and any LM given as a `LogprobFn`:

    fn(seqs: list of token-id sequences) -> list of arrays (len(seq), V),
    row j = log P(next token | seq[:j+1]).

The first token of `seqs` is never predicted (tokenlab LMs have no BOS token), so every query
is asked *after a token context* that is taken as a hard token boundary, as the reference
(facebookresearch/Exact-Byte-Level-Probabilities-from-Tokenized-LMs, which splits at the last
whitespace) does. Covers, validity and token healing are computed on the query bytes after that
boundary; the method is exact relative to it.

Also here: the two baselines the paper compares against (naive prompting: the next-token
distribution after encode(x); token healing: back up one token and constrain the next token to
start with its bytes), a byte sampler, byte-level ensembling of LMs with different tokenizers,
and `lm_logprob_fn`, which makes a `LogprobFn` of any tokenlab causal LM's logits function.

Follows the paper/reference: cover enumeration, validity masking of the last token (covers
whose encoding is not canonical are dropped; probabilities are not renormalised), the next-byte
marginalisation, normalising the next-byte distribution by its sum. Simplified: no KV cache or
incremental sampler state (each query is re-planned; the sampler moves settled tokens into the
context past `max_query_bytes`), no UTF-8 character handling (bytes are bytes).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LogprobFn = Callable[[Sequence[Sequence[int]]], list]

_NEG = -np.inf


def _logsumexp(values) -> float:
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return _NEG
  m = values.max()
  if not np.isfinite(m):
    return float(m)
  return float(m + np.log(np.exp(values - m).sum()))


def _by_byte(joint: tuple[list, list]) -> np.ndarray:
  """Per-byte logsumexp of (byte indices, log values) parts: (256,) natural logs."""
  out = np.full(256, _NEG)
  if not joint[0]:
    return out
  b = np.concatenate(joint[0]).astype(np.int64)
  v = np.concatenate(joint[1]).astype(np.float64)
  m = np.full(256, _NEG)
  np.maximum.at(m, b, v)
  fin = np.isfinite(m)
  total = np.zeros(256)
  np.add.at(total, b, np.exp(v - np.where(fin[b], m[b], 0.0)))
  out[fin] = m[fin] + np.log(total[fin])
  return out


@dataclasses.dataclass(frozen=True)
class Cover:
  """One cover encoding of a query: `left` (the canonical encoding of query[:split]) + token."""
  left: tuple[int, ...]
  token: int
  split: int


@dataclasses.dataclass
class _Plan:
  """What one query needs from the LM (sequences) and how to combine it."""
  context: tuple[int, ...]
  query: bytes
  kind: str                               # exact | naive | healing
  covers: list[Cover]
  lefts: list[tuple[int, ...]]            # sequences whose probability is needed
  continuations: list[tuple[int, ...]]    # sequences after which the next token is needed


class ByteLevelLM:
  """Byte-level view of a tokenized LM: prefix probabilities, next-byte distributions, sampling.

  Args:
    tokenizer: a tokenlab tokenizer (encode, token_bytes, vocab_size).
    logprob_fn: see the module docstring.
    check_valid: drop covers (and continuations) whose encoding is not canonical, as the
      paper's exact method does; False keeps every cover (the reference's `fast_mode`).
  """

  def __init__(self, tokenizer: Any, logprob_fn: LogprobFn, *, check_valid: bool = True):
    self.tokenizer = tokenizer
    self.logprob_fn = logprob_fn
    self.check_valid = check_valid
    self.vocab_size = int(tokenizer.vocab_size)
    self.pieces = [bytes(tokenizer.token_bytes(i)) for i in range(self.vocab_size)]
    order = sorted((p, i) for i, p in enumerate(self.pieces) if p)
    self._sorted = [p for p, _ in order]
    self._sorted_ids = [i for _, i in order]
    self.first_byte = np.array([p[0] if p else -1 for p in self.pieces], np.int64)
    self._enc: dict[bytes, tuple[int, ...]] = {}

  # --- tokenizer helpers ------------------------------------------------------------------

  def encode(self, data: bytes) -> tuple[int, ...]:
    """The canonical encoding of `data` (cached)."""
    data = bytes(data)
    if data not in self._enc:
      self._enc[data] = tuple(int(t) for t in self.tokenizer.encode(data)) if data else ()
    return self._enc[data]

  def _encode_many(self, datas: Sequence[bytes]) -> list[tuple[int, ...]]:
    """Canonical encodings of many byte strings in one batched tokenizer call (not cached:
    these are one-off validity checks)."""
    nonempty = [bytes(d) for d in datas if d]
    encoded = iter(self.tokenizer.encode_batch(nonempty) if nonempty else [])
    return [tuple(int(t) for t in next(encoded)) if d else () for d in datas]

  def _valid_next(self, prefix: bytes, seq: tuple[int, ...]) -> np.ndarray:
    """(V,) bool: whether seq + (u,) is the canonical encoding of prefix + bytes(u)."""
    ids = [u for u in range(self.vocab_size) if self.pieces[u]]
    valid = np.zeros(self.vocab_size, bool)
    for u, enc in zip(ids, self._encode_many([prefix + self.pieces[u] for u in ids])):
      valid[u] = enc == seq + (u,)
    return valid

  def tokens_starting_with(self, prefix: bytes) -> list[int]:
    """Ids of the (non-empty) tokens whose bytes start with `prefix`."""
    lo = bisect.bisect_left(self._sorted, prefix)
    out = []
    for j in range(lo, len(self._sorted)):
      if not self._sorted[j].startswith(prefix):
        break
      out.append(self._sorted_ids[j])
    return out

  def is_valid(self, ids: Sequence[int]) -> bool:
    """True when `ids` is the canonical encoding of the bytes it decodes to."""
    ids = tuple(int(i) for i in ids)
    return self.encode(b"".join(self.pieces[i] for i in ids)) == ids

  def covers(self, query: bytes) -> list[Cover]:
    """The cover encodings of `query` with a canonical left part (the lemma's sum)."""
    query = bytes(query)
    cands = [(self.encode(query[:i]), t, i) for i in range(len(query))
             for t in self.tokens_starting_with(query[i:])]
    if self.check_valid:
      encs = self._encode_many([query[:i] + self.pieces[t] for _, t, i in cands])
      cands = [c for c, enc in zip(cands, encs) if enc == c[0] + (c[1],)]
    return [Cover(left, t, i) for left, t, i in cands]

  # --- planning and evaluation ------------------------------------------------------------

  def _plan(self, context: Sequence[int], query: bytes, kind: str) -> _Plan:
    context, query = tuple(int(c) for c in context), bytes(query)
    if not context:
      raise ValueError("byte-level queries need a non-empty token context (no BOS token): "
                       "pass at least one context token")
    n = len(query)
    enc = self.encode(query)
    if kind == "naive" or (kind == "healing" and n == 0):
      return _Plan(context, query, "naive", [], [], [enc])
    if kind == "healing":
      left, r = enc[:-1], self.pieces[enc[-1]]
      covers = [Cover(left, t, n - len(r)) for t in self.tokens_starting_with(r)]
      conts = [left + (c.token,) for c in covers if len(self.pieces[c.token]) == len(r)]
      return _Plan(context, query, "healing", covers, [left], conts)
    if kind != "exact":
      raise ValueError(f"unknown kind '{kind}' (exact | naive | healing)")
    if n == 0:
      return _Plan(context, query, "exact", [], [], [()])
    covers = self.covers(query)
    lefts = sorted({c.left for c in covers})
    conts = [c.left + (c.token,) for c in covers
             if len(self.pieces[c.token]) == n - c.split]
    return _Plan(context, query, "exact", covers, lefts, conts)

  def _run(self, plans: list[_Plan]) -> list[dict]:
    """Runs the LM once over every sequence the plans need; returns per-plan row lookups."""
    wanted = set()
    for p in plans:
      for s in p.lefts + p.continuations:
        wanted.add(p.context + s)
    # A forward pass over s gives the next-token rows of all of its prefixes: run only the
    # sequences that are not a prefix of another wanted one.
    ordered = sorted(wanted, key=len, reverse=True)
    trie: dict[tuple, tuple[int, int]] = {}
    runs: list[tuple[int, ...]] = []
    for s in ordered:
      if s in trie:
        continue
      k = len(runs)
      runs.append(s)
      for j in range(1, len(s) + 1):
        trie.setdefault(s[:j], (k, j - 1))
    rows = self.logprob_fn(runs) if runs else []
    return [{"rows": rows, "trie": trie}]

  def _row(self, res: dict, seq: tuple[int, ...]) -> np.ndarray:
    k, j = res["trie"][seq]
    return np.asarray(res["rows"][k][j], np.float64)

  def _seq_logprob(self, res: dict, context: tuple, seq: tuple) -> float:
    total = 0.0
    for j, t in enumerate(seq):
      total += self._row(res, context + seq[:j])[t]
    return total

  def _next_token_joint(self, res: dict, plan: _Plan, seq: tuple, lp: float,
                        joint: tuple[list, list]) -> None:
    """Adds P(seq) P(u | seq) for every next token u to joint[first byte of u]."""
    row = self._row(res, plan.context + seq)
    keep = (self.first_byte >= 0) & np.isfinite(row)
    if self.check_valid and plan.kind == "exact":
      keep &= self._valid_next(b"".join(self.pieces[t] for t in seq), seq)
    joint[0].append(self.first_byte[keep])
    joint[1].append(lp + row[keep])

  def _finish(self, res: dict, plan: _Plan) -> tuple[float, np.ndarray]:
    """Returns (log P(query | context), log P(query + b | context) for b in 0..255)."""
    joint: tuple[list, list] = ([], [])   # (first bytes, log values) parts
    n = len(plan.query)
    if plan.kind == "naive":
      self._next_token_joint(res, plan, plan.continuations[0], 0.0, joint)
      return 0.0, _by_byte(joint)
    left_lp = {left: self._seq_logprob(res, plan.context, left) for left in plan.lefts}
    cover_lps = []
    for c in plan.covers:
      lp = left_lp[c.left] + self._row(res, plan.context + c.left)[c.token]
      cover_lps.append(lp)
      piece = self.pieces[c.token]
      if len(piece) > n - c.split:
        joint[0].append(np.array([piece[n - c.split]]))
        joint[1].append(np.array([lp]))
      else:
        self._next_token_joint(res, plan, c.left + (c.token,), lp, joint)
    if plan.kind == "exact" and n == 0:
      self._next_token_joint(res, plan, (), 0.0, joint)
      return 0.0, _by_byte(joint)
    return _logsumexp(cover_lps), _by_byte(joint)

  # --- public API -------------------------------------------------------------------------

  def evaluate(self, items: Sequence[tuple[Sequence[int], bytes]], kind: str = "exact"
               ) -> list[tuple[float, np.ndarray]]:
    """For each (context ids, query bytes): (log P(query | ctx), log P(query+b | ctx) (256,)).

    kind: 'exact' (the lemma), 'naive' (next token after encode(query); log P(query) is
    reported as 0) or 'healing' (one token backed up; log P is that of the healed covers).
    One batched LM call serves all items.
    """
    plans = [self._plan(c, q, kind) for c, q in items]
    res = self._run(plans)[0]
    return [self._finish(res, p) for p in plans]

  def prefix_logprobs(self, items: Sequence[tuple[Sequence[int], bytes]]) -> list[float]:
    """log P(query | context) by the lemma for many (context ids, query bytes), with one
    batched LM call and without the next-byte law (cheaper than `evaluate`)."""
    plans = [self._plan(c, q, "exact") for c, q in items]
    for p in plans:
      p.continuations = []          # the cover sum needs the left parts only
    res = self._run(plans)[0]
    out = []
    for p in plans:
      left_lp = {left: self._seq_logprob(res, p.context, left) for left in p.lefts}
      out.append(_logsumexp([left_lp[c.left] + self._row(res, p.context + c.left)[c.token]
                             for c in p.covers]) if p.query else 0.0)
    return out

  def prefix_logprob(self, context: Sequence[int], query: bytes) -> float:
    """log P(the bytes after `context` start with `query`) (natural log), by the lemma."""
    return self.evaluate([(context, query)])[0][0]

  def next_byte_probs(self, items: Sequence[tuple[Sequence[int], bytes]],
                      kind: str = "exact") -> np.ndarray:
    """(len(items), 256) next-byte distributions, each normalised to sum to 1."""
    out = []
    for _, joint in self.evaluate(items, kind):
      out.append(np.exp(joint - _logsumexp(joint)))
    return np.array(out)

  def sample_bytes(self, context: Sequence[int], prompt: bytes, num_bytes: int,
                   rng: np.random.Generator, *, temperature: float = 1.0,
                   max_query_bytes: int = 32) -> bytes:
    """Samples `num_bytes` bytes after `prompt` byte by byte from the exact next-byte law.

    Once the query passes `max_query_bytes`, its leading tokens (all but those covering the
    last max_query_bytes // 2 bytes) move into the token context (a hard boundary from then on).
    """
    context, query, out = tuple(context), bytes(prompt), b""
    for _ in range(num_bytes):
      if len(query) > max_query_bytes:
        enc, keep, cut = self.encode(query), max_query_bytes // 2, 0
        while cut < len(enc) and len(query) - sum(len(self.pieces[t]) for t in enc[:cut + 1]) >= keep:
          cut += 1
        context += enc[:cut]
        query = query[sum(len(self.pieces[t]) for t in enc[:cut]):]
      p = self.next_byte_probs([(context, query)])[0]
      if temperature == 0.0:
        b = int(np.argmax(p))
      else:
        logits = np.log(np.maximum(p, 1e-30)) / temperature
        q = np.exp(logits - logits.max())
        b = int(rng.choice(256, p=q / q.sum()))
      query += bytes([b])
      out += bytes([b])
    return out


def ensemble_next_byte(prob_list: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                       mode: str = "mixture") -> np.ndarray:
  """Combines next-byte distributions (..., 256) of LMs with different tokenizers.

  mode 'mixture': sum_i w_i p_i; 'product': normalised prod_i p_i^{w_i} (log-linear).
  """
  probs = np.stack([np.asarray(p, np.float64) for p in prob_list])
  w = np.full(len(probs), 1.0 / len(probs)) if weights is None else np.asarray(weights, float)
  w = w.reshape((-1,) + (1,) * (probs.ndim - 1))
  if mode == "mixture":
    out = (w * probs).sum(0)
  elif mode == "product":
    logp = (w * np.log(np.maximum(probs, 1e-300))).sum(0)
    out = np.exp(logp - logp.max(-1, keepdims=True))
  else:
    raise ValueError(f"unknown ensemble mode '{mode}' (mixture | product)")
  return out / out.sum(-1, keepdims=True)


def lm_logprob_fn(logits_fn: Callable[[Any], Any], *, max_len: int, batch_size: int = 64,
                  bucket: int = 32) -> LogprobFn:
  """A `LogprobFn` for a causal tokenlab LM.

  Args:
    logits_fn: tokens (batch, length) int32 -> logits (batch, length, vocab); causal, so
      right padding does not change earlier positions. Jit it; shapes are bucketed.
    max_len: the longest sequence the LM may see (e.g. its training seq_len).
    batch_size: sequences per call (the last call is padded).
    bucket: lengths are padded up to a multiple of this, to limit recompilations.
  """
  import jax  # pylint: disable=g-import-not-at-top

  def fn(seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
    seqs = [list(map(int, s)) for s in seqs]
    out: list[np.ndarray | None] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), batch_size):
      idx = order[start:start + batch_size]
      longest = max(len(seqs[i]) for i in idx)
      if longest > max_len:
        raise ValueError(f"a byte-level query needs {longest} tokens, more than the LM's "
                         f"max_len={max_len}; use a shorter context")
      length = min(max_len, bucket * math.ceil(longest / bucket))
      tokens = np.zeros((batch_size, length), np.int32)
      for r, i in enumerate(idx):
        tokens[r, :len(seqs[i])] = seqs[i]
      logits = np.asarray(jax.device_get(logits_fn(tokens)), np.float64)
      m = logits.max(-1, keepdims=True)
      logits = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
      for r, i in enumerate(idx):
        out[i] = logits[r, :len(seqs[i])]
    return out  # type: ignore[return-value]

  return fn
