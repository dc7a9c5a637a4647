"""Lexinvariant language models (Huang, Wu, Wang, Chen, Huang, Zhou; arXiv 2305.16349).

A lexinvariant LM has no fixed token embeddings. For every sequence a fresh matrix
E ~ N(0, I) of shape (vocab, d_model) is drawn; a token is embedded as its row of E (the same
vector everywhere in that sequence, a different one in the next sequence), and the output
logits use the same E (tied: logit_v = <h, E_v> / sqrt(d)). The model can therefore only use
co-occurrence and repetition *within the context* to tell tokens apart: its loss is exactly
invariant to renaming the vocabulary (a permutation pi applied to a sequence, with E' = E o
pi^-1), and in distribution invariant to a fresh substitution cipher per sequence.

What follows the paper exactly: Gaussian per-sequence embeddings shared by input and output,
fresh draws per sequence and per training step, an otherwise standard decoder-only
transformer. Simplified: (1) "sequence" = one row of the batch: rows packed with several
documents (segment ids) share one E; the reproduction feeds one document per row. (2) The
output uses E / sqrt(d) (unit-scale logits at init) rather than E; the final RMSNorm's learned
scale sets the temperature. (3) The paper's regularised variants (mixing fixed and random
embeddings) are not built; the switch `lexinvariant=False` gives the standard LM of the same
architecture (a learned table with the same N(0, 1) init and the same tied, 1/sqrt(d) output).

Also here: `MarkovSource`, the order-2 Markov source over a small vocabulary that the
reproduction trains on (the paper's toy checks in papers/methods-language.md), with its exact
entropy rate, and `SourceIterator`, a checkpointable batch iterator over it, optionally under
a fresh substitution cipher per sequence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.synthetic import StepIterator
from tokenlab.method import Batch, Method, PyTree
from tokenlab.methods.transformer_lm import lm_loss
from tokenlab.nn.generate import sample_autoregressive
from tokenlab.nn.layers import Embed, RMSNorm
from tokenlab.nn.transformer import TransformerBlock
from tokenlab.registry import register_method


@dataclasses.dataclass(frozen=True)
class LexinvariantConfig:
  vocab_size: int = 32
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 0             # 0 = 4 * d_model rounded to SwiGLU's 2/3, multiple of 64
  rope_theta: float = 10000.0
  lexinvariant: bool = True    # False: the standard LM (learned table) of the same shape

  @property
  def hidden(self) -> int:
    return self.mlp_dim or 64 * math.ceil(8 * self.d_model / 3 / 64)


class LexinvariantModule(nn.Module):
  """(tokens (B, L), table (B, V, d) or None) -> (logits (B, L, V), per-layer residuals).

  With `table` the token embeddings are that per-row table (lexinvariant); with None they
  come from a learned `Embed` (standard LM). Output logits are tied to the same embeddings.
  """
  cfg: LexinvariantConfig

  @nn.compact
  def __call__(self, tokens, table=None, positions=None, segment_ids=None):
    cfg = self.cfg
    if table is None:
      embed = Embed(cfg.vocab_size, cfg.d_model, embedding_init=nn.initializers.normal(1.0),
                    name="embed")
      x = embed(tokens)
      out_table = lambda h: embed.attend(h)
    else:
      x = jax.vmap(lambda t, ids: jnp.take(t, ids, axis=0))(table, tokens)
      out_table = lambda h: jnp.einsum("bld,bvd->blv", h, table.astype(h.dtype))
    residuals = []
    for i in range(cfg.num_layers):
      x = TransformerBlock(num_heads=cfg.num_heads, head_dim=cfg.d_model // cfg.num_heads,
                           mlp_dim=cfg.hidden, causal=True, rope_theta=cfg.rope_theta,
                           name=f"layer_{i}")(x, positions, segment_ids)
      residuals.append(x)
    h = RMSNorm(name="final_norm")(x)
    return out_table(h) / math.sqrt(cfg.d_model), residuals


@register_method("lexinvariant")
class LexinvariantLM(Method):
  """Next-token prediction with per-sequence random Gaussian token embeddings."""
  Config = LexinvariantConfig

  def __init__(self, config: LexinvariantConfig):
    super().__init__(config)
    self.module = LexinvariantModule(config)

  def embeddings(self, rng: jax.Array, batch_size: int) -> jax.Array | None:
    """One fresh E ~ N(0, I) of shape (vocab, d_model) per row: (B, V, d); None if standard."""
    if not self.config.lexinvariant:
      return None
    c = self.config
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch_size))
    return jax.vmap(lambda k: jax.random.normal(k, (c.vocab_size, c.d_model)))(keys)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    table = self.embeddings(rng, batch["inputs"].shape[0])
    return self.module.init(rng, batch["inputs"], table, batch.get("positions"),
                            batch.get("segment_ids"))["params"]

  def apply(self, params: PyTree, tokens: jax.Array, table: jax.Array | None,
            positions=None, segment_ids=None) -> tuple[jax.Array, list[jax.Array]]:
    """(logits, per-layer residual streams) for explicit embeddings (None = learned)."""
    return self.module.apply({"params": params}, tokens, table, positions, segment_ids)

  def logits(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    table = self.embeddings(rng, batch["inputs"].shape[0])
    return self.apply(params, batch["inputs"], table, batch.get("positions"),
                      batch.get("segment_ids"))[0]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    return lm_loss(self.logits(params, batch, rng), batch)

  def sample(self, params: PyTree, prompt: jax.Array, prompt_len: jax.Array, rng: jax.Array,
             *, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
    """Continues each prompt; one embedding draw per row serves the whole continuation."""
    rng_e, rng_s = jax.random.split(rng)
    table = self.embeddings(rng_e, prompt.shape[0])
    logits_fn = lambda tokens: self.apply(params, tokens, table)[0]
    return sample_autoregressive(logits_fn, prompt, prompt_len, rng_s,
                                 temperature=temperature, top_k=top_k)

  def flops_per_token(self, seq_len: int) -> float:
    """6 x matmul parameters (attention, MLP, tied output) + causal attention, fwd + bwd."""
    c = self.config
    per_layer = 4 * c.d_model * c.d_model + 3 * c.d_model * c.hidden
    attention = c.num_layers * 4 * c.d_model * (seq_len + 1) / 2
    return 6.0 * (c.num_layers * per_layer + c.d_model * c.vocab_size) + 3.0 * attention


# --- the reproduction's source ---------------------------------------------------------


class MarkovSource:
  """An order-`order` Markov chain over `vocab` symbols with sparse, skewed transitions.

  Every context (the last `order` symbols) has `branching` possible successors, drawn without
  replacement with Zipf-like weights (so symbols differ in frequency and role: a lexinvariant
  model can tell them apart from their statistics in context), with Dirichlet(1) probabilities.
  Sequences start from the stationary law (approximately: a burn-in of 64 symbols).
  """

  def __init__(self, vocab: int = 32, order: int = 2, branching: int = 4, zipf: float = 1.0,
               seed: int = 1234):
    self.vocab, self.order = vocab, order
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1) ** zipf
    weights = weights[rng.permutation(vocab)]
    self.table = np.zeros((vocab ** order, vocab))
    for ctx in range(vocab ** order):
      succ = rng.choice(vocab, size=branching, replace=False, p=weights / weights.sum())
      self.table[ctx, succ] = rng.dirichlet(np.ones(branching))
    self.cum = np.cumsum(self.table, axis=1)
    self.cum[:, -1] = 1.0

  def sample(self, num: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(num, length) int32 sequences."""
    burn = 64
    x = np.zeros((num, length + burn), np.int64)
    x[:, :self.order] = rng.integers(0, self.vocab, (num, self.order))
    u = rng.random((num, length + burn))
    for t in range(self.order, length + burn):
      ctx = np.zeros(num, np.int64)
      for j in range(self.order, 0, -1):
        ctx = ctx * self.vocab + x[:, t - j]
      x[:, t] = (u[:, t, None] > self.cum[ctx]).sum(axis=1)
    return x[:, burn:].astype(np.int32)

  def entropy_rate(self, iters: int = 500) -> float:
    """Exact entropy rate in nats/symbol from the stationary law over contexts."""
    V, k = self.vocab, self.order
    pi = np.full(V ** k, 1.0 / V ** k)
    for _ in range(iters):
      joint = pi[:, None] * self.table                       # (ctx, next)
      pi = joint.reshape(V, V ** (k - 1), V).sum(axis=0).reshape(-1)
    p = self.table
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    return float(pi @ h)

  def unigram(self, num: int = 200, length: int = 256, seed: int = 0) -> np.ndarray:
    """Empirical symbol frequencies (vocab,)."""
    x = self.sample(num, length, np.random.default_rng(seed))
    return np.bincount(x.reshape(-1), minlength=self.vocab) / x.size


