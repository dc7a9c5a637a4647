"""Token reduction as a modelling choice: a ViT whose blocks reduce tokens while it trains
(method `token_reduction`).

Paper: "Token Reduction Should Go Beyond Efficiency in Generative Models -- From Vision,
Language to Multimodality" (arXiv 2505.18227, 2025), a position paper. It argues that token
reduction (merging, pruning) should not only buy speed at inference but be a principle of the
model itself, one that shapes what the model attends to and learns: among its claims, that
reduction can "mitigate overthinking and hallucinations", "maintain coherence over long
inputs" and "improve robustness". It has no method of its own; it surveys ToMe-style merging
and attention-score / importance pruning. This module is the smallest model that puts the
position to a test: the same ViT, with or without reduction inside its blocks, during training
and at test time.

The model, top to bottom:

1. A plain ViT classifier: images (B, H, W, C) cut into p x p patches (`nn.vision.PatchEmbed`:
   linear embedding + fixed 2-D sin-cos positions), a learned class token prepended, L pre-norm
   blocks (attention, reduction, GELU MLP), the class token's final state layer-normed into a
   linear classifier.
2. Reduction between attention and MLP of every block, by any entry of the toolbox
   (`tokenlab.nn.token_reduction.REDUCTIONS`, one interface `reduce_tokens`): "tome" (ToMe's
   bipartite soft matching: size-weighted merges, proportional attention), "window" (merge
   adjacent pairs inside local windows), "attention" (keep the tokens the class token attends
   to most: EViT's score), "pagerank" (AIM's PageRank importance over the block's attention),
   "random" (uniform dropping, the control). Each block removes r tokens; the class token is
   protected. `r = 0` is the plain ViT.
3. Reduction at training time vs only at test time: merging and pruning have no parameters, so
   one set of weights runs with any reduction. A model trained with reduction r (the paper's
   "beyond efficiency" use: the reduction is part of what is learned) and a model trained
   without it and reduced only at test time (the efficiency use) are two configurations of the
   same module (`variant(r=..., reduction=...)`). Gradients flow through merges (weighted means)
   and through the kept tokens; the choice of what to merge or keep is not differentiated.

Follows the papers it builds on exactly: ToMe's place of reduction, metric (keys averaged over
heads), matching, size-weighted merges and proportional attention; EViT's class-token score;
AIM's PageRank (temperature 0.1, 5 iterations, RMS over heads). Simplified, and why: the
position paper names no model, data or protocol; we test one of its claims (robustness) on a
toy task a CPU trains in minutes: `shapes` (32x32, the shape class) with solid distractor
squares (`config.data.augment='clutter'`), a 4-block d=48 ViT from scratch instead of a large
generative model; a classifier, not a generator, because robustness to distractors is
measured exactly there (the paper's generative setting is out of reach at this scale).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.errors import ConfigError
from tokenlab.nn.layers import DenseGeneral, param_with_axes
from tokenlab.nn.token_reduction import (REDUCTIONS, ReducingClassifier, ToMeEncoder,
                                         token_counts)
from tokenlab.nn.vision import PatchEmbed
from tokenlab.registry import register_method


@dataclasses.dataclass(frozen=True)
class TokenReductionConfig:
  patch_size: int = 4
  d_model: int = 48
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 96
  num_classes: int = 4
  r: int = 0                  # tokens removed per block (0 = no reduction)
  reduction: str = "attention"  # an entry of nn.token_reduction.REDUCTIONS
  window: int = 8             # window length of reduction "window" (one row of 8 patches)
  label_smoothing: float = 0.0


class ReducingViT(nn.Module):
  """images (B, H, W, C) -> (logits (B, num_classes), sizes (B, M), group_ids (B, N + 1)):
  N = (H / p) (W / p) patches, M tokens left after the last block (class token first);
  group_ids maps every input token to its final token (-1: pruned)."""
  cfg: TokenReductionConfig

  @nn.compact
  def __call__(self, images: jax.Array):
    cfg = self.cfg
    x, _ = PatchEmbed(cfg.patch_size, cfg.d_model, name="patch_embed")(images)
    cls = param_with_axes(self, "cls_token", nn.initializers.zeros, (cfg.d_model,),
                          ("embed",), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.d_model))
    x, sizes, group_ids = ToMeEncoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim, r=cfg.r,
                                      protected=1, reduction=cfg.reduction,
                                      window=cfg.window, name="encoder")(
                                          jnp.concatenate([cls, x], axis=1))
    logits = DenseGeneral((cfg.num_classes,), ("embed", None), use_bias=True,
                          name="head")(x[:, 0])
    return logits, sizes, group_ids


@register_method("token_reduction")
class TokenReduction(ReducingClassifier):
  """See the module docstring. Batches: {'image' (B, H, W, C) float32, 'label' (B,) int32,
  optional 'mask' (B,) (padding rows of eval batches weigh 0)}."""
  Config = TokenReductionConfig

  def __init__(self, config: TokenReductionConfig):
    if config.reduction not in REDUCTIONS:
      raise ConfigError(f"config.model.reduction='{config.reduction}'; use one of "
                        f"{', '.join(REDUCTIONS)}")
    if config.r < 0:
      raise ConfigError(f"config.model.r={config.r}; pass r >= 0 tokens per block")
    super().__init__(config)
    self.module = ReducingViT(config)

  def variant(self, **changes: Any) -> "TokenReduction":
    """The same weights under another reduction, e.g. `variant(r=8)` reduces at test time a
    model trained with r = 0."""
    return TokenReduction(dataclasses.replace(self.config, **changes))

  def token_counts(self, num_patches: int) -> list[int]:
    """Tokens (class token included) after each block ("window" removes exactly r)."""
    if self.config.reduction == "window":
      return [num_patches + 1 - self.config.r * (i + 1) for i in range(self.config.num_layers)]
    return token_counts(num_patches + 1, [self.config.r] * self.config.num_layers, protected=1)
