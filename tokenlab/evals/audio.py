"""Metrics of discrete audio tokens: the survey's benchmark in miniature (issue 19).

Mousavi et al., "Discrete Audio Tokens: More Than a Survey!" (arXiv 2506.10274) compare
tokenizers by bitrate, codebook use, reconstruction (signal and spectral measures,
intelligibility by a recogniser), what downstream probes read from the tokens, and how well
a language model predicts them. Each is written once here; `tokenlab audio-report`
(`tokenlab.evals.audio_report`) puts them in one table.

- `bitrate(frame_rate_hz, codebook_sizes)`: frame rate x sum of log2 codebook sizes (bits/s).
- `codebook_stats(codes, codebook_sizes)`: codebook usage and perplexity
  (`tokenlab.nn.quantizers.code_metrics`), averaged over codebooks.
- `mel_l1(mel, recon, lengths)`: mean |log-mel difference| over real frames and bins.
- `si_snr(reference, estimate, lengths)`: scale-invariant signal-to-noise ratio in dB.
- `frame_labels(...)`: the phoneme id at the centre of each frame, from the alignments.
- `phoneme_probe(...)` / `speaker_probe(...)`: linear probes (`tokenlab.evals.linear_probe`)
  of per-frame features against frame phonemes, of per-utterance mean features against the
  speaker.
- `code_features(codes, codebook_sizes)`: the one-hot features of codes (the probes' input
  for a tokenizer; one block of one-hots per codebook).
- `token_lm_perplexity(...)`: count bigram LMs (`tokenlab.repro.baselines.NGram`, add-one:
  alpha = 1, interpolated toward the add-one unigram), one per codebook over time, fitted on
  training utterances, perplexity per token on held-out ones.
- Intelligibility: `ctc_greedy_decode`, `edit_distance`, `load_recognizer` (a
  `phoneme_recognizer` run, `experiments/phoneme_recognizer.py`) and
  `phoneme_error_rate(recognizer, mels, mel_lengths, phoneme_ids)` (the later TTS methods
  call the same function on generated speech).
- Listening: `save_wav` / `read_wav` (16-bit mono PCM) and `save_mel_panels` (a PNG of
  log-mels), what `tokenlab sample` writes for audio methods.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.evals.linear_probe import linear_probe

SAMPLE_RATE = 16_000
MEL_HOP = 160   # samples between the `speech` pipeline's mel frames (10 ms)


# --- rate and codebook use ------------------------------------------------------------------

def bitrate(frame_rate_hz: float, codebook_sizes: Sequence[int]) -> float:
  """Bits per second of a token stream: frame rate x sum over codebooks of log2 size.

  e.g. 50 Hz with 4 codebooks of 1024: 50 x 4 x 10 = 2000 bits/s; FSQ levels (8, 5, 5, 5)
  as one codebook of 1000: 50 x log2(1000).
  """
  return float(frame_rate_hz) * sum(math.log2(int(k)) for k in codebook_sizes)


def _as_streams(codes: np.ndarray, num_codebooks: int) -> np.ndarray:
  """codes (B, T) or (B, T, K) -> (B, T, K)."""
  codes = np.asarray(codes)
  if codes.ndim == 2:
    codes = codes[..., None]
  if codes.shape[-1] != num_codebooks:
    raise ValueError(f"codes of shape {codes.shape} do not have {num_codebooks} codebooks")
  return codes


def valid_frames(lengths: np.ndarray, num_frames: int) -> np.ndarray:
  """(B, num_frames) bool: frame t of row b is real when t < lengths[b]."""
  return np.arange(num_frames)[None, :] < np.asarray(lengths)[:, None]


def codebook_stats(codes: np.ndarray, codebook_sizes: Sequence[int],
                   lengths: np.ndarray | None = None) -> dict[str, float]:
  """Usage and perplexity of the codebooks over the real frames, averaged over codebooks.

  Args:
    codes: int (B, T) or (B, T, K). codebook_sizes: K sizes. lengths: (B,) real frames
      (default all).
  Returns:
    {'usage': the fraction of a codebook's entries used at least once, 'perplexity': exp of
    the entropy of its code distribution (1..size)}, each the mean over the K codebooks
    (`tokenlab.nn.quantizers.code_metrics`, one call per distinct codebook size).
  """
  codes = _as_streams(codes, len(codebook_sizes))
  keep = (valid_frames(lengths, codes.shape[1]) if lengths is not None
          else np.ones(codes.shape[:2], bool))
  flat, sizes = codes[keep], np.asarray(codebook_sizes)
  totals = {"usage": 0.0, "perplexity": 0.0}
  for size in np.unique(sizes):
    group = np.nonzero(sizes == size)[0]
    m = _code_metrics(jnp.asarray(flat[:, group]), int(size))
    for name in totals:   # code_metrics averages over the group's streams
      totals[name] += float(m[name]) * len(group)
  return {name: total / len(sizes) for name, total in totals.items()}


@functools.partial(jax.jit, static_argnums=1)
def _code_metrics(codes: jax.Array, size: int) -> dict[str, jax.Array]:
  from tokenlab.nn.quantizers import code_metrics
  return code_metrics(codes, size, 0.0)


# --- reconstruction -------------------------------------------------------------------------

def mel_l1(mel: np.ndarray, recon: np.ndarray, lengths: np.ndarray) -> float:
  """Mean absolute difference of two log-mels (B, T, F) over real frames (t < lengths[b])
  and all bins."""
  mel, recon = np.asarray(mel, np.float64), np.asarray(recon, np.float64)
  keep = valid_frames(lengths, mel.shape[1])
  return float(np.abs(mel - recon)[keep].mean())


def si_snr(reference: np.ndarray, estimate: np.ndarray, lengths: np.ndarray | None = None,
           eps: float = 1e-8) -> np.ndarray:
  """Scale-invariant SNR in dB of each row (Le Roux et al. 2019, "SDR - half-baked or well
  done?"): both signals made zero-mean, s = <e, r> r / |r|^2 (the estimate's projection on
  the reference), SI-SNR = 10 log10(|s|^2 / |e - s|^2).

  Args:
    reference, estimate: float (B, S) (or (S,)). lengths: (B,) real samples (default all);
      samples past them are ignored.
  Returns:
    float64 (B,) (or a scalar); about +80 dB or more for a signal with itself or any scaled
    copy of it, about 0 dB when the error is as loud as the signal, very negative for noise.
  """
  r = np.atleast_2d(np.asarray(reference, np.float64))
  e = np.atleast_2d(np.asarray(estimate, np.float64))
  keep = (valid_frames(lengths, r.shape[1]) if lengths is not None
          else np.ones(r.shape, bool)).astype(np.float64)
  n = np.maximum(keep.sum(-1, keepdims=True), 1.0)
  r = (r - (r * keep).sum(-1, keepdims=True) / n) * keep
  e = (e - (e * keep).sum(-1, keepdims=True) / n) * keep
  s = (e * r).sum(-1, keepdims=True) / ((r * r).sum(-1, keepdims=True) + eps) * r
  noise = e - s
  out = 10 * np.log10(((s * s).sum(-1) + eps) / ((noise * noise).sum(-1) + eps))
  return out if np.ndim(reference) > 1 else out[0]


# --- frame labels and probes ----------------------------------------------------------------

def frame_labels(phonemes: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 num_frames: int, hop: float = MEL_HOP, offset: float = 0.0) -> np.ndarray:
  """The phoneme at the centre of each frame, from sample-exact alignments.

  Frame t is centred on sample offset + t * hop (the `speech` pipeline's centred mel: hop
  160, offset 0; a token frame that pools s mel frames: hop 160 s, offset 160 (s - 1) / 2).
  It gets phoneme i when starts[i] <= centre < ends[i]; 0 (no phoneme: leading or trailing
  silence, padding) otherwise. Zero-length phonemes are never a frame's.

  Args:
    phonemes, starts, ends: (B, P) ids (0 pads) and sample times of the batch.
  Returns:
    int32 (B, num_frames).
  """
  phonemes, starts, ends = (np.asarray(a) for a in (phonemes, starts, ends))
  centre = offset + np.arange(num_frames) * hop                      # (T,)
  inside = ((starts[:, None, :] <= centre[None, :, None])
            & (centre[None, :, None] < ends[:, None, :])
            & (phonemes[:, None, :] > 0))                            # (B, T, P)
  # Phonemes never overlap, so at most one is true per frame.
  return np.where(inside.any(-1), np.take_along_axis(
      phonemes, inside.argmax(-1), axis=1), 0).astype(np.int32)


def code_features(codes: np.ndarray, codebook_sizes: Sequence[int]) -> np.ndarray:
  """One-hot features of codes: (B, T[, K]) -> float32 (B, T, sum of sizes), one block of
  one-hots per codebook (what a linear probe over a token's embedding can read at most)."""
  codes = _as_streams(codes, len(codebook_sizes))
  blocks = [np.eye(int(size), dtype=np.float32)[codes[..., k]]
            for k, size in enumerate(codebook_sizes)]
  return np.concatenate(blocks, axis=-1)


def _frames_sample(labels: np.ndarray, max_frames: int, seed: int) -> tuple[np.ndarray, ...]:
  """Indices (b, t) of at most `max_frames` labelled frames, drawn without replacement."""
  b, t = np.nonzero(labels > 0)
  if len(b) > max_frames:
    pick = np.sort(np.random.default_rng(seed).choice(len(b), max_frames, replace=False))
    b, t = b[pick], t[pick]
  return b, t


def phoneme_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                  test_labels: np.ndarray, *, max_train: int = 4000, max_test: int = 2000,
                  seed: int = 0) -> dict[str, float]:
  """Frame-level phoneme linear probe: features (B, T, F) against `frame_labels` (B, T).

  Only frames inside a phoneme (label > 0) count; at most max_train / max_test of them,
  drawn at random (seeded), keep the logistic regression to seconds. Returns
  `linear_probe`'s {'accuracy', 'majority_accuracy'}.
  """
  tb, tt = _frames_sample(train_labels, max_train, seed)
  vb, vt = _frames_sample(test_labels, max_test, seed + 1)
  return linear_probe(train_feats[tb, tt], train_labels[tb, tt], test_feats[vb, vt],
                      test_labels[vb, vt], max_iter=300)


