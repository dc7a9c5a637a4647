"""Token reduction toolbox: merging and pruning of tokens inside transformers.

Built on `tokenlab.kernels.token_merge`:

- ToMe (Bolya et al., ICLR 2023; `facebookresearch/ToMe`): `ToMeBlock` is a ViT block that
  merges r tokens between attention and MLP, tracks token sizes and uses proportional
  attention (log size added to the logits); `ToMeEncoder` stacks them and composes group ids
  so `unmerge` can bring the output back to the input length.
- Attention-score pruning (EViT-style): keep the tokens the class token (or everyone) attends to
  most (`prune_by_attention`).
- AIM (arXiv 2412.03248; LaVi-Lab/AIM): `pagerank_importance` runs PageRank over attention
  maps (M = softmax(logits / 0.1), 5 iterations from uniform, RMS over heads);
  `aim_retain_schedule` is the layer-wise retain ratio (full until half depth, then linear to
  0); `tome_reduce` is the pre-LLM "two rounds of ToMe" merging.
- Baselines: `random_prune`, `avg_pool_tokens` (1-D or 2-D grid).
- One interface over them: `reduce_tokens(name, x, r, ...)` removes r tokens by any entry of
  `REDUCTIONS` (ToMe merging, local-window merging, attention-score, PageRank and random
  pruning) and returns (tokens, sizes, group ids); `ToMeBlock(reduction=NAME)` takes the same
  names, so every entry runs inside a ViT block at the same place and token counts.

Pruning keeps tokens in their original order and returns their indices; merging returns group
ids and sizes. Every function takes (B, N, D) tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import TokenlabError
from tokenlab.method import Batch, Method, PyTree
from tokenlab.kernels.token_merge import (bipartite_soft_matching, local_window_merge,
                                          merge_by_boundaries, merge_tokens)
from tokenlab.kernels.token_merge.reference import effective_r
from tokenlab.nn.attention import dot_product_attention
from tokenlab.nn.layers import DenseGeneral
from tokenlab.nn.losses import classification_loss

__all__ = ["proportional_attention_bias", "compose_group_ids", "kept_to_group_ids", "ToMeBlock",
           "ToMeEncoder", "parse_r", "decreasing_r", "token_counts", "plain_tome_merge",
           "REDUCTIONS", "attention_logits", "attention_probs", "keep_top_k", "prune_by_attention",
           "pagerank", "pagerank_importance", "aim_retain_schedule", "retain_count", "aim_prune",
           "tome_reduce", "random_prune", "avg_pool_tokens", "reduce_tokens", "window_count"]


# ---------------------------------------------------------------------------------------------
# ToMe inside a ViT.


def proportional_attention_bias(sizes: jax.Array | None) -> jax.Array | None:
  """(B, N) token sizes -> (B, 1, 1, N) logits bias log(size), or None.

  With it, a token standing for s merged tokens gets the attention s copies would get.
  """
  if sizes is None:
    return None
  return jnp.log(sizes.astype(jnp.float32))[:, None, None, :]


def compose_group_ids(group_ids: jax.Array, later: jax.Array) -> jax.Array:
  """Group of each original token after a second merge: (B, N) ids into (B, M) ids -> (B, N).

  An id of -1 (a token pruned away) stays -1, and `later` may map tokens to -1 (pruned now).
  """
  out = jnp.take_along_axis(later, jnp.maximum(group_ids, 0), axis=1)
  return jnp.where(group_ids >= 0, out, -1)


def kept_to_group_ids(kept: jax.Array, n: int) -> jax.Array:
  """Pruning as a grouping: kept indices (B, M) of n tokens -> (B, n) ids in [0, M), -1 if
  dropped, so `compose_group_ids` traces pruned tokens like merged ones."""
  b, m = kept.shape
  rows = jnp.arange(b)[:, None]
  return jnp.full((b, n), -1, jnp.int32).at[rows, kept].set(
      jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (b, m)))


# Merging: "tome" (bipartite soft matching), "window" (local-window merging of adjacent
# tokens); pruning: "random", "attention" (class-token attention, EViT), "pagerank" (AIM).
REDUCTIONS = ("tome", "random", "attention", "pagerank", "window")


def plain_tome_merge(x: jax.Array, metric: jax.Array, r: int, *, sizes: jax.Array | None = None,
                     protected: int = 0) -> tuple[jax.Array, jax.Array]:
  """ToMe's merge.py (bipartite_soft_matching + merge_wavg) written directly in jax.numpy.

  The peer of the fused kernel (`tokenlab bench token_merge`, `tokenlab bench vit_tome`): the
  A x B score matrix is materialised, then max/argmax, a full argsort and a scatter-add. As in
  ToMe, the output order is [unmerged A tokens, B tokens] (not the original order), and with
  `protected=1` (ToMe's class_token) A row 0 never merges and the unmerged A tokens are sorted
  so the class token stays first. r is clamped to (N - protected) // 2.

  x (B, N, D), metric (B, N, C), sizes (B, N) or None -> (merged (B, N - r, D), sizes
  (B, N - r)).
  """
  if protected not in (0, 1):
    raise TokenlabError(f"plain_tome_merge protects a class token only (protected 0 or 1), "
                        f"got {protected}; use bipartite_soft_matching for more")
  b, n, _ = x.shape
  r = min(int(r), (n - protected) // 2)
  size = (jnp.ones((b, n, 1), x.dtype) if sizes is None
          else sizes.reshape(b, n, 1).astype(x.dtype))
  if r <= 0:
    return x, size[..., 0]
  metric = jax.lax.stop_gradient(metric)
  m = metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)
  ma, mb = m[:, ::2], m[:, 1::2]
  scores = ma @ jnp.swapaxes(mb, 1, 2)
  if protected:
    scores = scores.at[:, 0, :].set(-jnp.inf)
  node_max = scores.max(axis=-1)
  node_idx = scores.argmax(axis=-1)
  edge_idx = jnp.argsort(-node_max, axis=-1)
  unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
  if protected:
    unm_idx = jnp.sort(unm_idx, axis=-1)
  dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=1)
  rows = jnp.arange(b)[:, None]

  def merge(t):
    src, dst = t[:, ::2], t[:, 1::2]
    unm = jnp.take_along_axis(src, unm_idx[..., None], axis=1)
    moved = jnp.take_along_axis(src, src_idx[..., None], axis=1)
    dst = dst.at[rows, dst_idx].add(moved)
    return jnp.concatenate([unm, dst], axis=1)

  merged = merge(x * size)
  new_sizes = merge(size)
  return merged / new_sizes, new_sizes[..., 0]


class ToMeBlock(nn.Module):
  """Pre-norm ViT block with ToMe between attention and MLP.

  (B, N, D), sizes (B, N) or None -> (B, N - r', D), sizes (B, N - r'), plan, where
  r' = min(r, (N - protected) // 2). The similarity metric is the attention keys averaged over
  heads, as in ToMe. `plan` is the MergePlan (reduction "tome"), the kept indices (B, N - r')
  int32 (pruning), or None (nothing removed, or implementation "plain", which traces no
  sources).

  Attributes:
    num_heads: attention heads (D must divide).
    mlp_dim: hidden width of the GELU MLP.
    r: tokens merged away in this block.
    protected: leading tokens that never merge (1 for a class token).
    prop_attn: add log(size) to the attention logits (ToMe's proportional attention).
    reduction: "tome" (merge), or the baselines at equal token counts: "random" (drop r'
      random unprotected tokens; needs the flax rng stream "reduction") and "attention" (keep
      the tokens the class token attends to most, averaged over heads: EViT's score; the
      scores recompute q k^T, so this arm pays one extra logits product); "pagerank" (AIM's
      PageRank importance over this block's attention logits) and "window" (merge adjacent
      pairs inside windows of `window` tokens after the protected ones; r must split evenly
      over the windows), both through `reduce_tokens`.
    window: window length of reduction "window".
    implementation: the token_merge implementation (None: best for the backend: the fused
      Pallas kernels on GPU/TPU, the jnp reference on CPU; or "reference" / "pallas_gpu" /
      "pallas_tpu"), or "plain" (`plain_tome_merge`, ToMe's merge.py in jnp).
  """
  num_heads: int
  mlp_dim: int
  r: int = 0
  protected: int = 1
  prop_attn: bool = True
  reduction: str = "tome"
  implementation: str | None = None
  param_dtype: Any = jnp.float32
  window: int = 8

  @nn.compact
  def __call__(self, x: jax.Array, sizes: jax.Array | None = None):
    b, n, d = x.shape
    if d % self.num_heads:
      raise TokenlabError(f"width {d} is not divisible by num_heads={self.num_heads}; "
                          "pick num_heads dividing the width")
    if self.reduction not in REDUCTIONS:
      raise TokenlabError(f"unknown reduction '{self.reduction}'; use one of "
                          f"{', '.join(REDUCTIONS)}")
    hd = d // self.num_heads
    h = nn.LayerNorm(param_dtype=self.param_dtype, name="attn_norm")(x)
    qkv = lambda name: DenseGeneral((self.num_heads, hd), ("embed", "heads", "head_dim"),
                                    use_bias=True, param_dtype=self.param_dtype, name=name)(h)
    q, k, v = qkv("query"), qkv("key"), qkv("value")
    bias = proportional_attention_bias(sizes) if self.prop_attn else None
    a = dot_product_attention(q, k, v, bias=bias)
    x = x + DenseGeneral((d,), ("heads", "head_dim", "embed"), in_dims=2, use_bias=True,
                         param_dtype=self.param_dtype, name="out")(a)
    plan = None
    r = effective_r(n, self.r, self.protected) if self.r > 0 else 0
    if self.reduction == "window" and self.r > 0:
      r = self.r    # exact (reduce_tokens checks it splits over the windows)
    if r > 0 and self.reduction in ("pagerank", "window"):
      x, sizes, gid = reduce_tokens(
          self.reduction, x, r, metric=k.mean(axis=2), sizes=sizes, protected=self.protected,
          logits=attention_logits(q, k, bias=bias) if self.reduction == "pagerank" else None,
          window=self.window, implementation=self.implementation)
      # Pruning returns the kept indices, as the other pruning baselines do; merging the ids.
      plan = gid if self.reduction == "window" else _kept_indices(gid, n - r)
    elif r > 0 and self.reduction == "tome" and self.implementation == "plain":
      x, sizes = plain_tome_merge(x, k.mean(axis=2), r, sizes=sizes, protected=self.protected)
    elif r > 0 and self.reduction == "tome":
      plan = bipartite_soft_matching(k.mean(axis=2), r, protected=self.protected,
                                     implementation=self.implementation)
      x, sizes = merge_tokens(x, plan, sizes, implementation=self.implementation)
    elif r > 0:
      if self.reduction == "random":
        x, plan = random_prune(x, n - r, self.make_rng("reduction"), protected=self.protected)
      else:
        probs = attention_probs(q, k, bias=bias)
        x, plan = prune_by_attention(x, probs, n - r, protected=self.protected, score="cls")
      if sizes is not None:
        sizes = jnp.take_along_axis(sizes, plan, axis=1)
    h = nn.LayerNorm(param_dtype=self.param_dtype, name="mlp_norm")(x)
    h = DenseGeneral((self.mlp_dim,), ("embed", "mlp"), use_bias=True,
                     param_dtype=self.param_dtype, name="mlp_in")(h)
    h = DenseGeneral((d,), ("mlp", "embed"), use_bias=True, param_dtype=self.param_dtype,
                     name="mlp_out")(nn.gelu(h))
    return x + h, sizes, plan


def parse_r(num_layers: int, r: int | Sequence[int]) -> list[int]:
  """ToMe's schedule: a constant r per layer, or an explicit list of num_layers values."""
  if isinstance(r, (int, np.integer)):
    return [int(r)] * num_layers
  r = [int(v) for v in r]
  if len(r) != num_layers:
    raise TokenlabError(f"r lists {len(r)} values for {num_layers} layers; give one per layer")
  return r


def decreasing_r(num_layers: int, r: int, inflect: float = -0.5) -> list[int]:
  """ToMe's (r, inflection) schedule (`tome/utils.py: parse_r`): r per layer on a line with
  mean about r, from int(r (1 - inflect)) at the first layer to 2 r - that at the last;
  inflect < 0 merges more early (decreasing), 0 is constant, > 0 increasing."""
  lo = int(r * (1.0 - inflect))
  hi = 2 * r - lo
  if num_layers == 1:
    return [lo]
  step = (hi - lo) / (num_layers - 1)
  return [int(lo + step * i) for i in range(num_layers)]


def token_counts(num_tokens: int, rs: Sequence[int], protected: int = 1) -> list[int]:
  """Tokens leaving each layer under a schedule (r clamped per layer as ToMe does); merging
  and the pruning baselines remove the same counts."""
  out, n = [], num_tokens
  for r in rs:
    n -= effective_r(n, int(r), protected) if r > 0 else 0
    out.append(n)
  return out


class ToMeEncoder(nn.Module):
  """A stack of ToMeBlocks with size tracking and composed group ids.

  (B, N, D) -> x (B, M, D), sizes (B, M), group_ids (B, N) in [0, M): `unmerge(x, group_ids)`
  gives every input token its final merged vector (ToMe's source tracing, as ids). With a
  pruning `reduction` a dropped token's id is -1; with implementation "plain" group_ids is
  None (ToMe's reordering is not traced).
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  r: Any = 0  # int, or one int per layer
  protected: int = 1
  prop_attn: bool = True
  reduction: str = "tome"
  implementation: str | None = None
  param_dtype: Any = jnp.float32
  window: int = 8

  @nn.compact
  def __call__(self, x: jax.Array):
    b, n, _ = x.shape
    group_ids = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    sizes = None
    for i, r in enumerate(parse_r(self.num_layers, self.r)):
      m = x.shape[1]
      x, sizes, plan = ToMeBlock(self.num_heads, self.mlp_dim, r=r, protected=self.protected,
                                 prop_attn=self.prop_attn, reduction=self.reduction,
                                 implementation=self.implementation,
                                 param_dtype=self.param_dtype, window=self.window,
                                 name=f"block_{i}")(x, sizes)
      if plan is None and x.shape[1] < m:   # the plain path: no source tracing
        group_ids = None
      elif plan is not None and group_ids is not None:
        later = (plan.group_ids if self.reduction == "tome" else
                 plan if self.reduction == "window" else kept_to_group_ids(plan, m))
        group_ids = compose_group_ids(group_ids, later)
    if sizes is None:
      sizes = jnp.ones(x.shape[:2], jnp.float32)
    x = nn.LayerNorm(param_dtype=self.param_dtype, name="final_norm")(x)
    return x, sizes, group_ids


def tome_reduce(x: jax.Array, rs: Sequence[int], *, metric: jax.Array | None = None,
                sizes: jax.Array | None = None, protected: int = 0):
  """Rounds of ToMe merging outside a transformer (AIM's pre-LLM step: two rounds keep 25%).

  Args:
    x: (B, N, D) tokens; metric: similarity features for the first round (default x; later
      rounds use the merged tokens).
    rs: tokens removed per round, e.g. (N // 2, N // 4) keeps a quarter.
    sizes: (B, N) initial sizes or None.
    protected: leading tokens that never merge.
  Returns:
    merged (B, M, D), sizes (B, M), group_ids (B, N) for `unmerge`.
  """
  b, n, _ = x.shape
  group_ids = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  sizes = jnp.ones((b, n), jnp.float32) if sizes is None else sizes
  m = x if metric is None else metric
  for r in rs:
    plan = bipartite_soft_matching(m, int(r), protected=protected)
    x, sizes = merge_tokens(x, plan, sizes)
    group_ids = compose_group_ids(group_ids, plan.group_ids)
    m = x
  return x, sizes, group_ids


# ---------------------------------------------------------------------------------------------
# Pruning.


def attention_probs(q: jax.Array, k: jax.Array, *, bias: jax.Array | None = None,
                    mask: jax.Array | None = None) -> jax.Array:
  """Softmax attention maps (B, H, N, N) from q, k (B, N, H, Dh); what scoring needs."""
  logits = attention_logits(q, k, bias=bias, mask=mask)
  return jax.nn.softmax(logits, axis=-1)


def attention_logits(q: jax.Array, k: jax.Array, *, bias: jax.Array | None = None,
                     mask: jax.Array | None = None) -> jax.Array:
  """Scaled logits (B, H, N, N) in float32; masked entries are -inf."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
  logits = logits / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  return logits


def keep_top_k(x: jax.Array, scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k highest-scoring tokens in their original order (ties: lower index).

  x (B, N, D), scores (B, N) -> kept (B, k, D), indices (B, k) int32 ascending.
  """
  n = x.shape[1]
  if not 0 <= k <= n:
    raise TokenlabError(f"cannot keep {k} of {n} tokens; pass 0 <= keep <= {n}")
  _, idx = jax.lax.top_k(scores, k)
  idx = jnp.sort(idx.astype(jnp.int32), axis=1)
  return jnp.take_along_axis(x, idx[..., None], axis=1), idx


def _protect(scores: jax.Array, protected: int) -> jax.Array:
  pos = jnp.arange(scores.shape[1])
  return jnp.where(pos[None, :] < protected, jnp.inf, scores.astype(jnp.float32))


def prune_by_attention(x: jax.Array, probs: jax.Array, keep: int, *, protected: int = 1,
                       score: str = "cls") -> tuple[jax.Array, jax.Array]:
  """Attention-score pruning: keep the `keep` tokens that receive the most attention.

  Args:
    x: (B, N, D); probs: (B, H, N, N) attention maps (rows = queries).
    keep: tokens kept, protected ones included.
    protected: leading tokens always kept (the class token).
    score: "cls" = attention from token 0, averaged over heads (EViT); "received" = mean
      attention received over all queries and heads.
  Returns:
    kept (B, keep, D) and their indices (B, keep), in original order.
  """
  if score == "cls":
    s = probs[:, :, 0, :].mean(axis=1)
  elif score == "received":
    s = probs.mean(axis=(1, 2))
  else:
    raise TokenlabError(f"unknown score '{score}'; use 'cls' or 'received'")
  if keep < min(protected, x.shape[1]):
    raise TokenlabError(f"keep={keep} is below protected={protected}; keep at least the "
                        "protected tokens")
  return keep_top_k(x, _protect(s, protected), keep)


def random_prune(x: jax.Array, keep: int, rng: jax.Array, *, protected: int = 0
                 ) -> tuple[jax.Array, jax.Array]:
  """Baseline: keep `keep` tokens at random (protected ones always), in original order."""
  s = jax.random.uniform(rng, x.shape[:2])
  return keep_top_k(x, _protect(s, protected), keep)


def avg_pool_tokens(x: jax.Array, factor: int, *, grid: tuple[int, int] | None = None):
  """Baseline: average pooling of neighbouring tokens.

  1-D (grid None): groups of `factor` consecutive tokens (the last may be short), via
  merge_by_boundaries -> (pooled (B, ceil(N / factor), D), group_ids (B, N), counts).
  2-D (grid=(h, w), N = h * w row-major patches): factor x factor squares; h and w must be
  multiples of factor -> (pooled (B, N / factor^2, D), group_ids (B, N), counts).
  """
  b, n, d = x.shape
  if factor < 1:
    raise TokenlabError(f"factor must be >= 1, got {factor}")
  if grid is None:
    m = -(-n // factor)
    bnd = jnp.broadcast_to(jnp.arange(n) % factor == 0, (b, n))
    return merge_by_boundaries(x, bnd, max_groups=m)
  h, w = grid
  if h * w != n or h % factor or w % factor:
    raise TokenlabError(f"grid {grid} must multiply to N={n} with both sides multiples of "
                        f"factor={factor}; pad the image or pick another factor")
  hf, wf = h // factor, w // factor
  pooled = x.reshape(b, hf, factor, wf, factor, d).mean(axis=(2, 4)).reshape(b, hf * wf, d)
  rows, cols = np.divmod(np.arange(n), w)
  gid = jnp.asarray((rows // factor) * wf + cols // factor, jnp.int32)
  counts = jnp.full((b, hf * wf), factor * factor, jnp.int32)
  return pooled, jnp.broadcast_to(gid, (b, n)), counts


# ---------------------------------------------------------------------------------------------
# AIM: PageRank importance and the layer-wise retain schedule.


def pagerank(transition: jax.Array, iters: int = 5) -> jax.Array:
  """pi <- pi M, `iters` times from uniform. transition (..., N, N) row-stochastic -> (..., N)."""
  n = transition.shape[-1]
  pi = jnp.full(transition.shape[:-1], 1.0 / n, jnp.float32)
  for _ in range(iters):
    pi = jnp.einsum("...i,...ij->...j", pi, transition.astype(jnp.float32))
  return pi


def pagerank_importance(logits: jax.Array, *, temperature: float = 0.1, iters: int = 5
                        ) -> jax.Array:
  """AIM's token importance: (B, H, N, N) attention logits (masked = -inf) -> (B, N).

  M = softmax(logits / temperature) per row; PageRank `iters` steps from uniform; the
  importance is the root mean square of the stationary estimate over heads.
  """
  if logits.ndim != 4:
    raise TokenlabError(f"logits must be (batch, heads, queries, keys), got {logits.shape}")
  m = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  pi = pagerank(m, iters)
  return jnp.sqrt(jnp.mean(pi * pi, axis=1))


def aim_retain_schedule(num_layers: int, *, start: int | None = None, end_ratio: float = 0.0
                        ) -> list[float]:
  """Retain ratio per layer: 1.0 before `start` (default half depth), then linear to end_ratio
  at the last layer."""
  start = num_layers // 2 if start is None else start
  if not 0 <= start <= num_layers:
    raise TokenlabError(f"start={start} must lie in [0, {num_layers}]")
  span = num_layers - start
  return [1.0 if i < start else 1.0 - (1.0 - end_ratio) * (i - start + 1) / span
          for i in range(num_layers)]


def retain_count(num_tokens: int, ratio: float) -> int:
  """Tokens kept at a retain ratio (rounded, within [0, num_tokens])."""
  return int(min(num_tokens, max(0, round(num_tokens * ratio))))


def aim_prune(x: jax.Array, logits: jax.Array, keep: int, *,
              protected_mask: jax.Array | None = None, temperature: float = 0.1,
              iters: int = 5) -> tuple[jax.Array, jax.Array]:
  """Keeps the `keep` most important tokens by AIM's PageRank; protected (text) tokens always.

  x (B, N, D); logits (B, H, N, N); protected_mask (B, N) or (N,) bool. `keep` counts the
  protected tokens too. Returns kept (B, keep, D) and indices (B, keep) in original order.
  """
  s = pagerank_importance(logits, temperature=temperature, iters=iters)
  if protected_mask is not None:
    s = jnp.where(jnp.broadcast_to(protected_mask, s.shape), jnp.inf, s)
  return keep_top_k(x, s, keep)



# ---------------------------------------------------------------------------------------------
# One interface over the toolbox.


def window_count(n: int, window: int, protected: int = 0) -> int:
  """Windows of `window` tokens over the n - protected unprotected tokens (last may be short)."""
  return -(-(n - protected) // window)


def _kept_indices(group_ids: jax.Array, keep: int) -> jax.Array:
  """(B, N) ids of a pruning (-1 = dropped, kept ids ascending) -> (B, keep) kept indices."""
  n = group_ids.shape[1]
  order = jnp.where(group_ids >= 0, jnp.arange(n)[None, :], n + jnp.arange(n)[None, :])
  return jnp.sort(order, axis=1)[:, :keep].astype(jnp.int32)


def reduce_tokens(name: str, x: jax.Array, r: int, *, metric: jax.Array | None = None,
                  probs: jax.Array | None = None, logits: jax.Array | None = None,
                  sizes: jax.Array | None = None, rng: jax.Array | None = None,
                  protected: int = 0, window: int = 8, implementation: str | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Removes r tokens with the toolbox entry `name` (one of REDUCTIONS); protected lead tokens
  always survive, unchanged.

  Args:
    name: "tome" (bipartite soft matching on `metric`; r clamped to (N - protected) // 2 as
      ToMe does), "window" (local-window merging on `metric`: the N - protected tokens cut
      into windows of `window`, r / windows adjacent pairs merged in each; r must be a
      multiple of the window count), "attention" (keep what token 0 attends to most in
      `probs` (B, H, N, N)), "pagerank" (AIM's importance from `logits` (B, H, N, N)),
      "random" (uniform, from `rng`).
    x: (B, N, D) tokens; metric: (B, N, C) similarity features (merging only).
    sizes: (B, N) tokens each row stands for (None = 1): merges average with them as weights,
      pruning keeps the survivors' sizes.
  Returns:
    tokens (B, N - r', D), sizes (B, N - r') float32, group_ids (B, N) int32: the output row of
    every input token, -1 where pruned; r' = r except where "tome" clamps it. r = 0 returns
    x itself.
  """
  b, n, _ = x.shape
  if name not in REDUCTIONS:
    raise TokenlabError(f"unknown reduction '{name}'; use one of {', '.join(REDUCTIONS)}")
  if r < 0:
    raise TokenlabError(f"r={r}: pass r >= 0 tokens to remove")
  ones = jnp.ones((b, n), jnp.float32)
  sizes = ones if sizes is None else sizes.astype(jnp.float32)
  ident = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  if r == 0:
    return x, sizes, ident
  need = {"tome": metric, "window": metric, "attention": probs, "pagerank": logits,
          "random": rng}[name]
  if need is None:
    what = {"tome": "metric", "window": "metric", "attention": "probs", "pagerank": "logits",
            "random": "rng"}[name]
    raise TokenlabError(f"reduction '{name}' needs {what}=...; pass it to reduce_tokens")
  if name == "tome":
    plan = bipartite_soft_matching(metric, effective_r(n, r, protected), protected=protected,
                                   implementation=implementation)
    out, new_sizes = merge_tokens(x, plan, sizes, implementation=implementation)
    return out, new_sizes, plan.group_ids
  if name == "window":
    nw = window_count(n, window, protected)
    last = (n - protected) - (nw - 1) * window
    if r % nw or r // nw > last // 2:
      raise TokenlabError(f"window merging removes the same pairs in each of the {nw} windows "
                          f"of {window} tokens (last: {last}); r={r} must be a multiple of "
                          f"{nw} and at most {nw * (last // 2)}")
    p = protected
    merged, gid, new_sizes = local_window_merge(x[:, p:], metric[:, p:], window=window,
                                                r=r // nw, sizes=sizes[:, p:],
                                                implementation=implementation)
    return (jnp.concatenate([x[:, :p], merged], axis=1),
            jnp.concatenate([sizes[:, :p], new_sizes], axis=1),
            jnp.concatenate([ident[:, :p], gid + p], axis=1))
  if name == "attention":
    out, kept = prune_by_attention(x, probs, n - r, protected=protected, score="cls")
  elif name == "pagerank":
    out, kept = aim_prune(x, logits, n - r, protected_mask=jnp.arange(n) < protected)
  else:
    out, kept = random_prune(x, n - r, rng, protected=protected)
  return out, jnp.take_along_axis(sizes, kept, axis=1), kept_to_group_ids(kept, n)


class ReducingClassifier(Method):
  """An image classifier whose ViT reduces tokens in its blocks (ToMe, token_reduction):
  the method half they share. Subclasses set `self.module`, a flax module mapping images
  (B, H, W, C) -> (logits (B, C), sizes (B, M), group_ids (B, N + 1) or None) that draws
  random pruning from the 'reduction' rng stream; their config has `label_smoothing`.
  Batches: {'image' (B, H, W, C) float32, 'label' (B,) int32, optional 'mask' (B,)}."""
  module: nn.Module

  def forward(self, params: PyTree, images: jax.Array, rng: jax.Array | None = None):
    """(logits (B, C), sizes (B, M), group_ids (B, N + 1) or None); `rng` feeds random
    pruning (a fixed key when None)."""
    rng = jax.random.key(0) if rng is None else rng
    return self.module.apply({"params": params}, images, rngs={"reduction": rng})

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    return self.module.init({"params": rng, "reduction": rng}, batch["image"])["params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    logits, sizes, _ = self.forward(params, batch["image"], rng)
    loss, metrics = classification_loss(logits, batch["label"], batch.get("mask"),
                                        self.config.label_smoothing)
    return loss, {**metrics, "final_tokens": float(sizes.shape[1])}
