"""FireRedTTS-2's dual transformer for text-to-speech over RVQ codec tokens (method
`firered_tts2`), with the flat delay-pattern model it is compared against.

Paper: FireRedTeam, "FireRedTTS-2: Towards Long Conversational Speech Generation for Podcast
and Chatbot" (arXiv 2509.02020; code FireRedTeam/FireRedTTS2, read through the search tools,
not copied). Issue 19, paper #6 of papers/methods-vision-audio-dna.md.

The method, in the paper's order:

1. Speech tokens. A frozen RVQ codec (`audio_codec`, trained once, `codec_workdir`) turns an
   utterance's log-mel into frames of K codes (B, T, K) at 12.5 Hz (the paper's rate; its
   codec has 16 levels, here 4 of 256).
2. Text-speech interleaving. The sequence is [the sentence's text tokens; its speech frames]
   (the paper interleaves per sentence through a dialogue; the toy corpus has one sentence per
   utterance, so one text block then one speech block). Text tokens are the sentence's
   phonemes (ids of tokenlab.data.speech.PHONEMES, left-padded with id 0).
3. Frame embedding: the sum of the K codebook embeddings (`nn.codec_lm.CodebookSumEmbedding`).
4. The dual transformer (`arch='dual'`). A backbone (causal transformer, `nn.codec_lm.CodecLM`
   with one head) over [text; frames < t] predicts level 0 of frame t and gives its hidden
   state h_t; a small depth transformer (`nn.codec_lm.DepthDecoder`) over the codebook axis
   predicts levels 1..K-1 of frame t from [h_t; c_t,0; ...; c_t,K-2], causally, so level k
   sees h_t and the levels below k only. Training: level-0 cross-entropy at every frame; the
   depth decoder only on a random `depth_fraction` (the paper's 1/8) of the frames, which
   is what makes its cost small. Loss = (CE_0 + (K - 1) CE_depth) / K, nats per code, the
   same weighting per code as the flat model's mean.
5. Generation with key/value caches (`nn.codec_lm.sample_dual_lm`): per frame one backbone
   step then K - 1 depth steps, so the first frame (the first packet: all K levels of frame
   0) is out after 1 backbone + K - 1 depth evaluations.

The baseline (`arch='flat'`): MusicGen / VALL-E's delay pattern (`nn.codec_lm.delay_pattern`):
the same backbone with K heads over the delayed frames (level k shifted by k steps), one step
per frame and K - 1 extra steps; its first packet needs K backbone evaluations. Compared at
equal training steps and batch, with the same backbone; parameters and training FLOPs of
both are measured and stated by the reproduction (tokenlab/repro/firered_tts2.py).

End of speech: an extra level-0 id (`eos_id` = codebook size) marks the frame after the last
(its other levels are not targets; later frames are padding); generation stops a row there.
Both architectures learn it the same way.

Simplified, and why: a small phoneme-prefix TTS on a synthetic espeak corpus instead of a
multi-speaker dialogue model (no speaker prompts, no dialogue context, no streaming
tokenizer); a mel codec with Griffin-Lim instead of a waveform codec (audio_codec's
docstring); the depth decoder's 1/8 of frames is 1/8 of the batch's frame slots
(B x (max_frames + 1)), drawn among the real frames: ~1/5 of the real frames at the corpus's
mean length (a fixed count keeps the shapes static); no curriculum or pre-training stages.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn import codec_lm
from tokenlab.registry import register_method

ARCHS = ("dual", "flat")
NUM_PHONEME_IDS = 71     # len(tokenlab.data.speech.PHONEMES): 70 phonemes + '<pad>' (id 0)
MEL_HOP = 160            # samples per mel frame at 16 kHz (the speech pipeline's hop)
_CODECS: dict = {}       # codec workdir -> its FrozenTokenizer (a finished run; read-only)


@dataclasses.dataclass(frozen=True)
class FireRedTTS2Config:
  arch: str = "dual"              # dual (backbone + depth decoder) | flat (delay pattern)
  codec_workdir: str = ""         # a trained audio_codec run (rvq): tokens and decoding
  codebook_sizes: tuple = ()      # () = the codec's; set to skip loading it (tests)
  phoneme_vocab: int = NUM_PHONEME_IDS
  max_phonemes: int = 32          # text tokens kept (left-padded); the corpus has <= 25
  max_frames: int = 40            # speech frames modelled (12.5 Hz: 3.2 s); longer: cropped
  d_model: int = 64               # backbone (both architectures)
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  depth_d_model: int = 32         # depth decoder (dual only)
  depth_layers: int = 1
  depth_heads: int = 2
  depth_mlp_dim: int = 64
  depth_fraction: float = 0.125   # frame slots the depth decoder trains on (paper: 1/8)
  temperature: float = 1.0
  top_k: int = 0


@flax.struct.dataclass
class Generated:
  """Sampled speech: codes (B, T, K) with codes past the end set to 0, num_frames (B,)."""
  codes: jax.Array
  num_frames: jax.Array


@register_method("firered_tts2")
class FireRedTTS2(Method):
  """Text (phonemes) -> RVQ codec frames; see the module docstring.

  Batches: 'phonemes' (B, P) ids, 0-padded on the right, and either 'codes' (B, T, K) with
  'num_frames' (B,) (codes encoded once, the reproduction's path) or the `speech` pipeline's
  'mel' / 'mel_lengths' (encoded here by the frozen codec); optional 'mask' (B,).
  """
  Config = FireRedTTS2Config
  sample_kind = "audio"

  def __init__(self, config: FireRedTTS2Config, codec: Any = None):
    """`codec`: a FrozenTokenizer-like object used instead of loading `codec_workdir`."""
    if config.arch not in ARCHS:
      raise ConfigError(f"config.model.arch='{config.arch}'; use one of {ARCHS}")
    if not 0.0 < config.depth_fraction <= 1.0:
      raise ConfigError(f"config.model.depth_fraction={config.depth_fraction}: a fraction "
                        f"of frames in (0, 1] (the paper: 0.125)")
    super().__init__(config)
    self._codec = codec
    sizes = tuple(config.codebook_sizes) or tuple(self.tokenizer().method.codebook_sizes)
    if len(sizes) < 2:
      raise ConfigError(f"the codec has {len(sizes)} level(s); the dual transformer needs "
                        f"an RVQ codec with >= 2 (e.g. experiments/audio_codec.py "
                        f"bitrate=high: 4)")
    self.codebook_sizes = sizes
    self.num_levels = len(sizes)
    self.eos_id = sizes[0]                      # level 0's extra id: end of speech
    self.lm_sizes = (sizes[0] + 1,) + sizes[1:]
    self.pad_id = codec_lm.frame_pad_id(self.lm_sizes)
    lm = dict(codebook_sizes=self.lm_sizes, prefix_vocab=config.phoneme_vocab,
              d_model=config.d_model, num_layers=config.num_layers,
              num_heads=config.num_heads, mlp_dim=config.mlp_dim)
    if config.arch == "flat":
      self.lm = codec_lm.CodecLM(**lm)
    else:
      self.lm = codec_lm.CodecLM(**lm, head_levels=1)
      # Level 0's table has the end-of-speech row too (a sampled end frame is fed to it).
      self.depth = codec_lm.DepthDecoder(
          self.lm_sizes, d_model=config.depth_d_model, num_layers=config.depth_layers,
          num_heads=config.depth_heads, mlp_dim=config.depth_mlp_dim)

  # ---------------------------------------------------------------- the frozen codec

  def tokenizer(self):
    """The frozen codec of `codec_workdir` (loaded once)."""
    if self._codec is None:
      if not self.config.codec_workdir:
        raise ConfigError("config.model.codec_workdir is empty; point it at a trained "
                          "experiments/audio_codec.py run with quantizer=rvq")
      workdir = self.config.codec_workdir
      if workdir not in _CODECS:     # one load per process: every arm and run shares it
        from tokenlab.train.inference import load_frozen_tokenizer
        _CODECS[workdir] = load_frozen_tokenizer(workdir)
      self._codec = _CODECS[workdir]
    return self._codec

  # ---------------------------------------------------------------- the sequence

  def prefix(self, phonemes: jax.Array) -> jax.Array:
    """phonemes (B, P) right-padded with 0 -> text tokens (B, max_phonemes), left-padded."""
    p = jnp.asarray(phonemes, jnp.int32)
    aligned = codec_lm.left_align_prefix(p, jnp.sum(p > 0, axis=1), 0)
    keep = self.config.max_phonemes
    if aligned.shape[1] >= keep:
      return aligned[:, -keep:]
    return jnp.pad(aligned, ((0, 0), (keep - aligned.shape[1], 0)))

  def codes(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """The batch's speech as (codes (B, max_frames, K) int32, num_frames (B,)), cropped."""
    if "codes" in batch:
      codes, n = jnp.asarray(batch["codes"], jnp.int32), jnp.asarray(batch["num_frames"])
    else:
      codec = self.tokenizer()
      codes = jax.lax.stop_gradient(codec.encode(batch)).astype(jnp.int32)
      n = codec.method.num_tokens(jnp.asarray(batch["mel_lengths"]))
    t = self.config.max_frames
    codes = codes[:, :t]
    if codes.shape[1] < t:
      codes = jnp.pad(codes, ((0, 0), (0, t - codes.shape[1]), (0, 0)))
    return codes, jnp.minimum(n, t).astype(jnp.int32)

  def frames(self, codes: jax.Array, num_frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    """codes (B, T, K), num_frames (B,) -> (frames (B, T + 1, K), targets mask (B, T + 1, K)):
    real frames, then the end frame (level 0 = eos_id, other levels padding), then padding.
    The mask is True for the real frames' codes and the end frame's level 0."""
    b, t, k = codes.shape
    codes = jnp.pad(codes, ((0, 0), (0, 1), (0, 0)))
    idx = jnp.arange(t + 1)[None, :, None]
    n = num_frames[:, None, None]
    level0 = (jnp.arange(k) == 0)[None, None, :]
    frames = jnp.where(idx < n, codes, self.pad_id)
    frames = jnp.where((idx == n) & level0, self.eos_id, frames)
    mask = (idx < n) | ((idx == n) & level0)
    return frames.astype(jnp.int32), mask

  # ---------------------------------------------------------------- trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    b = batch["phonemes"].shape[0]
    prefix = jnp.zeros((b, self.config.max_phonemes), jnp.int32)
    frames = jnp.zeros((b, self.config.max_frames + 1, self.num_levels), jnp.int32)
    r1, r2 = jax.random.split(rng)
    if self.config.arch == "flat":
      steps = self.config.max_frames + self.num_levels
      return {"lm": self.lm.init(r1, prefix, frames[:, :1].repeat(steps, 1))["params"]}
    lower = frames[:, 0, :self.num_levels - 1]
    return {"lm": self.lm.init(r1, prefix, frames)["params"],
            "depth": self.depth.init(r2, jnp.zeros((b, self.config.d_model)), lower)["params"]}

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    return self._loss(params, batch, rng, self.config.depth_fraction)

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, Any]:
    """Teacher-forced NLL per code on every real frame (the depth decoder on all frames,
    not the training fraction), so both architectures are measured alike."""
    return self._loss(params, batch, rng, 1.0)[1]

  def _loss(self, params: PyTree, batch: Batch, rng: jax.Array,
            fraction: float) -> tuple[jax.Array, dict]:
    codes, n = self.codes(batch)
    rows = jnp.asarray(batch.get("mask", jnp.ones(n.shape)), jnp.float32) > 0
    frames, mask = self.frames(codes, n)
    mask = mask & rows[:, None, None]
    prefix = self.prefix(batch["phonemes"])
    if self.config.arch == "flat":
      inputs, _ = codec_lm.delay_lm_inputs(frames, self.lm_sizes)
      logits, _ = self.lm.apply({"params": params["lm"]}, prefix, inputs)
      loss, metrics = codec_lm.delay_lm_loss(logits, frames, code_mask=mask)
      metrics["nll_per_code"] = metrics["loss"]
      return loss, metrics
    logits, hidden = self.lm.apply({"params": params["lm"]}, prefix,
                                   codec_lm.frame_lm_inputs(frames, self.lm_sizes))
    ce0, m0 = codec_lm.codec_level_nll(logits[:, :, :1], frames[..., :1], mask[..., :1])
    # The depth decoder trains on a random `fraction` of the frame slots, drawn among the
    # frames whose upper levels are targets (real frames); a fixed count keeps shapes static.
    b, t1, k = frames.shape
    count = max(1, math.ceil(fraction * b * t1))
    real = mask[..., 1].reshape(-1)
    score = jnp.where(real, jax.random.uniform(rng, real.shape), -1.0)
    _, idx = jax.lax.top_k(score, count)
    h = hidden.reshape(b * t1, -1)[idx]
    sel, chosen = frames.reshape(b * t1, k)[idx], real[idx][:, None]
    # A slot drawn beyond the real frames (fewer real frames than `count`) holds padding ids,
    # outside the depth decoder's tables: feed code 0 there (its targets weigh 0).
    depth_logits = self.depth.apply({"params": params["depth"]}, h,
                                    jnp.where(chosen, sel[:, :k - 1], 0))
    ce_d, md = codec_lm.codec_level_nll(depth_logits, sel[:, 1:],
                                        jnp.broadcast_to(chosen, (count, k - 1)))
    loss = (ce0 + (k - 1) * ce_d) / k
    metrics = {"nll_level_0": m0["nll_level_0"]}
    for j in range(k - 1):
      metrics[f"nll_level_{j + 1}"] = md[f"nll_level_{j}"]
    # Nats per code over every target code (what the flat model's loss averages).
    total = sum(metrics[f"nll_level_{j}"].total for j in range(k))
    codes_n = sum(metrics[f"nll_level_{j}"].count for j in range(k))
    metrics["loss"] = Average.of(loss, 1.0)
    metrics["nll_per_code"] = Average.of(total, codes_n)
    return loss, metrics

  # ---------------------------------------------------------------- generation

  def generate_codes(self, params: PyTree, phonemes: jax.Array, rng: jax.Array,
                     num_frames: int | None = None,
                     temperature: float | None = None) -> jax.Array:
    """phonemes (B, P) -> raw sampled frames (B, num_frames, K) with the KV-cache sampler
    of the architecture (default max_frames + 1 frames, room for the end frame). Jittable."""
    cfg = self.config
    t = cfg.max_frames + 1 if num_frames is None else num_frames
    temp = cfg.temperature if temperature is None else temperature
    prefix = self.prefix(phonemes)
    if cfg.arch == "flat":
      return codec_lm.sample_delay_lm(self.lm, params["lm"], prefix, t, rng,
                                      temperature=temp, top_k=cfg.top_k, eos_id=self.eos_id)
    return codec_lm.sample_dual_lm(self.lm, params["lm"], self.depth, params["depth"], prefix,
                                   t, rng, temperature=temp, top_k=cfg.top_k)

  def first_packet_evaluations(self) -> dict[str, int]:
    """Network evaluations until all K levels of frame 0 are out (the first packet)."""
    k = self.num_levels
    if self.config.arch == "flat":
      return {"backbone": k, "depth": 0}
    return {"backbone": 1, "depth": k - 1}

  def trim(self, raw: jax.Array) -> Generated:
    """Raw frames -> Generated: a row ends at its first end-of-speech frame (or after
    max_frames); codes from there on, and any id outside a level's codebook, become 0.
    Jittable."""
    raw = jnp.asarray(raw)
    t = min(raw.shape[1], self.config.max_frames)
    eos = raw[:, :, 0] == self.eos_id
    n = jnp.clip(jnp.where(eos.any(1), eos.argmax(1), raw.shape[1]), 0, t)
    codes = raw[:, :t]
    sizes = jnp.asarray(self.codebook_sizes)
    keep = (jnp.arange(t)[None, :, None] < n[:, None, None]) & (codes >= 0) & (codes < sizes)
    return Generated(jnp.where(keep, codes, 0).astype(jnp.int32), n.astype(jnp.int32))

  def mels(self, generated: Generated) -> tuple[jax.Array, jax.Array]:
    """Generated -> (log-mel (B, T x downsampling, M) from the frozen codec's decoder, mel
    lengths (B,)); a row of 0 frames keeps one token (the recogniser needs a frame).
    Jittable."""
    codec = self.tokenizer()
    mel = codec.decode(generated.codes)
    return mel, jnp.maximum(generated.num_frames, 1) * codec.method.downsampling

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Speech for the batch's phonemes: {'waveform' (B, S) float32 16 kHz peak 0.9,
    'lengths' (B,) samples} (codec decoder + Griffin-Lim); the CLI writes WAV files."""
    gen = self.trim(self.generate_codes(params, jnp.asarray(batch["phonemes"]), rng))
    mel, lengths = self.mels(gen)
    wave = self.tokenizer().method.to_waveform(mel)
    samples = lengths.astype(jnp.int32) * MEL_HOP
    wave = jnp.where(jnp.arange(wave.shape[-1])[None] < samples[:, None], wave, 0.0)
    peak = jnp.maximum(jnp.max(jnp.abs(wave), axis=-1, keepdims=True), 1e-6)
    return {"waveform": (wave / peak * 0.9).astype(jnp.float32), "lengths": samples}
