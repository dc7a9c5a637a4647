"""Retrofitting a language model with dynamic tokenization (issue 20, method 2).

Paper: "Retrofitting (Large) Language Models with Dynamic Tokenization" (Feher, Vulic,
Minixhofer; arXiv 2411.18553). The reference code (DariusFeher/dynamic-tokenization,
tokenizations/dynamic_bpe.py) was read for the merge rule; no code is copied.

The problem. A model trained with a fixed subword tokenizer T0 spends many tokens on words
T0 splits. Dynamic tokenization decides token boundaries per batch of input text, so the
sequences get shorter, without retraining the model.

The method, in the paper's order:

1. Tokenise the batch with T0 (`encode_batch`).
2. Batch-level BPE (`dynamic_bpe`): count every adjacent pair of (current) tokens in the
   batch's sequences, merge the most frequent pair everywhere in the batch, and repeat m
   times (or until no pair is left). A pair may merge only inside a word (`can_merge`): the
   merged bytes hold whitespace at most as their first byte, so no merge ever crosses a word
   boundary (the reference's 'word' boundary: a whitespace split of the merged string gives
   one piece). Ties go to the pair seen first in the batch.
3. The batch's vocabulary is T0's plus the merged strings (`DynamicBatch`): a merged string
   T0 already has keeps T0's id; every other one gets a new id V0 + k.
4. Embed the new tokens on the fly with the ZeTT hypernetwork (`--init zett --aux
   hypernet=RUN`: the `zett` initialiser of the transfer harness, tokenlab/methods/zett.py,
   reached through the initialiser registry): each new token is spelt with T0 and the
   hypernetwork predicts its input and output rows (`new_rows`).
   On a fixed target tokenizer (the harness's table), `--init dynamic_tokenization` applies
   the same rule: T0's rows for tokens T0 has, the hypernetwork's for the others.
5. Run the unchanged model over the shorter sequences (`DynamicTokenization`: the
   transformer_lm with the batch's new rows appended to its embedding table and its output
   layer; new slots that may not be predicted are masked out of the softmax).

Follows the paper: batch-level BPE over the batch's subword sequences with pair counts over
all occurrences, most-frequent-first, m merges, merges confined to words; the hypernetwork
(ZeTT's) computing the new tokens' embeddings per batch; the trade-off measured as sequence
length reduction vs quality as m grows.

Simplified or chosen here, and why:
- Tokens T0 already has keep their original rows; only merged strings go through the
  hypernetwork (the reference embeds every token of the batch's vocabulary with it). Our
  choice: zero merges is then exactly the original model (tested: same ids, same logits),
  and at toy scale the hypernetwork's rows of T0 tokens are close to but not equal to the
  originals (cosine ~0.95, BUILD_NOTES 'zett').
- The evaluation is the paper's decoder use, prefilling: the model reads the dynamic tokens
  and predicts with its own output vocabulary (`evaluate`, scoring='prefill'): word w of a
  document is scored as T0's tokens after the dynamic tokens of the words before it, so
  only the new tokens' input rows are used and m = 0 is T0's own scoring. The paper's main
  table is an encoder on XNLI; here the harness's metric (issue 20), bits per character of
  a decoder, is the one this CPU can measure. A first design predicted the dynamic tokens
  themselves over T0's vocabulary + the batch's new tokens (scoring='vocabulary', kept): the
  new tokens are the batch's own words, so that vocabulary is made from the very text it
  scores, and bits per character fell with m even for random rows (BUILD_NOTES).
- Each document's first word is context only (never scored), so every merge count scores
  exactly the same characters: merges never cross a word, so the words are the same under
  any m.
- A new token is spelt for the hypernetwork by `decompose` (T0's own encoding of its bytes,
  as ZeTT spells every new token), which for a span inside a word is usually, not always,
  the pieces that were merged.
- Merge batches are groups of `batch_docs` documents (short UI strings and names of the
  `multilingual` corpus), packed whole into rows of the LM's sequence length.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.tokenizers import Tokenizer
from tokenlab.errors import ConfigError
from tokenlab.method import Batch, Method, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.registry import register_method
from tokenlab.transfer.initializers import (Embeddings, get_initializer, register_initializer,
                                            shared_tokens)

WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
NEG = -1e9


# --- 2: batch-level BPE within words ----------------------------------------------------------

def starts_word(token: bytes) -> bool:
  """True when `token` begins a new word (its first byte is whitespace)."""
  return bool(token) and token[0] in WHITESPACE


def can_merge(a: bytes, b: bytes) -> bool:
  """May tokens a, b (adjacent, in this order) merge? Only inside one word: the merged bytes
  hold no whitespace after their first byte. Control tokens (no bytes) never merge."""
  return bool(a) and bool(b) and not any(c in WHITESPACE for c in (a + b)[1:])


def dynamic_bpe(seqs: Sequence[Sequence[bytes]], num_merges: int
                ) -> tuple[list[list[bytes]], list[tuple[bytes, bytes]]]:
  """Batch-level BPE: `num_merges` times, merge the most frequent mergeable adjacent pair of
  the batch everywhere in it (ties: the pair seen first). Stops early when no pair is left.

  Args:
    seqs: the batch's documents as token strings (each token's bytes), n_i tokens each.
  Returns:
    (merged documents (<= n_i tokens each, the same bytes when joined), the merges in order).
  """
  seqs = [list(s) for s in seqs]
  merges = []
  for _ in range(num_merges):
    counts: collections.Counter = collections.Counter()
    for s in seqs:
      counts.update(p for p in zip(s, s[1:]) if can_merge(*p))
    if not counts:
      break
    best = max(counts, key=counts.__getitem__)   # max keeps the first of equal counts
    merges.append(best)
    a, b = best
    for k, s in enumerate(seqs):
      out, i = [], 0
      while i < len(s):
        if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
          out.append(a + b)
          i += 2
        else:
          out.append(s[i])
          i += 1
      seqs[k] = out
  return seqs, merges


# --- 3: the batch's vocabulary -----------------------------------------------------------------

@dataclasses.dataclass
class DynamicBatch:
  """A batch of documents under dynamic tokenization.

  Attributes:
    ids: per document, int32 (n_i,) token ids: T0's for strings T0 has, V0 + k for the k-th
      new token.
    new_tokens: the K new token strings (id V0 + k), in order of first use in the batch.
    first_word: per document, the number of its tokens that make up its first word (their
      targets are context only, see `pack`).
    old_vocab: V0.
    merges: the merges made, in order.
    t0_ids: per document, T0's own ids (n0_i,).
  """
  ids: list[np.ndarray]
  new_tokens: list[bytes]
  first_word: list[int]
  old_vocab: int
  merges: list[tuple[bytes, bytes]]
  t0_ids: list[np.ndarray] = dataclasses.field(default_factory=list)

  def token_bytes(self, old_tok: Tokenizer, i: int) -> bytes:
    return old_tok.token_bytes(i) if i < self.old_vocab else self.new_tokens[i - self.old_vocab]

  def num_tokens(self) -> int:
    return sum(len(x) for x in self.ids)


def _first_word_len(tokens: Sequence[bytes]) -> int:
  for i in range(1, len(tokens)):
    if starts_word(tokens[i]):
      return i
  return len(tokens)


def _t0_ids(old_tok: Tokenizer) -> dict[bytes, int]:
  """{bytes: the id T0 itself encodes them as} for T0's tokens (lowest id where T0's own
  encoding is not one token, e.g. a byte-fallback twin)."""
  table: dict[bytes, int] = {}
  for i in range(old_tok.vocab_size):
    b = old_tok.token_bytes(i)
    if b and b not in table:
      table[b] = i
  for b, i in list(table.items()):
    try:
      own = old_tok.encode(b)
      if len(own) == 1 and old_tok.token_bytes(int(own[0])) == b:
        table[b] = int(own[0])
    except Exception:   # pylint: disable=broad-except (bytes T0 cannot encode on their own)
      pass
  return table


_TABLES: dict[int, dict[bytes, int]] = {}


def encode_batch(old_tok: Tokenizer, docs: Sequence[bytes], num_merges: int) -> DynamicBatch:
  """Steps 1-3 for one batch of documents: T0, then `num_merges` batch-level merges."""
  t0 = [np.asarray(old_tok.encode(d), np.int64) for d in docs]
  seqs = [[old_tok.token_bytes(int(i)) for i in ids] for ids in t0]
  if num_merges == 0:   # the identity: T0's ids exactly (byte-fallback twins included)
    t0 = [x.astype(np.int32) for x in t0]
    return DynamicBatch(t0, [], [_first_word_len(s) for s in seqs], old_tok.vocab_size, [],
                        t0)
  key = id(old_tok)
  if key not in _TABLES:
    _TABLES[key] = _t0_ids(old_tok)
  table = _TABLES[key]
  merged, merges = dynamic_bpe(seqs, num_merges)
  new: dict[bytes, int] = {}
  out = []
  for orig_ids, orig, toks in zip(t0, seqs, merged):
    ids, pos = [], 0
    for t in toks:
      if pos < len(orig) and orig[pos] == t:   # an unmerged T0 token keeps its own id
        ids.append(int(orig_ids[pos]))
        pos += 1
        continue
      if t in table:
        ids.append(table[t])
      else:
        ids.append(new.setdefault(t, old_tok.vocab_size + len(new)))
      # Advance over the T0 tokens this merged token covers.
      n = 0
      while n < len(t):
        n += len(orig[pos])
        pos += 1
    out.append(np.asarray(ids, np.int32))
  return DynamicBatch(out, list(new), [_first_word_len(s) for s in merged], old_tok.vocab_size,
                      merges, [x.astype(np.int32) for x in t0])


def decode(batch: DynamicBatch, old_tok: Tokenizer, k: int) -> bytes:
  """Document k's bytes back from its dynamic ids."""
  return b"".join(batch.token_bytes(old_tok, int(i)) for i in batch.ids[k])


