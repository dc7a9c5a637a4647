"""Focal modulation (Yang, Li, Dai, Gao, "Focal Modulation Networks", NeurIPS 2022) and the
token mixers it is compared with, as blocks over a grid of tokens.

Focal modulation replaces self-attention's query-key interaction with three steps (paper
Sec. 3.2, eq. 3-7; reference code microsoft/FocalNet `classification/focalnet.py`, read, not
copied):

  [q, Z^0, G] = f(x)                              one linear layer: query, context, L+1 gates
  Z^l = GELU(DWConv_{k_l}(Z^{l-1})),  k_l = focal_factor * (l-1) + focal_window   (l = 1..L)
  Z^{L+1} = GELU(GlobalAvgPool(Z^L))              the global context
  Z_out = sum_{l=1}^{L+1} G_l * Z^l               gated aggregation (one gate per location)
  M = h(Z_out)                                    the modulator: a 1x1 convolution
  y = proj(q * M)                                 element-wise modulation of the query

- `DepthwiseConv`: k x k depthwise convolution (one filter per channel), SAME padding; on CPU
  a sum of k^2 shifted, per-channel-scaled copies (XLA:CPU runs a grouped convolution of
  500 x 8 x 8 x 96 about 15-20x slower: 280 ms vs 13 ms at k = 3, 383 vs 26 ms at k = 5,
  measured on this 2-core machine), elsewhere XLA's grouped convolution (cuDNN / the TPU
  convolution unit). Both compute the same function (a test compares them).
- `focal_kernel_sizes`: the kernel sizes k_l of the L focal levels.
- `FocalModulation`: the mixer above on (B, H, W, C); it sows the modulator M and the gates G
  into the "intermediates" collection (the paper's modulator maps, Fig. 4).
- `ConvMixer`: the plain convolution peer (pointwise expand, one k x k depthwise convolution,
  GELU, pointwise project: MobileNet/ConvNeXt's depthwise-separable mixer), no gates, no
  global context, no modulation.
- `MixerBlock`: the pre-norm residual block around a grid mixer, x + mixer(RMSNorm(x)), then
  x + SwiGLU(RMSNorm(x)): the same norms and MLP as the shared `TransformerBlock`, so a
  backbone of MixerBlocks differs from a ViT only in the token mixer.
- `mixer_param_count`: parameters of each mixer (and of a block) in closed form, so configs
  can match parameter counts across mixers (tests compare it with the real trees).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.layers import DenseGeneral, RMSNorm, SwiGLU, param_with_axes

MIXERS = ("focal", "conv", "attention")
GRID_MIXERS = ("focal", "conv")


def focal_kernel_sizes(focal_level: int, focal_window: int = 3,
                       focal_factor: int = 2) -> list[int]:
  """Kernel size of each focal level: k_l = focal_factor * (l - 1) + focal_window, l = 1..L
  (the paper's default window 3, factor 2: 3, 5, 7, ...)."""
  return [focal_factor * l + focal_window for l in range(focal_level)]


class DepthwiseConv(nn.Module):
  """(B, H, W, C) -> (B, H, W, C): a k x k filter per channel, SAME (zero) padding.

  The kernel is (k, k, 1, C) with its channel axis on `embed`.
  """
  kernel_size: int
  use_bias: bool = False
  implementation: str | None = None   # None: "shift" on CPU, else "xla"
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, k = x.shape[-1], self.kernel_size
    # PyTorch's Conv2d default init for a depthwise filter: fan_in = k * k.
    init = nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform")
    kernel = param_with_axes(self, "kernel", init, (k, k, 1, c), (None, None, None, "embed"),
                             self.param_dtype).astype(x.dtype)
    y = depthwise_conv(x, kernel, self.implementation)
    if self.use_bias:
      y = y + param_with_axes(self, "bias", nn.initializers.zeros, (c,), ("embed",),
                              self.param_dtype).astype(y.dtype)
    return y


def depthwise_conv(x: jax.Array, kernel: jax.Array, implementation: str | None = None
                   ) -> jax.Array:
  """x (B, H, W, C), kernel (k, k, 1, C) with k odd -> (B, H, W, C), SAME zero padding.

  implementation: "xla" (grouped `conv_general_dilated`), "shift" (sum over the k^2 offsets
  of the zero-padded input's shifted window times that offset's per-channel weight), or None
  ("shift" on CPU, "xla" elsewhere).
  """
  impl = implementation or ("shift" if jax.default_backend() == "cpu" else "xla")
  if impl == "xla":
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])
  if impl != "shift":
    raise ValueError(f"implementation={impl!r}; use 'xla', 'shift' or None")
  k, (h, w) = kernel.shape[0], x.shape[1:3]
  pad = k // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  y = jnp.zeros_like(x)
  for i in range(k):
    for j in range(k):
      y = y + xp[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
  return y


class FocalModulation(nn.Module):
  """Focal modulation on a grid: (B, H, W, C) -> (B, H, W, C) (see the module docstring).

  `gate_scale` multiplies the gates (1 normally; 0 is the paper's check that zero gates
  aggregate no context: then M = h(0) = h's bias everywhere). The modulator M (B, H, W, C)
  and the gates G (B, H, W, L + 1) are sown into "intermediates" as `modulator` / `gates`.
  """
  focal_level: int = 2
  focal_window: int = 3
  focal_factor: int = 2
  normalize_modulator: bool = False
  gate_scale: float = 1.0
  dwconv_impl: str | None = None      # see `depthwise_conv`
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, levels = x.shape[-1], self.focal_level
    dense = lambda n, axes, name: DenseGeneral((n,), axes, use_bias=True,
                                               param_dtype=self.param_dtype, name=name)
    # One projection gives the query, the first context Z^0 and the L + 1 gates.
    qzg = dense(2 * c + levels + 1, ("embed", None), "f")(x)
    q, ctx, gates = jnp.split(qzg, [c, 2 * c], axis=-1)
    gates = gates * self.gate_scale
    # Hierarchical contextualisation: each level convolves the previous level's output, so
    # the receptive field grows (3, then 3 + 5 - 1 = 7, ...); gated aggregation sums them.
    ctx_all = jnp.zeros_like(ctx)
    for l, k in enumerate(focal_kernel_sizes(levels, self.focal_window, self.focal_factor)):
      ctx = jax.nn.gelu(DepthwiseConv(k, implementation=self.dwconv_impl,
                                      param_dtype=self.param_dtype, name=f"focal_{l}")(ctx),
                        approximate=False)
      ctx_all = ctx_all + ctx * gates[..., l:l + 1]
    # Global context: the last level averaged over the whole grid, one vector per image.
    ctx_global = jax.nn.gelu(ctx.mean(axis=(1, 2), keepdims=True), approximate=False)
    ctx_all = ctx_all + ctx_global * gates[..., levels:]
    if self.normalize_modulator:
      ctx_all = ctx_all / (levels + 1)
    modulator = dense(c, ("embed", "mlp"), "h")(ctx_all)     # 1x1 conv = a per-pixel linear
    self.sow("intermediates", "modulator", modulator)
    self.sow("intermediates", "gates", gates)
    return dense(c, ("mlp", "embed"), "proj")(q * modulator)


class ConvMixer(nn.Module):
  """The plain convolution mixer: (B, H, W, C) -> (B, H, W, C),
  proj(GELU(DWConv_k(expand(x)))) with expand C -> expansion * C."""
  kernel_size: int = 5
  expansion: int = 2
  dwconv_impl: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    h = DenseGeneral((self.expansion * c,), ("embed", "mlp"), use_bias=True,
                     param_dtype=self.param_dtype, name="expand")(x)
    h = jax.nn.gelu(DepthwiseConv(self.kernel_size, implementation=self.dwconv_impl,
                                  param_dtype=self.param_dtype, name="dwconv")(h),
                    approximate=False)
    return DenseGeneral((c,), ("mlp", "embed"), use_bias=True, param_dtype=self.param_dtype,
                        name="proj")(h)


class MixerBlock(nn.Module):
  """Pre-norm residual block around a grid mixer: tokens (B, H*W, D) of an H x W grid in
  raster order -> (B, H*W, D); x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)).

  mixer: "focal" (`FocalModulation`) or "conv" (`ConvMixer`); self-attention is the shared
  `TransformerBlock` (same norms and MLP).
  """
  mixer: str
  grid: tuple[int, int]
  mlp_dim: int
  focal_level: int = 2
  focal_window: int = 3
  focal_factor: int = 2
  conv_kernel: int = 5
  conv_expansion: int = 2
  gate_scale: float = 1.0
  dwconv_impl: str | None = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.mixer not in GRID_MIXERS:
      raise ValueError(f"mixer={self.mixer!r}; use one of {GRID_MIXERS} (attention is the "
                       f"shared TransformerBlock)")
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    b, n, d = x.shape
    h = RMSNorm(param_dtype=self.param_dtype, name="mixer_norm")(x).reshape(b, *self.grid, d)
    if self.mixer == "focal":
      h = FocalModulation(self.focal_level, self.focal_window, self.focal_factor,
                          gate_scale=self.gate_scale, dwconv_impl=self.dwconv_impl,
                          param_dtype=self.param_dtype, name="mixer")(h)
    else:
      h = ConvMixer(self.conv_kernel, self.conv_expansion, self.dwconv_impl,
                    param_dtype=self.param_dtype, name="mixer")(h)
    x = x + h.reshape(b, n, d)
    h = RMSNorm(param_dtype=self.param_dtype, name="mlp_norm")(x)
    return x + SwiGLU(self.mlp_dim, param_dtype=self.param_dtype, name="mlp")(h)


def mixer_param_count(mixer: str, d: int, *, focal_level: int = 2, focal_window: int = 3,
                      focal_factor: int = 2, conv_kernel: int = 5, conv_expansion: int = 2,
                      num_heads: int = 4, head_dim: int = 0) -> int:
  """Parameters of one token mixer of width d (closed form).

  focal: f (d -> 2d + L + 1, bias) + depthwise kernels d * sum k_l^2 + h and proj (d -> d,
  bias); conv: expand (d -> e d, bias) + e d k^2 + proj (e d -> d, bias); attention: the
  shared MultiHeadAttention's q, k, v, o without biases, 4 d * heads * head_dim.
  """
  if mixer == "focal":
    ks = focal_kernel_sizes(focal_level, focal_window, focal_factor)
    return (d + 1) * (2 * d + focal_level + 1) + d * sum(k * k for k in ks) + 2 * (d + 1) * d
  if mixer == "conv":
    e = conv_expansion * d
    return (d + 1) * e + e * conv_kernel ** 2 + (e + 1) * d
  if mixer == "attention":
    return 4 * d * num_heads * (head_dim or d // num_heads)
  raise ValueError(f"mixer={mixer!r}; use one of {MIXERS}")


def block_param_count(mixer: str, d: int, mlp_dim: int, **mixer_kwargs: Any) -> int:
  """Parameters of one block: the mixer, two RMSNorm scales (2 d), SwiGLU (3 d mlp_dim)."""
  return mixer_param_count(mixer, d, **mixer_kwargs) + 2 * d + 3 * d * mlp_dim


def matched_mlp_dim(mixer: str, d: int, mlp_dim: int, **mixer_kwargs: Any) -> int:
  """The SwiGLU width that gives a `mixer` block the parameters of a focal block with MLP
  width `mlp_dim` (nearest integer): equal parameters across mixers."""
  target = block_param_count("focal", d, mlp_dim, **mixer_kwargs)
  rest = target - mixer_param_count(mixer, d, **mixer_kwargs) - 2 * d
  return max(1, round(rest / (3 * d)))
