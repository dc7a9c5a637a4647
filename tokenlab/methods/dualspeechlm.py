"""DualSpeechLM: an understanding-driven speech tokenizer and dual-token speech modeling.
Wang et al., "DualSpeechLM: Towards Unified Speech Understanding and Generation via Dual
Speech Token Modeling with Large Language Models", arXiv 2508.08961 (the authors' repository,
lavendery/UUG, had released no code when this was written: what follows is built from the
paper's description).

The method, in the paper's order (two stages of one method, `config.model.stage`):

1. USTokenizer (`stage='tokenizer'`). A frozen speech encoder's features -> a small
   convolutional adapter -> a vector quantizer (one codebook) -> the USTokens. Training:
   commitment (weight 1) + reconstruction of the encoder's features from the quantized
   vectors by a convolutional decoder (MSE, weight 45) + a text LM's cross-entropy on the
   transcript given the quantized vectors as its prefix (weight 5): the paper's 1 / 45 / 5.
   The text loss is what makes the tokens "understanding-driven"; `text_weight=0` gives the
   reconstruction-only VQ of the same size (the ablation).
2. DualSpeechLM (`stage='lm'`). One causal transformer (the "LLM") does both tasks:
   understanding, [ASR] speech tokens [SEP] -> the transcript's words, and generation,
   [TTS] words [SEP] -> acoustic codec tokens. Dual-token modeling (`speech_input=
   'ustokens'`): the speech it reads are USTokens, the speech it writes are acoustic tokens
   (the shared `audio_codec`'s RVQ levels, decoded to log-mel by the frozen codec). The
   generated frames are laid out by the delay pattern (tokenlab/nn/codec_lm.py) with the
   USToken as the first level: at step s the model predicts the USToken of frame s and the
   acoustic level k of frame s - 1 - k, so each frame's acoustic tokens are predicted after
   its semantic token (the paper's semantic supervision loss on the LLM's outputs and its
   Chain-of-Condition, semantic before acoustic, in one flat layout). The baseline
   (`speech_input='acoustic'`) reads and writes acoustic tokens only: no semantic level.

Batches (`iterator_fns`, config.data.name='method'; built once from the `speech` corpus of
the codec run and the frozen pieces): 'features' (B, N, F) the frozen encoder's outputs at
its 25 Hz positions (tokenizer stage), 'num_tokens' (B,) valid positions, 'words' (B, W)
ids into `tokenlab.data.speech.WORDS` (0 pads), 'num_words' (B,), 'codes' (B, N, K) the
codec's RVQ codes (lm stage), 'us_codes' (B, N) USTokens (lm stage, dual), 'phonemes' (B,
48) the reference phoneme ids (for the phoneme error rate of generated speech), 'mask'.
Encoder positions and codec tokens are both 4 mel frames (40 ms), so frame t of each stream
covers the same audio.

Follows the paper: the tokenizer's three losses and their weights (1 / 45 / 5; the
commitment cost inside the VQ is 1 so its loss is the commitment term itself); a frozen
encoder under a trained adapter and one VQ codebook; one LLM for understanding and
generation with USTokens in and acoustic tokens out; the semantic target predicted before
the acoustic tokens of the same frame.
Simplified, and why (toy scale, 2 CPU cores, nothing downloaded):
- The frozen encoder is the small CTC phoneme recogniser trained on the corpus (its
  transformer's outputs), not Whisper's encoder: the paper entry's "small CTC encoder in
  place of the big encoder".
- The tokenizer's text LM is a one-layer transformer trained jointly with the adapter, not a
  frozen pretrained LLM (there is none offline); its vocabulary is the corpus's 60 words.
- The LLM is a 2-layer transformer trained from scratch on both tasks at once (no pretrained
  text LLM, no instruction data); the acoustic tokens come from one flat delay-pattern
  stream (the paper's acoustic generation follows the LLM's states through a separate
  module); the understanding task is transcription of the `speech` sentences (digit strings
  and object sentences), scored by word error rate.
- An utterance's end is an 'end' id on every level past its last frame (predicted like a
  code); generation writes the full frame budget and cuts at the first end on acoustic
  level 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree, as_variables
from tokenlab.nn.audio import Conv1D
from tokenlab.nn.codec_lm import (CodebookSumEmbedding, CodecLM, codec_level_nll,
                                  delay_lm_inputs, delay_pattern, delay_valid,
                                  left_align_prefix, sample_delay_lm)
from tokenlab.nn.decode import sample_cached
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.quantizers import STATS, VectorQuantizer
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

STAGES = ("tokenizer", "lm")
SPEECH_INPUTS = ("ustokens", "acoustic")
FRAMES_PER_TOKEN = 4          # 40 ms: the recogniser's stacked positions and the codec's tokens
MAX_WORDS = 8                 # tokenlab.data.speech.MAX_WORDS (not imported: that pulls tfds)
NUM_WORDS = 61                # len(tokenlab.data.speech.WORDS): 60 words + '<pad>' (id 0)
EOS = NUM_WORDS               # text ids: words 1..60, EOS 61, then the LM's special tokens
ASR, TTS, SEP = EOS + 1, EOS + 2, EOS + 3
TEXT_VOCAB = EOS + 1          # what a text head predicts: words and EOS
TEXT_IDS = SEP + 1            # what a text embedding reads


@dataclasses.dataclass(frozen=True)
class DualSpeechLMConfig:
  stage: str = "lm"               # tokenizer (USTokenizer) | lm (DualSpeechLM)
  # where the data comes from (see iterator_fns); empty in unit tests
  codec_workdir: str = ""         # an audio_codec rvq run: the acoustic tokens and the corpus
  encoder_workdir: str = ""       # a phoneme_recognizer run: the frozen speech encoder
  tokenizer_workdir: str = ""     # a stage='tokenizer' run (lm stage, speech_input='ustokens')
  max_frames: int = 300           # mel frames kept per utterance (the recogniser's crop)
  # sizes read from those runs when they are given (else these)
  codec_levels: int = 2
  codec_codebook: int = 256
  us_codebook: int = 128
  # USTokenizer
  us_latent: int = 32
  us_width: int = 64
  commit_weight: float = 1.0
  recon_weight: float = 45.0
  text_weight: float = 5.0        # 0: the reconstruction-only VQ (same modules and size)
  text_layers: int = 1
  ema_decay: float = 0.99
  dead_after: int = 20            # restart a code unused for this many updates (0 = never)
  # DualSpeechLM
  speech_input: str = "ustokens"  # ustokens (dual tokens) | acoustic (acoustic tokens only)
  semantic_weight: float = 1.0    # weight of the USToken level's cross-entropy (dual)
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 0                # 0 = 8/3 d_model (SwiGLU)
  temperature: float = 1.0        # sampling of generated frames
  top_k: int = 10


def _mlp(cfg: DualSpeechLMConfig) -> int:
  return cfg.mlp_dim or int(8 * cfg.d_model / 3) // 8 * 8


def _block(cfg: DualSpeechLMConfig, d: int) -> dict:
  return dict(num_heads=cfg.num_heads, head_dim=d // cfg.num_heads, mlp_dim=_mlp(cfg),
              causal=True)


def text_targets(words: jax.Array, num_words: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The transcript as W + 1 targets: the words, EOS after the last, 0 (masked) after it.

  words (B, W) ids (0 pads), num_words (B,) -> (targets (B, W + 1), mask (B, W + 1))."""
  b, w = words.shape
  j = jnp.arange(w + 1)[None, :]
  padded = jnp.pad(words, ((0, 0), (0, 1)))
  targets = jnp.where(j == num_words[:, None], EOS, jnp.where(j < num_words[:, None], padded, 0))
  return targets.astype(jnp.int32), (j <= num_words[:, None]).astype(jnp.float32)


