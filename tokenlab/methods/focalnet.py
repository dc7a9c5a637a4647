"""FocalNet: an image classifier whose token mixer is focal modulation (method `focalnet`).

Paper: Yang, Li, Dai, Gao, "Focal Modulation Networks" (NeurIPS 2022; arXiv 2203.11926);
reference code microsoft/FocalNet (`classification/focalnet.py`; read, not copied). The block
itself is `tokenlab/nn/focal_modulation.py`; this module assembles the classifier and its
two peers, which differ from it only in the token mixer.

The method, in the paper's order:

1. Patch embedding: images (B, H, W, C) are cut into p x p patches, linearly embedded, with
   fixed 2-D sin-cos positions added (`nn.vision.PatchEmbed`): a grid of H/p x W/p tokens.
2. Focal modulation replaces self-attention (Sec. 3.2): per token, one linear layer gives a
   query q, a context Z^0 and L + 1 gates; L depthwise convolutions of growing kernel
   (k_l = 2 (l - 1) + 3) with GELU give the hierarchical contexts Z^1..Z^L, a global average
   pool of Z^L with GELU gives Z^{L+1}; the gated sum Z_out = sum_l G_l Z^l goes through a
   1x1 convolution h to the modulator M, and the output is proj(q * M).
3. The block (Sec. 3.3): x + mixer(norm(x)), then x + MLP(norm(x)), stacked `num_layers`
   times at one resolution (the paper's isotropic FocalNets, Sec. 4.1 "isotropic", which it
   compares with ViT/DeiT at the same depth and width), a final norm, global average pooling
   and a linear classifier.
4. The peers at equal parameters (`mixer`): "attention" is the repo's ViT block (the shared
   `TransformerBlock`: non-causal multi-head self-attention, same norms and MLP), "conv" a
   plain depthwise-separable convolution mixer (pointwise expand x2, one 5x5 depthwise
   convolution, GELU, pointwise project: no gates, no global context, no modulation). With
   `match_params` each peer's MLP width is set so that its block has the parameters of the
   focal block (`nn.focal_modulation.matched_mlp_dim`); FLOPs are counted by XLA.
5. The modulator maps (Fig. 4 of the paper): `modulators(params, images)` returns each
   block's M, whose per-location norm the reproduction paints over the images.

Follows the paper exactly: the modulation (one projection to q, Z^0 and L + 1 gates; focal
levels with kernel 2 l + 3 and GELU, each convolving the previous level; the global context
from the last level; gated sum; h as a 1x1 convolution with bias; proj(q * M)), the
pre-norm residual block, average pooling, and focal_level = 2 with focal_window = 3 (the
paper's FocalNet-T(SRF) setting).
Simplified, and why: toy scale (32x32 `shapes`, 4x4 patches: an 8x8 grid, 4 blocks of width
48, trained from scratch for minutes on a CPU) instead of ImageNet at 224 px; isotropic
instead of the 4-stage hierarchical backbone (the grid is already 8x8; the paper's isotropic
variant is the one it sets against ViT); RMSNorm and SwiGLU instead of LayerNorm and GELU MLP
in every arm (the shared blocks, so only the mixer differs); no layer scale, drop path or
the paper's augmentation (tiny models, short schedules); sin-cos positions in every arm
(focal and conv would not need them; kept so the three inputs are identical).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from tokenlab.errors import ConfigError
from tokenlab.method import Batch, Method, PyTree
from tokenlab.nn.focal_modulation import MIXERS, MixerBlock, block_param_count, matched_mlp_dim
from tokenlab.nn.layers import DenseGeneral, RMSNorm
from tokenlab.nn.losses import classification_loss
from tokenlab.nn.transformer import TransformerBlock
from tokenlab.nn.vision import PatchEmbed
from tokenlab.registry import register_method


@dataclasses.dataclass(frozen=True)
class FocalNetConfig:
  patch_size: int = 4
  d_model: int = 48
  num_layers: int = 4
  mlp_dim: int = 96            # the focal block's SwiGLU width
  num_classes: int = 4
  mixer: str = "focal"         # focal | attention (ViT block) | conv (depthwise-separable)
  match_params: bool = True    # peers' MLP width set so their blocks match the focal block's
  focal_level: int = 2         # L: depthwise convolutions of kernel 3, 5, ...
  focal_window: int = 3
  focal_factor: int = 2
  conv_kernel: int = 5
  conv_expansion: int = 2
  num_heads: int = 4
  position: str = "sincos"
  gate_scale: float = 1.0      # 0: the zero-gate check (no context reaches the modulator)
  dwconv_impl: str = "auto"    # auto (shift on CPU, xla elsewhere) | shift | xla
  label_smoothing: float = 0.0

  def mixer_kwargs(self) -> dict[str, int]:
    return dict(focal_level=self.focal_level, focal_window=self.focal_window,
                focal_factor=self.focal_factor, conv_kernel=self.conv_kernel,
                conv_expansion=self.conv_expansion, num_heads=self.num_heads)

  def block_mlp_dim(self) -> int:
    """The SwiGLU width of this config's blocks (matched to the focal block's parameters)."""
    if not self.match_params or self.mixer == "focal":
      return self.mlp_dim
    return matched_mlp_dim(self.mixer, self.d_model, self.mlp_dim, **self.mixer_kwargs())

  def param_count(self, image_size: int, channels: int = 3) -> int:
    """Every parameter of the classifier (closed form; equal to the initialised tree's)."""
    d, p = self.d_model, self.patch_size
    blocks = self.num_layers * block_param_count(self.mixer, d, self.block_mlp_dim(),
                                                 **self.mixer_kwargs())
    embed = (p * p * channels + 1) * d
    return embed + blocks + d + (d + 1) * self.num_classes


class FocalNetModule(nn.Module):
  """images (B, H, W, C) -> logits (B, num_classes); the modulators are sown into
  "intermediates" by the focal blocks."""
  cfg: FocalNetConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.cfg
    x, _ = PatchEmbed(cfg.patch_size, cfg.d_model, cfg.position, name="patch_embed")(images)
    grid = (images.shape[1] // cfg.patch_size, images.shape[2] // cfg.patch_size)
    mlp_dim = cfg.block_mlp_dim()
    for i in range(cfg.num_layers):
      if cfg.mixer == "attention":
        x = TransformerBlock(cfg.num_heads, cfg.d_model // cfg.num_heads, mlp_dim,
                             causal=False, use_rope=False, name=f"block_{i}")(x)
      else:
        x = MixerBlock(cfg.mixer, grid, mlp_dim, cfg.focal_level, cfg.focal_window,
                       cfg.focal_factor, cfg.conv_kernel, cfg.conv_expansion,
                       gate_scale=cfg.gate_scale,
                       dwconv_impl=None if cfg.dwconv_impl == "auto" else cfg.dwconv_impl,
                       name=f"block_{i}")(x)
    x = RMSNorm(name="final_norm")(x)
    return DenseGeneral((cfg.num_classes,), ("embed", None), use_bias=True,
                        name="head")(x.mean(axis=1))


@register_method("focalnet")
class FocalNet(Method):
  """See the module docstring. Batches: {'image' (B, H, W, C) float32, 'label' (B,) int32,
  optional 'mask' (B,) (padding rows of eval batches weigh 0)}."""
  Config = FocalNetConfig

  def __init__(self, config: FocalNetConfig):
    if config.mixer not in MIXERS:
      raise ConfigError(f"config.model.mixer='{config.mixer}'; use one of {', '.join(MIXERS)}")
    if config.mixer == "attention" and config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} does not split into "
                        f"num_heads={config.num_heads} heads; pass a divisor")
    if config.dwconv_impl not in ("auto", "shift", "xla"):
      raise ConfigError(f"config.model.dwconv_impl='{config.dwconv_impl}'; use auto, shift or "
                        "xla")
    if config.focal_level < 1:
      raise ConfigError(f"config.model.focal_level={config.focal_level}; pass at least 1")
    super().__init__(config)
    self.module = FocalNetModule(config)

  def variant(self, **changes: Any) -> "FocalNet":
    """The same model with other settings, e.g. `variant(gate_scale=0.0)`."""
    return FocalNet(dataclasses.replace(self.config, **changes))

  def forward(self, params: PyTree, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) -> logits (B, num_classes)."""
    return self.module.apply({"params": params}, images)

  def modulators(self, params: PyTree, images: jax.Array) -> list[jax.Array]:
    """The modulator M (B, H/p, W/p, d) of every focal block, first block first."""
    _, state = self.module.apply({"params": params}, images, mutable=["intermediates"])
    inter = state["intermediates"]
    return [inter[f"block_{i}"]["mixer"]["modulator"][0] for i in range(self.config.num_layers)]

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    return self.module.init(rng, batch["image"])["params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    return classification_loss(self.forward(params, batch["image"]), batch["label"],
                               batch.get("mask"), self.config.label_smoothing)
