"""MergeDNA: a DNA model that learns its own tokens by local token merging.

Paper: "MergeDNA: Context-aware Genome Modeling with Dynamic Tokenization through Token
Merging" (arXiv 2511.14806, AAAI 2026). No official code; the loss follows the unofficial
reproduction PLBFischer/MergeDNA (read, not copied).

Model (bases (B, N) -> logits over bases (B, N, vocab)):

  local encoder   `merge_layers` x [windowed-attention block (window `window`) then
                  `local_window_merge` (the token_merge kernel): in each window of `window`
                  tokens the `merge_r` most similar disjoint adjacent pairs merge, size-weighted;
                  with `merge_scope="row"` the row merges as many pairs in all, the most
                  similar of the whole row, so each window's count follows the data
                  (`row_budget_merge`); no merge crosses a window either way]
                  -> M local tokens, and the source map: `group_ids` (B, N) base -> token,
                  which is the paper's source matrix S (S[j, i] = 1 iff group_ids[j] = i)
  latent encoder  full-attention transformer over the M tokens (RoPE at each token's mean
                  base position)
  latent decoder  full-attention transformer over the M tokens
  local decoder   `unmerge` (S^T Z: every base gets its token's vector) + windowed-attention
                  blocks at base level -> logits

Losses (the paper's Eq. 8, as in the reproduction):

  L = L_MTR + latent_mtr_weight * L_MTR(latent) + L_AMTM
  * MTR (Merged Token Reconstruction): reconstruct every base from the merged tokens (the
    merging is the bottleneck: no base-level skip connection into the decoder).
  * latent MTR: the local encoder's output is frozen (stop_gradient); the latent encoder's
    output is merged again globally (ToMe `bipartite_soft_matching` + `merge_tokens`) to
    K = latent_keep * M tokens, decoded and unmerged to bases.
  * AMTM (Adaptive Masked Token Modeling): K bases are masked, drawn without replacement
    (Gumbel top-k) with P(base j) ~ 1 / g^2 where g is the size in bases of the latent group
    holding j, so bases in small (informative) groups are masked more; the masked sequence
    runs through the whole model and the loss is on masked bases only.

`objective="mlm"` instead trains plain masked-LM (uniformly masked bases, `mask_rate`, loss on
them only); `tokenizer="kmer"` replaces the learned merges by fixed non-overlapping k-mers
(`merge_by_boundaries` after the first block, same depth): the two baselines of the repro.

Follows the paper: the four-part architecture, windowed local merging (no merge crosses a
window), unmerge through the source map, the three loss terms and the 1/g^2 mask sampling.
Simplified: merge decisions use the cosine similarity of the hidden states and carry no
gradient (ToMe style, as the kernel does; the paper calls its merging differentiable through
the size-weighted averages, which is what gets gradients here too); no proportional
attention; one document per row (the repro trains with seq_len = window length - 1, so merges
never straddle packed documents); bases are byte ids (vocab 256), mask id 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.kernels import local_window_merge, merge_by_boundaries, unmerge
from tokenlab.kernels.token_merge import bipartite_soft_matching, merge_tokens
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.layers import DenseGeneral, Embed, RMSNorm
from tokenlab.nn.losses import token_nll
from tokenlab.nn.transformer import TransformerBlock, TransformerStack
from tokenlab.registry import register_method

MASK_ID = 0  # never a base byte
REGIONS = ("background", "repeat", "motif")


@dataclasses.dataclass(frozen=True)
class MergeDNAConfig:
  vocab_size: int = 256
  d_model: int = 64
  num_heads: int = 4
  mlp_dim: int = 0                 # 0 = 4 * d_model rounded like transformer_lm
  window: int = 16                 # local attention window and merge window (tokens)
  merge_layers: int = 3            # local encoder blocks, each followed by a merge
  merge_r: int = 6                 # pairs merged per window per layer (merge_scope=window)
  merge_scope: str = "window"      # window: merge_r pairs in every window (the reproduction's
                                   # fixed budget) | row: the row's merge_r * windows pairs,
                                   # most similar first, so a window may merge 0..all of its
                                   # pairs (a per-window budget set by the data)
  tokenizer: str = "learned"       # learned | kmer (fixed k-mers, baseline)
  kmer: int = 4
  latent_encoder_layers: int = 2
  latent_decoder_layers: int = 1
  local_decoder_layers: int = 1
  objective: str = "mergedna"      # mergedna (MTR + latent MTR + AMTM) | mlm (baseline)
  latent_keep: float = 0.5         # K = latent_keep * M tokens after latent merging
  latent_mtr_weight: float = 0.25
  mask_rate: float = 0.15          # objective=mlm: fraction of bases masked
  attention_impl: str = ""

  @property
  def hidden(self) -> int:
    return self.mlp_dim or 64 * math.ceil(8 * self.d_model / 3 / 64)

  def num_tokens(self, n: int) -> int:
    """M, the local tokens of a length-n row (static)."""
    if self.tokenizer == "kmer":
      return -(-n // self.kmer)
    from tokenlab.kernels.token_merge.reference import window_r
    for _ in range(self.merge_layers):
      n -= sum(window_r(n, self.window, self.merge_r))
    return n


def _group_mean(values: jax.Array, gid: jax.Array, weights: jax.Array, m: int) -> jax.Array:
  """(B, N) values -> (B, M) weighted mean per group (bookkeeping of positions)."""
  rows = jnp.arange(values.shape[0])[:, None]
  tot = jnp.zeros((values.shape[0], m), jnp.float32).at[rows, gid].add(values * weights,
                                                                       mode="drop")
  w = jnp.zeros((values.shape[0], m), jnp.float32).at[rows, gid].add(weights, mode="drop")
  return tot / jnp.maximum(w, 1e-6)


def row_budget_merge(x: jax.Array, metric: jax.Array, *, window: int, r: int,
                     sizes: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Local merging with a per-window budget that varies with the data.

  Merges as many disjoint adjacent pairs as `local_window_merge` does over the whole row
  (R = sum over windows of min(r, window length // 2), so M = N - R is the same static
  length), but chooses them across the row: pairs are visited by decreasing cosine
  similarity of `metric` (ties: leftmost) and taken when both tokens are free; a pair never
  crosses a window. One window may thus merge none of its pairs and another all of them.
  If the greedy matching stops short of R (rare), the row falls back to (0,1), (2,3), ...
  Same returns as `local_window_merge`: merged (B, M, D) size-weighted means, group_ids
  (B, N), sizes (B, M). Differentiable in x (not in the decisions, as in ToMe).
  """
  from tokenlab.kernels.token_merge import reference as ref
  b, n, _ = x.shape
  total = sum(ref.window_r(n, window, r))
  sizes = jnp.ones((b, n), jnp.float32) if sizes is None else sizes
  if total == 0:
    return x, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)), sizes
  sim = ref.adjacent_similarity(jax.lax.stop_gradient(metric))          # (B, N - 1)
  pair = jnp.arange(n - 1)
  valid = jnp.broadcast_to((pair // window) == ((pair + 1) // window), sim.shape)
  chosen = ref.greedy_window_pairs(sim[:, None], valid[:, None],
                                   jnp.full((b, 1), total, jnp.int32))[:, 0]
  starts = ~jnp.pad(chosen, ((0, 0), (1, 0)))        # token t joins t - 1 if pair t-1 chosen
  m = n - total
  merged, gid, _ = merge_by_boundaries(x, starts, weights=sizes, max_groups=m)
  rows = jnp.arange(b)[:, None]
  new_sizes = jnp.zeros((b, m), jnp.float32).at[rows, gid].add(sizes, mode="drop")
  return merged, gid, new_sizes


class MergeDNAModule(nn.Module):
  cfg: MergeDNAConfig

  def setup(self):
    c = self.cfg
    half = c.window // 2
    block = dict(num_heads=c.num_heads, head_dim=c.d_model // c.num_heads, mlp_dim=c.hidden,
                 causal=False, attention_impl=c.attention_impl or None)
    self.embed = Embed(c.vocab_size, c.d_model)
    self.local_blocks = [TransformerBlock(**block, window=(half, half))
                         for _ in range(c.merge_layers)]
    self.local_norm = RMSNorm()
    self.latent_encoder = TransformerStack(c.latent_encoder_layers, block)
    self.latent_decoder = TransformerStack(c.latent_decoder_layers, block)
    self.local_decoder = TransformerStack(c.local_decoder_layers,
                                          dict(block, window=(half, half)))
    self.head = DenseGeneral((c.vocab_size,), ("embed", "vocab"))

  def tokenize(self, bases: jax.Array) -> dict[str, jax.Array]:
    """Local encoder: bases (B, N) -> tokens (B, M, D), group_ids (B, N), sizes, positions."""
    c = self.cfg
    b, n = bases.shape
    x = self.embed(bases)
    gid = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    sizes = jnp.ones((b, n), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32), (b, n))
    for i, blk in enumerate(self.local_blocks):
      x = blk(x, pos)
      if c.tokenizer == "kmer":
        if i == 0:
          starts = jnp.broadcast_to(jnp.arange(n) % c.kmer == 0, (b, n))
          x, gid, counts = merge_by_boundaries(x, starts, max_groups=-(-n // c.kmer))
          sizes = counts.astype(jnp.float32)
          pos = _group_mean(jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32), (b, n)), gid,
                            jnp.ones((b, n)), x.shape[1])
        continue
      if c.merge_scope == "row":
        x, layer_gid, new_sizes = row_budget_merge(x, x, window=c.window, r=c.merge_r,
                                                   sizes=sizes)
      else:
        x, layer_gid, new_sizes = local_window_merge(x, x, window=c.window, r=c.merge_r,
                                                     sizes=sizes)
      pos = _group_mean(pos, layer_gid, sizes, x.shape[1])
      gid = jnp.take_along_axis(layer_gid, gid, axis=1)   # compose: base -> new token
      sizes = new_sizes
    return {"tokens": self.local_norm(x), "group_ids": gid, "sizes": sizes, "positions": pos}

  def latent(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    return self.latent_encoder(tokens, positions)

  def decode(self, latent: jax.Array, positions: jax.Array | None,
             group_ids: jax.Array) -> jax.Array:
    """Latent decoder over tokens, unmerge to bases, local decoder -> logits (B, N, V)."""
    z = self.latent_decoder(latent, positions)
    h = unmerge(z, group_ids)
    n = group_ids.shape[1]
    base_pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32), group_ids.shape)
    return self.head(self.local_decoder(h, base_pos))

  def __call__(self, bases: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    t = self.tokenize(bases)
    z = self.latent(t["tokens"], t["positions"])
    return self.decode(z, t["positions"], t["group_ids"]), t


def _masked_ce(logits, targets, mask):
  nll = token_nll(logits, targets)
  total, count = jnp.sum(nll * mask), jnp.sum(mask)
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * mask)
  return total / jnp.maximum(count, 1.0), Average.of(total, count), Average.of(correct, count)


