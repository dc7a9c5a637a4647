"""Learn Your Tokens: word-pooled tokenization for language modeling.

Paper: Thawani, Ghanekar, Zhu, Pujara, "Learn Your Tokens: Word-Pooled Tokenization for
Language Modeling" (EMNLP Findings 2023, arXiv 2310.11628); reference code avi-jit/eTok (read,
not copied).

Bytes (B, L) are cut into words; each word is pooled by a small character encoder into one
vector; a causal transformer runs over the word vectors; a small character decoder emits the
next word's characters, for all words in parallel:

  words     a word starts at a non-whitespace byte that follows whitespace (or at a row /
            document start), so a word is its characters plus its trailing whitespace; words
            longer than `max_word_len` bytes are cut into pieces of at most that length.
            At most `max_words` * L words per row (static); the rest are dropped from the loss
            and counted as `word_overflow`.
  encoder   [CLS, c_0 .. c_{K-1}] -> bidirectional transformer (padding masked) -> CLS output
            = the word vector v_i (characters of other words never reach v_i).
  main      causal transformer over [start, v_0, .., v_{W-2}] (the first word of a document
            gets the learned start vector): output h_i sees words < i only.
  decoder   [h_i, c_0 .. c_{K-1}] -> causal transformer -> c_0 .. c_{n-1}, EOW (teacher forced).

The loss is cross-entropy over every word's characters and its end-of-word symbol (mean per
symbol); `bits_per_byte` counts the EOW symbols too (what it costs to know where words end).
`byte_logprobs` turns the word model into an exact next-byte distribution,
p(b) = p_cont(b) + p_EOW * p_first_char_of_next_word(b), which `sample` draws from.

Follows the paper: whitespace word boundaries, CLS pooling per word, a word-level transformer,
parallel per-word character decoding conditioned on the word-level state. Simplified: one
decoder-conditioning scheme (the word state is the decoder's first input, as eTok prepends
it), trailing whitespace belongs to the word (so every byte is modelled), long words are cut
into pieces, and all three sub-networks share tokenlab's transformer block (RoPE, SwiGLU).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.generate import sample_logits
from tokenlab.nn.layers import DenseGeneral, Embed, param_with_axes
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

PAD, CLS = 256, 257        # character-embedding ids beyond the bytes
EOW = 256                  # decoder output id of end-of-word
WHITESPACE = (9, 10, 13, 32)


@dataclasses.dataclass(frozen=True)
class LearnYourTokensConfig:
  vocab_size: int = 256    # bytes
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int = 0         # 0 = 4 * d_model rounded like transformer_lm
  encoder_layers: int = 1
  main_layers: int = 2
  decoder_layers: int = 1
  max_word_len: int = 12   # K: characters per word slot (longer words are cut)
  max_words: float = 0.35  # word slots per row, as a fraction of the row's bytes

  @property
  def hidden(self) -> int:
    return self.mlp_dim or 64 * math.ceil(8 * self.d_model / 3 / 64)

  def word_slots(self, seq_len: int) -> int:
    return max(2, math.ceil(self.max_words * seq_len))


def is_whitespace(x: jax.Array) -> jax.Array:
  return jnp.isin(x, jnp.asarray(WHITESPACE, x.dtype))


def segment_words(tokens: jax.Array, segment_ids: jax.Array | None, max_len: int,
                  extra_starts: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Bytes (B, L) -> (word id (B, L), position of the byte in its word (B, L)), int32."""
  b, n = tokens.shape
  ws = is_whitespace(tokens)
  first = jnp.zeros((b, 1), bool).at[:, 0].set(True)
  start = (~ws) & jnp.concatenate([first, ws[:, :-1]], axis=1)
  start = start | jnp.broadcast_to(jnp.arange(n) == 0, (b, n))
  if segment_ids is not None:
    start = start | jnp.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  if extra_starts is not None:
    start = start | extra_starts
  idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  pos = idx - jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
  start = start | (pos % max_len == 0)
  pos = idx - jax.lax.cummax(jnp.where(start, idx, 0), axis=1)
  wid = jnp.cumsum(start.astype(jnp.int32), axis=1) - 1
  return wid, pos


