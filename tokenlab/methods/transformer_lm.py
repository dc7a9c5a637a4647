"""Decoder-only transformer language model: tokenlab's baseline method.

A pre-norm transformer with RoPE (Su et al. 2021), RMSNorm (Zhang & Sennrich 2019) and SwiGLU
(Shazeer 2020), as in LLaMA. Attention is dense causal by default; setting `window=(left, 0)`
switches every layer to tokenlab's windowed-attention kernel (O(N*W), e.g. for long context).
Packed rows are handled with segment ids and per-document positions from the data pipeline.

The loss is next-token cross-entropy averaged over unmasked targets; metrics add bits per
byte (exact for any tokenizer: total NLL in bits over the bytes the targets stand for).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.decode import sample_module_cached
from tokenlab.nn.generate import sample_autoregressive
from tokenlab.nn.layers import Embed, DenseGeneral
from tokenlab.nn.losses import token_nll
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method


@dataclasses.dataclass(frozen=True)
class TransformerLMConfig:
  vocab_size: int = 256
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 0        # 0 = num_heads (multi-head); fewer = grouped-query attention
  head_dim: int = 0            # 0 = d_model // num_heads
  mlp_dim: int = 0             # 0 = 4 * d_model rounded to SwiGLU's 2/3 (LLaMA), multiple of 64
  window: tuple | None = None  # (left, right) for windowed attention; None = dense causal
  attention_impl: str = ""     # auto|xla|splash|cudnn|pallas_*; "" = auto (nn/attention.py)
  rope_theta: float = 10000.0
  tie_embeddings: bool = False
  scan_layers: bool = False
  remat: str = "none"          # none | full | dots

  @property
  def heads_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def hidden(self) -> int:
    return self.mlp_dim or 64 * math.ceil(8 * self.d_model / 3 / 64)


class TransformerLMModule(nn.Module):
  """tokens (batch, length) -> logits (batch, length, vocab).

  `decode=True`: the same parameters, with a key/value cache for tokenlab/nn/decode.py.
  """
  cfg: TransformerLMConfig
  decode: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None,
               prefix: jax.Array | None = None) -> jax.Array:
    """`prefix` (batch, P, d_model): embeddings read before the tokens' own (e.g. a compressed
    far context, methods/extensible_tokenization.py); logits then cover P + length positions."""
    cfg = self.cfg
    embed = Embed(cfg.vocab_size, cfg.d_model, name="embed")
    x = embed(tokens)
    if prefix is not None:
      x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.heads_dim, mlp_dim=cfg.hidden,
                 num_kv_heads=cfg.num_kv_heads or None, causal=True,
                 window=tuple(cfg.window) if cfg.window else None,
                 attention_impl=cfg.attention_impl or None, rope_theta=cfg.rope_theta)
    x = TransformerStack(cfg.num_layers, block, scan=cfg.scan_layers, remat=cfg.remat,
                         decode=self.decode, name="decoder")(x, positions, segment_ids)
    if cfg.tie_embeddings:
      return embed.attend(x)
    return DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(x)


@register_method("transformer_lm")
class TransformerLM(Method):
  """Next-token prediction with a decoder-only transformer."""
  Config = TransformerLMConfig

  def __init__(self, config: TransformerLMConfig):
    super().__init__(config)
    self.module = TransformerLMModule(config)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    return self.module.init(rng, batch["inputs"], batch.get("positions"),
                            batch.get("segment_ids"))["params"]

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    return self.module.apply({"params": params}, batch["inputs"], batch.get("positions"),
                             batch.get("segment_ids"))

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    return lm_loss(self.logits(params, batch), batch)

  def sample(self, params: PyTree, prompt: jax.Array, prompt_len: jax.Array, rng: jax.Array,
             *, temperature: float = 1.0, top_k: int = 0, cached: bool = True) -> jax.Array:
    """Continues each prompt to the end of the (batch, length) buffer.

    Cached (tokenlab/nn/decode.py: prefill, then one token per step with a key/value cache
    as long as the buffer; dense, windowed, GQA and scan_layers configs alike) when the
    module is this class's own; subclasses that swap `self.module`, and `cached=False`, use
    the uncached `sample_autoregressive` (the same tokens, O(length) times the compute).
    """
    if cached and type(self.module) is TransformerLMModule:
      return sample_module_cached(self.module.clone(decode=True), params, prompt, prompt_len,
                                  rng, temperature=temperature, top_k=top_k)
    logits_fn = lambda tokens: self.module.apply({"params": params}, tokens)
    return sample_autoregressive(logits_fn, prompt, prompt_len, rng, temperature=temperature,
                                 top_k=top_k)

  def flops_per_token(self, seq_len: int) -> float:
    """6 x matmul parameters + attention scores/values over the attended context (causal:
    on average (seq_len + 1) / 2 keys, or the window if smaller), forward + backward."""
    c = self.config
    kv = c.num_kv_heads or c.num_heads
    per_layer = (c.d_model * c.heads_dim * (2 * c.num_heads + 2 * kv)
                 + 3 * c.d_model * c.hidden)
    matmul_params = c.num_layers * per_layer + c.d_model * c.vocab_size
    context = (seq_len + 1) / 2
    if c.window:
      context = min(context, c.window[0] + 1)
    attention = c.num_layers * 4 * c.num_heads * c.heads_dim * context
    return 6.0 * matmul_params + 3.0 * attention


def lm_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, Any]]:
  """Masked next-token cross-entropy and its metrics (shared by every LM-style method).

  logits (batch, length, vocab); batch has targets, loss_mask and optionally target_bytes.
  """
  nll = token_nll(logits, batch["targets"])
  mask = batch.get("loss_mask", jnp.ones_like(nll)).astype(jnp.float32)
  total, count = jnp.sum(nll * mask), jnp.sum(mask)
  loss = total / jnp.maximum(count, 1.0)
  correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
  metrics = {"loss": Average.of(total, count),
             "accuracy": Average.of(jnp.sum(correct * mask), count)}
  if "target_bytes" in batch:
    metrics["bits_per_byte"] = Average.of(total / math.log(2.0),
                                          jnp.sum(batch["target_bytes"] * mask))
  return loss, metrics
