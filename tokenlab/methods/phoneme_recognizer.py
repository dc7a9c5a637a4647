"""A small CTC phoneme recogniser on log-mel spectrograms (method `phoneme_recognizer`).

Not a paper method: the intelligibility metric of issue 19's audio-token benchmark (the
survey "Discrete Audio Tokens: More Than a Survey!", Mousavi et al., arXiv 2506.10274, judges
decoded speech by the error rate of a recogniser). Here the recogniser is trained on the
`speech` corpus's own log-mels and its exact phoneme alignments are used only as the target
sequences (CTC needs no alignment). `tokenlab.evals.audio.phoneme_error_rate` runs it on
decoded mels (tokenizer reconstructions, generated speech of the TTS methods) and compares
the greedy transcription with the reference phonemes by edit distance.

The model, in order:

1. Per-utterance normalisation: each mel bin minus its mean over the utterance's real frames,
   divided by its standard deviation (cepstral mean and variance normalisation): removes the
   speaker's and the recording's level, and a decoder's constant offset.
2. Frame stacking: `stack` consecutive 10 ms frames are concatenated (40 ms per position
   with stack = 4; the shortest spoken phonemes last about that long, and CTC may emit
   different phonemes at neighbouring positions), then a linear projection to d_model.
   Inputs are first cropped to `max_frames` (the corpus pads every utterance to 4 s; its
   longest lasts under 3 s, and the transformer's cost grows with the padded length).
3. A non-causal transformer (the shared `TransformerStack`, rotary positions); padding
   frames form their own attention segment, so real frames never see them.
4. A linear head over the 71 phoneme ids of `tokenlab.data.speech.PHONEMES`; id 0 (the
   inventory's '<pad>', never a label) is the CTC blank.

Loss: CTC (`optax.ctc_loss`, blank 0) per utterance, summed over the batch and divided by the
number of reference phonemes (nats per phoneme). Decoding (in `tokenlab.evals.audio`): greedy
(argmax per position, repeats merged, blanks dropped).

Simplified, and why: a 3-layer transformer on 40 ms positions instead of a pretrained
acoustic model (there is none offline, and the corpus is small and synthetic); no
SpecAugment or language model in decoding (a toy metric that must only rank reconstructions).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.layers import DenseGeneral
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

BLANK = 0            # CTC blank: the phoneme inventory's '<pad>' id, never a label
NUM_PHONEME_IDS = 71  # len(tokenlab.data.speech.PHONEMES): 70 phonemes + '<pad>'


@dataclasses.dataclass(frozen=True)
class PhonemeRecognizerConfig:
  stack: int = 4            # 10 ms mel frames per transformer position
  max_frames: int = 0       # crop inputs to this many mel frames (0 = none): padding is waste
  d_model: int = 96
  num_layers: int = 3
  num_heads: int = 4
  mlp_dim: int = 192
  num_labels: int = NUM_PHONEME_IDS


def normalise(mel: jax.Array, lengths: jax.Array, eps: float = 1e-3) -> jax.Array:
  """Per-utterance mean and variance normalisation of each mel bin over real frames.

  mel: (B, T, F) log-mel; lengths: (B,) real frames. Returns (B, T, F), 0 on padding frames
  (a constant utterance, e.g. a mean-mel decoder's, becomes all zeros).
  """
  valid = (jnp.arange(mel.shape[1])[None, :] < lengths[:, None]).astype(mel.dtype)[..., None]
  count = jnp.maximum(valid.sum(1, keepdims=True), 1.0)
  mean = (mel * valid).sum(1, keepdims=True) / count
  var = (((mel - mean) * valid) ** 2).sum(1, keepdims=True) / count
  return (mel - mean) * jax.lax.rsqrt(var + eps) * valid


def crop(mel: jax.Array, mel_lengths: jax.Array, max_frames: int) -> tuple[jax.Array, jax.Array]:
  """The first `max_frames` frames of (B, T, F) mel and the lengths clipped to them (0: all)."""
  if not max_frames or mel.shape[1] <= max_frames:
    return mel, mel_lengths
  return mel[:, :max_frames], jnp.minimum(mel_lengths, max_frames)


def stacked_lengths(mel_lengths: jax.Array, stack: int) -> jax.Array:
  """Positions (B,) after stacking `stack` frames: every position with a real frame counts."""
  return (mel_lengths + stack - 1) // stack


class RecognizerModule(nn.Module):
  """(mel (B, T, F), mel_lengths (B,)) -> logits (B, ceil(T / stack), num_labels)."""
  cfg: PhonemeRecognizerConfig

  @nn.compact
  def __call__(self, mel: jax.Array, mel_lengths: jax.Array) -> jax.Array:
    cfg = self.cfg
    mel, mel_lengths = crop(mel, mel_lengths, cfg.max_frames)
    b, t, f = mel.shape
    x = normalise(mel.astype(jnp.float32), mel_lengths)
    pad = (-t) % cfg.stack
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(b, (t + pad) // cfg.stack, cfg.stack * f)
    x = DenseGeneral((cfg.d_model,), (None, "embed"), use_bias=True, name="stem")(x)
    real = jnp.arange(x.shape[1])[None, :] < stacked_lengths(mel_lengths, cfg.stack)[:, None]
    x = TransformerStack(cfg.num_layers, dict(
        num_heads=cfg.num_heads, head_dim=cfg.d_model // cfg.num_heads, mlp_dim=cfg.mlp_dim,
        causal=False), name="encoder")(x, segment_ids=real.astype(jnp.int32))
    return DenseGeneral((cfg.num_labels,), ("embed", "vocab"), use_bias=True, name="head")(x)


@register_method("phoneme_recognizer")
class PhonemeRecognizer(Method):
  """See the module docstring. Batches (`speech` with `data.mel_bins` > 0): 'mel' (B, T, F),
  'mel_lengths' (B,), 'phonemes' (B, P) ids padded with 0, 'phoneme_mask' (B, P), optional
  'mask' (B,) (rows padding a last eval batch weigh 0)."""
  Config = PhonemeRecognizerConfig

  def __init__(self, config: PhonemeRecognizerConfig):
    if config.stack < 1:
      raise ConfigError(f"config.model.stack={config.stack}; pass at least 1")
    if config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} does not split into "
                        f"num_heads={config.num_heads} heads; pass a divisor")
    super().__init__(config)
    self.module = RecognizerModule(config)

  def _check(self, batch: Batch) -> None:
    if "mel" not in batch:
      raise ConfigError("phoneme_recognizer reads log-mel batches: set config.data.name="
                        "'speech' and config.data.mel_bins (e.g. 80)")

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    self._check(batch)
    return self.module.init(rng, batch["mel"], batch["mel_lengths"])["params"]

  def logits(self, params: PyTree, mel: jax.Array, mel_lengths: jax.Array) -> jax.Array:
    """(B, T, F), (B,) -> logits (B, ceil(T' / stack), num_labels), T' = min(T, max_frames);
    the real positions are `self.positions(mel_lengths)`."""
    return self.module.apply({"params": params}, mel, mel_lengths)

  def positions(self, mel_lengths: jax.Array) -> jax.Array:
    """Real output positions (B,) of inputs with `mel_lengths` real frames."""
    cfg = self.config
    if cfg.max_frames:
      mel_lengths = jnp.minimum(mel_lengths, cfg.max_frames)
    return stacked_lengths(mel_lengths, cfg.stack)

  def ctc_per_utterance(self, params: PyTree, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(CTC loss (B,) in nats, reference phonemes (B,)) of a batch."""
    logits = self.logits(params, batch["mel"], batch["mel_lengths"])
    lengths = self.positions(batch["mel_lengths"])
    logit_pad = (jnp.arange(logits.shape[1])[None, :] >= lengths[:, None]).astype(jnp.float32)
    labels = batch["phonemes"].astype(jnp.int32)
    label_mask = batch["phoneme_mask"].astype(jnp.float32) * (labels != BLANK)
    per = optax.ctc_loss(logits.astype(jnp.float32), logit_pad, labels, 1.0 - label_mask,
                         blank_id=BLANK)
    return per, label_mask.sum(-1)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    per, n_labels = self.ctc_per_utterance(params, batch)
    row = batch.get("mask", jnp.ones_like(per)) * (n_labels > 0)
    total, count = (per * row).sum(), (n_labels * row).sum()
    loss = total / jnp.maximum(count, 1.0)
    # "loss" (CTC nats per reference phoneme) is the name the trainer's progress line reads.
    return loss, {"loss": Average.of(total, count),
                  "ctc_per_utterance": Average.of(total, row.sum())}
