"""xAR: next-X prediction, with entities = cells of k x k tokens, flow matching per entity
and noisy context learning.

Ren, S., Yu, Q., He, J., Shen, X., Yuille, A., Chen, L.-C. "Beyond Next-Token: Next-X
Prediction for Autoregressive Visual Generation", arXiv 2502.20388 (2025); reference code
OliverRensu/xAR (models/xar.py, models/sampler.py).

The method, in the paper's order:

1. Entities. The image's token grid (here: p x p pixel patches of the image, a g x g grid of
   continuous vectors) is cut into entities X. This module implements the paper's "cell":
   k x k neighbouring tokens, cells in raster order and tokens in raster order within a cell
   (`entity_order`). k = 1 is ordinary next-token prediction; k = g is one entity, the whole
   image (plain flow matching). The sequence is the tokens in entity-major order.
2. Continuous entity regression by flow matching. Each entity gets its own time t_e from a
   logit-normal law and its own noise; its noisy value is x_t = (1 - t) eps + t x (the
   linear path of `tokenlab.nn.flow_matching`, t = 0 noise and t = 1 data: the paper writes
   the same path with t reversed) and the target velocity is x - eps. The loss is the mean
   squared velocity error over all tokens of all entities (`flow_matching_loss`).
3. Noisy context learning (NCL). One transformer pass over the whole noisy sequence with a
   block-causal mask over entities (`nn.next_scale.block_causal_mask`): the tokens of entity
   e see all tokens of entities <= e. Entity e's tokens predict entity e's velocity, so the
   context of entity e is the *noisy* entities before it, each at its own noise level; the
   model is never shown clean ground truth as context (no teacher forcing). The arm without
   NCL (`noisy_context=False`) is teacher forcing: the sequence is [clean entities; noisy
   entities], clean entities see clean entities <= theirs, and noisy entity e sees clean
   entities < e and itself (`teacher_forcing_mask`); the loss is on the noisy half.
4. Conditioning by AdaLN. Every token is modulated by c = class embedding + timestep
   embedding of its own entity's t (1000 t, as the reference): the DiT blocks of
   `tokenlab.nn.vision` (adaLN-Zero, zero-initialised output layer) with per-token c and the
   block-causal mask as an attention bias. Class labels are dropped to a null class with
   probability 0.1 (classifier-free guidance).
5. Sampling. Entities one after another; each by `euler_sample` from Gaussian noise over
   `sample_steps` uniform Euler steps, with the entities already generated as clean context
   (t = 1) and the same block-causal mask, so entities after the current one are never read.
   Optional classifier-free guidance (`cfg_scale`).

Follows the paper: cells of k x k tokens as entities in raster order; one flow-matching
velocity per token with an independent logit-normal t per entity; noisy context through a
single block-causal pass (the reference's `forward`); per-entity adaLN conditioning on class
+ time; clean generated entities as context at sampling (the reference appends them with
t = 0 in its reversed convention); class dropout 0.1 for CFG.
Simplified, and why:
- Pixels, not a VAE latent: tokens are p x p pixel patches on a 4 x 4 grid (the
  mini-reproduction: 2 x 2 patches of the 8 x 8 digits, cells of 2 x 2 tokens; the paper:
  cells of 8 x 8 tokens of a 16 x 16 grid of a pretrained 16-channel VAE latent of ImageNet
  256 px). Nothing pretrained may be downloaded, and training our own continuous tokenizer
  would spend most of the CPU budget on the tokenizer; patches keep the study on the entity
  and context questions. On 28 x 28 MNIST (7 x 7 patches) the network did not learn within
  that budget (see BUILD_NOTES.md, "xar (issue 16)").
- One DiT stack (adaLN-Zero blocks with tokenlab's SwiGLU MLP and a parameter-free LayerNorm)
  with fixed 2-D sin-cos positions, not the reference's encoder + decoder stacks with RMSNorm,
  learned positions and RoPE: the blocks are written once in `nn/vision.py`.
- Euler ODE sampling (uniform steps) and a constant CFG scale, not the reference's
  Euler-Maruyama SDE with a CFG scale ramped over entities; no key/value cache (every Euler
  step recomputes the sequence, the same in every arm, so times compare the number of
  sequential steps).
- The teacher-forcing arm's doubled sequence is our construction (the paper reports the
  ablation, not its code); at equal compute it runs half the batch (equal tokens per step).
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
from tokenlab.nn.flow_matching import euler_sample, flow_matching_loss, logit_normal_t
from tokenlab.nn.layers import DenseGeneral
from tokenlab.nn.next_scale import block_causal_mask
from tokenlab.nn.vision import (ClassEmbedder, DiTBlock, DiTFinalLayer, TimestepEmbedder,
                                default_mlp_dim, patchify, sincos_2d, unpatchify)
from tokenlab.registry import register_method

NEG_INF = -1e9     # additive attention bias outside the mask (every row keeps its own block)


@dataclasses.dataclass(frozen=True)
class XARConfig:
  cell: int = 2                 # k: entities are k x k cells of tokens (1 = next-token)
  noisy_context: bool = True    # NCL (the paper) | False: teacher forcing, clean context
  image_size: int = 8           # H = W of the images (8 x 8 digits)
  channels: int = 1
  patch_size: int = 2           # pixels per token side: a token is p*p*channels values
  num_classes: int = 10
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  class_dropout: float = 0.1    # labels dropped to the null class (CFG), as the reference
  t_mean: float = 0.0           # logit-normal t = sigmoid(N(t_mean, t_std))
  t_std: float = 1.0
  sample_steps: int = 16        # Euler steps per entity
  cfg_scale: float = 1.0        # classifier-free guidance at sampling (1 = none)


# ----------------------------------------------------------------------------- entities


def entity_order(grid: int, cell: int) -> np.ndarray:
  """(grid*grid,) raster indices of the tokens in entity-major order: the k x k cells in
  raster order, the tokens of a cell in raster order."""
  if cell < 1 or grid % cell:
    raise ConfigError(f"config.model.cell={cell} does not tile a {grid} x {grid} token grid; "
                      f"use a divisor of {grid}")
  idx = np.arange(grid * grid).reshape(grid // cell, cell, grid // cell, cell)
  return idx.transpose(0, 2, 1, 3).reshape(-1)


def teacher_forcing_mask(num_entities: int, tokens_per_entity: int) -> np.ndarray:
  """(2L, 2L) bool over [clean entities; noisy entities], L = E x T: clean entity a sees clean
  entities <= a; noisy entity a sees clean entities < a and its own noisy tokens; nothing sees
  a noisy entity but itself."""
  ids = np.repeat(np.arange(num_entities), tokens_per_entity)
  clean_clean = ids[None, :] <= ids[:, None]
  noisy_clean = ids[None, :] < ids[:, None]
  noisy_noisy = ids[None, :] == ids[:, None]
  none = np.zeros_like(clean_clean)
  return np.block([[clean_clean, none], [noisy_clean, noisy_noisy]])


class XARModule(nn.Module):
  """The velocity network: (x (B, L, P) tokens in entity order, t (B, E') per entity,
  labels (B,), pos (L, d) positions, bias (L, L) attention bias) -> velocity (B, L, P).

  L = E' x T tokens; every token is conditioned (adaLN) on class + its entity's time.
  """
  cfg: XARConfig
  tokens_per_entity: int

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array, pos: jax.Array,
               bias: jax.Array, *, train: bool = False,
               drop_labels: jax.Array | None = None) -> jax.Array:
    cfg, b = self.cfg, x.shape[0]
    h = DenseGeneral((cfg.d_model,), (None, "embed"), use_bias=True, name="embed")(x)
    h = h + pos.astype(h.dtype)[None]
    # The reference embeds 1000 t (its DiT timestep scale): the sin-cos frequencies resolve t.
    c = TimestepEmbedder(cfg.d_model, name="t_embed")(1000.0 * t.reshape(-1))
    c = c.reshape(b, t.shape[1], cfg.d_model)
    c = c + ClassEmbedder(cfg.num_classes, cfg.d_model, cfg.class_dropout, name="y_embed")(
        labels, train=train, drop=drop_labels)[:, None]
    c = jnp.repeat(c, self.tokens_per_entity, axis=1)             # (B, L, d): per token
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.d_model // cfg.num_heads,
                 mlp_dim=default_mlp_dim(cfg.d_model))
    bias = bias[None, None]
    for i in range(cfg.num_layers):
      h = DiTBlock(**block, name=f"block_{i}")(h, c, bias=bias)
    return DiTFinalLayer(x.shape[-1], name="final")(h, c)


# ------------------------------------------------------------------------------- method


@register_method("xar")
class XAR(Method):
  """See the module docstring."""
  Config = XARConfig

  def __init__(self, config: XARConfig):
    super().__init__(config)
    if config.image_size % config.patch_size:
      raise ConfigError(f"config.model.patch_size={config.patch_size} does not divide "
                        f"image_size={config.image_size}")
    if config.d_model % config.num_heads or (config.d_model // config.num_heads) % 2:
      raise ConfigError(f"config.model.d_model={config.d_model} must split into "
                        f"num_heads={config.num_heads} heads of even size")
    self.grid = config.image_size // config.patch_size
    self.order = entity_order(self.grid, config.cell)
    self.inverse = np.argsort(self.order)
    self.tokens_per_entity = config.cell ** 2
    self.num_entities = self.grid ** 2 // self.tokens_per_entity
    self.token_dim = config.patch_size ** 2 * config.channels
    # Positions: fixed 2-D sin-cos of each token's (row, col), in entity order.
    self.pos = np.asarray(sincos_2d(self.grid, self.grid, config.d_model))[self.order]
    sizes = [self.tokens_per_entity] * self.num_entities
    self.bias = np.where(block_causal_mask(sizes), 0.0, NEG_INF).astype(np.float32)
    self.tf_bias = np.where(teacher_forcing_mask(self.num_entities, self.tokens_per_entity),
                            0.0, NEG_INF).astype(np.float32)
    self.module = XARModule(config, self.tokens_per_entity)

  # ------------------------------------------------------------------ tokens

  def tokens(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, C) in [0, 1] -> (B, L, P) tokens in [-1, 1], entity order."""
    x = patchify(images.astype(jnp.float32) * 2.0 - 1.0, self.config.patch_size)
    return x[:, self.order]

  def images(self, tokens: jax.Array) -> jax.Array:
    """(B, L, P) tokens in entity order -> images (B, H, W, C) in [0, 1] (clipped)."""
    s = self.config.image_size
    x = unpatchify(tokens[:, self.inverse], self.config.patch_size, s, s)
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)

  def velocity(self, params: PyTree, x: jax.Array, t_entity: jax.Array, labels: jax.Array,
               *, rng: jax.Array | None = None, drop_labels: jax.Array | None = None
               ) -> jax.Array:
    """The block-causal velocity of every token: x (B, L, P), t_entity (B, E) -> (B, L, P).
    `rng` turns on training-time class dropout."""
    rngs = {"dropout": rng} if rng is not None else {}
    return self.module.apply({"params": params}, x, t_entity, labels, self.pos, self.bias,
                             train=rng is not None, drop_labels=drop_labels, rngs=rngs)

  def teacher_forced_velocity(self, params: PyTree, clean: jax.Array, x: jax.Array,
                              t_entity: jax.Array, labels: jax.Array, *,
                              rng: jax.Array | None = None) -> jax.Array:
    """Velocity of the noisy tokens x (B, L, P) given the clean tokens as context (the arm
    without NCL): one pass over [clean; x] with `teacher_forcing_mask`."""
    rngs = {"dropout": rng} if rng is not None else {}
    seq = jnp.concatenate([clean, x], axis=1)
    t = jnp.concatenate([jnp.ones_like(t_entity), t_entity], axis=1)
    pos = np.concatenate([self.pos, self.pos])
    v = self.module.apply({"params": params}, seq, t, labels, pos, self.tf_bias,
                          train=rng is not None, rngs=rngs)
    return v[:, x.shape[1]:]

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    b = batch["image"].shape[0]
    x = jnp.zeros((b, self.grid ** 2, self.token_dim), jnp.float32)
    t = jnp.zeros((b, self.num_entities), jnp.float32)
    labels = jnp.zeros((b,), jnp.int32)
    # An "unsafe_rbg" key seeded by `rng`: cheaper to compile than threefry on CPU (as the
    # image tokenizer's init).
    seed = jax.random.randint(rng, (), 0, np.iinfo(np.int32).max)
    rng = jax.random.key(seed, impl="unsafe_rbg")
    return self.module.init(rng, x, t, labels, self.pos, self.bias)["params"]

  def flow_loss(self, params: PyTree, batch: Batch, rng: jax.Array, *,
                train: bool = True) -> jax.Array:
    """The flow-matching loss of one batch (scalar): independent logit-normal t and noise per
    entity; NCL (one block-causal pass over the noisy sequence) or teacher forcing."""
    cfg = self.config
    x1 = self.tokens(batch["image"])
    labels = batch["label"].astype(jnp.int32)
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    t_entity = logit_normal_t(k_t, (x1.shape[0], self.num_entities), cfg.t_mean, cfg.t_std)
    t_token = jnp.repeat(t_entity, self.tokens_per_entity, axis=1)     # (B, L)
    noise = jax.random.normal(k_noise, x1.shape)
    drop_rng = k_drop if train else None
    if cfg.noisy_context:
      fn = lambda x, _: self.velocity(params, x, t_entity, labels, rng=drop_rng)
    else:
      fn = lambda x, _: self.teacher_forced_velocity(params, x1, x, t_entity, labels,
                                                     rng=drop_rng)
    return flow_matching_loss(fn, noise, x1, t_token)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    loss = self.flow_loss(params, batch, rng)
    return loss, {"loss": Average.of(loss, 1.0)}

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, Any]:
    # Eval has no class dropout: the conditional flow loss.
    return {"loss": Average.of(self.flow_loss(params, batch, rng, train=False), 1.0)}

  # ------------------------------------------------------------------ sampling

  def generate_tokens(self, params: PyTree, labels: jax.Array, rng: jax.Array) -> jax.Array:
    """Class-conditional tokens (B, L, P) in entity order, one entity after another."""
    cfg, b = self.config, labels.shape[0]
    T, E, P = self.tokens_per_entity, self.num_entities, self.token_dim
    guided = cfg.cfg_scale != 1.0
    null = jnp.full_like(labels, cfg.num_classes)
    both_labels = jnp.concatenate([labels, null]) if guided else labels
    ids = jnp.arange(E)

    def entity(e, carry):
      buf, rng = carry
      rng, key = jax.random.split(rng)
      # Entities before e are clean context (t = 1); e is at the Euler time; the ones after
      # e are masked out of e's attention, so their value and time are never read.
      t_ctx = (ids < e).astype(jnp.float32)

      def velocity(x, t):                       # x (R, T, P), t (R,), R = B or 2B
        rows = x.shape[0]
        seq = buf if rows == b else jnp.concatenate([buf, buf])
        seq = jax.lax.dynamic_update_slice(seq, x, (0, e * T, 0))
        t_ent = jnp.where(ids[None] == e, t[:, None], t_ctx[None])
        v = self.velocity(params, seq, t_ent, labels if rows == b else both_labels)
        return jax.lax.dynamic_slice_in_dim(v, e * T, T, axis=1)

      x = euler_sample(velocity, jax.random.normal(key, (b, T, P)), cfg.sample_steps,
                       cfg_scale=cfg.cfg_scale if guided else None)
      return jax.lax.dynamic_update_slice(buf, x, (0, e * T, 0)), rng

    buf = jnp.zeros((b, self.grid ** 2, P), jnp.float32)
    buf, _ = jax.lax.fori_loop(0, E, entity, (buf, rng))
    return buf

  def generate(self, params: PyTree, labels: jax.Array, rng: jax.Array) -> jax.Array:
    """labels (B,) -> images (B, H, W, C) in [0, 1]."""
    return self.images(self.generate_tokens(params, labels, rng))

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """(2, B, H, W, C): the batch's images above samples of their labels (`tokenlab
    sample`)."""
    images = batch["image"]
    out = self.generate(params, batch["label"].astype(jnp.int32), rng)
    return jnp.stack([images.astype(out.dtype), out])
