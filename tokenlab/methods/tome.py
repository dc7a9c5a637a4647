"""ToMe: a ViT classifier that merges tokens in every block (method `tome`).

Paper: Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT But Faster"
(ICLR 2023); reference code facebookresearch/ToMe (`tome/merge.py`, `tome/patch/timm.py`,
`tome/utils.py`; read, not copied). The merging itself is tokenlab's token_merge kernel
(`tokenlab/kernels/token_merge`) through the toolbox blocks of `tokenlab/nn/token_reduction.py`
(`ToMeBlock`, `ToMeEncoder`); this module only assembles the classifier around them.

The method, in the paper's order:

1. A plain ViT: images (B, H, W, C) are cut into p x p patches (`nn.vision.PatchEmbed`, linear
   embedding + fixed 2-D sin-cos positions), a learned class token is prepended, and L
   pre-norm transformer blocks (attention, then GELU MLP) read the N + 1 tokens; the class
   token's final state, layer-normed, feeds a linear classifier.
2. Token merging between attention and MLP of every block (ToMe Sec. 3): the keys of the
   block's attention, averaged over heads, are the similarity metric; bipartite soft
   matching splits the tokens alternately into sets A and B, joins each A token to its most
   similar B token by cosine similarity, and merges the r most similar pairs by a size-
   weighted average, so each block removes r tokens (r clamped to (N - 1) // 2). The class
   token is protected: it never merges.
3. Size tracking and proportional attention: every token carries the number of patches it
   stands for (s), and attention adds log s to the logits, so a merged token gets the
   attention its s copies would get.
4. The schedule: r per layer, constant, or ToMe's (r, inflection) line (`r_inflect` < 0:
   more merging early, a decreasing schedule; `tokenlab.nn.token_reduction.decreasing_r`).
5. Off the shelf or trained: merging has no parameters, so a ViT trained without it
   (r = 0) can be evaluated with any r (`variant(r=...)`), and a ViT can be trained with it
   (ToMe Sec. 4.2: gradients flow through the weighted average, as through average pooling;
   the matching itself is not differentiated, as under ToMe's `torch.no_grad`).
6. Source tracing (ToMe's visualisation): the composed group ids map every patch to the
   token it ended in (`forward(...)[2]`).

Baselines at equal token counts (the paper's merging-vs-pruning comparison): `reduction=
"random"` drops r random unprotected tokens per block, `reduction="attention"` keeps the
tokens the class token attends to most (EViT's score), both at the same place in the block.

Follows the paper exactly: the place of merging (between attention and MLP), the metric
(keys averaged over heads), bipartite soft matching with alternating A/B and the class token
protected, the size-weighted average, proportional attention with log(size), the (r,
inflection) schedule, off-the-shelf use and training through merging.
Simplified, and why: toy scale (32x32 shapes or 28x28 MNIST, 4x4 patches, a 4-block d=48 ViT
trained from scratch in minutes on a CPU) instead of ImageNet ViT-B/L with MAE/SWAG weights;
no distillation token, data augmentation or label smoothing beyond a config key; merged
tokens keep the original order of the surviving tokens (ToMe concatenates [unmerged A, B];
the kernel keeps the order so tracing and unmerging are a gather). `implementation="plain"`
runs ToMe's own order through `plain_tome_merge` (ToMe's merge.py in jnp), the peer of the
fused kernel in `tokenlab bench vit_tome`.
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
                                         decreasing_r, parse_r, token_counts)
from tokenlab.nn.vision import PatchEmbed
from tokenlab.registry import register_method

IMPLEMENTATIONS = ("kernel", "reference", "pallas_gpu", "pallas_tpu", "plain")


@dataclasses.dataclass(frozen=True)
class ToMeConfig:
  patch_size: int = 4
  d_model: int = 64
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 128
  num_classes: int = 4
  r: int = 0                 # tokens merged away per block (0 = the plain ViT)
  r_inflect: float = 0.0     # ToMe's schedule: 0 constant, < 0 decreasing, > 0 increasing
  prop_attn: bool = True     # log(size) added to the attention logits
  reduction: str = "tome"    # tome | random | attention (the pruning baselines)
  implementation: str = "kernel"  # kernel (best for the backend) | reference | pallas_gpu |
                                  # pallas_tpu | plain (ToMe's merge.py in jnp)
  position: str = "sincos"   # sincos | learned
  label_smoothing: float = 0.0


class ToMeViTModule(nn.Module):
  """images (B, H, W, C) -> (logits (B, num_classes), sizes (B, M), group_ids (B, N + 1) or
  None), N = H/p * W/p patches, M tokens left after the last block (class token first)."""
  cfg: ToMeConfig

  @nn.compact
  def __call__(self, images: jax.Array):
    cfg = self.cfg
    x, _ = PatchEmbed(cfg.patch_size, cfg.d_model, cfg.position, name="patch_embed")(images)
    b = x.shape[0]
    cls = param_with_axes(self, "cls_token", nn.initializers.zeros, (cfg.d_model,),
                          ("embed",), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, cfg.d_model)), x], 1)
    impl = None if cfg.implementation == "kernel" else cfg.implementation
    x, sizes, group_ids = ToMeEncoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                                      r=tuple(schedule(cfg)), protected=1,
                                      prop_attn=cfg.prop_attn, reduction=cfg.reduction,
                                      implementation=impl, name="encoder")(x)
    logits = DenseGeneral((cfg.num_classes,), ("embed", None), use_bias=True,
                          name="head")(x[:, 0])
    return logits, sizes, group_ids


def schedule(cfg: ToMeConfig) -> list[int]:
  """r of every block: constant r, or ToMe's (r, r_inflect) line."""
  if cfg.r_inflect == 0.0:
    return parse_r(cfg.num_layers, cfg.r)
  return [max(v, 0) for v in decreasing_r(cfg.num_layers, cfg.r, cfg.r_inflect)]


@register_method("tome")
class ToMe(ReducingClassifier):
  """See the module docstring. Batches: {'image' (B, H, W, C) float32, 'label' (B,) int32,
  optional 'mask' (B,) (padding rows of eval batches weigh 0)}."""
  Config = ToMeConfig

  def __init__(self, config: ToMeConfig):
    if config.reduction not in REDUCTIONS:
      raise ConfigError(f"config.model.reduction='{config.reduction}'; use one of "
                        f"{', '.join(REDUCTIONS)}")
    if config.implementation not in IMPLEMENTATIONS:
      raise ConfigError(f"config.model.implementation='{config.implementation}'; use one of "
                        f"{', '.join(IMPLEMENTATIONS)}")
    if config.implementation == "plain" and config.reduction != "tome":
      raise ConfigError("implementation='plain' is ToMe's own merge; it needs "
                        "config.model.reduction='tome'")
    if config.r < 0:
      raise ConfigError(f"config.model.r={config.r}; pass r >= 0 tokens per block")
    super().__init__(config)
    self.module = ToMeViTModule(config)

  def variant(self, **changes: Any) -> "ToMe":
    """The same model with another schedule / reduction / implementation (same parameters),
    e.g. `method.variant(r=8)` applies ToMe off the shelf to a model trained with r = 0."""
    return ToMe(dataclasses.replace(self.config, **changes))

  def token_counts(self, num_patches: int) -> list[int]:
    """Tokens (class token included) after each block for images of num_patches patches."""
    return token_counts(num_patches + 1, schedule(self.config), protected=1)
