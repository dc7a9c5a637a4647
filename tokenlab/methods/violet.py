"""VIOLET: End-to-End Video-Language Transformers with Masked Visual-token Modeling (Fu, Li,
Gan, Lin, Wang, Wang, Liu; arXiv 2111.12681, 2021; reference code tsujuifu/pytorch_violet,
`model.py`, `main_pretrain.py`, `main_retrieval.py`, read for the structure, not copied).

The method, in the paper's order:

1. Video transformer (VT). A clip (B, T, H, W, C) in [0, 1] is cut into p x p patches per
   frame (`nn.vision.patchify`), giving a token grid (t, h, w) = (T, H/p, W/p); each patch
   is linearly embedded, plus a fixed 2-D sin-cos position of its (row, col) and a learned
   embedding of its frame (the paper's `emb_pos` + `emb_len`), then `video_layers`
   non-causal transformer blocks attend over the whole grid (space and time jointly).
2. Text. Caption ids (B, L) (0 = padding) are embedded with learned positions behind a
   [CLS] token: embeddings only, as the paper takes BERT's embedding layer.
3. Cross-modal transformer. [video tokens; [CLS], caption tokens] go through `cross_layers`
   non-causal blocks (padding excluded by segment ids). Three heads read its output:
   - VTM (video-text matching): an MLP on the [CLS] output gives one score per (clip,
     caption) pair. Each clip is scored against its own caption and `vtm_candidates` - 1
     captions of other clips in the batch; the loss is the cross-entropy of the true one
     among them with the scores divided by `vtm_temperature` (0.05 as in the reference).
     Retrieval ranks every held-out caption for each clip (and clips for each caption) by
     the same score (`score_matrix`), as the paper's retrieval model does.
   - MLM: 15% of the caption's word positions replaced by [MASK], the text logits (tied to
     the word embedding) predict the originals; loss at the masked positions only.
   - MVM (masked visual-token modeling, the paper's contribution): a 3-D blockwise mask
     (`nn.video_masking.cube_mask`: a union of ct x ch x cw cubes over the token grid until
     `mvm_ratio` of it is covered) zeroes the masked patches' pixels at the input; an MLP
     head predicts, at each masked grid position, the discrete visual token that a frozen
     tokenizer gives that position; cross-entropy at the masked positions only.
   Loss = VTM + `mlm_weight` MLM + `mvm_weight` MVM. With `mvm_weight = 0` no patch is masked
   (the paper's "without MVM" ablation: VTM + MLM only).
4. Optional, not in the paper: `contrastive_weight` > 0 adds a symmetric InfoNCE loss between
   the mean video token and the caption's [CLS] token (each projected and unit-normalised,
   `text_layers` blocks over the caption first), and `retrieval="contrastive"` ranks by their
   cosine. The toy reproduction needs it: trained from scratch on a CPU budget, VTM-only
   retrieval stayed at chance (tokenlab/repro/violet.py HISTORY), while VIOLET starts from
   pre-trained Video Swin and BERT weights.

MVM targets come with the batch as `codes` (B, T, h, w) int32 (the reference also reads
precomputed DALL-E tokens from a file), or, when the batch has none, from the frozen tokenizer
run in `tokenizer_workdir` (an image tokenizer applied to every frame; its grid must equal the
patch grid).

Follows the paper: VT over patches + text embeddings + one cross-modal transformer; VTM with
in-batch negatives and temperature 0.05; masked patches zeroed at the pixels; MVM targets =
a frozen per-frame VQ's codes at the masked positions; blockwise 3-D masking; the three losses
summed with weight 1; retrieval by the VTM score of every pair.

Simplified, and why: joint space-time attention instead of Video Swin (at the toy grid of
4 x 4 x 4 tokens a Swin window of 8 x 7 x 7 would cover the whole grid anyway); no per-frame
[CLS] tokens; cubes of one fixed size (the reference draws T cubes of random sizes) and no
attention-guided masking (the reference's other half of the batches); the text side is a
small word vocabulary of template captions (no BERT); the frame tokenizer is a small VQ
trained on the toy frames (the paper's DALL-E dVAE cannot be downloaded); and pre-training
and retrieval fine-tuning on the same toy corpus (the paper pre-trains on WebVid + CC3M, then
fine-tunes on each retrieval set: at toy scale there is no separate large pre-training
corpus). The two stages are two runs: the fine-tuning run starts from the pre-trained one
(`config.train.init_from`) with `mvm_weight=0` (whole clips) and `mlm_weight=0` (the matching
losses alone), as tokenlab/repro/violet.py does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.corruption import random_subset
from tokenlab.nn.layers import DenseGeneral, Embed, param_with_axes
from tokenlab.nn.losses import token_nll
from tokenlab.nn.transformer import TransformerStack
from tokenlab.nn.video_masking import cube_mask
from tokenlab.nn.vision import default_mlp_dim, patchify, sincos_2d
from tokenlab.registry import register_method

_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class VioletConfig:
  patch_size: int = 8             # pixels per side of a video patch (one frame deep)
  d_model: int = 64
  num_heads: int = 4
  mlp_dim: int = 0                # 0: nn.vision.default_mlp_dim(d_model)
  video_layers: int = 1           # the video transformer's blocks
  cross_layers: int = 2           # the cross-modal transformer's blocks
  max_frames: int = 16            # learned frame embeddings
  text_vocab: int = 256           # caption ids 1..text_vocab-1 (0 = padding); [CLS], [MASK] after
  max_text_len: int = 128         # learned text positions
  codebook_size: int = 64         # MVM classes: the frozen tokenizer's codes
  text_layers: int = 0            # transformer blocks over the caption alone (0: embeddings)
  vtm_weight: float = 1.0
  vtm_candidates: int = 4         # captions scored per clip in training: its own + in-batch
  vtm_temperature: float = 0.05
  contrastive_weight: float = 0.0  # InfoNCE between pooled video and [CLS] text features
  contrastive_temperature: float = 0.07
  retrieval: str = "vtm"          # vtm (fused score of every pair) | contrastive (cosine)
  mlm_weight: float = 1.0
  mlm_prob: float = 0.15
  mvm_weight: float = 1.0         # 0: no MVM and no masked patches (the ablation)
  mvm_ratio: float = 0.3          # share of the token grid covered by masked cubes
  mvm_cube: tuple = (2, 2, 2)     # (frames, rows, cols) of one masked cube, in grid cells
  tokenizer_workdir: str = ""     # frozen frame tokenizer for MVM targets (batch without codes)


def text_ids(config: VioletConfig) -> tuple[int, int]:
  """([CLS] id, [MASK] id): the two ids after the caption vocabulary."""
  return config.text_vocab, config.text_vocab + 1


class _MLP(nn.Module):
  """Dense -> ReLU -> Dense (the reference's VTM and MVM heads, without dropout)."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = DenseGeneral((self.hidden,), ("embed", "mlp"), use_bias=True, name="fc1")(x)
    return DenseGeneral((self.out,), ("mlp", None), use_bias=True, name="fc2")(jax.nn.relu(h))


class VioletModule(nn.Module):
  """The video transformer, the text embedding, the cross-modal transformer and the heads."""
  config: VioletConfig

  def setup(self):
    c = self.config
    block = dict(num_heads=c.num_heads, head_dim=c.d_model // c.num_heads,
                 mlp_dim=c.mlp_dim or default_mlp_dim(c.d_model), causal=False, use_rope=False)
    self.patch_proj = DenseGeneral((c.d_model,), (None, "embed"), use_bias=True,
                                   name="patch_proj")
    self.frame_embed = param_with_axes(self, "frame_embed", _INIT, (c.max_frames, c.d_model),
                                       (None, "embed"), jnp.float32)
    self.video = TransformerStack(c.video_layers, block, name="video")
    self.word_embed = Embed(c.text_vocab + 2, c.d_model, name="word_embed")
    self.text_pos = param_with_axes(self, "text_pos", _INIT, (c.max_text_len + 1, c.d_model),
                                    (None, "embed"), jnp.float32)
    self.text = (TransformerStack(c.text_layers, block, name="text") if c.text_layers
                 else None)
    self.cross = TransformerStack(c.cross_layers, block, name="cross")
    self.video_proj = DenseGeneral((c.d_model,), ("embed", None), name="video_proj")
    self.text_proj = DenseGeneral((c.d_model,), ("embed", None), name="text_proj")
    self.vtm_head = _MLP(2 * c.d_model, 1, name="vtm_head")
    self.mvm_head = _MLP(2 * c.d_model, c.codebook_size, name="mvm_head")

  def encode_video(self, video: jax.Array, masked: jax.Array | None = None) -> jax.Array:
    """video (B, T, H, W, C), masked (B, t, h, w) bool or None -> (B, T*h*w, d): grid tokens in
    (frame, row, col) order; masked patches are zero pixels at the input."""
    c = self.config
    b, t, hh, ww, ch = video.shape
    p = c.patch_size
    if t > c.max_frames:
      raise ConfigError(f"clips of {t} frames exceed config.model.max_frames={c.max_frames}")
    patches = patchify(video.reshape(b * t, hh, ww, ch), p).reshape(b, t, -1, p * p * ch)
    if masked is not None:
      patches = patches * (1.0 - masked.reshape(b, t, -1, 1).astype(patches.dtype))
    x = self.patch_proj(patches)
    x = x + sincos_2d(hh // p, ww // p, c.d_model)[None, None]
    x = x + self.frame_embed[:t][None, :, None]
    return self.video(x.reshape(b, -1, c.d_model))

  def embed_text(self, caption: jax.Array) -> jax.Array:
    """caption (B, L) ids -> (B, 1 + L, d): [CLS] then the words, with learned positions."""
    cls_id, _ = text_ids(self.config)
    ids = jnp.concatenate([jnp.full(caption.shape[:1] + (1,), cls_id, caption.dtype), caption], 1)
    if ids.shape[1] > self.text_pos.shape[0]:
      raise ConfigError(f"captions of {caption.shape[1]} ids exceed config.model.max_text_len="
                        f"{self.config.max_text_len}")
    x = self.word_embed(ids) + self.text_pos[:ids.shape[1]][None]
    if self.text is None:
      return x
    real = jnp.concatenate([jnp.ones_like(caption[:, :1]), caption != 0], 1).astype(jnp.int32)
    return self.text(x, segment_ids=real)

  def embeddings(self, video_tokens: jax.Array, text_tokens: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """Unit-norm retrieval embeddings before fusion: (B, d) of the mean video token and
    (B, d) of the text's [CLS] token, each through its own projection."""
    unit = lambda x: x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)
    return (unit(self.video_proj(jnp.mean(video_tokens, 1))),
            unit(self.text_proj(text_tokens[:, 0])))

  def fuse(self, video_tokens: jax.Array, text_tokens: jax.Array, caption: jax.Array
           ) -> jax.Array:
    """[video; text] through the cross-modal transformer -> (B, Nv + 1 + L, d). Padding ids
    (0) form their own segment, so no real token attends to them."""
    b, nv = video_tokens.shape[:2]
    real = jnp.concatenate([jnp.ones((b, nv + 1), jnp.int32), (caption != 0).astype(jnp.int32)],
                           1)
    return self.cross(jnp.concatenate([video_tokens, text_tokens], 1), segment_ids=real)

  def vtm_score(self, fused: jax.Array, num_video: int) -> jax.Array:
    """(B,) VTM score: the MLP on the [CLS] output."""
    return self.vtm_head(fused[:, num_video])[..., 0]

  def heads(self, fused: jax.Array, num_video: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(VTM score (B,), MVM logits (B, Nv, K), MLM logits (B, L, text_vocab + 2))."""
    return (self.vtm_score(fused, num_video), self.mvm_head(fused[:, :num_video]),
            self.word_embed.attend(fused[:, num_video + 1:]))

  def __call__(self, video: jax.Array, caption: jax.Array, masked: jax.Array | None = None):
    v = self.encode_video(video, masked)
    return self.heads(self.fuse(v, self.embed_text(caption), caption), v.shape[1])

  def pair_scores(self, video_tokens: jax.Array, text_tokens: jax.Array, caption: jax.Array
                  ) -> jax.Array:
    """VTM scores of every clip x caption: (Bv, Nv, d), (Bt, 1+L, d) -> (Bv, Bt)."""
    bv, bt = video_tokens.shape[0], text_tokens.shape[0]
    v = jnp.repeat(video_tokens, bt, axis=0)
    t = jnp.tile(text_tokens, (bv, 1, 1))
    cap = jnp.tile(caption, (bv, 1))
    return self.vtm_score(self.fuse(v, t, cap), video_tokens.shape[1]).reshape(bv, bt)


def _init_all(module: VioletModule, video: jax.Array, caption: jax.Array):
  """Touches every parameter (the heads and both retrieval projections)."""
  v = module.encode_video(video)
  t = module.embed_text(caption)
  return module.heads(module.fuse(v, t, caption), v.shape[1]), module.embeddings(v, t)


def contrastive_loss(video_emb: jax.Array, text_emb: jax.Array, temperature: float,
                     same: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE over the batch: (B, d) unit embeddings, `same` (B, B) bool = captions
  equal (such off-diagonal pairs are not negatives), weight (B,) -> (mean loss, per-row loss
  (B,))."""
  logits = video_emb @ text_emb.T / temperature
  eye = jnp.eye(logits.shape[0], dtype=bool)
  logits = jnp.where(same & ~eye, -1e9, logits)
  cols = jnp.where(weight[None, :] > 0, logits, -1e9)      # padding rows are no candidates
  rows = jnp.where(weight[:, None] > 0, logits, -1e9)
  target = jnp.arange(logits.shape[0])
  per = (token_nll(cols, target) + token_nll(rows.T, target)) / 2
  return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight), 1.0), per


def negative_captions(rng: jax.Array, batch: int, candidates: int) -> jax.Array:
  """(B, O) caption rows scored against each clip: column 0 = its own (i), columns 1..O-1 =
  distinct other rows of the batch, (i + s_j) mod B with distinct random shifts s_j in 1..B-1
  (so no clip is paired with itself among its negatives)."""
  if not 1 <= candidates <= batch:
    raise ValueError(f"vtm_candidates={candidates} must be in 1..batch size {batch}")
  shifts = 1 + jax.random.permutation(rng, batch - 1)[:candidates - 1]
  rows = jnp.arange(batch)[:, None]
  return jnp.concatenate([rows, (rows + shifts[None]) % batch], axis=1)


def mlm_mask(rng: jax.Array, caption: jax.Array, prob: float) -> jax.Array:
  """(B, L) bool: ceil(prob x words) random word positions per caption (at least one)."""
  real = caption != 0
  count = jnp.maximum(jnp.ceil(prob * jnp.sum(real, -1)), 1).astype(jnp.int32)
  return random_subset(rng, real, count)


def masked_mean(values: jax.Array, where: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean of `values` over `where`, count): a loss at the masked positions only."""
  w = where.astype(jnp.float32)
  total = jnp.sum(values * w)
  return total / jnp.maximum(jnp.sum(w), 1.0), jnp.sum(w)


@register_method("violet")
class Violet(Method):
  """VIOLET on clips with captions: VTM + MLM (+ MVM) training, retrieval by the VTM score."""

  Config = VioletConfig

  def __init__(self, config: VioletConfig):
    c = config
    if c.d_model % c.num_heads or (c.d_model // c.num_heads) % 2:
      raise ConfigError(f"config.model.d_model={c.d_model} must split into num_heads="
                        f"{c.num_heads} heads of an even size")
    if c.d_model % 4:
      raise ConfigError(f"config.model.d_model={c.d_model} must divide by 4 (2-D sin-cos "
                        "positions)")
    if c.retrieval not in ("vtm", "contrastive"):
      raise ConfigError(f"config.model.retrieval='{c.retrieval}'; use 'vtm' or 'contrastive'")
    if c.vtm_candidates < 1:
      raise ConfigError(f"config.model.vtm_candidates={c.vtm_candidates} must be >= 1")
    if not 0.0 <= c.mvm_ratio <= 1.0 or len(c.mvm_cube) != 3:
      raise ConfigError("config.model.mvm_ratio must be in [0, 1] and mvm_cube (t, h, w)")
    super().__init__(config)
    self.module = VioletModule(config)
    self._tokenizer = None

  # ------------------------------------------------------------------------- pieces

  def grid(self, video_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The token grid (t, h, w) of clips (B, T, H, W, C)."""
    _, t, h, w, _ = video_shape
    p = self.config.patch_size
    if h % p or w % p:
      raise ConfigError(f"frames of {h}x{w} pixels do not divide into {p}x{p} patches; change "
                        "config.model.patch_size")
    return t, h // p, w // p

  def mvm_mask(self, rng: jax.Array, video_shape: tuple[int, ...]) -> jax.Array:
    """(B, t, h, w) bool: the 3-D blockwise mask of one batch (True = masked)."""
    return cube_mask(rng, video_shape[0], self.grid(video_shape), self.config.mvm_ratio,
                     tuple(self.config.mvm_cube))

  def targets(self, batch: Batch) -> jax.Array:
    """MVM targets (B, t, h, w): the batch's `codes`, else the frozen tokenizer's codes of
    every frame."""
    if "codes" in batch:
      return batch["codes"].astype(jnp.int32)
    if not self.config.tokenizer_workdir:
      raise ConfigError("MVM needs visual-token targets: give the batch 'codes' (B, T, h, w) or "
                        "set config.model.tokenizer_workdir to a trained frame tokenizer run "
                        "(or config.model.mvm_weight=0)")
    if self._tokenizer is None:
      from tokenlab.train.inference import load_frozen_tokenizer
      self._tokenizer = load_frozen_tokenizer(self.config.tokenizer_workdir)
    video = batch["video"]
    b, t = video.shape[:2]
    tok = self._tokenizer
    codes = tok.method.encode(tok.variables, video.reshape(b * t, *video.shape[2:]))
    codes = jax.lax.stop_gradient(codes)
    return codes.reshape(b, t, *codes.shape[1:]).astype(jnp.int32)

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    self.grid(batch["video"].shape)
    return self.module.init(rng, batch["video"], batch["caption"], method=_init_all)["params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    c = self.config
    video, caption = batch["video"], batch["caption"].astype(jnp.int32)
    b = video.shape[0]
    weight = batch.get("mask", jnp.ones((b,), jnp.float32)).astype(jnp.float32)
    r_neg, r_mlm, r_mvm = jax.random.split(rng, 3)
    apply = lambda fn, *a: self.module.apply({"params": params}, *a, method=fn)
    # MVM: cubes of patches zeroed at the input (none without MVM: the ablation).
    masked = self.mvm_mask(r_mvm, video.shape) if c.mvm_weight > 0 else None
    # MLM: words replaced by [MASK] (the reference masks the captions of all pairs).
    _, mask_id = text_ids(c)
    mlm = mlm_mask(r_mlm, caption, c.mlm_prob) if c.mlm_weight > 0 else jnp.zeros_like(
        caption, bool)
    text_in = jnp.where(mlm, mask_id, caption)
    v = apply(VioletModule.encode_video, video, masked)            # (B, Nv, d)
    t = apply(VioletModule.embed_text, text_in)                    # (B, 1+L, d)
    cand = negative_captions(r_neg, b, c.vtm_candidates)           # (B, O)
    o = cand.shape[1]
    fused = apply(VioletModule.fuse, jnp.repeat(v, o, axis=0), t[cand.reshape(-1)],
                  text_in[cand.reshape(-1)])
    score = apply(VioletModule.vtm_score, fused, v.shape[1]).reshape(b, o) / c.vtm_temperature
    # MVM and MLM read the positive pairs (column 0 of each clip's candidates).
    _, mvm_logits, mlm_logits = apply(VioletModule.heads, fused[jnp.arange(b) * o], v.shape[1])
    # A negative whose caption equals the clip's own (a repeated clip) is not a negative.
    same = jnp.all(caption[cand] == caption[:, None], -1).at[:, 0].set(False)
    score = jnp.where(same, -1e9, score)
    vtm = token_nll(score, jnp.zeros((b,), jnp.int32))
    vtm_loss = jnp.sum(vtm * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    vtm_acc = (jnp.argmax(score, -1) == 0).astype(jnp.float32)
    loss = c.vtm_weight * vtm_loss
    metrics = {"vtm_loss": Average.of(jnp.sum(vtm * weight), jnp.sum(weight)),
               "vtm_accuracy": Average.of(jnp.sum(vtm_acc * weight), jnp.sum(weight))}
    if c.contrastive_weight > 0:
      # On the unmasked caption and the (MVM-masked) clip's unimodal features.
      ve, te = apply(VioletModule.embeddings, v, t)
      pairs_same = jnp.all(caption[:, None] == caption[None, :], -1)
      nce, per = contrastive_loss(ve, te, c.contrastive_temperature, pairs_same, weight)
      loss = loss + c.contrastive_weight * nce
      metrics["contrastive_loss"] = Average.of(jnp.sum(per * weight), jnp.sum(weight))
    if c.mlm_weight > 0:
      nll = token_nll(mlm_logits, caption)
      where = mlm & (weight[:, None] > 0)
      mlm_loss, n = masked_mean(nll, where)
      loss = loss + c.mlm_weight * mlm_loss
      metrics["mlm_loss"] = Average.of(mlm_loss * n, n)
    if c.mvm_weight > 0:
      codes = self.targets(batch).reshape(b, -1)
      nll = token_nll(mvm_logits, codes)
      where = masked.reshape(b, -1) & (weight[:, None] > 0)
      mvm_loss, n = masked_mean(nll, where)
      hit = (jnp.argmax(mvm_logits, -1) == codes).astype(jnp.float32)
      loss = loss + c.mvm_weight * mvm_loss
      metrics["mvm_loss"] = Average.of(mvm_loss * n, n)
      metrics["mvm_accuracy"] = Average.of(jnp.sum(hit * where), n)
      metrics["mvm_masked_share"] = Average.of(n, jnp.sum(weight) * codes.shape[1])
    metrics["loss"] = Average.of(loss * jnp.sum(weight), jnp.sum(weight))
    return loss, metrics

  # -------------------------------------------------------------------------- retrieval

  def score_matrix(self, params: PyTree, video: jax.Array, caption: jax.Array,
                   chunk: int = 8) -> jax.Array:
    """Retrieval scores (Nv, Nt) of every clip (Nv, T, H, W, C) with every caption (Nt, L).

    `retrieval="vtm"`: the VTM score of every pair: the video transformer runs once per clip,
    the cross-modal transformer once per pair (`chunk` clips at a time, so memory stays at
    chunk x Nt sequences). `retrieval="contrastive"`: cosine of the unimodal embeddings."""
    apply = lambda fn, *a: self.module.apply({"params": params}, *a, method=fn)
    caption = caption.astype(jnp.int32)
    v = apply(VioletModule.encode_video, video, None)
    t = apply(VioletModule.embed_text, caption)
    if self.config.retrieval == "contrastive":
      ve, te = apply(VioletModule.embeddings, v, t)
      return ve @ te.T
    nv = v.shape[0]
    chunk = math.gcd(nv, chunk)
    rows = jax.lax.map(lambda vc: apply(VioletModule.pair_scores, vc, t, caption),
                       v.reshape(nv // chunk, chunk, *v.shape[1:]))
    return rows.reshape(nv, -1)


def retrieval_recall(scores: Any, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
  """Recall@k of a square score matrix (Nv = Nt; clip i matches caption i).

  t2v: for each caption, the rank of its clip among all clips; v2t: for each clip, the rank
  of its caption. Ties are broken uniformly at random, in expectation: with g others strictly
  above the true item and e tied with it, P(hit at k) = clip((k - g) / (e + 1), 0, 1), so a
  constant scorer gets exactly k / N. Returns {'t2v R@k', 'v2t R@k', 'mean R@k'} per k.
  """
  s = np.asarray(scores, np.float64)
  n = len(s)
  if s.shape != (n, n):
    raise ValueError(f"retrieval needs a square score matrix, got {s.shape}")
  diag = np.diag(s)
  off = ~np.eye(n, dtype=bool)
  out = {}
  for name, axis, true in (("t2v", 0, diag[None, :]), ("v2t", 1, diag[:, None])):
    above = np.sum((s > true) & off, axis=axis)
    tied = np.sum((s == true) & off, axis=axis)
    for k in ks:
      out[f"{name} R@{k}"] = float(np.mean(np.clip((k - above) / (tied + 1), 0.0, 1.0)))
  for k in ks:
    out[f"mean R@{k}"] = (out[f"t2v R@{k}"] + out[f"v2t R@{k}"]) / 2
  return out