def frame_levels(codes: jax.Array, num_tokens: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
  """codes (B, N, K) -> the same with every level's 'end' id (its codebook size) on frames at
  or past num_tokens (B,): the generator learns where an utterance ends."""
  past = jnp.arange(codes.shape[1])[None, :, None] >= num_tokens[:, None, None]
  return jnp.where(past, jnp.asarray(sizes, codes.dtype)[None, None, :], codes)


def tts_prefix(words: jax.Array, num_words: jax.Array) -> jax.Array:
  """The generation prompt [TTS, w_1 .. w_n, SEP] (B, W + 2), left-padded with 0 (the pad
  word) so that every row's speech starts at the same position (`left_align_prefix`)."""
  b, w = words.shape
  j = jnp.arange(w)[None, :]
  body = jnp.where(j < num_words[:, None], words, 0).astype(jnp.int32)
  ids = jnp.concatenate([jnp.full((b, 1), TTS, jnp.int32), body, jnp.zeros((b, 1), jnp.int32)], 1)
  ids = ids.at[jnp.arange(b), num_words + 1].set(SEP)
  return left_align_prefix(ids, num_words + 2, 0)


def word_error_rate(words: np.ndarray, num_words: np.ndarray,
                    hypotheses: list[list[int]]) -> float:
  """Corpus WER: edit distance of each hypothesis (word ids) to its reference words (n, W)
  with num_words (n,) real ones, summed, over the total reference words."""
  from tokenlab.evals.audio import error_rate
  refs = [[int(x) for x in w[:n]] for w, n in zip(np.asarray(words), np.asarray(num_words))]
  return error_rate(refs, hypotheses)


def codec_level_nll_rows(logits: jax.Array, frames: jax.Array, rows: jax.Array):
  """The delay-pattern loss over every valid delayed position of rows with mask 1: logits
  (B, N + K - 1, K, V) from `CodecLM` on `delay_lm_inputs(frames)`, frames (B, N, K)."""
  b, n, k = frames.shape
  valid = delay_valid(n, k)[None] & (rows[:, None, None] > 0)
  return codec_level_nll(logits, delay_pattern(frames, 0), valid)


# ---------------------------------------------------------------------------------------------
# 1. USTokenizer


class USTokenizerModule(nn.Module):
  """features (B, N, F) -> adapter -> VQ -> (feature decoder, text LM over [tokens; words])."""
  cfg: DualSpeechLMConfig
  feature_dim: int

  def setup(self):
    cfg = self.cfg
    self.adapter_in = Conv1D(cfg.us_width, 3)
    self.adapter_out = Conv1D(cfg.us_latent, 3, out_axis=None)
    # commitment_cost 1: the quantizer's loss is the commitment term, weighted commit_weight.
    self.vq = VectorQuantizer(codebook_size=cfg.us_codebook, dim=cfg.us_latent,
                              commitment_cost=1.0, ema=True, decay=cfg.ema_decay,
                              dead_after=cfg.dead_after)
    self.dec_in = Conv1D(cfg.us_width, 3)
    self.dec_out = Conv1D(self.feature_dim, 3, out_axis=None)
    d = cfg.d_model
    self.prefix_proj = DenseGeneral((d,), (None, "embed"), use_bias=True)
    self.text_embed = Embed(TEXT_IDS, d)
    self.text_lm = TransformerStack(cfg.text_layers, _block(cfg, d))
    self.text_head = DenseGeneral((TEXT_VOCAB,), ("embed", "vocab"))

  def quantize(self, features: jax.Array, token_mask: jax.Array, train: bool = False):
    x = standardise(features)
    z = self.adapter_out(nn.silu(self.adapter_in(x)))
    return self.vq(z, train=train, mask=token_mask)

  def reconstruct(self, values: jax.Array) -> jax.Array:
    return self.dec_out(nn.silu(self.dec_in(values)))

  def text_logits(self, values: jax.Array, token_mask: jax.Array, words: jax.Array) -> jax.Array:
    """Quantized vectors (B, N, D) as the prefix, then [SEP, w_1 .. w_W] -> logits (B, W + 1,
    TEXT_VOCAB) at the text positions (position j predicts word j + 1, or EOS)."""
    prefix = self.prefix_proj(values) * token_mask[..., None]
    sep = jnp.full(words.shape[:1] + (1,), SEP, jnp.int32)
    text = self.text_embed(jnp.concatenate([sep, words.astype(jnp.int32)], axis=1))
    h = self.text_lm(jnp.concatenate([prefix, text], axis=1))
    return self.text_head(h[:, values.shape[1]:])

  def __call__(self, features, token_mask, words, train: bool = False):
    q = self.quantize(features, token_mask, train)
    return q, self.reconstruct(q.values), self.text_logits(q.values, token_mask, words)


def standardise(features: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Per-position zero mean, unit variance over the feature axis (no statistics over data, so
  training and encoding can never disagree)."""
  mean = features.mean(-1, keepdims=True)
  var = features.var(-1, keepdims=True)
  return (features - mean) * jax.lax.rsqrt(var + eps)


def token_mask_of(batch: Batch, n: int) -> jax.Array:
  """(B, N) float: positions before num_tokens on rows of batch mask 1."""
  valid = jnp.arange(n)[None, :] < batch["num_tokens"][:, None]
  rows = batch.get("mask", jnp.ones(valid.shape[:1], jnp.float32))
  return valid.astype(jnp.float32) * rows[:, None]


# ---------------------------------------------------------------------------------------------
# 2. DualSpeechLM


class DualCodecLM(CodecLM):
  """The shared `CodecLM` (tokenlab/nn/codec_lm.py: a causal transformer over [prefix ids;
  codec frames] with per-level heads, its delay-pattern loss and KV-cache sampler) that also
  reads speech and writes text: the understanding rows [ASR, speech (B, N, Kin), SEP,
  w_1 .. w_W] through `understand`, the generation rows through `CodecLM.__call__` (prefix
  [TTS, words, SEP], delayed frames). One stack, one set of weights for both tasks.

  `input_sizes`: codebook sizes of the speech it reads ((C,) USTokens, or the codec's K
  levels), with a pad id (the size) on frames past an utterance's end."""
  input_sizes: tuple = ()

  def setup(self):
    super().setup()
    self.speech_embed = CodebookSumEmbedding(self.input_sizes, self.d_model, extra_ids=1)
    self.text_head = nn.Dense(TEXT_VOCAB, name="text_head")

  def understand(self, speech: jax.Array | None, text: jax.Array) -> jax.Array:
    """speech (B, N, Kin) ids and text ids (B, n) -> text logits (B, n, TEXT_VOCAB) at the
    text positions: [ASR, speech, *text]. speech None: decode steps after the prefill."""
    x = self.prefix_embed(text)
    if speech is not None:
      asr = self.prefix_embed(jnp.full(text.shape[:1] + (1,), ASR, text.dtype))
      x = jnp.concatenate([asr, self.speech_embed(speech).astype(x.dtype), x], axis=1)
    return self.text_head(self.stack(x)[:, -text.shape[1]:]).astype(jnp.float32)

  def init_all(self, prefix, frames, speech, text):
    """Touches every submodule (for `init`)."""
    return self(prefix, frames), self.understand(speech, text)


def _ce(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of masked NLL, sum of mask) of logits (..., V) at integer targets (...)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), -1)[..., 0]
  return jnp.sum(nll * mask), jnp.sum(mask)


