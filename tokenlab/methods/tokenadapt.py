"""TokenAdapt: hybrid local + global initialisation of a new tokenizer's embeddings.

Paper: "Achieving Tokenizer Flexibility in Language Models through Heuristic Adaptation and
Supertoken Learning" (Sharthak, Pahalwan, Kamath, Agarwal; arXiv 2505.09738). The authors'
tool (github.com/Tinycompany-AI/tokenadapt, `heuristics.py`, `untied.py`) was read for the
details the abstract leaves open; no code is copied.

A model was trained with tokenizer T0 (input rows E0, output rows U0). The new tokenizer's
token t gets its rows as follows (`tokenadapt_rows`):

1. Shared tokens. A token T0 also has (same bytes; `shared_tokens`) keeps T0's rows exactly.
2. Auxiliary space. Every old and new token string is embedded by an auxiliary embedding
   model a(.) (the paper: an external sentence-embedding model, nomic-embed-text); only
   cosine similarities in that space are used.
3. Local estimate. T0 spells t as pieces p_1..p_n (`decompositions`: T0's own encoding).
   Piece i scores s_i = (cos(a(t), a(p_i)) + len(p_i) / len(t)) / 2 (similarity to the
   whole token and the share of the token it covers); weights w = softmax(s / tau) sum to 1
   (`local_weights`); local(t) = sum_i w_i E0[p_i] (and the same weights on U0).
4. Global estimate. The top-k old tokens nearest to a(t) by cosine (control tokens excluded;
   neighbours below a similarity threshold dropped), weighted by softmax(cos / tau):
   global(t) = sum_j v_j E0[n_j] (`global_neighbours`).
5. Hybrid. row(t) = (1 - w) local(t) + w global(t) with the global weight w (paper default
   0.3); where only one estimate exists it is used alone; where neither exists (a control
   token T0 lacks) the model's fresh row stays.

Supertokens (the paper's second contribution, multi-word tokens learned by a pre-tokenizer
that may cross spaces) are covered by the harness's `bpe:2048` target: tokenlab's byte-level
BPE has no pre-tokenizer, so 188 of its 2,048 tokens hold an inner space ('using the ');
the initialiser treats them like any token (their T0 pieces are whole words).

Follows the paper exactly: shared-token copy, the local score (similarity + relative length)
/ 2 with a temperature softmax, the global top-k softmax over old tokens, the (1 - w) / w mix
and its fallbacks, input and output rows made with the same weights (untied model), defaults
tau = 0.3, k = 10, w = 0.3 (the tool's defaults).

Simplified, and why:
- The auxiliary model. No pretrained embedding model may be downloaded here, so a(.) is a
  space built from the two vocabularies themselves (`ngram_space`): TF-IDF weighted byte
  n-grams (n = 1..4, with begin/end markers) of each token string, L2-normalised (the
  representation fastText uses for subwords, without training). It sees spelling, not
  meaning: neighbours are tokens that share character sequences ('ations' ~ 'ation',
  ' the' ~ 'the '). The paper's semantic neighbours are out of reach at this scale.
- Similarity threshold. The tool drops global neighbours under 0.6 cosine, a value tuned
  to nomic-embed's similarity scale; cosines in the n-gram space have another scale, so the
  default threshold here is 0 (every one of the top k counts); `similarity_threshold` keeps
  the rule available.
- Lengths are counted in bytes (the tool counts characters of decoded strings; byte-level
  BPE tokens may hold half a character, which has no decoded string).
- The tool also copies tokens that match case-insensitively; here only exact bytes are
  shared (the harness's rule for every initialiser).

Use: `tokenlab transfer --from RUN --tokenizer bpe:2048 --init tokenadapt [--aux
global_weight=0.3 --aux temperature=0.3 --aux top_k=10]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from tokenlab.data.tokenizers import Tokenizer
from tokenlab.errors import TokenlabError
from tokenlab.transfer.initializers import (Embeddings, decompositions, register_initializer,
                                            shared_tokens, vocab_bytes)


@dataclasses.dataclass(frozen=True)
class TokenAdaptConfig:
  """Knobs of the heuristic (defaults: the authors' tool).

  Attributes:
    global_weight: w in row = (1 - w) local + w global; 0 = local only, 1 = global only.
    temperature: tau of both softmaxes (local scores and global cosines).
    top_k: number of global neighbours.
    similarity_threshold: global neighbours with cosine below it are dropped.
    orders: byte n-gram orders of the auxiliary space.
  """
  global_weight: float = 0.3
  temperature: float = 0.3
  top_k: int = 10
  similarity_threshold: float = 0.0
  orders: tuple[int, ...] = (1, 2, 3, 4)

  @classmethod
  def from_aux(cls, aux: Mapping[str, Any]) -> "TokenAdaptConfig":
    """Reads the knobs from the harness's aux mapping (`--aux key=value` gives strings)."""
    kw = {}
    for f in ("global_weight", "temperature", "similarity_threshold"):
      if f in aux:
        kw[f] = float(aux[f])
    if "top_k" in aux:
      kw["top_k"] = int(aux["top_k"])
    cfg = cls(**kw)
    if not 0.0 <= cfg.global_weight <= 1.0:
      raise TokenlabError(f"tokenadapt: global_weight={cfg.global_weight} must be in [0, 1]")
    if cfg.temperature <= 0 or cfg.top_k < 1:
      raise TokenlabError("tokenadapt: temperature must be > 0 and top_k >= 1")
    return cfg


# --- the auxiliary embedding space (stands in for the paper's external embedding model) --

BEGIN, END = b"\x02", b"\x03"   # word-boundary markers: bytes no token string starts with


def _ngrams(data: bytes, orders: Sequence[int]) -> list[bytes]:
  marked = BEGIN + data + END
  return [marked[i:i + n] for n in orders for i in range(len(marked) - n + 1)
          if marked[i:i + n] not in (BEGIN, END)]


def ngram_space(strings: Sequence[bytes], orders: Sequence[int] = (1, 2, 3, 4)
                ) -> sp.csr_matrix:
  """TF-IDF vectors of the byte n-grams of `strings`, one L2-normalised row each.

  Args:
    strings: N token strings (an empty string gets a zero row).
    orders: n-gram orders.

  Returns:
    (N, F) sparse float64; row . row' is the cosine similarity of two strings.
  """
  columns: dict[bytes, int] = {}
  rows, cols, vals = [], [], []
  for r, s in enumerate(strings):
    counts: dict[int, int] = {}
    for g in (_ngrams(s, orders) if s else ()):
      c = columns.setdefault(g, len(columns))
      counts[c] = counts.get(c, 0) + 1
    rows += [r] * len(counts)
    cols += list(counts)
    vals += list(counts.values())
  m = sp.csr_matrix((np.asarray(vals, np.float64), (rows, cols)),
                    shape=(len(strings), max(len(columns), 1)))
  df = np.bincount(m.indices, minlength=m.shape[1])
  idf = np.log((1.0 + len(strings)) / (1.0 + df)) + 1.0   # smooth idf: rare n-grams weigh more
  m = m @ sp.diags(idf)
  norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
  return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m)