def random_ciphers(rng: np.random.Generator, num: int, vocab: int) -> np.ndarray:
  """(num, vocab) permutations: one fresh substitution cipher per sequence."""
  return np.argsort(rng.random((num, vocab)), axis=1)


class SourceIterator(StepIterator):
  """Checkpointable batches {inputs, targets, loss_mask} of one source sequence per row.

  Batch i depends only on (seed, split, i). With `cipher=True` each row is enciphered with
  its own fresh random permutation (inputs and targets alike); `plain` rows come along under
  `plain_inputs`/`plain_targets` only when `with_plain=True` (for probes, not for training).
  """

  def __init__(self, source: MarkovSource, batch_size: int, seq_len: int, seed: int,
               split: str = "train", cipher: bool = False, num_batches: int | None = None,
               with_plain: bool = False):
    self.source, self.batch_size, self.seq_len, self.seed = source, batch_size, seq_len, seed
    self.split, self.cipher, self.num_batches, self.with_plain = (split, cipher, num_batches,
                                                                  with_plain)
    self.step = 0

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    salt = {"train": 0, "validation": 1, "probe": 2}.get(self.split, 3)
    rng = np.random.default_rng((self.seed, salt, self.step))
    self.step += 1
    x = self.source.sample(self.batch_size, self.seq_len + 1, rng)
    out = {}
    if self.with_plain:
      out["plain_inputs"], out["plain_targets"] = x[:, :-1], x[:, 1:]
    if self.cipher:
      perm = random_ciphers(rng, self.batch_size, self.source.vocab)
      x = np.take_along_axis(perm, x, axis=1).astype(np.int32)
    out.update(inputs=x[:, :-1], targets=x[:, 1:],
               loss_mask=np.ones((self.batch_size, self.seq_len), np.float32))
    return out


def source_from_config(config: Any) -> MarkovSource:
  """The MarkovSource named by an experiment's `config.source`."""
  s = config.source
  return MarkovSource(vocab=s.vocab, order=s.order, branching=s.branching, zipf=s.zipf,
                      seed=s.seed)


def iterator_fns(config: Any, cipher: bool = False):
  """(train_iter_fn, eval_iter_fn) over config.source for `tokenlab.train.loop.train`."""
  source = source_from_config(config)
  seq = config.data.seq_len

  def train_fn(batch_size, seed):
    return SourceIterator(source, batch_size, seq, seed, "train", cipher)

  def eval_fn(batch_size, seed):
    return SourceIterator(source, batch_size, seq, seed, "validation", cipher,
                          num_batches=config.train.eval_batches or 10)
  return train_fn, eval_fn
