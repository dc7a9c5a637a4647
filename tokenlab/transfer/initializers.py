"""Embedding initialisers for a new tokenizer: the interface, a registry, and the baselines.

An initialiser answers one question: a model was trained with tokenizer T0 and has input
embeddings E0 (V0, d) and output embeddings U0 (V0, d); which rows should the new tokenizer's
V tokens get? Every initialiser is a function

    init(old_tokenizer, old, new_tokenizer, *, fresh, aux) -> Embeddings

with `old` = Embeddings(E0, U0), `fresh` = the model's own random initialisation at the new
vocabulary (same distribution as training from scratch; the `random` baseline returns it and
other initialisers may fall back on its rows), and `aux` a mapping of optional side data the
harness passes through (languages, data configs, `--aux key=value` pairs: a hypernetwork's
workdir, a bilingual dictionary's language pair, ...). It returns Embeddings (V, d).

Registered here: `random`, `mean_subtokens` (the two trivial baselines of issue 20) and
`identity` (only for the same vocabulary: the harness's exactness check). Methods add theirs
with `@register_initializer("name")` in their own module; `get_initializer(name)` imports
`tokenlab.methods.<name>` on first use, as the method registry does.

Shared tokens: a new token "is" an old one when both stand for the same bytes (`shared_tokens`
says which old id where several share bytes, as SentencePiece's byte piece <0x41> and its
piece 'A' do).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from tokenlab.data.tokenizers import Tokenizer
from tokenlab.errors import TokenlabError, nearest


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """A vocabulary's embedding rows.

  Attributes:
    input: (V, d) float, row i embeds token id i at the model's input.
    output: (V, d) float, row i is token i's output embedding (logit_i = h . output[i]; the
      transpose of transformer_lm's lm_head kernel), or None for a model with tied embeddings.
  """
  input: np.ndarray
  output: np.ndarray | None

  @property
  def vocab_size(self) -> int:
    return int(self.input.shape[0])


class Initializer(Protocol):
  """(old tokenizer, old rows, new tokenizer, fresh rows, aux) -> rows of the new vocabulary."""

  def __call__(self, old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
               fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
    ...


_INITIALIZERS: dict[str, Initializer] = {}


def register_initializer(name: str) -> Callable[[Initializer], Initializer]:
  """Decorator: makes `tokenlab transfer --init NAME` use this function."""
  def wrap(fn: Initializer) -> Initializer:
    _INITIALIZERS[name] = fn
    return fn
  return wrap


def initializer_names() -> list[str]:
  """The initialisers registered so far (methods' own register when first imported)."""
  return sorted(_INITIALIZERS)


def get_initializer(name: str) -> Initializer:
  """The initialiser `name`; imports tokenlab.methods.<name> first when that registers it."""
  if name not in _INITIALIZERS:
    try:
      importlib.import_module(f"tokenlab.methods.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"tokenlab.methods.{name}":
        raise
  if name not in _INITIALIZERS:
    raise TokenlabError(f"unknown embedding initialiser '{name}'"
                        f"{nearest(name, _INITIALIZERS)}; known: {', '.join(initializer_names())}")
  return _INITIALIZERS[name]


# --- token correspondences -----------------------------------------------------------------

def vocab_bytes(tok: Tokenizer) -> list[bytes]:
  """The bytes of every token id of `tok` (b'' for control tokens)."""
  return [tok.token_bytes(i) for i in range(tok.vocab_size)]


def shared_tokens(old_tokenizer: Tokenizer, new_tokenizer: Tokenizer) -> dict[int, int]:
  """{new id: old id} for the new tokens whose bytes some old token has (see module doc).

  Where both tokenizers have the same number of ids with some bytes, they pair in id order
  (a tokenizer swapped for itself maps every id to itself). Otherwise every new id with those
  bytes takes the old id T0's own encoding of the bytes gives (SentencePiece's piece 'a',
  which training used, not its byte-fallback piece <0x61>, which it hardly saw). Control
  tokens (no bytes) pair only in the first way.
  """
  old_by_bytes: dict[bytes, list[int]] = {}
  for i, b in enumerate(vocab_bytes(old_tokenizer)):
    old_by_bytes.setdefault(b, []).append(i)
  new_by_bytes: dict[bytes, list[int]] = {}
  for j, b in enumerate(vocab_bytes(new_tokenizer)):
    new_by_bytes.setdefault(b, []).append(j)
  out = {}
  for b, news in new_by_bytes.items():
    olds = old_by_bytes.get(b)
    if not olds:
      continue
    if len(olds) == len(news):
      out.update(zip(news, olds))
      continue
    pieces = decompose(old_tokenizer, b) if b else None
    own = int(pieces[0]) if pieces is not None and len(pieces) == 1 else olds[0]
    out.update((j, own) for j in news)
  return out


def decompose(old_tokenizer: Tokenizer, data: bytes,
              _table: dict[bytes, int] | None = None) -> np.ndarray | None:
  """The old token ids that spell `data`: T0's own encoding when it has one that decodes back
  to `data`; else (bytes T0 cannot encode, e.g. half a UTF-8 character for SentencePiece)
  greedy longest match over T0's token bytes; None when no old tokens spell it (or `data` is
  empty). int32 (n,)."""
  if not data:
    return None
  try:
    ids = np.asarray(old_tokenizer.encode(data), np.int32)
    if len(ids) and old_tokenizer.decode(ids) == data:
      return ids
  except (TokenlabError, UnicodeDecodeError, ValueError):
    pass
  table = _table if _table is not None else _longest_match_table(old_tokenizer)
  longest = max(map(len, table)) if table else 0
  out, pos = [], 0
  while pos < len(data):
    for n in range(min(longest, len(data) - pos), 0, -1):
      hit = table.get(data[pos:pos + n])
      if hit is not None:
        out.append(hit)
        pos += n
        break
    else:
      return None
  return np.asarray(out, np.int32)


def _longest_match_table(tok: Tokenizer) -> dict[bytes, int]:
  """{bytes: id} of every token; of ids with equal bytes, the one T0 itself encodes them as
  (else the lowest), as `shared_tokens` chooses."""
  ids: dict[bytes, list[int]] = {}
  for i, b in enumerate(vocab_bytes(tok)):
    if b:
      ids.setdefault(b, []).append(i)
  table = {}
  for b, same in ids.items():
    table[b] = same[0]
    if len(same) > 1:
      try:
        own = tok.encode(b)
        if len(own) == 1 and int(own[0]) in same:
          table[b] = int(own[0])
      except (TokenlabError, UnicodeDecodeError, ValueError):
        pass
  return table


def decompositions(old_tokenizer: Tokenizer, new_tokenizer: Tokenizer
                   ) -> list[np.ndarray | None]:
  """decompose(old, bytes of new token j) for every new id j (None: no old spelling)."""
  table = _longest_match_table(old_tokenizer)
  return [decompose(old_tokenizer, b, table) for b in vocab_bytes(new_tokenizer)]


def _check(old: Embeddings, new_tokenizer: Tokenizer, fresh: Embeddings) -> None:
  if fresh.vocab_size != new_tokenizer.vocab_size:
    raise TokenlabError(f"fresh embeddings have {fresh.vocab_size} rows for a tokenizer of "
                        f"{new_tokenizer.vocab_size} tokens")
  if (old.output is None) != (fresh.output is None):
    raise TokenlabError("old and fresh embeddings disagree on tied output embeddings")


# --- the baselines -------------------------------------------------------------------------

@register_initializer("random")
def random_init(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
                fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """Every row from the model's own initialisation (shared tokens too): what training the
  embeddings from scratch would start from. The weakest baseline."""
  _check(old, new_tokenizer, fresh)
  return fresh


@register_initializer("mean_subtokens")
def mean_subtokens(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
                   fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """A shared token keeps its old rows exactly; any other token gets the mean of the old rows
  of its T0 decomposition (input and output alike); a token with no T0 spelling (a control
  token T0 lacks) keeps its fresh row."""
  _check(old, new_tokenizer, fresh)
  shared = shared_tokens(old_tokenizer, new_tokenizer)
  pieces = decompositions(old_tokenizer, new_tokenizer)
  mats = [(old.input, fresh.input)] + ([(old.output, fresh.output)]
                                       if old.output is not None else [])
  outs = []
  for old_m, fresh_m in mats:
    new_m = np.array(fresh_m, dtype=np.asarray(old_m).dtype, copy=True)
    old_m = np.asarray(old_m)
    for j in range(new_tokenizer.vocab_size):
      if j in shared:
        new_m[j] = old_m[shared[j]]
      elif pieces[j] is not None:
        # Mean in float64, then cast: the row does not depend on the pieces' order.
        new_m[j] = old_m[pieces[j]].astype(np.float64).mean(axis=0)
    outs.append(new_m)
  return Embeddings(outs[0], outs[1] if len(outs) > 1 else None)


@register_initializer("identity")
def identity(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
             fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """The old rows unchanged: only for a new tokenizer with exactly T0's tokens (the check
  that a swap reproduces the run); anything else is refused."""
  if vocab_bytes(old_tokenizer) != vocab_bytes(new_tokenizer):
    raise TokenlabError("--init identity keeps the old rows, so it needs the run's own "
                        "tokenizer (same tokens in the same order); use mean_subtokens")
  return Embeddings(np.asarray(old.input).copy(),
                    None if old.output is None else np.asarray(old.output).copy())