# --- the two estimates ---------------------------------------------------------------------

def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(x / temperature) over the last axis, float64."""
  z = np.asarray(x, np.float64) / temperature
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def local_weights(similarities: np.ndarray, piece_lengths: np.ndarray, token_length: int,
                  temperature: float) -> np.ndarray:
  """Weights of a token's T0 pieces: softmax(((cos + len(piece) / len(token)) / 2) / tau).

  Args:
    similarities: (n,) cosine of each piece to the whole token in the auxiliary space.
    piece_lengths: (n,) bytes of each piece.
    token_length: bytes of the token (> 0).
    temperature: tau.

  Returns:
    (n,) float64 weights, non-negative, summing to 1.
  """
  scores = (np.asarray(similarities, np.float64)
            + np.asarray(piece_lengths, np.float64) / float(token_length)) / 2.0
  return softmax(scores, temperature)


def global_neighbours(similarities: np.ndarray, candidates: np.ndarray, top_k: int,
                      threshold: float, temperature: float
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The top-k old tokens by cosine and their softmax weights.

  Args:
    similarities: (V0,) cosine of the new token to every old token.
    candidates: (V0,) bool, old tokens that may be neighbours (not control tokens).
    top_k: k.
    threshold: neighbours with cosine below it are dropped.
    temperature: tau.

  Returns:
    (ids (m,), weights (m,)), m <= k, best first; m = 0 when no candidate passes (weights
    then empty), else the weights sum to 1.
  """
  sims = np.where(candidates, np.asarray(similarities, np.float64), -np.inf)
  k = min(top_k, int(candidates.sum()))
  if k == 0:
    return np.zeros((0,), np.int64), np.zeros((0,))
  ids = np.argpartition(-sims, k - 1)[:k]
  ids = ids[np.argsort(-sims[ids], kind="stable")]
  ids = ids[sims[ids] >= threshold]
  if len(ids) == 0:
    return ids.astype(np.int64), np.zeros((0,))
  return ids.astype(np.int64), softmax(sims[ids], temperature)


