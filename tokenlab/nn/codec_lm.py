"""Pieces of language models over multi-codebook codec tokens (RVQ audio codecs), written once.

A codec frame is K codes, one per RVQ level: codes (B, T, K). Speech LMs differ in how they
lay those K streams out for a transformer:

* `delay_pattern` / `undo_delay_pattern`: MusicGen / VALL-E's flat layout. Level k is shifted
  right by k steps, so at step s the model predicts level 0 of frame s, level 1 of frame
  s - 1, ..., all K levels in one step with K heads, and level k of a frame is predicted
  after levels < k of the same frame have been seen. T frames take T + K - 1 steps.
* `CodebookSumEmbedding`: one vector per frame, the sum of the K levels' embeddings (the frame
  embedding of FireRedTTS-2's dual transformer and of the delay-pattern model's input).

Codec-token LMs built on them (one copy for firered_tts2, ham_tts, dualspeechlm):

* `CodecLM`: a causal transformer (`TransformerStack`) over [prefix ids (B, P); frames
  (B, S, K)] with one output head per predicted level. The prefix is any conditioning with its
  own vocabulary (`prefix_vocab`): text or phonemes, [text; unit ids] with unit ids offset
  past the text ids, understanding-token ids; rows are left-padded (`left_align_prefix`) with
  the caller's pad id. Frames use ids 0..size-1, `frame_pad_id` and `frame_bos_id`.
* The flat (MusicGen / VALL-E delay) model: `delay_lm_inputs(codes)` -> (inputs, targets),
  `CodecLM(...)(prefix, inputs)` -> logits (B, T + K - 1, K, V), `delay_lm_loss(logits,
  codes, num_frames)` over the valid delayed positions, and `sample_delay_lm(model, params,
  prefix, T, rng)` -> codes (B, T, K) with a key/value cache (level k of frame t drawn after
  levels < k of frame t).
* FireRedTTS-2's dual transformer: a `CodecLM(head_levels=1)` backbone on
  `frame_lm_inputs(codes)` (whole frames; it predicts level 0 and gives the hidden state h),
  the `DepthDecoder` over the codebook axis (levels 1..K-1 from h and the lower levels), and
  `sample_dual_lm` (both cached). `codec_level_nll` is the per-level cross-entropy both use.

Shapes: codes (B, T, K) int; `pad_id` fills the positions the shift leaves empty (use an id
outside every codebook, e.g. max(codebook_sizes), and give the embeddings one extra row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.method import Average
from tokenlab.nn.generate import sample_logits
from tokenlab.nn.losses import token_nll
from tokenlab.nn.transformer import TransformerStack

PyTree = Any


def delay_pattern(codes: jax.Array, pad_id: int) -> jax.Array:
  """codes (B, T, K) -> delayed (B, T + K - 1, K): delayed[:, s, k] = codes[:, s - k, k]
  where 0 <= s - k < T, else pad_id."""
  b, t, k = codes.shape
  steps = jnp.arange(t + k - 1)[:, None] - jnp.arange(k)[None, :]        # (S, K): frame s - k
  valid = (steps >= 0) & (steps < t)
  gathered = jnp.take_along_axis(
      codes, jnp.broadcast_to(jnp.clip(steps, 0, t - 1)[None], (b, t + k - 1, k)), axis=1)
  return jnp.where(valid[None], gathered, jnp.asarray(pad_id, codes.dtype))


def delay_valid(num_frames: int, num_levels: int) -> jax.Array:
  """bool (T + K - 1, K): True where `delay_pattern` holds a real code (not padding)."""
  steps = jnp.arange(num_frames + num_levels - 1)[:, None] - jnp.arange(num_levels)[None, :]
  return (steps >= 0) & (steps < num_frames)


def undo_delay_pattern(delayed: jax.Array) -> jax.Array:
  """delayed (B, T + K - 1, K) -> codes (B, T, K): codes[:, t, k] = delayed[:, t + k, k]."""
  b, s, k = delayed.shape
  t = s - k + 1
  if t < 1:
    raise ValueError(f"a delayed sequence of {s} steps with {k} levels holds no frame "
                     f"(it needs at least {k} steps)")
  rows = jnp.arange(t)[:, None] + jnp.arange(k)[None, :]                 # (T, K): step t + k
  return jnp.take_along_axis(delayed, jnp.broadcast_to(rows[None], (b, t, k)), axis=1)


class CodebookSumEmbedding(nn.Module):
  """codes (..., K) int -> (..., d_model): the sum over levels of each level's embedding.

  `codebook_sizes` (K,) entries per level; each table has `extra_ids` more rows (pad, BOS,
  mask ids placed at codebook_size, codebook_size + 1, ...)."""
  codebook_sizes: Sequence[int]
  d_model: int
  extra_ids: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    if codes.shape[-1] != len(self.codebook_sizes):
      raise ValueError(f"codes have {codes.shape[-1]} levels on their last axis; the "
                       f"embedding has {len(self.codebook_sizes)} ({tuple(self.codebook_sizes)})")
    out = 0.0
    for k, size in enumerate(self.codebook_sizes):
      table = nn.Embed(size + self.extra_ids, self.d_model, dtype=self.dtype,
                       embedding_init=nn.initializers.normal(self.d_model ** -0.5),
                       name=f"level_{k}")
      out = out + table(codes[..., k])
    return out


# ---------------------------------------------------------------------------------------------
# A codec-token LM: a causal transformer over [prefix ids; codec frames] with per-level heads.
# ---------------------------------------------------------------------------------------------


def frame_pad_id(codebook_sizes: Sequence[int]) -> int:
  """The pad id of every level in `CodecLM`'s frame embedding: max(codebook_sizes)."""
  return int(max(codebook_sizes))