def mean_features(feats: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """(B, T, F) -> (B, F): the mean over each row's real frames (a bag of codes for
  one-hot features)."""
  keep = valid_frames(lengths, feats.shape[1]).astype(np.float32)[..., None]
  return (feats * keep).sum(1) / np.maximum(keep.sum(1), 1.0)


def speaker_probe(train_feats: np.ndarray, train_lengths: np.ndarray, train_speaker: np.ndarray,
                  test_feats: np.ndarray, test_lengths: np.ndarray,
                  test_speaker: np.ndarray) -> dict[str, float]:
  """Utterance-level speaker linear probe on per-utterance mean features (B, T, F)."""
  return linear_probe(mean_features(train_feats, train_lengths), train_speaker,
                      mean_features(test_feats, test_lengths), test_speaker, max_iter=500)


# --- token language model -------------------------------------------------------------------

def token_lm_perplexity(train_codes: np.ndarray, train_lengths: np.ndarray,
                        test_codes: np.ndarray, test_lengths: np.ndarray,
                        codebook_sizes: Sequence[int], order: int = 2) -> dict[str, float]:
  """Count n-gram LMs (`NGram`, add-one: alpha = 1), one per codebook, over time.

  Codebook k's codes of an utterance (its real frames) are one stream over that codebook's
  own vocabulary, each code predicted from the codebook's previous order - 1 codes; fitted
  on the training utterances, scored on held-out ones. Returns {'perplexity': exp of the
  mean over codebooks of the per-token NLL (the geometric mean of the codebooks'
  perplexities; one codebook: its perplexity), 'bits_per_frame': the sum over codebooks of
  the per-token bits (what the LMs need per frame, vs sum of log2 sizes with no model)}.
  """
  from tokenlab.repro.baselines import NGram
  train = _as_streams(train_codes, len(codebook_sizes))
  test = _as_streams(test_codes, len(codebook_sizes))
  nats = []
  for k, size in enumerate(codebook_sizes):
    lm = NGram(order, int(size), alpha=1.0).fit(
        train[b, :int(n), k] for b, n in enumerate(train_lengths))
    nll = [lm.nll([test[b, :int(n), k]]).reshape(-1) for b, n in enumerate(test_lengths) if n]
    nats.append(float(np.mean(np.concatenate(nll))))
  return {"perplexity": math.exp(float(np.mean(nats))),
          "bits_per_frame": sum(nats) / math.log(2)}


# --- intelligibility: CTC phoneme recogniser ------------------------------------------------

def ctc_greedy_decode(logits: np.ndarray, lengths: np.ndarray, blank: int = 0) -> list[list[int]]:
  """Greedy CTC decoding: argmax per position over the first lengths[b] positions, repeats
  merged, blanks dropped. logits (B, T, V) -> B lists of label ids."""
  best = np.asarray(logits).argmax(-1)
  out = []
  for row, n in zip(best, np.asarray(lengths)):
    row = row[:int(n)]
    keep = np.ones(len(row), bool)
    keep[1:] = row[1:] != row[:-1]
    out.append([int(x) for x in row[keep & (row != blank)]])
  return out


def edit_distance(reference: Sequence[int], hypothesis: Sequence[int]) -> int:
  """Levenshtein distance (substitutions, insertions, deletions, each 1)."""
  prev = list(range(len(hypothesis) + 1))
  for i, r in enumerate(reference, 1):
    cur = [i] + [0] * len(hypothesis)
    for j, h in enumerate(hypothesis, 1):
      cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
    prev = cur
  return prev[-1]


def error_rate(references: Sequence[Sequence[int]],
               hypotheses: Sequence[Sequence[int]]) -> float:
  """Corpus error rate: total edit distance / total reference length."""
  edits = sum(edit_distance(r, h) for r, h in zip(references, hypotheses))
  return edits / max(sum(len(r) for r in references), 1)


@dataclasses.dataclass
class Recognizer:
  """A trained `phoneme_recognizer` bound to its parameters (see `load_recognizer`)."""
  method: Any
  params: Any
  mel_bins: int
  batch_size: int = 32

  def __post_init__(self):
    self._logits = jax.jit(lambda p, mel, n: self.method.logits(p, mel, n))

  def transcribe(self, mels: np.ndarray, mel_lengths: np.ndarray) -> list[list[int]]:
    """Greedy phoneme ids of each utterance: mels (N, T, mel_bins) log-mel, lengths (N,)."""
    mels, mel_lengths = np.asarray(mels, np.float32), np.asarray(mel_lengths, np.int32)
    if mels.shape[-1] != self.mel_bins:
      raise ValueError(f"the recogniser reads {self.mel_bins} mel bins, got {mels.shape[-1]}")
    out, bs = [], self.batch_size
    for start in range(0, len(mels), bs):
      mel, n = mels[start:start + bs], mel_lengths[start:start + bs]
      pad = bs - len(mel)   # one compiled shape: the last batch is padded
      mel = np.concatenate([mel, np.zeros((pad, *mel.shape[1:]), np.float32)])
      n_pad = np.concatenate([n, np.ones(pad, np.int32)])
      logits = np.asarray(self._logits(self.params, mel, n_pad))[:len(n)]
      out += ctc_greedy_decode(logits, np.asarray(self.method.positions(jnp.asarray(n))))
    return out


def load_recognizer(workdir: str, step: int | None = None, batch_size: int = 32) -> Recognizer:
  """The `phoneme_recognizer` trained in `workdir` (latest or given checkpoint)."""
  from tokenlab import data as data_lib
  from tokenlab.errors import TokenlabError
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  config = load_config_from_workdir(workdir)
  if config.model.name != "phoneme_recognizer":
    raise TokenlabError(f"{workdir} holds a '{config.model.name}' run, not a "
                        f"phoneme_recognizer; train one with experiments/phoneme_recognizer.py")
  spec = data_lib.batch_spec(config.data, 1)
  run = load_trained(workdir, {k: np.zeros(s.shape, s.dtype) for k, s in spec.items()}, step)
  params = jax.device_get(run.params)
  return Recognizer(run.method, params, int(config.data.mel_bins), batch_size)


def phoneme_error_rate(recognizer: Recognizer, mels: np.ndarray, mel_lengths: np.ndarray,
                       phoneme_ids: np.ndarray) -> float:
  """Phoneme error rate of `recognizer` on log-mels (N, T, F) with real lengths (N,) against
  the reference phoneme ids (N, P), 0-padded (the `speech` batches' 'phonemes')."""
  hyps = recognizer.transcribe(mels, mel_lengths)
  refs = [[int(p) for p in row if p > 0] for row in np.asarray(phoneme_ids)]
  return error_rate(refs, hyps)


# --- listening: WAV files and their log-mels --------------------------------------------------


def save_wav(path: str, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
  """Writes a mono float waveform (S,) as 16-bit PCM WAV at `sample_rate`; returns the path.

  Samples are expected in [-1, 1]; a waveform whose peak exceeds 1 (Griffin-Lim's estimates
  can) is scaled down to peak 1 rather than clipped, so it is written without distortion.
  """
  import wave  # pylint: disable=g-import-not-at-top
  x = np.asarray(waveform, np.float64).reshape(-1)
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{path}: the waveform has {int(np.sum(~np.isfinite(x)))} non-finite "
                     f"samples; nothing written")
  peak = float(np.max(np.abs(x))) if x.size else 0.0
  if peak > 1.0:
    x = x / peak
  pcm = np.round(x * 32767.0).astype("<i2")
  with wave.open(path, "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(int(sample_rate))
    f.writeframes(pcm.tobytes())
  return path


def read_wav(path: str) -> tuple[np.ndarray, int]:
  """(float32 waveform (S,) in [-1, 1], sample rate) of a 16-bit mono WAV file."""
  import wave  # pylint: disable=g-import-not-at-top
  with wave.open(path, "rb") as f:
    if f.getsampwidth() != 2 or f.getnchannels() != 1:
      raise ValueError(f"{path}: {f.getnchannels()} channels of {8 * f.getsampwidth()} "
                       f"bits; read_wav reads 16-bit mono")
    rate, data = f.getframerate(), f.readframes(f.getnframes())
  return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0, rate


def save_mel_panels(path: str, waveforms: Sequence[np.ndarray], titles: Sequence[str],
                    mel_bins: int = 80, sample_rate: int = SAMPLE_RATE) -> str:
  """One PNG with the log-mel of each waveform (S_i,) in a panel under the last, titled;
  what a person looks at beside the WAV files. Returns the path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from tokenlab.nn import audio  # pylint: disable=g-import-not-at-top
  n = len(waveforms)
  fig, axes = plt.subplots(n, 1, figsize=(9, 1.6 * n + 0.4), squeeze=False)
  for ax, wav, title in zip(axes[:, 0], waveforms, titles):
    wav = np.asarray(wav, np.float32)
    if wav.size < 400:   # shorter than one STFT window: nothing to show
      wav = np.pad(wav, (0, 400 - wav.size))
    mel = np.asarray(audio.log_mel_spectrogram(wav, sample_rate, 400, MEL_HOP, mel_bins))
    ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
              extent=(0, len(wav) / sample_rate, -0.5, mel_bins - 0.5))
    ax.set_title(title, fontsize=9, loc="left")
    ax.set_ylabel("mel bin", fontsize=8)
  axes[-1, 0].set_xlabel("seconds")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