def gather_words(tokens: jax.Array, wid: jax.Array, pos: jax.Array, num_words: int,
                 max_len: int, segment_ids: jax.Array | None = None):
  """Scatter bytes into word slots: chars (B, W, K) (PAD-filled), lengths (B, W), word
  segment (B, W) (0 = empty slot)."""
  b = tokens.shape[0]
  rows = jnp.arange(b)[:, None]
  chars = jnp.full((b, num_words, max_len), PAD, jnp.int32).at[rows, wid, pos].set(
      tokens.astype(jnp.int32), mode="drop")
  lengths = jnp.zeros((b, num_words), jnp.int32).at[rows, wid].add(1, mode="drop")
  seg = jnp.ones_like(tokens) if segment_ids is None else segment_ids
  wseg = jnp.zeros((b, num_words), jnp.int32).at[rows, wid].max(seg.astype(jnp.int32),
                                                                mode="drop")
  return chars, lengths, wseg


class LYTModule(nn.Module):
  cfg: LearnYourTokensConfig

  def setup(self):
    c = self.cfg
    block = dict(num_heads=c.num_heads, head_dim=c.d_model // c.num_heads, mlp_dim=c.hidden)
    self.char_embed = Embed(c.vocab_size + 2, c.d_model)
    self.encoder = TransformerStack(c.encoder_layers, dict(block, causal=False))
    self.main = TransformerStack(c.main_layers, dict(block, causal=True))
    self.decoder = TransformerStack(c.decoder_layers, dict(block, causal=True))
    self.head = DenseGeneral((c.vocab_size + 1,), ("embed", "vocab"))
    self.start = param_with_axes(self, "start", nn.initializers.normal(0.02), (c.d_model,),
                                 ("embed",), jnp.float32)

  def encode_words(self, chars: jax.Array) -> jax.Array:
    """chars (B, W, K) -> word vectors (B, W, D): CLS pooling, padding masked."""
    b, w, k = chars.shape
    seq = jnp.concatenate([jnp.full((b, w, 1), CLS, jnp.int32), chars], axis=-1)
    seq = seq.reshape(b * w, k + 1)
    seg = (seq != PAD).astype(jnp.int32)
    out = self.encoder(self.char_embed(seq), None, seg)
    return out[:, 0].reshape(b, w, -1)

  def contextualize(self, vectors: jax.Array, wseg: jax.Array) -> jax.Array:
    """Word vectors (B, W, D) -> h (B, W, D); h_i sees words < i of its document."""
    start = self.start
    shifted = jnp.concatenate([jnp.zeros_like(vectors[:, :1]), vectors[:, :-1]], axis=1)
    prev_seg = jnp.concatenate([jnp.full_like(wseg[:, :1], -1), wseg[:, :-1]], axis=1)
    doc_start = (prev_seg != wseg)[..., None]
    x = jnp.where(doc_start, start.astype(vectors.dtype), shifted)
    return self.main(x, None, wseg)

  def decode(self, h: jax.Array, chars: jax.Array) -> jax.Array:
    """h (B, W, D), chars (B, W, K) -> logits (B, W, K + 1, 257) of c_0 .. c_{K-1}, EOW."""
    b, w, k = chars.shape
    x = jnp.concatenate([h[:, :, None], self.char_embed(chars)], axis=2)
    out = self.decoder(x.reshape(b * w, k + 1, -1))
    return self.head(out).reshape(b, w, k + 1, -1)

  def __call__(self, chars: jax.Array, wseg: jax.Array) -> tuple[jax.Array, jax.Array]:
    v = self.encode_words(chars)
    h = self.contextualize(v, wseg)
    return self.decode(h, chars), v


@register_method("learn_your_tokens")
class LearnYourTokens(Method):
  """Word-pooled byte LM (eTok); see the module docstring."""
  Config = LearnYourTokensConfig

  def __init__(self, config: LearnYourTokensConfig):
    super().__init__(config)
    self.module = LYTModule(config)

  def words(self, tokens, segment_ids=None, extra_starts=None):
    c = self.config
    wid, pos = segment_words(tokens, segment_ids, c.max_word_len, extra_starts)
    chars, lengths, wseg = gather_words(tokens, wid, pos, c.word_slots(tokens.shape[1]),
                                        c.max_word_len, segment_ids)
    return wid, pos, chars, lengths, wseg

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    _, _, chars, _, wseg = self.words(batch["inputs"], batch.get("segment_ids"))
    return self.module.init(rng, chars, wseg)["params"]

  def word_logits(self, params: PyTree, tokens: jax.Array, segment_ids=None):
    """Teacher-forced decoder logits (B, W, K+1, 257), chars, lengths, word segments."""
    wid, pos, chars, lengths, wseg = self.words(tokens, segment_ids)
    logits, _ = self.module.apply({"params": params}, chars, wseg)
    return logits, chars, lengths, wseg, wid

  @staticmethod
  def word_targets(chars: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Targets (B, W, K+1): the characters then EOW; mask of the symbols that count."""
    k = chars.shape[-1]
    j = jnp.arange(k + 1)
    padded = jnp.concatenate([chars, jnp.full_like(chars[..., :1], PAD)], axis=-1)
    targets = jnp.where(j == lengths[..., None], EOW, padded)
    mask = (j <= lengths[..., None]) & (lengths[..., None] > 0)
    return jnp.where(mask, targets, 0), mask.astype(jnp.float32)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    tokens = batch["inputs"]
    seg = batch.get("segment_ids")
    logits, chars, lengths, wseg, wid = self.word_logits(params, tokens, seg)
    if seg is not None:
      lengths = jnp.where(wseg > 0, lengths, 0)
    targets, mask = self.word_targets(chars, lengths)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    total, count = jnp.sum(nll * mask), jnp.sum(mask)
    loss = total / jnp.maximum(count, 1.0)
    correct = (jnp.argmax(logits, -1) == targets) | (mask == 0)
    word_ok = jnp.all(correct, axis=-1) & (lengths > 0)
    n_words = jnp.sum(lengths > 0)
    real = tokens.shape[0] * tokens.shape[1] if seg is None else jnp.sum(seg > 0)
    n_bytes = jnp.sum(lengths)
    metrics = {
        "loss": Average.of(total, count),
        "accuracy": Average.of(jnp.sum(correct * mask), count),
        "bits_per_byte": Average.of(total / math.log(2.0), n_bytes),
        "word_exact_match": Average.of(jnp.sum(word_ok), n_words),
        "bytes_per_word": Average.of(n_bytes, n_words),
        "word_overflow": Average.of(real - n_bytes, real),
    }
    return loss, metrics

  def byte_logprobs(self, params: PyTree, tokens: jax.Array, valid_len: jax.Array
                    ) -> jax.Array:
    """Next-byte log-probabilities (B, L, 256): row t predicts byte t + 1, for t < valid_len.

    Bytes at and after `valid_len` (B,) are ignored (a word boundary is forced there, so the
    last real word is encoded from its bytes so far): p(b) = p_cont(b) + p_EOW p_next(b).
    """
    c = self.config
    b, n = tokens.shape
    idx = jnp.arange(n)
    extra = idx[None, :] == valid_len[:, None]
    wid, pos, chars, lengths, wseg = self.words(tokens, None, extra)
    logits, _ = self.module.apply({"params": params}, chars, wseg)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)     # (B, W, K+1, 257)
    w = lp.shape[1]
    rows = jnp.arange(b)[:, None]
    at = lp[rows, jnp.clip(wid, 0, w - 1), jnp.minimum(pos + 1, c.max_word_len)]  # (B, L, 257)
    full = (pos + 1 >= c.max_word_len)[..., None]
    cont = jnp.where(full, -jnp.inf, at[..., :256])
    eow = jnp.where(full, 0.0, at[..., 256:])
    nxt = lp[rows, jnp.clip(wid + 1, 0, w - 1), 0, :256]
    nxt = nxt - jax.scipy.special.logsumexp(nxt, axis=-1, keepdims=True)  # a word is nonempty
    return jnp.logaddexp(cont, eow + nxt)

  def sample(self, params: PyTree, prompt: jax.Array, prompt_len: jax.Array, rng: jax.Array,
             *, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
    """Continues each (batch, length) byte buffer after its prompt_len bytes, byte by byte."""
    b, n = prompt.shape
    prompt_len = jnp.broadcast_to(jnp.asarray(prompt_len), (b,))

    def step(t, carry):
      tokens, rng = carry
      rng, sub = jax.random.split(rng)
      valid = jnp.full((b,), t)
      logp = self.byte_logprobs(params, tokens, valid)[:, t - 1]
      new = sample_logits(logp, sub, temperature=temperature, top_k=top_k)
      tokens = tokens.at[:, t].set(jnp.where(t < prompt_len, tokens[:, t],
                                             new.astype(tokens.dtype)))
      return tokens, rng

    start = int(jnp.min(prompt_len)) if not isinstance(prompt_len, jax.core.Tracer) else 1
    tokens, _ = jax.lax.fori_loop(max(start, 1), n, step, (prompt, rng))
    return tokens