def frame_bos_id(codebook_sizes: Sequence[int]) -> int:
  """The begin-of-speech id of every level (the first input frame): max(codebook_sizes) + 1."""
  return int(max(codebook_sizes)) + 1


def left_align_prefix(ids: jax.Array, lengths: jax.Array, pad_id: int) -> jax.Array:
  """Right-padded ids (B, P) with `lengths` (B,) real ids -> the same ids left-padded (B, P):
  row b's ids end at position P - 1, so every row's speech starts at position P and the
  relative (RoPE) distance from a text id to the speech is the same in every row."""
  b, p = ids.shape
  src = jnp.arange(p)[None, :] - (p - lengths[:, None])                  # (B, P)
  shifted = jnp.take_along_axis(ids, jnp.clip(src, 0, p - 1), axis=1)
  return jnp.where(src >= 0, shifted, jnp.asarray(pad_id, ids.dtype))


class CodecLM(nn.Module):
  """A causal transformer over [prefix (B, P) ids; frames (B, S, K) codes] with per-level heads.

  The contract shared by issue 19's speech LMs (firered_tts2, ham_tts, dualspeechlm):

  * prefix: int ids in [0, prefix_vocab), the conditioning (text, phonemes, [text; unit ids]
    with the units offset past the text ids, understanding-token ids, ...): one id per
    position, embedded by its own table. Rows of different lengths are left-padded with a pad
    id of the caller's vocabulary (`left_align_prefix`); the model attends to the pads like to
    any token, identically in training and sampling (the key/value cache has no key mask), so
    no prefix mask is needed.
  * frames: K codes per position, embedded as the sum of the K levels' embeddings
    (`CodebookSumEmbedding`, tables of max(codebook_sizes) + 2 rows: `frame_pad_id`,
    `frame_bos_id`). What a frame position holds is the caller's layout: delayed frames
    (`delay_lm_inputs`, the flat model) or whole frames (the dual transformer's backbone).
  * output: at every frame position, logits (B, S, head_levels, max(codebook_sizes)) for
    levels 0..head_levels-1 (entries past a level's codebook size are -1e9) and the final
    hidden state (B, S, d_model). Prefix positions produce nothing.
  * `decode=True`: the attention layers keep a key/value cache (see `TransformerStack`);
    the first call (prefix and the BOS frame) prefills it, each later call (prefix=None)
    appends frames. `sample_delay_lm` / `sample_dual_lm` drive it.
  """
  codebook_sizes: Sequence[int]
  prefix_vocab: int
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  head_levels: int | None = None      # None: one head per level (the flat model)
  attention_impl: str | None = None
  decode: bool = False

  def setup(self):
    vmax = max(self.codebook_sizes)
    self.prefix_embed = nn.Embed(self.prefix_vocab, self.d_model,
                                 embedding_init=nn.initializers.normal(self.d_model ** -0.5))
    self.frame_embed = CodebookSumEmbedding((vmax,) * len(self.codebook_sizes), self.d_model,
                                            extra_ids=2)
    self.stack = TransformerStack(
        num_layers=self.num_layers, decode=self.decode,
        block=dict(num_heads=self.num_heads, head_dim=self.d_model // self.num_heads,
                   mlp_dim=self.mlp_dim, causal=True, attention_impl=self.attention_impl))
    levels = self.head_levels or len(self.codebook_sizes)
    self.heads = [nn.Dense(self.codebook_sizes[k], name=f"head_{k}") for k in range(levels)]

  def __call__(self, prefix: jax.Array | None, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    """prefix (B, P) int or None (decode steps after the first); frames (B, S, K) int ->
    (logits (B, S, head_levels, max size) float32, hidden (B, S, d_model))."""
    x = self.frame_embed(frames)
    p = 0
    if prefix is not None:
      p = prefix.shape[1]
      x = jnp.concatenate([self.prefix_embed(prefix).astype(x.dtype), x], axis=1)
    hidden = self.stack(x)[:, p:]
    return _level_logits(self.heads, hidden, max(self.codebook_sizes)), hidden


def _level_logits(heads, hidden: jax.Array, vmax: int) -> jax.Array:
  """hidden (..., d) -> (..., len(heads), vmax) float32, each head padded with -1e9 to vmax."""
  out = []
  for head in heads:
    logit = head(hidden).astype(jnp.float32)
    pad = vmax - logit.shape[-1]
    out.append(jnp.pad(logit, [(0, 0)] * (logit.ndim - 1) + [(0, pad)], constant_values=-1e9))
  return jnp.stack(out, axis=-2)


def delay_lm_inputs(codes: jax.Array, codebook_sizes: Sequence[int]) -> tuple[jax.Array,
                                                                               jax.Array]:
  """codes (B, T, K) -> (inputs, targets), both (B, T + K - 1, K): targets = the delayed codes
  (`delay_pattern`, padding `frame_pad_id`), inputs = [BOS frame; targets[:, :-1]], so the
  model's output at step s predicts the delayed step s from steps < s."""
  targets = delay_pattern(codes, frame_pad_id(codebook_sizes))
  bos = jnp.full_like(targets[:, :1], frame_bos_id(codebook_sizes))
  return jnp.concatenate([bos, targets[:, :-1]], axis=1), targets


def codec_level_nll(logits: jax.Array, targets: jax.Array, weight: jax.Array
                    ) -> tuple[jax.Array, dict]:
  """logits (..., L, V), targets (..., L) int, weight (..., L) -> (mean nll over the weighted
  entries, {'nll_level_<k>': Average}) with per-level averages for the logs."""
  nll = token_nll(logits, jnp.clip(targets, 0, logits.shape[-1] - 1))
  weight = weight.astype(jnp.float32)
  total = jnp.sum(weight)
  metrics = {}
  lead = tuple(range(nll.ndim - 1))
  per_total, per_count = jnp.sum(nll * weight, axis=lead), jnp.sum(weight, axis=lead)
  for k in range(nll.shape[-1]):
    metrics[f"nll_level_{k}"] = Average.of(per_total[k], per_count[k])
  return jnp.sum(nll * weight) / jnp.maximum(total, 1.0), metrics


def delay_lm_loss(logits: jax.Array, codes: jax.Array, num_frames: jax.Array | None = None,
                  code_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """The flat model's loss: cross-entropy over the valid delayed positions only.

  logits (B, T + K - 1, K, V) from `CodecLM` on `delay_lm_inputs(codes)`; codes (B, T, K);
  num_frames (B,) real frames per row (default T). Step s, level k holds frame s - k: it counts
  where 0 <= s - k < num_frames (the shift's padding and padded frames are not targets).
  code_mask (B, T, K) bool, optional: only codes where it is True count (e.g. an end-of-speech
  frame whose level 0 is a target and whose other levels are not); combined with num_frames.
  Returns (mean nll per valid code, {'loss', 'nll_level_<k>'} as Averages)."""
  b, t, k = codes.shape
  steps = jnp.arange(t + k - 1)[:, None] - jnp.arange(k)[None, :]         # (S, K) frame index
  n = jnp.full((b,), t) if num_frames is None else num_frames
  valid = (steps[None] >= 0) & (steps[None] < n[:, None, None])            # (B, S, K)
  if code_mask is not None:
    valid = valid & delay_pattern(code_mask.astype(jnp.int32), 0).astype(bool)
  targets = delay_pattern(codes, 0)
  loss, metrics = codec_level_nll(logits, targets, valid)
  metrics["loss"] = Average.of(loss * jnp.sum(valid), jnp.sum(valid))
  return loss, metrics


def _empty_cache(model: nn.Module, batch: int, prefix_len: int, frames: int, levels: int):
  """An empty key/value cache of `model` (decode mode) for prefix_len + frames positions."""
  prefix = jax.ShapeDtypeStruct((batch, prefix_len), jnp.int32) if prefix_len else None
  frame = jax.ShapeDtypeStruct((batch, frames, levels), jnp.int32)
  shapes = jax.eval_shape(lambda p, f: model.init(jax.random.key(0), p, f), prefix, frame)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _sample_levels(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int
                   ) -> jax.Array:
  """logits (B, L, V) -> codes (B, L): one draw per level (generate.sample_logits)."""
  b, l, v = logits.shape
  return sample_logits(logits.reshape(b * l, v), rng, temperature=temperature,
                       top_k=top_k).reshape(b, l).astype(jnp.int32)


def sample_delay_lm(model: CodecLM, params: PyTree, prefix: jax.Array, num_frames: int,
                    rng: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                    eos_id: int | None = None, given: jax.Array | None = None) -> jax.Array:
  """Generates num_frames codec frames with the flat delay-pattern model and a KV cache.

  model: the `CodecLM` (train mode; cloned here in decode mode) trained on
  `delay_lm_inputs`; prefix (B, P) ids (left-padded); num_frames static. One network
  evaluation per delayed step, T + K - 1 in all: the prefill (prefix + BOS) gives step 0's
  logits, then each step feeds the frame just sampled. At step s level k is written only
  where 0 <= s - k < T (else the pad id), so level k of frame t is drawn at step t + k,
  after levels < k of frame t were drawn and fed. eos_id: a level-0 id that ends a row's
  speech: once drawn, that row's later level-0 entries are the pad id (as a model trained
  with padding after the end-of-speech frame saw them). given: optional known input
  columns (B, T + K - 1, G) int, e.g. a frame-aligned condition stream: the frame fed at step
  s is [the sampled delayed step s - 1 (BOS at s = 0); given[:, s]], as a model trained on
  [delay_lm_inputs(codes); given] saw it; such a model embeds K + G input levels
  (codebook_sizes) and predicts K (head_levels=K). Returns codes (B, num_frames, K) int32.
  """
  sizes = model.codebook_sizes
  g = 0 if given is None else given.shape[-1]
  k, b = len(sizes) - g, prefix.shape[0]
  if (model.head_levels or len(sizes)) != k:
    raise ValueError(f"a model with {len(sizes)} input levels and {g} given columns predicts "
                     f"{k} levels: set head_levels={k}")
  steps = num_frames + k - 1
  dec = model.clone(decode=True)
  cache = _empty_cache(dec, b, prefix.shape[1], steps, k + g)
  valid = delay_valid(num_frames, k)                                       # (S, K)
  pad = frame_pad_id(sizes)

  def run(prefix_, frames, cache, s):
    if given is not None:   # the known columns of step s ride along with the fed frame
      frames = jnp.concatenate(
          [frames, jax.lax.dynamic_slice_in_dim(given, s, 1, axis=1).astype(jnp.int32)], -1)
    (logits, _), upd = dec.apply({"params": params, "cache": cache}, prefix_, frames,
                                 mutable=["cache"])
    return logits[:, -1], upd["cache"]

  def emit(s, out, logits, rng):
    rng, sub = jax.random.split(rng)
    new = _sample_levels(logits, sub, temperature, top_k)
    if eos_id is not None:   # level 0 after a drawn end-of-speech id stays padding
      ended = jnp.any(out[:, :, 0] == eos_id, axis=1)
      new = new.at[:, 0].set(jnp.where(ended, pad, new[:, 0]))
    return out.at[:, s].set(jnp.where(valid[s][None], new, pad)), rng

  out = jnp.full((b, steps, k), pad, jnp.int32)
  logits, cache = run(prefix, jnp.full((b, 1, k), frame_bos_id(sizes), jnp.int32), cache, 0)
  out, rng = emit(0, out, logits, rng)

  def body(s, carry):
    out, cache, rng = carry
    logits, cache = run(None, jax.lax.dynamic_slice_in_dim(out, s - 1, 1, axis=1), cache, s)
    out, rng = emit(s, out, logits, rng)
    return out, cache, rng

  out, _, _ = jax.lax.fori_loop(1, steps, body, (out, cache, rng))
  return undo_delay_pattern(out)


# ---------------------------------------------------------------------------------------------
# FireRedTTS-2's dual transformer: a backbone over whole frames predicts level 0, a small depth
# decoder over the codebook axis predicts levels 1..K-1 of the same frame.
# ---------------------------------------------------------------------------------------------


def frame_lm_inputs(codes: jax.Array, codebook_sizes: Sequence[int]) -> jax.Array:
  """codes (B, T, K) -> the backbone's input frames (B, T, K): [BOS frame; codes[:, :-1]], so
  the output at frame t (from frames < t) predicts frame t."""
  bos = jnp.full_like(codes[:, :1], frame_bos_id(codebook_sizes))
  return jnp.concatenate([bos, codes[:, :-1]], axis=1)


class DepthDecoder(nn.Module):
  """A small causal transformer over one frame's codebook axis (FireRedTTS-2, after CSM).

  Per frame the input sequence is [proj(h); e_0(c_0); e_1(c_1); ...]: the backbone's hidden
  state h at that frame, then the frame's codes level by level, each level with its own
  embedding table; the output at the position of level j's code predicts level j + 1 (the
  output at h's position is unused: the backbone predicts level 0). Causal attention over this
  axis is what makes level k's logits depend on h and levels < k only.

  __call__(h, lower, start_level): h (M, d_backbone) or None (decode steps after the first);
  lower (M, L) codes of levels start_level .. start_level + L - 1 -> logits (M, L, max size)
  for levels start_level + 1 .. start_level + L (float32, padded with -1e9 past a level's size).
  Training calls it with start_level 0 and lower = codes[..., :K - 1] (all levels at once);
  `sample_dual_lm` calls it in decode mode one level at a time.
  """
  codebook_sizes: Sequence[int]
  d_model: int = 32
  num_layers: int = 1
  num_heads: int = 2
  mlp_dim: int = 64
  attention_impl: str | None = None
  decode: bool = False

  def setup(self):
    k = len(self.codebook_sizes)
    if k < 2:
      raise ValueError("the depth decoder predicts levels 1..K-1; a codec with one level "
                       "needs none")
    self.project = nn.Dense(self.d_model, name="project")
    self.tables = [nn.Embed(self.codebook_sizes[j], self.d_model,
                            embedding_init=nn.initializers.normal(self.d_model ** -0.5),
                            name=f"level_{j}") for j in range(k - 1)]
    self.stack = TransformerStack(
        num_layers=self.num_layers, decode=self.decode,
        block=dict(num_heads=self.num_heads, head_dim=self.d_model // self.num_heads,
                   mlp_dim=self.mlp_dim, causal=True, attention_impl=self.attention_impl))
    self.heads = [nn.Dense(self.codebook_sizes[j], name=f"head_{j}") for j in range(1, k)]

  def __call__(self, h: jax.Array | None, lower: jax.Array, start_level: int = 0) -> jax.Array:
    levels = range(start_level, start_level + lower.shape[-1])
    x = jnp.stack([self.tables[j](lower[:, i]) for i, j in enumerate(levels)], axis=1)
    if h is not None:
      x = jnp.concatenate([self.project(h)[:, None].astype(x.dtype), x], axis=1)
    out = self.stack(x)[:, 1:] if h is not None else self.stack(x)
    vmax = max(self.codebook_sizes)
    return jnp.stack([_level_logits([self.heads[j]], out[:, i], vmax)[:, 0]
                      for i, j in enumerate(levels)], axis=1)


def sample_dual_lm(backbone: CodecLM, backbone_params: PyTree, depth: DepthDecoder,
                   depth_params: PyTree, prefix: jax.Array, num_frames: int, rng: jax.Array, *,
                   temperature: float = 1.0, top_k: int = 0) -> jax.Array:
  """Generates num_frames frames with the dual transformer, both with key/value caches.

  backbone: a `CodecLM` with head_levels=1 trained on `frame_lm_inputs`; depth: the
  `DepthDecoder`. Per frame: one backbone step (the prefill, prefix + BOS, for frame 0) gives
  level 0's logits and h; the depth decoder, with a fresh cache, is prefilled with [h; c_0]
  and then fed c_1, ..., c_{K-2}: K - 1 small steps, one per level. A frame is complete (all
  K levels) after 1 backbone + K - 1 depth evaluations, where the flat model needs K backbone
  steps for its first frame. Returns codes (B, num_frames, K) int32.
  """
  sizes = backbone.codebook_sizes
  k, b = len(sizes), prefix.shape[0]
  bb, dd = backbone.clone(decode=True), depth.clone(decode=True)
  cache = _empty_cache(bb, b, prefix.shape[1], num_frames, k)
  lower = jax.ShapeDtypeStruct((b, k - 1), jnp.int32)
  h_shape = jax.ShapeDtypeStruct((b, depth_params["project"]["kernel"].shape[0]), jnp.float32)
  depth_cache = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda h, c: dd.init(jax.random.key(0), h, c), h_shape, lower)["cache"])

  def frame(prefix_, prev, cache, rng):
    """prev (B, 1, K) -> the next frame (B, K) and the advanced backbone cache."""
    (logits, hidden), upd = bb.apply({"params": backbone_params, "cache": cache}, prefix_,
                                     prev, mutable=["cache"])
    rng, sub = jax.random.split(rng)
    codes = [_sample_levels(logits[:, -1, :1], sub, temperature, top_k)[:, 0]]
    dcache, h = depth_cache, hidden[:, -1]
    for j in range(k - 1):                     # level j + 1 from h and levels <= j
      lg, dupd = dd.apply({"params": depth_params, "cache": dcache}, h if j == 0 else None,
                          codes[j][:, None], j, mutable=["cache"])
      dcache = dupd["cache"]
      rng, sub = jax.random.split(rng)
      codes.append(_sample_levels(lg[:, -1:], sub, temperature, top_k)[:, 0])
    return jnp.stack(codes, axis=-1), upd["cache"], rng

  out = jnp.zeros((b, num_frames, k), jnp.int32)
  first, cache, rng = frame(prefix, jnp.full((b, 1, k), frame_bos_id(sizes), jnp.int32),
                            cache, rng)
  out = out.at[:, 0].set(first)

  def body(t, carry):
    out, cache, rng = carry
    nxt, cache, rng = frame(None, jax.lax.dynamic_slice_in_dim(out, t - 1, 1, axis=1),
                            cache, rng)
    return out.at[:, t].set(nxt), cache, rng

  out, _, _ = jax.lax.fori_loop(1, num_frames, body, (out, cache, rng))
  return out