@dataclasses.dataclass
class Plan:
  """How each new token's rows are made: a sparse mix of old rows.

  Attributes:
    mix: (V, V0) sparse float64: new row j = mix[j] @ old rows (shared tokens: one 1.0).
    kind: (V,) str: 'shared' | 'hybrid' | 'local' | 'global' | 'fresh'.
  """
  mix: sp.csr_matrix
  kind: np.ndarray

  def counts(self) -> dict[str, int]:
    return {k: int((self.kind == k).sum()) for k in ("shared", "hybrid", "local", "global",
                                                      "fresh")}


def plan(old_tokenizer: Tokenizer, new_tokenizer: Tokenizer,
         cfg: TokenAdaptConfig = TokenAdaptConfig()) -> Plan:
  """The weights of TokenAdapt for every new token (see the module docstring, steps 1-5)."""
  old_bytes, new_bytes = vocab_bytes(old_tokenizer), vocab_bytes(new_tokenizer)
  shared = shared_tokens(old_tokenizer, new_tokenizer)
  pieces = decompositions(old_tokenizer, new_tokenizer)
  space = ngram_space(list(old_bytes) + list(new_bytes), cfg.orders)
  a_old, a_new = space[:len(old_bytes)], space[len(old_bytes):]
  cos = np.asarray((a_new @ a_old.T).todense())               # (V, V0)
  candidates = np.array([len(b) > 0 for b in old_bytes])
  old_len = np.array([len(b) for b in old_bytes], np.float64)
  w = cfg.global_weight
  rows, cols, vals, kind = [], [], [], []
  for j, b in enumerate(new_bytes):
    if j in shared:
      rows.append(j), cols.append(shared[j]), vals.append(1.0), kind.append("shared")
      continue
    local = None
    if pieces[j] is not None and w < 1.0:
      p = pieces[j]
      local = (p, local_weights(cos[j, p], old_len[p], len(b), cfg.temperature))
    glob = None
    if b and w > 0.0:
      ids, weights = global_neighbours(cos[j], candidates, cfg.top_k,
                                       cfg.similarity_threshold, cfg.temperature)
      glob = (ids, weights) if len(ids) else None
    parts = ([(local, 1.0 - w), (glob, w)] if local and glob else
             [(local, 1.0)] if local else [(glob, 1.0)] if glob else [])
    for (ids, weights), share in parts:
      rows += [j] * len(ids)
      cols += [int(i) for i in ids]
      vals += list(share * weights)
    kind.append("hybrid" if local and glob else "local" if local else
                "global" if glob else "fresh")
  # Repeated pieces (T0 spells 'aaa' as 'a','a','a') add up in the sparse sum, as in the
  # weighted sum over the piece list.
  mix = sp.csr_matrix((np.asarray(vals, np.float64), (rows, cols)),
                      shape=(len(new_bytes), len(old_bytes)))
  return Plan(mix, np.asarray(kind))


def apply_plan(p: Plan, old: Embeddings, fresh: Embeddings) -> Embeddings:
  """New rows = plan @ old rows (float64, then the old dtype); 'fresh' tokens keep `fresh`."""
  keep_fresh = p.kind == "fresh"
  def one(old_m, fresh_m):
    old_m = np.asarray(old_m)
    out = np.asarray(p.mix @ old_m.astype(np.float64)).astype(old_m.dtype)
    out[keep_fresh] = np.asarray(fresh_m)[keep_fresh]
    return out
  return Embeddings(one(old.input, fresh.input),
                    None if old.output is None else one(old.output, fresh.output))


@register_initializer("tokenadapt")
def tokenadapt(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
               fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """TokenAdapt's hybrid rows for the new vocabulary (knobs from `aux`: global_weight,
  temperature, top_k, similarity_threshold; see TokenAdaptConfig)."""
  if fresh.vocab_size != new_tokenizer.vocab_size:
    raise TokenlabError(f"fresh embeddings have {fresh.vocab_size} rows for a tokenizer of "
                        f"{new_tokenizer.vocab_size} tokens")
  return apply_plan(plan(old_tokenizer, new_tokenizer, TokenAdaptConfig.from_aux(aux)), old,
                    fresh)


def mean_pieces_nats(p: Plan) -> float:
  """Mean entropy (nats) of the non-shared rows' mixing weights: 0 = one old row copied,
  ln n = n old rows averaged (a summary for the reproduction's notes)."""
  ent = []
  for j in np.flatnonzero(np.isin(p.kind, ("hybrid", "local", "global"))):
    v = p.mix.getrow(j).data
    v = v[v > 0]
    ent.append(float(-(v * np.log(v)).sum()))
  return float(np.mean(ent)) if ent else math.nan
