"""AIM: a small vision-language model whose visual tokens are merged and pruned at inference
(method `aim`).

Paper: Zhong, Liu, Li, Wang, "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging
and Pruning" (arXiv 2412.03248; reference code LaVi-Lab/AIM, read, not copied). AIM is
training-free: a multi-modal LLM trained on all its visual tokens is run at inference with
(a) iterative token merging of the visual tokens before the LLM, by embedding similarity, and
(b) progressive pruning of visual tokens inside the LLM layers during prefill, by a PageRank
importance over the layer's attention, text tokens protected. The reduction blocks are
tokenlab's toolbox (`tokenlab/nn/token_reduction.py`: `tome_reduce`, `pagerank_importance`,
`aim_prune`, `aim_retain_schedule`, `retain_count`, and the baselines `random_prune`,
`avg_pool_tokens`); this module assembles the model around them.

The model, in the paper's order:

1. Visual tokens: images (B, H, W, 3) -> p x p patches (`nn.vision.PatchEmbed`, sin-cos
   positions) -> a small ViT (`ToMeEncoder` with r = 0: plain pre-norm blocks, final
   LayerNorm) -> a linear projector to the LLM width: N = (H / p)(W / p) visual tokens.
2. Merging before the LLM (AIM Sec. 3.2): rounds of ToMe bipartite soft matching on the
   visual tokens' own embeddings, each round halving at most, until `merge_keep` tokens are
   left (AIM keeps 25% with two rounds); merged tokens are size-weighted averages and keep
   the order of the survivors. Per image, like AIM per frame. The LLM numbers the shorter
   sequence from 0 (RoPE positions 0..M+2, as the LLaVA-based AIM does); `keep_positions`
   instead keeps each reduced token at its first patch's position and the question at
   N..N+2, the positions a model trained on one sequence length has seen.
3. The LLM: [visual tokens, question tokens] -> causal pre-norm transformer blocks
   (`nn.transformer.TransformerBlock`: RMSNorm, RoPE attention, SwiGLU) -> final RMSNorm ->
   the next-token logits at the last question token: the answer is one token of the vocab.
4. Pruning inside the LLM (AIM Sec. 3.3), prefill only: the retain ratio of visual tokens per
   layer follows `aim_retain_schedule` (full until `prune_start`, default half depth, then
   linear to `prune_end_ratio`, default 0); before layer i the visual tokens are cut to the
   count of layer i by importance from layer i-1's attention: M = softmax(logits / 0.1),
   PageRank 5 iterations pi <- pi M from uniform, importance = RMS of pi over heads; text
   tokens always survive; survivors keep their order and their RoPE positions.
5. Training-free: both steps have no parameters; `method.variant(merge_keep=..., prune=...)`
   evaluates a model trained without reduction (what `loss` trains).

The task (`questions`, `answers`): visual questions about `shapes` images with exact answers
generated from the dataset's labels, one question type per example (4 types, 3 question
tokens each): "which shape ?" (4 shapes), "which colour ?" (6 colours), "how many ?" (1 to
max_count), "where first ?" (the quadrant of the top-most object's centre, row-major first).
Training draws a type per example; `eval_metrics` asks all four about every image.

Baselines at equal token counts (the paper's comparisons in miniature): `pre="random"` keeps
`merge_keep` random visual tokens, `pre="pool"` average-pools neighbouring patches (2-D
squares where the count allows, else runs along rows); `prune="random"` drops random visual
tokens inside the LLM on the same schedule. `use_image=False` is the text-only model (the
question alone), a trivial baseline showing the task needs the image.

Follows the paper exactly: merging before the LLM by ToMe bipartite soft matching on the
visual embeddings, in rounds (two rounds keep 25%); pruning inside the LLM from the layer's
attention with M = softmax(logits / 0.1), 5 PageRank iterations from uniform, RMS over heads;
text tokens protected; the schedule (full until half depth, then linear to 0); applied
training-free to a model trained on all visual tokens; reduction during prefill only.
Simplified, and why: toy scale (a 1-block ViT and a 4-block d=64 LLM trained from scratch on
synthetic questions in minutes on a CPU, instead of a pretrained LLaVA / video LLM on real
benchmarks); the answer is one token (so prefill is the whole computation and there is no
decode phase to speed up); single images rather than video frames (the per-frame merging is
the same operation); the PageRank scores recompute q k^T from the captured projections (AIM
reads the eager attention weights; the FLOPs counted here include the recompute).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.layers import DenseGeneral, Embed, RMSNorm, rope
from tokenlab.nn.losses import token_nll
from tokenlab.nn.token_reduction import (aim_prune, aim_retain_schedule, attention_logits,
                                         avg_pool_tokens, keep_top_k, random_prune,
                                         retain_count, tome_reduce, ToMeEncoder)
from tokenlab.nn.transformer import TransformerBlock
from tokenlab.nn.vision import PatchEmbed
from tokenlab.registry import register_method

# ---------------------------------------------------------------------------------------------
# The visual questions: vocabulary, questions and exact answers from the shapes labels.

QUESTION_TYPES = ("shape", "colour", "count", "where")
QUESTIONS = (("which", "shape", "?"), ("which", "colour", "?"), ("how", "many", "?"),
             ("where", "first", "?"))
SHAPE_WORDS = ("square", "circle", "triangle", "plus")          # shapes.SHAPES
COLOUR_WORDS = ("red", "green", "blue", "yellow", "magenta", "cyan")   # shapes.COLOURS
COUNT_WORDS = ("1", "2", "3", "4")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
ANSWER_WORDS = (SHAPE_WORDS, COLOUR_WORDS, COUNT_WORDS, QUADRANTS)   # per question type
_QWORDS = tuple(dict.fromkeys(w for q in QUESTIONS for w in q))
VOCAB = _QWORDS + SHAPE_WORDS + COLOUR_WORDS + COUNT_WORDS + QUADRANTS
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
QUESTION_LEN = 3
PRE_REDUCTIONS = ("tome", "random", "pool")
PRUNINGS = ("none", "pagerank", "random")


def questions(qtypes: jax.Array) -> jax.Array:
  """(B,) question types in [0, 4) -> (B, 3) token ids of the questions."""
  table = jnp.asarray([[WORD_ID[w] for w in q] for q in QUESTIONS], jnp.int32)
  return table[qtypes]


def answers(batch: Batch, qtypes: jax.Array, image_size: int) -> jax.Array:
  """Exact answer token ids (B,) of questions `qtypes` (B,) about a shapes batch.

  Reads the labels: 'label' (shape class), 'colour', 'count' and 'positions' (B, max_count, 2)
  (top-left corners sorted row-major, so row 0 is the top-most object). The quadrant of an
  object is that of its centre corner + s / 2 (s = image_size // 4, the object box), bottom
  when 2 row + s >= image_size, right likewise.
  """
  s = image_size // 4
  first = batch["positions"][:, 0].astype(jnp.int32)                   # (B, 2)
  half = (2 * first + s >= image_size).astype(jnp.int32)
  per_type = jnp.stack([
      WORD_ID[SHAPE_WORDS[0]] + batch["label"].astype(jnp.int32),
      WORD_ID[COLOUR_WORDS[0]] + batch["colour"].astype(jnp.int32),
      WORD_ID[COUNT_WORDS[0]] + batch["count"].astype(jnp.int32) - 1,
      WORD_ID[QUADRANTS[0]] + 2 * half[:, 0] + half[:, 1]], axis=1)    # (B, 4)
  return jnp.take_along_axis(per_type, qtypes[:, None].astype(jnp.int32), axis=1)[:, 0]


def all_questions(batch: Batch) -> tuple[Batch, jax.Array]:
  """Every image asked all four questions: (batch repeated 4x (4B rows, image-major), qtypes
  (4B,) = 0, 1, 2, 3, 0, ...)."""
  b = batch["label"].shape[0]
  rep = {k: jnp.repeat(v, len(QUESTION_TYPES), axis=0) for k, v in batch.items()}
  return rep, jnp.tile(jnp.arange(len(QUESTION_TYPES), dtype=jnp.int32), b)


# ---------------------------------------------------------------------------------------------
# The model.


@dataclasses.dataclass(frozen=True)
class AIMConfig:
  patch_size: int = 4
  image_size: int = 32        # shapes' size option (the 'where' answers depend on it)
  vision_dim: int = 32
  vision_layers: int = 1
  vision_heads: int = 2
  d_model: int = 64
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 128
  use_image: bool = True      # False: the text-only baseline (the question alone)
  # Inference-time reduction (no parameters; `variant` switches it on a trained model):
  merge_keep: int = 0         # visual tokens entering the LLM (0: all N)
  pre: str = "tome"           # tome (AIM) | random | pool: how merge_keep is reached
  prune: str = "none"         # none | pagerank (AIM) | random: inside the LLM, prefill
  prune_start: int = -1       # first layer with fewer visual tokens (-1: half depth)
  prune_end_ratio: float = 0.0  # retain ratio of the last layer
  keep_positions: bool = False  # True: reduced visual tokens keep their first patch's RoPE
                                # position and the question keeps N..N+2 (False: the LLM
                                # numbers the shorter sequence 0..M+2, as AIM's LLaVA does)
  temperature: float = 0.1    # PageRank's softmax temperature
  pagerank_iters: int = 5


def num_patches(cfg: AIMConfig) -> int:
  return (cfg.image_size // cfg.patch_size) ** 2


def merge_rounds(n: int, keep: int) -> list[int]:
  """Tokens removed per ToMe round to go from n to keep: each round at most halves (r <= n //
  2, bipartite matching's limit): 64 -> 16 is (32, 16), AIM's two rounds keeping 25%."""
  rs = []
  while n > keep:
    r = min(n // 2, n - keep)
    rs.append(r)
    n -= r
  return rs


def visual_counts(cfg: AIMConfig) -> list[int]:
  """Visual tokens in each LLM layer (prefill): merge_keep (or N), cut by the retain
  schedule when pruning."""
  if not cfg.use_image:
    return [0] * cfg.num_layers
  n = cfg.merge_keep or num_patches(cfg)
  if cfg.prune == "none":
    return [n] * cfg.num_layers
  start = None if cfg.prune_start < 0 else cfg.prune_start
  ratios = aim_retain_schedule(cfg.num_layers, start=start, end_ratio=cfg.prune_end_ratio)
  return [retain_count(n, r) for r in ratios]


def prefill_flops(cfg: AIMConfig) -> float:
  """Counted FLOPs (multiply-add = 2) of the LLM prefill for one example: per layer with n
  tokens, q/k/v/out projections 8 n d^2, scores and weighted values 4 n^2 d (dense, as
  computed), SwiGLU 6 n d mlp; before a PageRank cut, the q k^T recompute 2 n^2 d and
  `pagerank_iters` products 2 n^2 per head; the answer head on the last token 2 d V. The
  vision encoder and the merging (the same encoder for every arm; matching ~ N^2 d / 2) are
  not counted, as AIM counts the LLM."""
  d, h, mlp = cfg.d_model, cfg.num_heads, cfg.mlp_dim
  counts = visual_counts(cfg)
  total = 2.0 * d * len(VOCAB)
  for i, nv in enumerate(counts):
    n = nv + QUESTION_LEN
    total += 8 * n * d * d + 4 * n * n * d + 6 * n * d * mlp
    if cfg.prune == "pagerank" and i + 1 < len(counts) and counts[i + 1] < nv:
      total += 2 * n * n * d + cfg.pagerank_iters * 2 * n * n * h
  return float(total)


def reduce_visual(x: jax.Array, keep: int, kind: str, rng: jax.Array,
                  grid: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """Pre-LLM reduction of visual tokens (B, N, D) -> ((B, keep, D), first (B, keep) int32):
  AIM's ToMe rounds, or the baselines random keep / average pooling (2-D squares when keep =
  N / f^2, else runs of N / keep consecutive patches along rows). `first` is the smallest
  original patch index among the patches each output token stands for."""
  b, n, _ = x.shape
  if keep <= 0 or keep >= n:
    return x, jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  if kind == "random":
    x, kept = random_prune(x, keep, rng)
    return x, kept
  if kind == "tome":
    x, _, group_ids = tome_reduce(x, merge_rounds(n, keep))
  else:
    f = int(round(np.sqrt(n / keep)))
    if f * f * keep == n and grid[0] % f == 0 and grid[1] % f == 0:
      x, group_ids, _ = avg_pool_tokens(x, f, grid=grid)
    else:
      x, group_ids, _ = avg_pool_tokens(x, n // keep)
  rows = jnp.arange(b)[:, None]
  first = jnp.full((b, keep), n, jnp.int32).at[rows, group_ids].min(
      jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)))
  return x, first


class AIMVLM(nn.Module):
  """(images (B, H, W, 3), qtypes (B,)) -> (answer logits (B, vocab) at the last question
  token, positions: per LLM layer the RoPE positions (B, n_i) int32 of the tokens it reads,
  visual first, the 3 question tokens last). `rng` feeds the random baselines only."""
  cfg: AIMConfig

  @nn.compact
  def __call__(self, images: jax.Array, qtypes: jax.Array, rng: jax.Array) -> jax.Array:
    cfg = self.cfg
    head_dim = cfg.d_model // cfg.num_heads
    text = Embed(len(VOCAB), cfg.d_model, name="embed")(questions(qtypes))   # (B, 3, D)
    b = text.shape[0]
    counts = visual_counts(cfg)
    if cfg.use_image:
      v, _ = PatchEmbed(cfg.patch_size, cfg.vision_dim, "sincos", name="patch_embed")(images)
      v, _, _ = ToMeEncoder(cfg.vision_layers, cfg.vision_heads, 2 * cfg.vision_dim, r=0,
                            protected=0, name="vision")(v)
      v = DenseGeneral((cfg.d_model,), (None, "embed"), use_bias=True, name="projector")(v)
      g = cfg.image_size // cfg.patch_size
      pre_rng, prune_rng = jax.random.split(rng)
      v, first = reduce_visual(v, counts[0], cfg.pre, pre_rng, (g, g))        # (B, M, D)
      x = jnp.concatenate([v.astype(text.dtype), text], axis=1)
    else:
      x, prune_rng = text, rng
    n = x.shape[1]
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    if cfg.use_image and cfg.keep_positions:
      # Each reduced visual token at its first patch's position, the question where it sits
      # without reduction (N, N + 1, N + 2): the LLM sees the positions it was trained on.
      n_patches = num_patches(cfg)
      pos = jnp.concatenate([first, jnp.broadcast_to(
          jnp.arange(n_patches, n_patches + QUESTION_LEN, dtype=jnp.int32), (b, QUESTION_LEN))],
          axis=1)
    block = dict(num_heads=cfg.num_heads, head_dim=head_dim, mlp_dim=cfg.mlp_dim)
    seen = []
    for i in range(cfg.num_layers):
      seen.append(pos)
      cut = i + 1 < cfg.num_layers and counts[i + 1] < counts[i]
      layer = TransformerBlock(**block, name=f"layer_{i}")
      if cut and cfg.prune == "pagerank":
        qk = {}
        with nn.intercept_methods(_capture_qk(qk)):
          x = layer(x, pos)
        # The layer's attention logits (B, H, n, n), causal, from its own q and k after RoPE.
        q, k = rope(qk["query"], pos), rope(qk["key"], pos)
        n = x.shape[1]
        causal = jnp.tril(jnp.ones((n, n), bool))[None, None]
        text_mask = jnp.arange(n) >= n - QUESTION_LEN
        x, kept = aim_prune(x, attention_logits(q, k, mask=causal),
                            counts[i + 1] + QUESTION_LEN, protected_mask=text_mask,
                            temperature=cfg.temperature, iters=cfg.pagerank_iters)
        pos = jnp.take_along_axis(pos, kept, axis=1)
      else:
        x = layer(x, pos)
        if cut:   # random pruning at the same counts, text protected
          n = x.shape[1]
          score = jax.random.uniform(jax.random.fold_in(prune_rng, i), (b, n))
          score = jnp.where(jnp.arange(n) >= n - QUESTION_LEN, jnp.inf, score)
          x, kept = keep_top_k(x, score, counts[i + 1] + QUESTION_LEN)
          pos = jnp.take_along_axis(pos, kept, axis=1)
    x = RMSNorm(name="final_norm")(x[:, -1])
    return DenseGeneral((len(VOCAB),), ("embed", "vocab"), name="lm_head")(x), tuple(seen)


def _capture_qk(store: dict):
  """An interceptor that keeps the query and key projections (B, n, H, Dh) of the attention
  it wraps (before RoPE), so PageRank reads the same attention the layer computed."""
  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if (context.method_name == "__call__" and mod.name in ("query", "key")
        and mod.parent is not None and getattr(mod.parent, "name", None) == "attn"):
      store[mod.name] = out
    return out
  return interceptor


@register_method("aim")
class AIM(Method):
  """See the module docstring. Batches: shapes batches {'image' (B, H, W, 3) float32, 'label',
  'colour', 'count' (B,) int32, 'positions' (B, max_count, 2) int32, optional 'mask' (B,)}."""
  Config = AIMConfig

  def __init__(self, config: AIMConfig):
    if config.pre not in PRE_REDUCTIONS:
      raise ConfigError(f"config.model.pre='{config.pre}'; use one of "
                        f"{', '.join(PRE_REDUCTIONS)}")
    if config.prune not in PRUNINGS:
      raise ConfigError(f"config.model.prune='{config.prune}'; use one of "
                        f"{', '.join(PRUNINGS)}")
    if config.d_model % config.num_heads or (config.d_model // config.num_heads) % 2:
      raise ConfigError(f"config.model.d_model={config.d_model} must split into "
                        f"num_heads={config.num_heads} heads of even width (RoPE)")
    if config.image_size % config.patch_size:
      raise ConfigError(f"config.model.image_size={config.image_size} is not a multiple of "
                        f"patch_size={config.patch_size}")
    if not 0 <= config.merge_keep <= num_patches(config):
      raise ConfigError(f"config.model.merge_keep={config.merge_keep}; keep between 1 and "
                        f"{num_patches(config)} visual tokens (0 = all)")
    if config.prune != "none" and config.num_layers < 2:
      raise ConfigError(f"config.model.prune='{config.prune}' needs num_layers >= 2 (a cut "
                        "reads the previous layer's attention); use prune='none'")
    if config.prune != "none" and config.prune_start == 0:
      raise ConfigError("config.model.prune_start=0: pruning reads the previous layer's "
                        "attention, so it starts at layer 1 or later (-1 = half depth)")
    super().__init__(config)
    self.module = AIMVLM(config)

  def variant(self, **changes: Any) -> "AIM":
    """The same model with another reduction (same parameters), e.g. AIM off a model trained
    without it: `method.variant(merge_keep=16, prune="pagerank")`."""
    return AIM(dataclasses.replace(self.config, **changes))

  def visual_counts(self) -> list[int]:
    return visual_counts(self.config)

  def prefill_flops(self) -> float:
    return prefill_flops(self.config)

  def forward(self, params: PyTree, images: jax.Array, qtypes: jax.Array,
              rng: jax.Array | None = None) -> jax.Array:
    """Answer logits (B, vocab); `rng` feeds the random baselines (a fixed key when None)."""
    return self.trace(params, images, qtypes, rng)[0]

  def trace(self, params: PyTree, images: jax.Array, qtypes: jax.Array,
            rng: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """(answer logits (B, vocab), per LLM layer the RoPE positions (B, n_i) of the tokens
    it reads): which visual tokens survived where."""
    rng = jax.random.key(0) if rng is None else rng
    return self.module.apply({"params": params}, images, qtypes, rng)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    qtypes = jnp.zeros(batch["image"].shape[:1], jnp.int32)
    return self.module.init(rng, batch["image"], qtypes, rng)["params"]

  def _scored(self, params: PyTree, batch: Batch, qtypes: jax.Array, rng: jax.Array):
    logits = self.forward(params, batch["image"], qtypes, rng)
    target = answers(batch, qtypes, self.config.image_size)
    w = batch.get("mask")
    w = jnp.ones(target.shape, jnp.float32) if w is None else w.astype(jnp.float32)
    nll = token_nll(logits, target)
    correct = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
    metrics = {"loss": Average.of(jnp.sum(nll * w), jnp.sum(w)),
               "accuracy": Average.of(jnp.sum(correct * w), jnp.sum(w)),
               "visual_tokens_last_layer": float(self.visual_counts()[-1])}
    for t, name in enumerate(QUESTION_TYPES):
      wt = w * (qtypes == t)
      metrics[f"accuracy_{name}"] = Average.of(jnp.sum(correct * wt), jnp.sum(wt))
    return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0), metrics

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    """Answer cross-entropy; one random question type per example."""
    q_rng, rng = jax.random.split(rng)
    qtypes = jax.random.randint(q_rng, batch["image"].shape[:1], 0, len(QUESTION_TYPES))
    return self._scored(params, batch, qtypes, rng)

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, Any]:
    """All four questions about every image (deterministic)."""
    rep, qtypes = all_questions(batch)
    return self._scored(params, rep, qtypes, rng)[1]