@register_method("dualspeechlm")
class DualSpeechLM(Method):
  """See the module docstring. Stateful in the tokenizer stage (the EMA codebook)."""
  Config = DualSpeechLMConfig
  sample_kind = "audio"   # `tokenlab sample` writes the generated speech as WAV files

  def __init__(self, config: DualSpeechLMConfig):
    if config.stage not in STAGES:
      raise ConfigError(f"config.model.stage='{config.stage}'; use one of {STAGES}")
    if config.speech_input not in SPEECH_INPUTS:
      raise ConfigError(f"config.model.speech_input='{config.speech_input}'; use one of "
                        f"{SPEECH_INPUTS}")
    if config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} does not split into "
                        f"num_heads={config.num_heads} heads")
    super().__init__(config)
    self.state_collections = (STATS,) if config.stage == "tokenizer" else ()
    self._pieces: dict[str, Any] = {}

  # ------------------------------------------------------------------ sizes of the streams

  @functools.cached_property
  def codec_sizes(self) -> tuple[int, ...]:
    """Codebook sizes of the acoustic levels: the codec run's when given, else the config's."""
    cfg = self.config
    if cfg.codec_workdir:
      from tokenlab.train.inference import load_config_from_workdir
      m = load_config_from_workdir(cfg.codec_workdir).model
      if m.get("quantizer", "rvq") != "rvq":
        raise ConfigError("config.model.codec_workdir must hold an audio_codec with "
                          "quantizer='rvq' (its levels are the acoustic tokens)")
      return (int(m.codebook_size),) * int(m.rvq_levels)
    return (cfg.codec_codebook,) * cfg.codec_levels

  @functools.cached_property
  def us_codebook(self) -> int:
    cfg = self.config
    if cfg.stage == "lm" and cfg.tokenizer_workdir:
      from tokenlab.train.inference import load_config_from_workdir
      return int(load_config_from_workdir(cfg.tokenizer_workdir).model.us_codebook)
    return cfg.us_codebook

  @property
  def dual(self) -> bool:
    return self.config.speech_input == "ustokens"

  @property
  def input_sizes(self) -> tuple[int, ...]:
    return (self.us_codebook,) if self.dual else self.codec_sizes

  @property
  def level_sizes(self) -> tuple[int, ...]:
    return ((self.us_codebook,) + self.codec_sizes) if self.dual else self.codec_sizes

  def tokenizer_module(self, feature_dim: int) -> USTokenizerModule:
    return USTokenizerModule(self.config, feature_dim)

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    if self.config.stage == "tokenizer":
      self._need(batch, "features", "num_tokens", "words")
      f = batch["features"]
      v = self.tokenizer_module(f.shape[-1]).init(
          {"params": rng}, f, token_mask_of(batch, f.shape[1]), batch["words"])
      return {"params": v["params"], STATS: v[STATS]}
    self._need(batch, "codes", "num_tokens", "words", *(("us_codes",) if self.dual else ()))
    x = self._lm_inputs(batch)
    return self.module().init(rng, x["prefix"], x["frames"], x["speech"], x["text"],
                              method=DualCodecLM.init_all)["params"]

  def _need(self, batch: Batch, *keys: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
      raise ConfigError(f"dualspeechlm (stage={self.config.stage}, speech_input="
                        f"{self.config.speech_input}) needs batch fields {missing}; its data "
                        f"is config.data.name='method' (iterator_fns), with the pieces' "
                        f"workdirs in config.model")

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array, state: PyTree = None):
    if self.config.stage == "tokenizer":
      return self._tokenizer_loss(params, batch, rng, state, train=True)
    return self._lm_loss(params, batch)

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array,
                   state: PyTree = None) -> dict[str, Any]:
    if self.config.stage == "tokenizer":
      return self._tokenizer_loss(params, batch, rng, state, train=False)[1]
    return self._lm_loss(params, batch)[1]

  # ------------------------------------------------------------------ 1. USTokenizer loss

  def _tokenizer_loss(self, params, batch, rng, state, train: bool):
    cfg = self.config
    f = batch["features"].astype(jnp.float32)
    mask = token_mask_of(batch, f.shape[1])
    module = self.tokenizer_module(f.shape[-1])
    variables = as_variables(params, state)
    if train:
      (q, recon, logits), new_state = module.apply(
          variables, f, mask, batch["words"], train=True, rngs={"quantizer": rng},
          mutable=[STATS])
    else:
      q, recon, logits = module.apply(variables, f, mask, batch["words"])
      new_state = None
    m = mask[..., None]
    count = jnp.maximum(jnp.sum(m) * f.shape[-1], 1.0)
    sq = jnp.sum(jnp.square(recon - standardise(f)) * m)
    targets, tmask = text_targets(batch["words"], batch["num_words"])
    tmask = tmask * batch.get("mask", jnp.ones(tmask.shape[:1]))[:, None]
    nll, n_text = _ce(logits, targets, tmask)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * tmask)
    loss = (cfg.commit_weight * q.loss + cfg.recon_weight * sq / count
            + cfg.text_weight * nll / jnp.maximum(n_text, 1.0))
    metrics = {"loss": loss, "commit": q.loss, "feature_mse": Average.of(sq, count),
               "text_nll": Average.of(nll, n_text), "text_accuracy": Average.of(correct, n_text),
               "usage": q.metrics["usage"], "perplexity": q.metrics["perplexity"]}
    return (loss, metrics, dict(new_state)) if train else (loss, metrics)

  def encode(self, variables: PyTree, features: jax.Array, num_tokens: jax.Array) -> jax.Array:
    """USTokens (B, N) int32 of encoder features (B, N, F) (positions past num_tokens are
    encoded too; callers mask them)."""
    mask = (jnp.arange(features.shape[1])[None] < num_tokens[:, None]).astype(jnp.float32)
    q = self.tokenizer_module(features.shape[-1]).apply(
        variables, features.astype(jnp.float32), mask, method=USTokenizerModule.quantize)
    return q.codes

  # ------------------------------------------------------------------ 2. DualSpeechLM loss

  @property
  def frame_sizes(self) -> tuple[int, ...]:
    """Entries per generated level: its codes and its 'end' id (= the codebook size)."""
    return tuple(s + 1 for s in self.level_sizes)

  def module(self, decode: bool = False) -> DualCodecLM:
    if self.config.stage == "tokenizer":
      raise ValueError("the tokenizer stage has no LM module")
    cfg = self.config
    return DualCodecLM(codebook_sizes=self.frame_sizes, prefix_vocab=TEXT_IDS,
                       d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                       mlp_dim=_mlp(cfg), decode=decode, input_sizes=self.input_sizes)

  def _speech(self, batch: Batch) -> jax.Array:
    """The speech the LM reads, (B, N, Kin), with each level's pad id past the end."""
    codes = batch["us_codes"][..., None] if self.dual else batch["codes"]
    return frame_levels(codes.astype(jnp.int32), batch["num_tokens"], self.input_sizes)

  def _frames(self, batch: Batch) -> jax.Array:
    """The frames the LM writes, (B, N, K'): [USToken;] acoustic levels, end ids past the
    end (every level: the end is a target like a code)."""
    codes = batch["codes"].astype(jnp.int32)
    if self.dual:
      codes = jnp.concatenate([batch["us_codes"][..., None].astype(jnp.int32), codes], -1)
    return frame_levels(codes, batch["num_tokens"], self.level_sizes)

  def _lm_inputs(self, batch: Batch) -> dict[str, jax.Array]:
    words = batch["words"].astype(jnp.int32)
    frames_in, _ = delay_lm_inputs(self._frames(batch), self.frame_sizes)
    sep = jnp.full(words.shape[:1] + (1,), SEP, jnp.int32)
    return {"prefix": tts_prefix(words, batch["num_words"]), "frames": frames_in,
            "speech": self._speech(batch), "text": jnp.concatenate([sep, words], 1)}

  def _lm_loss(self, params: PyTree, batch: Batch):
    module, p = self.module(), {"params": params}
    x = self._lm_inputs(batch)
    rows = batch.get("mask", jnp.ones(batch["words"].shape[:1], jnp.float32))
    # Understanding: the positions of SEP, w_1 .. w_W predict w_1 .. w_W, EOS.
    text_logits = module.apply(p, x["speech"], x["text"], method=DualCodecLM.understand)
    targets, tmask = text_targets(batch["words"], batch["num_words"])
    tmask = tmask * rows[:, None]
    asr_nll, asr_n = _ce(text_logits, targets, tmask)
    asr_correct = jnp.sum((jnp.argmax(text_logits, -1) == targets) * tmask)
    # Generation: the flat delay-pattern loss over every valid delayed position (frames past
    # the end hold end ids: targets too); rows of batch mask 0 count nothing.
    frame_logits, _ = module.apply(p, x["prefix"], x["frames"])
    frames = self._frames(batch)
    tts_loss, tts_metrics = codec_level_nll_rows(frame_logits, frames, rows)
    loss = asr_nll / jnp.maximum(asr_n, 1.0) + tts_loss
    metrics = {"loss": loss, "asr_nll": Average.of(asr_nll, asr_n),
               "word_accuracy": Average.of(asr_correct, asr_n)}
    for k in range(len(self.level_sizes)):
      name = "semantic_nll" if self.dual and k == 0 else f"acoustic_nll_{k - int(self.dual)}"
      metrics[name] = tts_metrics[f"nll_level_{k}"]
    return loss, metrics

  # ------------------------------------------------------------------ decoding

  def transcribe(self, params: PyTree, batch: Batch) -> jax.Array:
    """Greedy transcription (understanding): (B, W + 1) text ids (the words, EOS, then
    anything), by the shared cached decoder (`tokenlab.nn.decode.sample_cached`): the
    prefill is [ASR, speech, SEP], then one word per step."""
    speech = self._speech(batch)
    b, n = speech.shape[:2]
    w = batch["words"].shape[1]
    dec = self.module(decode=True)
    text = jax.ShapeDtypeStruct((b, w + 2), jnp.int32)   # cache as long as the buffer
    shapes = jax.eval_shape(lambda s, t: dec.init(jax.random.key(0), s, t,
                                                  method=DualCodecLM.understand),
                            jax.ShapeDtypeStruct(speech.shape, jnp.int32), text)
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
    start = n + 2                     # [ASR, speech, SEP]: positions of the prompt

    def step(tokens, cache):
      prefill = tokens.shape[1] > 1   # static: the first call feeds the whole prompt
      logits, upd = dec.apply({"params": params, "cache": cache},
                              speech if prefill else None, tokens[:, -1:],
                              method=DualCodecLM.understand, mutable=["cache"])
      return logits, upd["cache"]

    buffer = jnp.zeros((b, start + w + 1), jnp.int32).at[:, start - 1].set(SEP)
    out = sample_cached(step, cache, buffer, jnp.full((b,), start, jnp.int32),
                        jax.random.key(0), temperature=0.0, start=start)
    return out[:, start:]

  def generate_frames(self, params: PyTree, words: jax.Array, num_words: jax.Array,
                      num_frames: int, rng: jax.Array) -> jax.Array:
    """Generation: frames (B, num_frames, K') for transcripts words (B, W), by the shared
    delay-pattern sampler (`sample_delay_lm`: KV cache, level k of frame t drawn after levels
    < k of frame t, so a frame's USToken before its acoustic tokens); end ids remain where
    the model ended."""
    cfg = self.config
    return sample_delay_lm(self.module(), params, tts_prefix(words, num_words), num_frames,
                           rng, temperature=cfg.temperature,
                           top_k=min(cfg.top_k, max(self.frame_sizes)))

  def acoustic(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Generated frames (B, N, K') -> (codec codes (B, N, K) with end ids replaced by 0,
    lengths (B,): frames before the first end id on acoustic level 0)."""
    codes = frames[..., int(self.dual):]
    end = codes[..., 0] >= self.codec_sizes[0]
    n = codes.shape[1]
    lengths = jnp.where(end.any(1), jnp.argmax(end, 1), n).astype(jnp.int32)
    sizes = jnp.asarray(self.codec_sizes, codes.dtype)[None, None]
    return jnp.where(codes >= sizes, 0, codes), lengths

  # ------------------------------------------------------------------ frozen pieces, sample

  def tokenizer(self):
    """The frozen codec (loaded once): turns generated acoustic tokens into log-mel."""
    if "codec" not in self._pieces:
      if not self.config.codec_workdir:
        raise ConfigError("config.model.codec_workdir is empty; point it at a trained "
                          "audio_codec rvq run (experiments/audio_codec.py)")
      from tokenlab.train.inference import load_frozen_tokenizer
      # The codec `corpus` loaded in this process, if any (one load per process).
      loaded = [c for (w, _, _), (c, _) in _PIECES.items() if w == self.config.codec_workdir]
      self._pieces["codec"] = (loaded[0] if loaded
                               else load_frozen_tokenizer(self.config.codec_workdir))
    return self._pieces["codec"]

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """`tokenlab sample`: speech generated for the batch's transcripts, decoded by the frozen
    codec to log-mel and by Griffin-Lim to 16 kHz waveforms: {'waveform' (B, S) in [-1, 1],
    'lengths' (B,) valid samples}."""
    codec = self.tokenizer()
    frames = self.generate_frames(params, batch["words"], batch["num_words"],
                                  batch["codes"].shape[1], rng)
    codes, lengths = self.acoustic(frames)
    mel = codec.decode(codes)
    wave = codec.method.to_waveform(mel)
    peak = jnp.maximum(jnp.max(jnp.abs(wave), axis=-1, keepdims=True), 1e-6)
    samples = lengths * FRAMES_PER_TOKEN * 160
    return {"waveform": jnp.clip(wave / peak * 0.9, -1.0, 1.0),
            "lengths": jnp.minimum(samples, wave.shape[-1]).astype(jnp.int32)}


# ---------------------------------------------------------------------------------------------
# Data: the `speech` corpus of the codec run, through the frozen pieces, once per process.

_CORPUS: dict = {}
_PIECES: dict = {}
_US: dict = {}


def speech_arrays(data_config: Any, split: str) -> dict[str, np.ndarray]:
  """A `speech` split as arrays: mel (n, T, M), mel_lengths, words, num_words, phonemes."""
  from tokenlab import data as data_lib
  arrays = data_lib.collect_split(data_config, split, lambda batch: {
      "mel": batch["mel"], "mel_lengths": batch["mel_lengths"], "words": batch["words"],
      "num_words": batch["word_mask"].sum(-1),
      "phonemes": batch["phonemes"] * (batch["phoneme_mask"] > 0)})
  return {k: v.astype(np.float32 if k == "mel" else np.int32) for k, v in arrays.items()}


def encoder_features(recognizer, mel: np.ndarray, mel_lengths: np.ndarray,
                     batch_size: int = 50) -> np.ndarray:
  """The frozen CTC recogniser's transformer outputs (its 'encoder', before the phoneme head)
  at its stacked positions: mel (n, T, M) -> (n, ceil(T / stack), d_model)."""
  module, params = recognizer.method.module, recognizer.params

  @jax.jit
  def fn(mel, lengths):
    _, inter = module.apply({"params": params}, mel, lengths, capture_intermediates=True,
                            mutable=["intermediates"])
    return inter["intermediates"]["encoder"]["__call__"][0]

  return _batched(fn, batch_size, mel, mel_lengths)


def _batched(fn: Callable, batch_size: int, *arrays: np.ndarray) -> np.ndarray:
  """fn over rows of `arrays` in chunks of one shape (the last padded); concatenated."""
  n, out = len(arrays[0]), []
  for i in range(0, n, batch_size):
    chunk = [a[i:i + batch_size] for a in arrays]
    pad = batch_size - len(chunk[0])
    chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) if pad else c for c in chunk]
    out.append(np.asarray(fn(*chunk))[:batch_size - pad])
  return np.concatenate(out)


def corpus(codec_workdir: str, encoder_workdir: str, max_frames: int) -> dict[str, dict]:
  """{'train', 'validation'}: arrays of the codec run's `speech` corpus: 'features' (n, N, F),
  'codes' (n, N, K), 'num_tokens', 'words', 'num_words', 'phonemes' (and 'mel',
  'mel_lengths' of the kept frames, for references). Built once per process."""
  key = (codec_workdir, encoder_workdir, max_frames)
  if key in _CORPUS:
    return _CORPUS[key]
  from tokenlab.evals.audio import load_recognizer
  from tokenlab.train.inference import load_frozen_tokenizer
  codec = load_frozen_tokenizer(codec_workdir)
  recognizer = load_recognizer(encoder_workdir)
  if codec.method.downsampling != FRAMES_PER_TOKEN or recognizer.method.config.stack != FRAMES_PER_TOKEN:
    raise ConfigError(f"dualspeechlm aligns codec tokens with the encoder's positions: both "
                      f"must be {FRAMES_PER_TOKEN} mel frames (codec at 25 Hz, recogniser "
                      f"stack 4)")
  if int(codec.config.data.mel_bins) != recognizer.mel_bins:
    raise ConfigError("the codec and the recogniser read different mel bins; train both on "
                      "the same speech corpus (the same size=)")
  encode = jax.jit(codec.encode)
  out = {}
  for split in ("train", "validation"):
    a = speech_arrays(codec.config.data, split)
    t = min(a["mel"].shape[1], max_frames)
    t -= t % FRAMES_PER_TOKEN if t > FRAMES_PER_TOKEN else 0
    mel, lengths = a["mel"][:, :t], np.minimum(a["mel_lengths"], t)
    out[split] = {
        "features": encoder_features(recognizer, mel, lengths).astype(np.float32),
        "codes": _batched(encode, 50, mel).astype(np.int32),
        "num_tokens": ((lengths + FRAMES_PER_TOKEN - 1) // FRAMES_PER_TOKEN).astype(np.int32),
        "words": a["words"], "num_words": a["num_words"], "phonemes": a["phonemes"],
        # (what `tokenlab sample` reads to title each file with its sentence)
        "word_mask": (np.arange(a["words"].shape[1])[None] < a["num_words"][:, None]
                      ).astype(np.float32),
        "mel": mel, "mel_lengths": lengths.astype(np.int32)}
  _CORPUS[key] = out
  _PIECES[key] = (codec, recognizer)
  return out


def loaded_pieces(codec_workdir: str, encoder_workdir: str, max_frames: int):
  """(frozen codec, recogniser) that `corpus` loaded for these arguments (it loads them)."""
  corpus(codec_workdir, encoder_workdir, max_frames)
  return _PIECES[(codec_workdir, encoder_workdir, max_frames)]


def load_tokenizer_stage(workdir: str, example: dict[str, np.ndarray]):
  """A trained stage='tokenizer' run: (method, variables) for `DualSpeechLM.encode`."""
  from tokenlab.train.inference import load_trained
  ex = {k: example[k][:2] for k in ("features", "num_tokens", "words", "num_words")}
  ex["mask"] = np.ones(2, np.float32)
  run = load_trained(workdir, ex)
  if run.config.model.get("stage") != "tokenizer":
    raise ConfigError(f"{workdir} is not a dualspeechlm stage='tokenizer' run")
  return run.method, jax.device_get(as_variables(run.params, run.model_state))


def us_tokens(workdir: str, *splits: dict[str, np.ndarray]) -> list[np.ndarray]:
  """USTokens (n, N) of each split's features by the tokenizer run in `workdir` (loaded
  once)."""
  method, variables = load_tokenizer_stage(workdir, splits[0])
  fn = jax.jit(lambda f, n: method.encode(variables, f, n))
  return [_batched(fn, 50, a["features"], a["num_tokens"]).astype(np.int32) for a in splits]


def corpus_us_tokens(tokenizer_workdir: str, codec_workdir: str, encoder_workdir: str,
                     max_frames: int) -> dict[str, np.ndarray]:
  """{'train', 'validation'}: the USTokens (n, N) of `corpus(...)`'s splits by the tokenizer
  run in `tokenizer_workdir` (encoded once per process)."""
  key = (tokenizer_workdir, codec_workdir, encoder_workdir, max_frames)
  if key not in _US:
    data = corpus(codec_workdir, encoder_workdir, max_frames)
    _US[key] = dict(zip(("train", "validation"),
                        us_tokens(tokenizer_workdir, data["train"], data["validation"])))
  return _US[key]


LM_FIELDS = ("codes", "num_tokens", "words", "num_words", "word_mask", "phonemes")
TOKENIZER_FIELDS = ("features", "num_tokens", "words", "num_words")


def stage_arrays(config: Any, split: str) -> dict[str, np.ndarray]:
  """The batch fields of `config.model`'s stage for one split (see the module docstring)."""
  m = config.model
  for key in ("codec_workdir", "encoder_workdir"):
    if not m.get(key, ""):
      raise ConfigError(f"config.model.{key} is empty; dualspeechlm's data comes from a "
                        f"trained audio_codec (codec_workdir) and phoneme_recognizer "
                        f"(encoder_workdir)")
  arrays = corpus(m.codec_workdir, m.encoder_workdir, int(m.get("max_frames", 300)))[split]
  if m.get("stage", "lm") == "tokenizer":
    return {k: arrays[k] for k in TOKENIZER_FIELDS}
  out = {k: arrays[k] for k in LM_FIELDS}
  if m.get("speech_input", "ustokens") == "ustokens":
    if not m.get("tokenizer_workdir", ""):
      raise ConfigError("speech_input='ustokens' needs config.model.tokenizer_workdir: a "
                        "trained dualspeechlm stage='tokenizer' run")
    out["us_codes"] = corpus_us_tokens(m.tokenizer_workdir, m.codec_workdir,
                                       m.encoder_workdir, int(m.get("max_frames", 300)))[split]
  return out


def iterator_fns(config) -> tuple[Callable, Callable]:
  """(train_fn, eval_fn) over the stage's arrays (built once per process)."""
  from tokenlab.data.synthetic import ArrayIterator
  train, val = stage_arrays(config, "train"), stage_arrays(config, "validation")
  return (lambda b, s: ArrayIterator(train, b, s, train=True),
          lambda b, s: ArrayIterator(val, b, s, train=False))