# --- 4: embeddings of the new tokens -------------------------------------------------------------

class NewTokens:
  """The K new tokens as a vocabulary of their own (ids 0..K-1), the 'new tokenizer' an
  initialiser of the transfer harness is given."""

  def __init__(self, tokens: Sequence[bytes]):
    self.tokens = list(tokens)
    self.vocab_size = len(self.tokens)

  def token_bytes(self, i: int) -> bytes:
    return self.tokens[i]


def new_rows(init: str, old_tok: Tokenizer, old: Embeddings, tokens: Sequence[bytes], *,
             fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """Input and output rows (K, d) of the new tokens by the harness's initialiser `init`
  ('zett': the hypernetwork, aux['hypernet']; 'mean_subtokens', 'random': the baselines).
  `fresh`: (K, d) rows of the model's own initialisation."""
  if not tokens:
    d = old.input.shape[1]
    return Embeddings(np.zeros((0, d), np.float32), np.zeros((0, d), np.float32))
  return get_initializer(init)(old_tok, old, NewTokens(tokens), fresh=fresh, aux=aux)


@register_initializer("dynamic_tokenization")
def dynamic_tokenization_init(old_tokenizer: Tokenizer, old: Embeddings,
                              new_tokenizer: Tokenizer, *, fresh: Embeddings,
                              aux: Mapping[str, Any]) -> Embeddings:
  """Dynamic tokenization's rule for a fixed target tokenizer (the transfer harness's
  comparison table): a token T0 has keeps T0's rows exactly, every other token gets the rows
  of aux['new_rows'] (default 'zett': the hypernetwork in aux['hypernet'])."""
  made = get_initializer(str(aux.get("new_rows", "zett")))(old_tokenizer, old, new_tokenizer,
                                                           fresh=fresh, aux=aux)
  shared = shared_tokens(old_tokenizer, new_tokenizer)
  ins = np.array(made.input, copy=True)
  outs = None if made.output is None else np.array(made.output, copy=True)
  for j, i in shared.items():
    ins[j] = old.input[i]
    if outs is not None:
      outs[j] = old.output[i]
  return Embeddings(ins, outs)


# --- 5: the model over a dynamic vocabulary -----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DynamicTokenizationConfig(TransformerLMConfig):
  """The source LM's shape (vocab_size = T0's V0) plus the new-token slots of a batch."""
  new_slots: int = 256


@register_method("dynamic_tokenization")
class DynamicTokenization(Method):
  """A transformer_lm (parameters unchanged, T0's vocabulary) read with a batch's dynamic
  vocabulary: V0 + new_slots rows, the last new_slots from the batch.

  Batch: the LM fields inputs/targets/segment_ids/positions/loss_mask/target_bytes (B, L) in
  dynamic ids (< V0 + new_slots); new_input, new_output (B, S, d) and new_mask (B, S) with
  S = new_slots / B: the batch's new rows spread over the batch rows (every array leads
  with the batch axis, as the trainer's sharding expects); slot j is (j // S, j % S).
  new_mask is 1 for a new token that may be predicted; 0 (an unused slot, or an input-only
  row when prefilling) keeps it out of the softmax.
  """
  Config = DynamicTokenizationConfig

  def __init__(self, config: DynamicTokenizationConfig):
    if config.tie_embeddings:
      raise ConfigError("dynamic_tokenization appends separate input and output rows: set "
                        "config.model.tie_embeddings=False")
    super().__init__(config)
    lm_cfg = TransformerLMConfig(**{f.name: getattr(config, f.name)
                                    for f in dataclasses.fields(TransformerLMConfig)})
    self.lm = TransformerLM(lm_cfg)
    self.lm_dynamic = TransformerLM(dataclasses.replace(
        lm_cfg, vocab_size=config.vocab_size + config.new_slots))

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    return self.lm.init(rng, {"inputs": batch["inputs"]})

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    """(B, L, V0 + new_slots); new slots with new_mask 0 at -1e9."""
    s = self.config.new_slots
    d = self.config.d_model
    new_in = batch["new_input"].reshape(s, d).astype(params["embed"]["embedding"].dtype)
    new_out = batch["new_output"].reshape(s, d).astype(params["lm_head"]["kernel"].dtype)
    mask = batch["new_mask"].reshape(s).astype(jnp.float32)
    rows = {**params,
            "embed": {**params["embed"], "embedding": jnp.concatenate(
                [params["embed"]["embedding"], new_in])},
            "lm_head": {**params["lm_head"], "kernel": jnp.concatenate(
                [params["lm_head"]["kernel"], new_out.T], axis=1)}}
    logits = self.lm_dynamic.logits(rows, batch)
    off = jnp.concatenate([jnp.zeros((self.config.vocab_size,)), (1.0 - mask) * NEG])
    return logits + off.astype(logits.dtype)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    return lm_loss(self.logits(params, batch), batch)

  def flops_per_token(self, seq_len: int) -> float:
    return self.lm_dynamic.flops_per_token(seq_len)


SCORINGS = ("prefill", "vocabulary")


def _words(tokens: Sequence[bytes]) -> list[int]:
  """Start index of each word of a token sequence (a token opening with whitespace opens
  one; the sequence's start opens the first)."""
  return [0] + [i for i in range(1, len(tokens)) if starts_word(tokens[i])]


def examples(batch: DynamicBatch, old_tok: Tokenizer, scoring: str
             ) -> list[tuple[np.ndarray, np.ndarray]]:
  """(token ids (n,), scored (n - 1,) float: 1 where target j = token j + 1 is scored) of
  the batch, as `scoring` reads it (see `evaluate`):

  'prefill': one example per document and word w >= 1: the dynamic tokens of words < w (the
    context), then T0's tokens of word w, which are scored. The outputs stay T0's.
  'vocabulary': one example per document, its dynamic tokens; every target after the first
    word is scored, over the batch's dynamic vocabulary.
  """
  if scoring not in SCORINGS:
    raise ConfigError(f"scoring '{scoring}': use one of {', '.join(SCORINGS)}")
  out = []
  for ids, t0, first in zip(batch.ids, batch.t0_ids, batch.first_word):
    if scoring == "vocabulary":
      if len(ids) > 1:
        out.append((ids, (np.arange(1, len(ids)) >= first).astype(np.float32)))
      continue
    dyn_words = _words([batch.token_bytes(old_tok, int(i)) for i in ids])
    t0_words = _words([old_tok.token_bytes(int(i)) for i in t0])
    # Merges never cross a word, so both spellings have the same words.
    assert len(dyn_words) == len(t0_words), (dyn_words, t0_words)
    for w in range(1, len(t0_words)):
      end = t0_words[w + 1] if w + 1 < len(t0_words) else len(t0)
      seq = np.concatenate([ids[:dyn_words[w]], t0[t0_words[w]:end]]).astype(np.int32)
      scored = np.zeros(len(seq) - 1, np.float32)
      scored[dyn_words[w] - 1:] = 1.0
      out.append((seq, scored))
  return out


def pack(batch: DynamicBatch, old_tok: Tokenizer, rows: Embeddings, *, batch_size: int,
         seq_len: int, new_slots: int, scoring: str = "prefill"
         ) -> list[dict[str, np.ndarray]]:
  """The batch's `examples` as model batches of `DynamicTokenization` (see its doc): each
  example whole in one row (its last seq_len + 1 tokens), segment ids and positions per
  example, unscored targets masked. `rows`: the new tokens' (K, d) rows, K <= new_slots;
  under 'prefill' they are inputs only (new_mask 0: never predicted)."""
  k, d = rows.input.shape
  if k > new_slots:
    raise ConfigError(f"{k} new tokens in a batch do not fit new_slots={new_slots}")
  if new_slots % batch_size:
    raise ConfigError(f"new_slots={new_slots} must be a multiple of the batch size "
                      f"{batch_size} (the new rows ride on the batch rows)")
  lens = np.array([len(batch.token_bytes(old_tok, i))
                   for i in range(batch.old_vocab + len(batch.new_tokens))], np.int32)
  new_in = np.zeros((new_slots, d), np.float32)
  new_out = np.zeros((new_slots, d), np.float32)
  new_in[:k] = rows.input
  if rows.output is not None:
    new_out[:k] = rows.output
  new_mask = np.zeros((new_slots,), np.float32)
  if scoring == "vocabulary":
    new_mask[:k] = 1.0
  spread = {"new_input": new_in.reshape(batch_size, -1, d),
            "new_output": new_out.reshape(batch_size, -1, d),
            "new_mask": new_mask.reshape(batch_size, -1)}
  keys = ("inputs", "targets", "segment_ids", "positions", "target_bytes", "loss_mask")

  def empty():
    return {key: np.zeros((batch_size, seq_len), np.float32 if key == "loss_mask"
                          else np.int32) for key in keys}
  out, cur, row, col, seg = [], empty(), 0, 0, 1
  for ids, scored in examples(batch, old_tok, scoring):
    ids, scored = ids[-(seq_len + 1):], scored[-seq_len:]
    n = len(ids) - 1
    if col + n > seq_len:
      row, col, seg = row + 1, 0, 1
      if row == batch_size:
        out.append({**cur, **spread})
        cur, row = empty(), 0
    sl = slice(col, col + n)
    cur["inputs"][row, sl], cur["targets"][row, sl] = ids[:-1], ids[1:]
    cur["segment_ids"][row, sl], cur["positions"][row, sl] = seg, np.arange(n)
    cur["target_bytes"][row, sl] = lens[ids[1:]]
    cur["loss_mask"][row, sl] = scored
    col, seg = col + n, seg + 1
  if col or row:
    out.append({**cur, **spread})
  return out


_EVAL: dict[Any, Any] = {}


def evaluate(config: DynamicTokenizationConfig, params: PyTree, old_tok: Tokenizer,
             docs: Sequence[bytes], *, num_merges: int, init: str, batch_docs: int,
             batch_size: int, seq_len: int, aux: Mapping[str, Any] | None = None,
             fresh: Embeddings | None = None, scoring: str = "prefill") -> dict[str, float]:
  """Bits per character and byte of `docs` under dynamic tokenization.

  Documents are taken `batch_docs` at a time; each group is one merge batch (its own m
  merges, its own new tokens and rows by `init`), read by the source LM `params`
  (transformer_lm at T0's vocabulary) with the group's new rows. Every document's words
  after the first are scored (the same characters for every m), as `scoring` says:

  'prefill' (the paper's decoder use: dynamic tokens for the text the model reads): word w
    is scored as T0's tokens, over T0's output vocabulary, after the dynamic tokens of the
    words before it. Only the new input rows are used; m = 0 is T0's own scoring.
  'vocabulary' (the first design, kept for its record): the dynamic tokens themselves are
    predicted over T0's vocabulary + the batch's new tokens. The batch's new tokens are its
    own words, so the vocabulary is built from the very text it scores; the bits it
    reports do not count describing that vocabulary (see BUILD_NOTES).

  Args:
    config: the model's shape (vocab_size = V0, new_slots >= the new tokens of a group).
    params: the source LM's parameters.
    old_tok: T0.
    docs: the documents (bytes).
    num_merges: m, merges per batch (0: T0 itself).
    init: the initialiser of the new rows ('zett' needs aux['hypernet']).
    batch_docs, batch_size, seq_len: documents per merge batch; model batch shape.
    fresh: (>= new_slots, d) rows of the model's own initialisation (the 'random' rows).
  Returns:
    bits_per_char, bits_per_byte, scored_chars, scored_tokens, tokens_per_char (every token
    of every document), tokens (their number), new_tokens (summed over merge batches).
  """
  from tokenlab.train.step import make_eval_step
  method = DynamicTokenization(config)
  if config not in _EVAL:   # one compile per model shape
    _EVAL[config] = jax.jit(make_eval_step(method, jnp.float32))
  step = _EVAL[config]
  old = Embeddings(np.asarray(params["embed"]["embedding"])[:old_tok.vocab_size],
                   np.asarray(params["lm_head"]["kernel"]).T[:old_tok.vocab_size])
  d = old.input.shape[1]
  nats = nbytes = nchars = scored = 0.0
  tokens = chars = new = 0
  for s in range(0, len(docs), batch_docs):
    group = list(docs[s:s + batch_docs])
    db = encode_batch(old_tok, group, num_merges)
    k = len(db.new_tokens)
    f = fresh if fresh is not None else Embeddings(np.zeros((k, d)), np.zeros((k, d)))
    rows = new_rows(init, old_tok, old, db.new_tokens,
                    fresh=Embeddings(f.input[:k], f.output[:k]), aux=dict(aux or {}))
    cpt = np.array([_num_chars(db.token_bytes(old_tok, i))
                    for i in range(db.old_vocab + k)], np.float64)
    for b in pack(db, old_tok, rows, batch_size=batch_size, seq_len=seq_len,
                  new_slots=config.new_slots, scoring=scoring):
      m = step(params, b, jax.random.key(0))
      nats += float(m["loss"].total)
      mask = b["loss_mask"]
      scored += float(mask.sum())
      nbytes += float((b["target_bytes"] * mask).sum())
      nchars += float((cpt[b["targets"]] * mask).sum())
    tokens += db.num_tokens()
    chars += sum(_num_chars(x) for x in group)
    new += k
  bits = nats / math.log(2.0)
  return {"bits_per_char": bits / max(nchars, 1.0), "bits_per_byte": bits / max(nbytes, 1.0),
          "scored_chars": int(nchars), "scored_tokens": int(scored),
          "tokens_per_char": tokens / max(chars, 1),
          "tokens": tokens, "new_tokens": new}


def model_config(model: Mapping[str, Any], new_slots: int) -> DynamicTokenizationConfig:
  """The DynamicTokenizationConfig of a transformer_lm config (a run's config.model)."""
  from tokenlab.method import dataclass_from_config
  values = {k: v for k, v in dict(model).items() if k in
            {f.name for f in dataclasses.fields(TransformerLMConfig)}}
  return dataclass_from_config(DynamicTokenizationConfig, {**values, "new_slots": new_slots},
                               prefix="model")


def _num_chars(data: bytes) -> int:
  return sum(1 for b in data if b & 0xC0 != 0x80)