@register_method("mergedna")
class MergeDNA(Method):
  """MergeDNA pre-training (MTR + latent MTR + AMTM) on bases; see the module docstring."""
  Config = MergeDNAConfig

  def __init__(self, config: MergeDNAConfig):
    if config.tokenizer not in ("learned", "kmer"):
      raise ValueError(f"model.tokenizer='{config.tokenizer}': use learned or kmer")
    if config.merge_scope not in ("window", "row"):
      raise ValueError(f"model.merge_scope='{config.merge_scope}': use window or row")
    if config.objective not in ("mergedna", "mlm"):
      raise ValueError(f"model.objective='{config.objective}': use mergedna or mlm")
    super().__init__(config)
    self.module = MergeDNAModule(config)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    return self.module.init(rng, batch["inputs"])["params"]

  def _apply(self, params, method, *args):
    return self.module.apply({"params": params}, *args, method=method)

  def tokenize(self, params: PyTree, bases: jax.Array) -> dict[str, jax.Array]:
    """The learned tokenization of bases (B, N): group_ids, sizes, tokens, positions."""
    return self._apply(params, MergeDNAModule.tokenize, bases)

  def features(self, params: PyTree, bases: jax.Array) -> jax.Array:
    """Frozen features for probes: latent-encoder outputs pooled [mean, max] -> (B, 2D)."""
    t = self.tokenize(params, bases)
    z = self._apply(params, MergeDNAModule.latent, t["tokens"], t["positions"])
    return jnp.concatenate([jnp.mean(z, axis=1), jnp.max(z, axis=1)], axis=-1)

  def amtm_mask(self, latent_sizes_per_base: jax.Array, valid: jax.Array, k: int,
                rng: jax.Array) -> jax.Array:
    """K bases drawn without replacement with P(j) ~ valid_j / g_j^2 (Gumbel top-k)."""
    w = valid / jnp.maximum(latent_sizes_per_base, 1.0) ** 2
    logp = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-30)), -jnp.inf)
    g = jax.random.gumbel(rng, w.shape)
    _, idx = jax.lax.top_k(logp + g, k)
    rows = jnp.arange(w.shape[0])[:, None]
    return jnp.zeros(w.shape, jnp.float32).at[rows, idx].set(1.0) * valid

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    terms, metrics = self.loss_terms(params, batch, rng)
    c = self.config
    if c.objective == "mlm":
      loss = terms["mlm"]
    else:
      loss = terms["mtr"] + c.latent_mtr_weight * terms["latent_mtr"] + terms["amtm"]
      metrics["loss"] = Average.of(loss, 1.0)
    return loss, metrics

  def loss_terms(self, params: PyTree, batch: Batch, rng: jax.Array
                 ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """The separate loss terms (mtr, latent_mtr, amtm; or mlm) and the metrics."""
    c = self.config
    bases = batch["inputs"]
    valid = (batch["segment_ids"] > 0 if "segment_ids" in batch
             else jnp.ones(bases.shape, bool)).astype(jnp.float32)
    rng = jax.random.key(0) if rng is None else rng
    r_mask, r_amtm = jax.random.split(rng)
    metrics: dict[str, Any] = {}
    terms: dict[str, jax.Array] = {}
    if c.objective == "mlm":
      mask = (jax.random.uniform(r_mask, bases.shape) < c.mask_rate) * valid
      logits, t = self.module.apply({"params": params}, jnp.where(mask > 0, MASK_ID, bases))
      terms["mlm"], metrics["loss"], metrics["masked_accuracy"] = _masked_ce(logits, bases,
                                                                            mask)
    else:
      # Pass 1: MTR through the learned tokens.
      t = self.tokenize(params, bases)
      z = self._apply(params, MergeDNAModule.latent, t["tokens"], t["positions"])
      logits = self._apply(params, MergeDNAModule.decode, z, t["positions"], t["group_ids"])
      terms["mtr"], metrics["mtr"], metrics["mtr_accuracy"] = _masked_ce(logits, bases, valid)
      # Pass 2: latent MTR, local encoder frozen, latent tokens merged globally to K.
      frozen = jax.lax.stop_gradient(t["tokens"])
      z2 = self._apply(params, MergeDNAModule.latent, frozen, t["positions"])
      m = z2.shape[1]
      k = max(1, int(m * c.latent_keep))
      plan = bipartite_soft_matching(z2, m - k)
      zk, _ = merge_tokens(z2, plan, t["sizes"])
      latent_gid = jnp.take_along_axis(plan.group_ids, t["group_ids"], axis=1)
      logits2 = self._apply(params, MergeDNAModule.decode, zk, None, latent_gid)
      terms["latent_mtr"], metrics["latent_mtr"], _ = _masked_ce(logits2, bases, valid)
      # Pass 3: AMTM, bases of small latent groups masked more (P ~ 1/g^2).
      rows = jnp.arange(bases.shape[0])[:, None]
      g_latent = jnp.zeros((bases.shape[0], plan.num_out), jnp.float32).at[
          rows, latent_gid].add(valid)
      g_base = jax.lax.stop_gradient(jnp.take_along_axis(g_latent, latent_gid, axis=1))
      mask = self.amtm_mask(g_base, valid, k, r_amtm)
      logits3, _ = self.module.apply({"params": params}, jnp.where(mask > 0, MASK_ID, bases))
      terms["amtm"], metrics["amtm"], metrics["masked_accuracy"] = _masked_ce(logits3, bases,
                                                                             mask)
    n_real = jnp.sum(valid)
    metrics["bases_per_token"] = Average.of(n_real,
                                            n_real / bases.shape[1] * t["sizes"].shape[1])
    metrics.update(self.region_token_lengths(t, batch))
    return terms, metrics

  @staticmethod
  def region_token_lengths(t: dict[str, jax.Array], batch: Batch) -> dict[str, Average]:
    """Mean length (bases) of the token holding a base, per region label of that base.

    The dna pipeline's `labels` belong to targets (base t + 1), so base t's label is
    labels[t - 1]; base 0 has none.
    """
    if "labels" not in batch:
      return {}
    labels = batch["labels"]
    lab = jnp.concatenate([jnp.full_like(labels[:, :1], -1), labels[:, :-1]], axis=1)
    size = jnp.take_along_axis(t["sizes"], t["group_ids"], axis=1)
    out = {}
    for v, name in enumerate(REGIONS):
      sel = (lab == v).astype(jnp.float32)
      out[f"token_len/{name}"] = Average.of(jnp.sum(size * sel), jnp.sum(sel))
    return out
