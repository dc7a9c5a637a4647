"""TV2TV: interleaved text and video generation with a Mixture-of-Transformers.

Paper: "TV2TV: A Unified Framework for Interleaved Language and Video Generation" (Meta,
arXiv 2512.05103, 2025; no public code). A video is generated as an interleaved sequence of
text and video chunks: before each chunk the model may "think in words" (write what happens
next), then "act in pixels" (generate the chunk); a user can insert text at any point to steer
the rest. At toy scale (tokenlab's `moving_shapes` clips, 24 x 24 px, 5 frames, 2 events):

1. The interleaved sequence. A clip of T frames is frame 0 (the given context) followed by
   C = (T - 1) / F chunks of F frames. Before chunk c comes a text slot of S = 5 tokens: the
   narration of the event that starts in that chunk ("red square moves left", written from
   the clip's labelled events, `narration`) closed by the switch token BOV ("begin of video"),
   or BOV alone when nothing new starts (the event goes on). So the text stream decides when
   to switch to video (it emits BOV), as the paper's model does. Layout, in order:

     [frame 0] [slot 1] [noisy chunk 1] [clean chunk 1] [slot 2] [noisy chunk 2] ... [slot C]
     [noisy chunk C]

   A video token is one p x p RGB patch of raw pixels (size=small: 8 x 8 x 3 = 192 values, 9
   per frame).
2. Mixture-of-Transformers (`tokenlab.nn.mixture_of_transformers`): text tokens and video
   tokens go through their own norms, QKV / output projections and MLPs, with one global
   attention over the sequence; the mask is block-causal (`interleaved_mask`): text is causal,
   a chunk's tokens see their whole chunk and everything visible before it. Each chunk is in
   the sequence twice, as in Transfusion-style training with clean context: the noisy copy
   (under flow matching; nothing else reads it) and the clean copy (read by everything
   after it), so later text and chunks condition on clean frames, as at sampling.
3. Losses: text by next-token cross-entropy on the slot tokens (a slot's first token is
   predicted from the last token of the chunk before it: the switch decision); video by
   flow matching (`tokenlab.nn.flow_matching`, linear path, logit-normal t, one t per chunk):
   the video tower's output at a noisy token conditions a `FlowHead` that predicts the
   velocity of that patch; by default it predicts the clean chunk x1 and the velocity is
   (x1 - x_t) / (1 - t) ("x-prediction, v-loss", as Li and He 2025, "Back to Basics: Let
   Denoising Generative Models Denoise": for high-dimensional pixel
   patches a network predicts the clean data more easily than the noise-laden velocity; the
   loss is still the flow-matching MSE on velocities). With the zero-initialised head the
   untrained model predicts "no change" (x1 = 0: copy the last frame) exactly.
   loss = CE + flow_weight x flow MSE. Each noisy patch also reads
   its chunk's reference frame (the last frame before the chunk) at the same place, added
   to its input embedding, and the FlowHead's condition is [the tower's output, that
   reference patch]. With `predict="v"` the head must be at least as wide as a patch's
   values (`head_width` >= p^2 x 3): a narrower first layer cannot pass the noise through (a
   pilot with width 64 < 192 stalled at flow MSE 0.69, BUILD_NOTES.md); x-prediction
   takes the noise from x_t directly.
4. Sampling (`rollout`): from a prefix, for each chunk: write the slot greedily token by token
   until BOV (or take a given / user-inserted text), then draw the chunk by Euler steps from
   Gaussian noise with everything before it as clean context; append it clean and go on.

Follows the paper: one model, text by next-token prediction and video by flow matching;
MoT with modality-specific QKV, output projections, norms and MLPs and global attention over
the interleaved sequence; text written before a chunk and a switch token that the model
emits to start a chunk; generation that alternates greedy text and denoised chunks; text
interventions by inserting text mid-sequence.
Simplified, and why:
- Raw pixel patches, not a video VAE latent: nothing pretrained may be downloaded, and the
  toy frames (24 px, six pure colours) are small enough for patches. A chunk is predicted as
  its change from the last frame before it (`residual`, x1 = frame - reference frame): at
  this scale most of a frame repeats the one before it, and the change is what the text is
  about. The reference frame is part of the context the model reads anyway.
- Narration from the clip's labels (a fixed template of four words at most), not from a VLM
  captioner or game actions; text tokens are words of a 21-word vocabulary (`VOCAB`).
- The text stream's positions are fixed slots of S tokens padded after BOV (padding is
  invisible to every query and carries no loss), so the layout is shape-static.
- No KV cache: every greedy text step and every Euler step recomputes the whole sequence.
- The no-text arm (`text=False`) keeps the same layout and compute with every slot reduced to
  BOV: the text-reasoning stream removed, nothing else changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data import moving_shapes, shapes
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.flow_matching import (FlowHead, euler_sample, flow_matching_loss,
                                       interpolate, logit_normal_t)
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.mixture_of_transformers import MoTStack, interleaved_mask
from tokenlab.nn.vision import TimestepEmbedder, patchify, sincos_2d, unpatchify
from tokenlab.registry import register_method

# ----------------------------------------------------------------------------- vocabulary

PAD, BOV = 0, 1
COLOUR0 = 2
SHAPE0 = COLOUR0 + len(shapes.COLOURS)
KIND0 = SHAPE0 + len(shapes.SHAPES)
DIR0 = KIND0 + len(moving_shapes.KINDS)
VOCAB = ("<pad>", "<bov>", *shapes.COLOURS, *shapes.SHAPES, *moving_shapes.KINDS,
         *moving_shapes.DIRECTIONS)
SLOT = 5                 # colour, shape, kind, argument, BOV
TEXT, VIDEO = 0, 1       # modality ids (MoT routing)
CLEAN, NOISY, WORD = 0, 1, 2   # token kinds of the layout
MIN_GAP = 0.05           # x-prediction: 1 - t floored, so the velocity stays finite near t = 1


@dataclasses.dataclass(frozen=True)
class TV2TVConfig:
  image_size: int = 24
  channels: int = 3
  num_frames: int = 5           # T: frame 0 (context) + C chunks of F frames
  num_events: int = 2
  frames_per_chunk: int = 1     # F
  patch_size: int = 6
  text: bool = True             # the text-reasoning stream (False: every slot is BOV only)
  residual: bool = True         # chunks as their change from the last frame before them
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  head_width: int = 128         # FlowHead
  head_depth: int = 2
  flow_weight: float = 1.0      # loss = CE + flow_weight x flow-matching MSE
  t_mean: float = 0.0           # logit-normal t = sigmoid(N(t_mean, t_std)), per chunk
  t_std: float = 1.0
  predict: str = "x"            # the head predicts the clean chunk x1 ("x", velocity (x1 -
                                # x_t) / (1 - t)) or the velocity itself ("v")
  sample_steps: int = 8         # Euler steps per chunk


# ----------------------------------------------------------------------------- text


def words(tokens: np.ndarray) -> str:
  """Slot tokens -> text, e.g. 'red square moves left <bov>' (padding dropped)."""
  return " ".join(VOCAB[int(t)] for t in np.asarray(tokens).ravel() if int(t) != PAD)


def event_words(events: jax.Array) -> jax.Array:
  """events (..., 5) [kind, shape, colour, arg, frame] -> (..., SLOT) tokens: colour, shape,
  kind, argument (a direction, colour or shape word; none for appears / disappears), BOV,
  then padding."""
  kind, shape, colour, arg = (events[..., i] for i in range(4))
  arg_word = jnp.select([kind == moving_shapes.MOVES, kind == moving_shapes.TURNS,
                         kind == moving_shapes.BECOMES],
                        [DIR0 + arg, COLOUR0 + arg, SHAPE0 + arg], BOV)
  has_arg = arg_word != BOV
  return jnp.stack([COLOUR0 + colour, SHAPE0 + shape, KIND0 + kind, arg_word,
                    jnp.where(has_arg, BOV, PAD)], -1).astype(jnp.int32)


def narration(events: jax.Array, num_chunks: int, frames_per_chunk: int,
              text: bool = True) -> jax.Array:
  """events (B, E, 5) -> slots (B, C, SLOT): slot c narrates the event starting in chunk c
  (frames 1 + (c-1) F .. c F; at most one does, `check_layout`), else BOV alone; with
  text=False every slot is BOV alone."""
  b = events.shape[0]
  empty = jnp.zeros((b, num_chunks, SLOT), jnp.int32).at[..., 0].set(BOV)
  if not text:
    return empty
  chunk = (events[..., 4] - 1) // frames_per_chunk            # (B, E): 0-based chunk
  hit = chunk[:, None, :] == jnp.arange(num_chunks)[None, :, None]   # (B, C, E)
  ev = jnp.einsum("bce,bef->bcf", hit.astype(jnp.int32), events)
  return jnp.where(hit.any(-1)[..., None], event_words(ev), empty)


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class Layout:
  """The static interleaved layout (numpy, length L): per token its kind (CLEAN / NOISY /
  WORD), modality, chunk (0 = frame 0), frame and patch (video), slot position j (text),
  block id and RoPE position; plus index tables into the sequence."""
  kind: np.ndarray
  modality: np.ndarray
  chunk: np.ndarray
  frame: np.ndarray
  patch: np.ndarray
  slot_pos: np.ndarray
  block: np.ndarray
  position: np.ndarray
  words: np.ndarray        # (C, SLOT) indices of the slot tokens
  predictor: np.ndarray    # (C, SLOT) index of the token whose output predicts each
  noisy: np.ndarray        # (C, F P) indices of the noisy chunk tokens

  @property
  def length(self) -> int:
    return len(self.kind)


def check_layout(cfg: TV2TVConfig) -> None:
  """ConfigError unless frames split into chunks and every event starts in its own chunk."""
  t, f, e = cfg.num_frames, cfg.frames_per_chunk, cfg.num_events
  if f < 1 or (t - 1) % f:
    raise ConfigError(f"config.model.frames_per_chunk={f} must divide num_frames - 1 = "
                      f"{t - 1} (frame 0 is the context, then chunks of F frames)")
  starts = [seg[0] for seg in moving_shapes.segments(t, e)]
  chunks = [(s - 1) // f for s in starts]
  if len(set(chunks)) != len(chunks):
    raise ConfigError(f"with num_frames={t}, num_events={e} two events start in one chunk of "
                      f"frames_per_chunk={f} frames; use a smaller frames_per_chunk")
  if cfg.image_size % cfg.patch_size:
    raise ConfigError(f"config.model.patch_size={cfg.patch_size} must divide image_size="
                      f"{cfg.image_size}")


def make_layout(num_frames: int, frames_per_chunk: int, patches: int) -> Layout:
  """The layout of the module docstring for T frames, F frames per chunk, P patches per
  frame."""
  f = frames_per_chunk
  num_chunks = (num_frames - 1) // f
  cols = {k: [] for k in ("kind", "modality", "chunk", "frame", "patch", "slot_pos", "block",
                          "position")}
  state = {"block": 0, "pos": 0}

  def add(kind, chunk, frames, n_patch, slot_pos=-1, advance=True):
    start = state["pos"]
    for i, fr in enumerate(frames):
      for p in range(n_patch):
        cols["kind"].append(kind)
        cols["modality"].append(TEXT if kind == WORD else VIDEO)
        cols["chunk"].append(chunk)
        cols["frame"].append(fr)
        cols["patch"].append(p)
        cols["slot_pos"].append(slot_pos)
        cols["block"].append(state["block"])
        cols["position"].append(start + i * n_patch + p)
    state["block"] += 1
    if advance:
      state["pos"] += len(frames) * n_patch

  add(CLEAN, 0, [0], patches)
  for c in range(1, num_chunks + 1):
    for j in range(SLOT):       # each text token its own block: causal text
      add(WORD, c, [-1], 1, slot_pos=j)
    frames = list(range(1 + (c - 1) * f, 1 + c * f))
    # The noisy copy takes the positions its clean twin will have.
    add(NOISY, c, frames, patches, advance=c == num_chunks)
    if c < num_chunks:
      add(CLEAN, c, frames, patches)
  arr = {k: np.asarray(v, np.int32) for k, v in cols.items()}
  idx = np.arange(len(arr["kind"]))
  words_idx = np.stack([idx[(arr["kind"] == WORD) & (arr["chunk"] == c)]
                        for c in range(1, num_chunks + 1)])
  predictor = np.empty_like(words_idx)
  for c in range(num_chunks):
    before = idx[(arr["kind"] == CLEAN) & (arr["chunk"] == c)]
    predictor[c, 0] = before[-1]          # the chunk before the slot decides: text or BOV
    predictor[c, 1:] = words_idx[c, :-1]
  noisy = np.stack([idx[(arr["kind"] == NOISY) & (arr["chunk"] == c)]
                    for c in range(1, num_chunks + 1)])
  return Layout(**arr, words=words_idx, predictor=predictor, noisy=noisy)


# ----------------------------------------------------------------------------- network


class TV2TVModule(nn.Module):
  """(frame patches, slots, noisy chunks, t) -> (slot logits, chunk velocities).

  frames: (B, T, P, D) clean patches (frames not yet known may hold anything: no earlier
  token reads them); slots: (B, C, SLOT) int; noisy: (B, C, F P, D) x_t; t: (B, C).
  Returns logits (B, C, SLOT, V) (slot token j predicted from its predictor) and velocity
  (B, C, F P, D).
  """
  config: TV2TVConfig
  layout: Layout

  @nn.compact
  def __call__(self, frames, slots, noisy, t):
    cfg, lay = self.config, self.layout
    b = frames.shape[0]
    d, patch_dim = cfg.d_model, frames.shape[-1]
    grid = cfg.image_size // cfg.patch_size
    n_chunks = slots.shape[1]
    space = sincos_2d(grid, grid, d)                                   # (P, d)
    clean_in = DenseGeneral((d,), (None, "embed"), use_bias=True, name="clean_in")
    noisy_in = DenseGeneral((d,), (None, "embed"), use_bias=True, name="noisy_in")
    ref_in = DenseGeneral((d,), (None, "embed"), use_bias=False, name="ref_in")
    t_embed = TimestepEmbedder(d, name="t_embed")
    embed = Embed(len(VOCAB), d, name="embed")
    kinds = Embed(3, d, name="kind_embed")

    # Embed each token by its kind, gathered into place by the static layout.
    clean_x = clean_in(frames) + space[None, None]                     # (B, T, P, d)
    noisy_x = noisy_in(noisy) + t_embed(1000.0 * t.reshape(-1)).reshape(b, n_chunks, 1, d)
    noisy_x = noisy_x.reshape(b, n_chunks, cfg.frames_per_chunk, grid * grid, d)
    # Each noisy patch also reads the same patch of the chunk's reference frame (the last
    # frame before it), as video diffusion models concatenate the conditioning frame.
    ref = frames[:, cfg.frames_per_chunk * np.arange(n_chunks)]       # (B, C, P, D)
    noisy_x = noisy_x + ref_in(ref)[:, :, None] + space[None, None, None]   # (B, C, F, P, d)
    text_x = embed(slots)                                              # (B, C, SLOT, d)
    idx = np.arange(lay.length)
    is_clean, is_noisy, is_word = (lay.kind == CLEAN), (lay.kind == NOISY), (lay.kind == WORD)
    x = jnp.zeros((b, lay.length, d), clean_x.dtype)
    x = x.at[:, idx[is_clean]].set(clean_x[:, lay.frame[is_clean], lay.patch[is_clean]])
    within = (lay.frame[is_noisy] - 1) % cfg.frames_per_chunk
    x = x.at[:, idx[is_noisy]].set(
        noisy_x[:, lay.chunk[is_noisy] - 1, within, lay.patch[is_noisy]])
    x = x.at[:, idx[is_word]].set(text_x[:, lay.chunk[is_word] - 1, lay.slot_pos[is_word]])
    x = x + kinds(jnp.asarray(lay.kind))[None]

    # Padding and noisy copies are invisible to other blocks.
    visible = jnp.broadcast_to(jnp.asarray(~is_noisy), (b, lay.length))
    pad = slots.reshape(b, -1) == PAD                                  # (B, C SLOT)
    visible = visible.at[:, lay.words.reshape(-1)].set(~pad)
    mask = interleaved_mask(jnp.asarray(lay.block), visible)
    positions = jnp.broadcast_to(jnp.asarray(lay.position), (b, lay.length))
    h = MoTStack(("text", "video"), cfg.num_layers, cfg.num_heads, d // cfg.num_heads,
                 cfg.mlp_dim, name="mot")(x, lay.modality, mask, positions)

    logits = embed.attend(h[:, lay.predictor])                         # (B, C, SLOT, V)
    z = h[:, lay.noisy]                                                # (B, C, F P, d)
    # The head also reads the reference patch itself: the change it draws is mostly a
    # function of those pixels (recoloured, reshaped, shifted), which a d-wide z would
    # have to squeeze through.
    ref_tok = jnp.tile(ref, (1, 1, cfg.frames_per_chunk, 1))         # (B, C, F P, D)
    z = jnp.concatenate([z, ref_tok.astype(z.dtype)], -1)
    tt = jnp.broadcast_to(1000.0 * t[:, :, None], z.shape[:-1])
    out = FlowHead(cfg.head_width, cfg.head_depth, name="flow_head")(noisy, tt, z)
    if cfg.predict == "x":   # x1 = out; the velocity of the straight path through x_t
      out = (out - noisy) / jnp.maximum(1.0 - t, MIN_GAP)[:, :, None, None]
    return logits, out


# ----------------------------------------------------------------------------- method


@register_method("tv2tv")
class TV2TV(Method):
  """See the module docstring."""
  Config = TV2TVConfig

  def __init__(self, config: TV2TVConfig):
    super().__init__(config)
    check_layout(config)
    if config.predict not in ("x", "v"):
      raise ConfigError(f"config.model.predict={config.predict!r}: use 'x' (the head predicts "
                        "the clean chunk) or 'v' (the velocity)")
    if config.d_model % config.num_heads or (config.d_model // config.num_heads) % 2:
      raise ConfigError(f"config.model.d_model={config.d_model} must split into "
                        f"num_heads={config.num_heads} heads of even size (RoPE)")
    self.grid = config.image_size // config.patch_size
    self.patches = self.grid ** 2
    self.patch_dim = config.patch_size ** 2 * config.channels
    self.num_chunks = (config.num_frames - 1) // config.frames_per_chunk
    self.layout = make_layout(config.num_frames, config.frames_per_chunk, self.patches)
    self.module = TV2TVModule(config, self.layout)

  # ------------------------------------------------------------------ pieces

  def frame_patches(self, video: jax.Array) -> jax.Array:
    """video (B, T, H, W, C) in [0, 1] -> (B, T, P, D) patches."""
    b, t = video.shape[:2]
    x = patchify(video.reshape(b * t, *video.shape[2:]).astype(jnp.float32),
                 self.config.patch_size)
    return x.reshape(b, t, self.patches, self.patch_dim)

  def chunk_frames(self, chunk: jax.Array) -> jax.Array:
    """(B, F P, D) -> (B, F, H, W, C)."""
    b, f, s = chunk.shape[0], self.config.frames_per_chunk, self.config.image_size
    x = unpatchify(chunk.reshape(b * f, self.patches, self.patch_dim), self.config.patch_size,
                   s, s)
    return x.reshape(b, f, s, s, -1)

  def targets(self, patches: jax.Array) -> jax.Array:
    """(B, T, P, D) frame patches -> (B, C, F P, D) chunk targets x1: the chunk's patches,
    minus the last frame before the chunk with `residual`."""
    f, c = self.config.frames_per_chunk, self.num_chunks
    b = patches.shape[0]
    chunks = patches[:, 1:].reshape(b, c, f, self.patches, self.patch_dim)
    if self.config.residual:
      ref = patches[:, f * np.arange(c)]                               # frame (c-1) F
      chunks = chunks - ref[:, :, None]
    return chunks.reshape(b, c, f * self.patches, self.patch_dim)

  def slots(self, batch: Batch) -> jax.Array:
    return narration(batch["events"].astype(jnp.int32), self.num_chunks,
                     self.config.frames_per_chunk, self.config.text)

  def apply(self, params: PyTree, frames, slots, noisy, t):
    return self.module.apply({"params": params}, frames, slots, noisy, t)

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    b = batch["video"].shape[0]
    frames = jnp.zeros((b, self.config.num_frames, self.patches, self.patch_dim))
    slots = jnp.full((b, self.num_chunks, SLOT), BOV, jnp.int32)
    noisy = jnp.zeros((b, self.num_chunks, self.config.frames_per_chunk * self.patches,
                       self.patch_dim))
    t = jnp.zeros((b, self.num_chunks))
    # An "unsafe_rbg" key seeded by `rng`: cheaper to compile than threefry on CPU (as xar).
    seed = jax.random.randint(rng, (), 0, np.iinfo(np.int32).max)
    rng = jax.random.key(seed, impl="unsafe_rbg")
    return self.module.init(rng, frames, slots, noisy, t)["params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    cfg = self.config
    patches = self.frame_patches(batch["video"])
    slots = self.slots(batch)
    x1 = self.targets(patches)
    k_t, k_noise = jax.random.split(rng)
    t = logit_normal_t(k_t, x1.shape[:2], cfg.t_mean, cfg.t_std)       # (B, C)
    x0 = jax.random.normal(k_noise, x1.shape)
    logits, v = self.apply(params, patches, slots, interpolate(x0, x1, t), t)
    # The network ran once on x_t; the loss formula is flow_matching's, fed that output.
    mask = batch.get("mask", jnp.ones(x1.shape[:1]))
    w = jnp.broadcast_to(mask[:, None, None, None], x1.shape)
    flow = flow_matching_loss(lambda *_: v, x0, x1, t, weights=w)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, slots[..., None], -1)[..., 0]    # (B, C, SLOT)
    tw = (slots != PAD) * mask[:, None, None]
    ce = jnp.sum(nll * tw) / jnp.maximum(jnp.sum(tw), 1.0)
    correct = (jnp.argmax(logits, -1) == slots) * tw
    loss = ce + cfg.flow_weight * flow
    return loss, {"loss": Average.of(loss, 1.0), "text_ce": Average.of(jnp.sum(nll * tw),
                                                                        jnp.sum(tw)),
                  "text_acc": Average.of(jnp.sum(correct), jnp.sum(tw)),
                  "flow_mse": Average.of(flow, 1.0)}

  # ------------------------------------------------------------------ sampling

  def rollout(self, params: PyTree, video: jax.Array, slots: jax.Array, start: jax.Array,
              write_from: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Generates chunks start..C of every row, writing text from chunk `write_from` on.

    Args:
      video: (B, T, H, W, C) in [0, 1]: the frames before each row's start chunk are the
        context; later frames are ignored (overwritten).
      slots: (B, C, SLOT): the given text (history, and for chunks >= start but below
        write_from: given / inserted text the model must follow).
      start: (B,) int, first chunk to generate (1..C); write_from: (B,) int, first chunk
        whose text the model writes itself (greedy until BOV; > C: never).
    Returns:
      (video (B, T, H, W, C) with the generated frames in [0, 1], slots (B, C, SLOT)).
    """
    cfg, lay = self.config, self.layout
    b, f, n = video.shape[0], cfg.frames_per_chunk, self.num_chunks
    frames = self.frame_patches(video)
    noisy0 = jnp.zeros((b, n, f * self.patches, self.patch_dim))
    ones = jnp.ones((b, n))
    slots = slots.astype(jnp.int32)

    def write(c, frames, slots):
      """Greedy text for slot c (0-based) of every row: argmax until BOV, then padding."""
      def step(j, carry):
        slots, done = carry
        logits, _ = self.apply(params, frames, slots, noisy0, ones)
        lg = logits[:, c, j].at[:, PAD].set(-jnp.inf)
        tok = jnp.where(j == SLOT - 1, BOV, jnp.argmax(lg, -1)).astype(jnp.int32)
        tok = jnp.where(done, PAD, tok)
        return slots.at[:, c, j].set(tok), done | (tok == BOV)
      cleared = jnp.where(jnp.arange(n)[None, :, None] == c, PAD, slots)
      return jax.lax.fori_loop(0, SLOT, step, (cleared, jnp.zeros((b,), bool)))[0]

    def chunk(c, carry):
      frames, slots, rng = carry
      rng, key = jax.random.split(rng)
      active = c + 1 >= start                                          # (B,) chunk c+1
      writes = (c + 1 >= write_from) & active
      # Greedy text only when some row writes this slot (SLOT forward passes).
      slots = jax.lax.cond(jnp.any(writes),
                           lambda: jnp.where(writes[:, None, None], write(c, frames, slots),
                                             slots),
                           lambda: slots)
      t_other = ones

      def velocity(x, t):
        nz = jax.lax.dynamic_update_slice(noisy0, x[:, None], (0, c, 0, 0))
        tt = jnp.where(jnp.arange(n)[None] == c, t[:, None], t_other)
        v = self.apply(params, frames, slots, nz, tt)[1]
        return jax.lax.dynamic_index_in_dim(v, c, 1, keepdims=False)

      x = euler_sample(velocity, jax.random.normal(key, noisy0[:, 0].shape), cfg.sample_steps)
      ref = jax.lax.dynamic_index_in_dim(frames, c * f, 1, keepdims=True)   # (B, 1, P, D)
      new = x.reshape(b, f, self.patches, self.patch_dim)
      new = jnp.clip(new + ref if cfg.residual else new, 0.0, 1.0)
      old = jax.lax.dynamic_slice_in_dim(frames, 1 + c * f, f, 1)
      new = jnp.where(active[:, None, None, None], new, old)
      frames = jax.lax.dynamic_update_slice_in_dim(frames, new, 1 + c * f, 1)
      return frames, slots, rng

    first = jnp.min(start) - 1
    frames, slots, _ = jax.lax.fori_loop(first, n, chunk, (frames, slots, rng))
    s = cfg.image_size
    out = unpatchify(frames.reshape(-1, self.patches, self.patch_dim), cfg.patch_size, s, s)
    return out.reshape(video.shape), slots

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """(2, B, T, H, W, C): each clip above the model's continuation of its frame 0 (the model
    writes its own text; `tokenlab sample`)."""
    video = batch["video"].astype(jnp.float32)
    b = video.shape[0]
    slots = narration(jnp.zeros((b, 0, 5), jnp.int32), self.num_chunks,
                      self.config.frames_per_chunk, text=False)   # BOV only: overwritten
    start = jnp.ones((b,), jnp.int32)
    write_from = start if self.config.text else start + self.num_chunks
    out, _ = self.rollout(params, video, slots, start, write_from, rng)
    return jnp.stack([video, out])
