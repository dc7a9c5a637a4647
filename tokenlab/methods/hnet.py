"""H-Net: dynamic chunking for end-to-end hierarchical byte-level language modelling.

Hwang, Wang & Gu, "Dynamic Chunking for End-to-End Hierarchical Sequence Modeling"
(arXiv 2507.07955, 2025); reference code goombalab/hnet (hnet/modules/dc.py, hnet/models/hnet.py).

One stage of the hierarchy, over a sequence x of bytes (stage 1) or of chunks (stage 2):

  h = encoder(x)                                  windowed-attention transformer blocks
  p_t = (1 - cos(W_q h_{t-1}, W_k h_t)) / 2       routing (W_q, W_k identity-initialised)
  b_t = p_t > 1/2                                 boundaries (b_0 = 1, and at doc starts)
  chunks = h at the boundary positions            `merge_by_boundaries` with weights b
  z = inner(chunks)                               the next stage, or the main network
  zbar_j = p_j z_j + (1 - p_j) zbar_{j-1}         dechunk smoothing (EMA), then `unmerge`
  y = decoder(zbar[cumsum(b) - 1] * STE(c) + W_r h)   c_t = p_t if b_t else 1 - p_t
  loss = NLL + alpha * sum over stages of the ratio loss with target N

Follows the paper exactly: the routing module (cosine of projected adjacent states, identity
init, p_0 = 1), chunking by gathering the boundary positions (a chunk is represented by the
encoder state at its first byte), the EMA dechunk with p clamped to [1e-4, 1 - 1e-4], the
straight-through confidence c with STE forward value 1, the zero-initialised residual
projection, the ratio loss (alpha = 0.03 by default), one or two stages.

Simplified, and why:
- Encoders/decoders are windowed-attention transformer blocks (tokenlab's kernel), not the
  paper's Mamba-2 layers: no SSM kernel here, and a short causal window plays the same
  role (cheap, local mixing over bytes). The main network is a dense causal transformer (the
  paper's is a transformer too).
- Every stage has the same width d_model (the paper widens inner stages and pads the
  dimension with a learned vector); the chunk sequence is padded to a static
  `max_chunks * length` (jit needs static shapes; the reference uses variable-length
  packing). Bytes of chunks past that budget get a zero main-network output (they still get
  the residual); the metric `chunk_overflow` counts them so it never happens silently.
- Packed documents: p = 1 at every document start (not only at t = 0), and the EMA restarts
  there, so packed documents never see one another.
- No learning-rate multipliers per stage (the paper scales outer-stage LRs up).

Causality: b_t depends on bytes <= t, a chunk starting at t carries the encoder state at t
(bytes <= t), the main network is causal over chunks and position t reads the chunk that
started at or before t, so logits at t never depend on bytes after t (tests/test_hnet.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.methods.transformer_lm import lm_loss
from tokenlab.nn import dynamic_chunking as dc
from tokenlab.nn.generate import sample_autoregressive
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method


@dataclasses.dataclass(frozen=True)
class HNetConfig:
  vocab_size: int = 256
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int = 0               # 0 = SwiGLU's 8/3 d_model rounded up to a multiple of 64
  stages: int = 1                # levels of dynamic chunking (1 or 2)
  target_ratio: tuple = (5.0,)   # N per stage (paper: 1-stage N=6; 2-stage (3, 3))
  encoder_layers: int = 1        # per stage, at that stage's resolution
  decoder_layers: int = 1
  main_layers: int = 2           # the innermost (chunk-level) network
  window: int = 32               # left attention window of encoders/decoders (causal)
  max_chunks: float = 0.5        # chunk slots per stage, as a fraction of its input length
  ratio_loss_weight: float = 0.03  # alpha
  smoothing: bool = True         # the dechunk EMA (False: the paper's "w/o smoothing")
  attention_impl: str = ""       # auto|xla|splash|cudnn|pallas_*; "" = auto (nn/attention.py)
  rope_theta: float = 10000.0

  @property
  def hidden(self) -> int:
    return self.mlp_dim or 64 * math.ceil(8 * self.d_model / 3 / 64)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  def validate(self) -> None:
    from tokenlab.errors import ConfigError
    if self.stages not in (1, 2):
      raise ConfigError(f"model.stages must be 1 or 2, got {self.stages}")
    if len(self.target_ratio) != self.stages:
      raise ConfigError(f"model.target_ratio needs one N per stage ({self.stages}), got "
                        f"{self.target_ratio}; e.g. --config.model.target_ratio='(3.0, 3.0)'")
    if any(n <= 1 for n in self.target_ratio):
      raise ConfigError(f"model.target_ratio entries must be > 1, got {self.target_ratio}")
    if not 0 < self.max_chunks <= 1:
      raise ConfigError(f"model.max_chunks is a fraction in (0, 1], got {self.max_chunks}")
    if self.d_model % self.num_heads:
      raise ConfigError(f"model.d_model={self.d_model} must be divisible by "
                        f"num_heads={self.num_heads}")


def _identity(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


class Stage(nn.Module):
  """One level of the hierarchy; the innermost level is the main network."""
  cfg: HNetConfig
  level: int

  def _block(self, window: int | None) -> dict:
    c = self.cfg
    return dict(num_heads=c.num_heads, head_dim=c.head_dim, mlp_dim=c.hidden, causal=True,
                window=(window, 0) if window else None,
                attention_impl=c.attention_impl or None, rope_theta=c.rope_theta)

  @nn.compact
  def __call__(self, x, positions, segment_ids, valid):
    """x (B, L, D) -> (B, L, D) and a list of per-stage routing stats (outer first)."""
    c = self.cfg
    if self.level == c.stages:
      return TransformerStack(c.main_layers, self._block(None), name="main")(
          x, positions, segment_ids), []
    h = TransformerStack(c.encoder_layers, self._block(c.window), name="encoder")(
        x, positions, segment_ids)
    residual = DenseGeneral((c.d_model,), ("embed", "mlp"), kernel_init=nn.initializers.zeros,
                            name="residual_proj")(h.astype(jnp.float32))
    q = DenseGeneral((c.d_model,), ("embed", "mlp"), kernel_init=_identity, name="q_proj")(h)
    k = DenseGeneral((c.d_model,), ("embed", "mlp"), kernel_init=_identity, name="k_proj")(h)
    length = x.shape[1]
    doc_start = positions == 0
    p = dc.boundary_probs(q, k, doc_start)
    b = dc.boundaries(p, valid | doc_start)
    m = max(1, math.ceil(c.max_chunks * length))
    ch = dc.chunk(h, b, p, positions, segment_ids, m)
    z, inner_stats = Stage(c, self.level + 1, name="inner")(
        ch.x, ch.positions, ch.segment_ids, ch.valid & (ch.segment_ids > 0))
    up = dc.dechunk(z, ch.p, ch.group_ids, smoothing=c.smoothing, reset=ch.positions == 0)
    conf = jnp.where(b, p, 1.0 - p)
    y = up.astype(jnp.float32) * dc.ste_ones(conf)[..., None] + residual
    y = TransformerStack(c.decoder_layers, self._block(c.window), name="decoder")(
        y.astype(x.dtype), positions, segment_ids)
    loss, f, g = dc.ratio_loss(b, p, c.target_ratio[self.level], valid)
    vf = valid.astype(jnp.float32)
    stats = dict(ratio_loss=loss, F=f, G=g,
                 inputs=jnp.sum(vf), chunks=jnp.sum(b.astype(jnp.float32) * vf),
                 overflow=jnp.sum(vf * (ch.group_ids >= m)),
                 boundaries=b, probs=p)
    return y, [stats] + inner_stats


class HNetModule(nn.Module):
  """bytes (B, L) -> logits (B, L, vocab) and routing stats per stage."""
  cfg: HNetConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None):
    c = self.cfg
    bsz, length = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
    if segment_ids is None:
      segment_ids = jnp.ones((bsz, length), jnp.int32)
    x = Embed(c.vocab_size, c.d_model, name="embed")(tokens)
    y, stats = Stage(c, 0, name="stage_0")(x, positions, segment_ids, segment_ids > 0)
    logits = DenseGeneral((c.vocab_size,), ("embed", "vocab"), name="lm_head")(y)
    return logits, stats


@register_method("hnet")
class HNet(Method):
  """Byte-level LM with learned (dynamic) chunking; see the module docstring."""
  Config = HNetConfig

  def __init__(self, config: HNetConfig):
    config.validate()
    super().__init__(config)
    self.module = HNetModule(config)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    return self.module.init(rng, batch["inputs"], batch.get("positions"),
                            batch.get("segment_ids"))["params"]

  def apply(self, params: PyTree, batch: Batch):
    return self.module.apply({"params": params}, batch["inputs"], batch.get("positions"),
                             batch.get("segment_ids"))

  def boundaries(self, params: PyTree, tokens: jax.Array) -> list[jax.Array]:
    """Per stage, the (B, L_stage) boundary masks and probabilities for plain byte rows."""
    _, stats = self.module.apply({"params": params}, tokens)
    return [(s["boundaries"], s["probs"]) for s in stats]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    logits, stats = self.apply(params, batch)
    nll, metrics = lm_loss(logits, batch)
    ratio = sum(s["ratio_loss"] for s in stats)
    metrics["nll"] = metrics["loss"]
    metrics["ratio_loss"] = Average.of(ratio, 1.0)
    # bytes per chunk at the innermost level, and per stage
    metrics["compression_ratio"] = Average.of(stats[0]["inputs"], stats[-1]["chunks"])
    for i, s in enumerate(stats):
      metrics[f"stage{i + 1}/ratio"] = Average.of(s["inputs"], s["chunks"])
      metrics[f"stage{i + 1}/boundary_prob"] = Average.of(s["G"], 1.0)
      metrics[f"stage{i + 1}/chunk_overflow"] = Average.of(s["overflow"], s["inputs"])
    total = nll + self.config.ratio_loss_weight * ratio
    metrics["loss"] = Average.of(total, 1.0)
    return total, metrics

  def sample(self, params: PyTree, prompt: jax.Array, prompt_len: jax.Array, rng: jax.Array,
             *, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
    """Continues each prompt to the end of the (batch, length) buffer, a byte at a time.

    The whole buffer is re-run each step (no recurrent state): exact because the model is
    causal, boundaries included.
    """
    logits_fn = lambda tokens: self.module.apply({"params": params}, tokens)[0]
    return sample_autoregressive(logits_fn, prompt, prompt_len, rng, temperature=temperature,
                                 top_k=top_k)

  def flops_per_byte(self, seq_len: int, ratios: tuple | None = None) -> float:
    """Training FLOPs (forward + backward) per byte: 6 x matmul params + attention, each
    stage's layers weighted by the fraction of positions it sees.

    `ratios` (N per stage) gives the compute at that compression (default: the targets, what
    the paper reports); `flops_per_token` gives what is executed with the padded chunk
    slots (`max_chunks` per stage).
    """
    c = self.config
    d = c.d_model
    layer = 4 * d * d + 3 * d * c.hidden
    attn = lambda ctx: 4 * d * ctx  # scores + values, all heads
    ratios = tuple(ratios or c.target_ratio)
    total, frac, length = 0.0, 1.0, float(seq_len)
    for i in range(c.stages):
      ctx = min((length + 1) / 2, c.window + 1)
      per_pos = ((c.encoder_layers + c.decoder_layers) * (6 * layer + 3 * attn(ctx))
                 + 6 * 3 * d * d)  # routing q, k and the residual projection
      total += frac * per_pos
      frac /= ratios[i]
      length /= ratios[i]
    total += frac * c.main_layers * (6 * layer + 3 * attn((length + 1) / 2))
    return total + 6 * d * c.vocab_size

  def flops_per_token(self, seq_len: int) -> float:
    """Executed FLOPs per byte: the main network runs over all padded chunk slots."""
    slots = tuple(1.0 / self.config.max_chunks for _ in range(self.config.stages))
    return self.flops_per_byte(seq_len, slots)
