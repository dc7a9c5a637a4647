"""Speech SSL units: a small HuBERT-style encoder (Hsu et al. 2021, arXiv 2106.07447)
trained by masked prediction on log-mel, and k-means units over one layer's features, the
"semantic" tokens of the Discrete Audio Tokens survey in miniature (Mousavi et al. 2025,
arXiv 2506.10274, paper #17; GSLM-style units, Lakhotia et al. 2021).

log-mel (B, T, M) at 100 Hz -> normalised -> conv subsampling (1-D conv stages, stride 2
each: 25 Hz with two) -> features (B, t, d) -> span masking (masked frames replaced by a
learned embedding) -> transformer encoder (non-causal, RoPE; `unit_layer` layers, then the
rest) -> a linear head over `num_targets` cluster ids, trained with cross-entropy at the
masked frames only.

Targets, and where this differs from HuBERT. HuBERT's first iteration runs k-means on MFCC
frames of the training set before training and predicts those cluster ids. Here the
targets are the cluster ids of log-mel token frames (the 2^S mel frames of a token,
stacked and normalised) under a k-means fitted *during* training: mini-batch k-means with
exponential moving averages (the EMA codebook update with dead-code restart of
tokenlab/nn/quantizers.py, i.e. the VQ-VAE-2 codebook rule, which is online k-means), on
the same training stream. Why: one `tokenlab train` run and no pre-pass over the data; the
price is targets that move early in training (the EMA settles within a few hundred steps),
so the first steps learn against shifting labels. No second HuBERT iteration (re-clustering
the model's own features as new targets).

Masking follows HuBERT: each valid frame starts a span with probability `mask_prob`, a span
covers `mask_span` frames (HuBERT: p = 0.08, 10 frames at 50 Hz = 200 ms; here 5 frames at
25 Hz = 200 ms by default), the loss is on masked frames only (HuBERT's alpha = 1;
`unmasked_weight` > 0 adds that weight x the loss on unmasked frames, HuBERT's 1 - alpha).
Padding never counts: not in the loss, not in the target k-means, not in attention (valid
frames attend to valid frames only).

Units. After training, `fit_units(workdir, k)` runs the trained encoder (no masking) over
the training split, fits k-means (tokenlab/nn/kmeans.py: k-means++ and Lloyd steps) on the
features of layer `unit_layer` at valid frames, and saves the centroids as
`WORKDIR/units/k{k}.npz`; `python -m tokenlab.methods.speech_ssl --workdir W --units 50,100`
does the same from a shell (`--evaluate`: then `evaluate_units`, the units' phone purity on
the validation split beside k-means on log-mel frames with the same k). `load_frozen_tokenizer(workdir, units=k)` then binds them:
`encode(variables, batch_or_mel) -> int32 unit ids (B, t)`. Units have no decoder
(`decode` raises and says so): pair them with a codec to get audio back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import ConfigError, TokenlabError
from tokenlab.evals.audio import frame_labels
from tokenlab.method import Average, Batch, Method, PyTree, as_variables
from tokenlab.nn import audio
from tokenlab.nn.kmeans import assign, kmeans
from tokenlab.nn.layers import DenseGeneral
from tokenlab.nn.losses import token_nll
from tokenlab.nn.quantizers import STATS, VectorQuantizer
from tokenlab.nn.transformer import TransformerStack
from tokenlab.nn.vision import default_mlp_dim
from tokenlab.registry import register_method

MEL_FRAME_RATE_HZ = 100.0   # the speech pipeline's mel: 160-sample hop at 16 kHz
UNITS = "units"             # the variables collection holding fitted k-means centroids


@dataclasses.dataclass(frozen=True)
class SpeechSSLConfig:
  mel_bins: int = 80              # must equal config.data.mel_bins
  width: int = 64                 # conv subsampling channels (first stage)
  channel_mult: tuple = (1, 2)    # one stride-2 stage per entry: 100 / 2^len Hz frames
  res_blocks: int = 1             # residual blocks per conv stage
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  unit_layer: int = 2             # k-means units over this layer's output (1..num_layers)
  num_targets: int = 64           # clusters of the masked-prediction targets
  target_decay: float = 0.99      # EMA of the target k-means
  target_dead_after: int = 10     # restart a target cluster unused this many updates
  mask_prob: float = 0.08         # probability that a valid frame starts a masked span
  mask_span: int = 5              # frames per span
  unmasked_weight: float = 0.0    # loss weight of unmasked frames (HuBERT's 1 - alpha; 0)
  num_units: int = 100            # default k of fit_units / load_frozen_tokenizer


def span_mask(rng: jax.Array, valid: jax.Array, prob: float, span: int) -> jax.Array:
  """HuBERT / wav2vec 2.0 span masking: valid (B, t) bool -> masked (B, t) bool.

  Each valid frame starts a span with probability `prob`; a span masks that frame and the
  next span - 1 (spans may overlap; only valid frames are masked). Every row with a valid
  frame gets at least one span (started at a valid frame drawn uniformly), so every
  utterance has a target."""
  start_rng, forced_rng = jax.random.split(rng)
  starts = jax.random.bernoulli(start_rng, prob, valid.shape) & valid
  forced = jax.random.categorical(forced_rng, jnp.where(valid, 0.0, -jnp.inf), axis=-1)
  starts = starts | ((jnp.arange(valid.shape[1])[None, :] == forced[:, None]) & valid)
  # Frame j is masked when a span starts in (j - span, j]: a running window sum of starts.
  kernel = jnp.ones((span,), jnp.float32)
  covered = jax.vmap(lambda s: jnp.convolve(s, kernel, mode="full")[:s.shape[0]])(
      starts.astype(jnp.float32))
  return (covered > 0) & valid


def stack_frames(mel: jax.Array, frames_per_token: int) -> jax.Array:
  """(B, T, M) -> (B, T / n, n M): the n mel frames of each token side by side."""
  b, t, m = mel.shape
  return mel.reshape(b, t // frames_per_token, frames_per_token * m)


class SpeechSSLModule(nn.Module):
  """Conv subsampling, mask embedding, two transformer stacks, target head, and the target
  k-means (an EMA codebook over stacked log-mel frames)."""
  cfg: SpeechSSLConfig

  def setup(self):
    cfg = self.cfg
    self.subsample = audio.ConvEncoder1D(cfg.width, tuple(cfg.channel_mult), cfg.d_model,
                                         cfg.res_blocks)
    self.mask_embedding = self.param(
        "mask_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                       ("embed",)), (cfg.d_model,))
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.d_model // cfg.num_heads,
                 mlp_dim=default_mlp_dim(cfg.d_model), causal=False, use_rope=True)
    self.lower = TransformerStack(cfg.unit_layer, block)
    self.upper = TransformerStack(cfg.num_layers - cfg.unit_layer, block)
    self.head = DenseGeneral((cfg.num_targets,), ("embed", "vocab"), use_bias=True)
    ds = 2 ** len(cfg.channel_mult)
    self.targets = VectorQuantizer(codebook_size=cfg.num_targets, dim=ds * cfg.mel_bins,
                                   ema=True, decay=cfg.target_decay,
                                   dead_after=cfg.target_dead_after)

  def encode_layers(self, x: jax.Array, token_mask: jax.Array,
                    masked: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Normalised log-mel (B, T, M) -> (unit-layer features (B, t, d), last layer (B, t, d)).
    `masked` (B, t) bool: frames replaced by the mask embedding before the transformer."""
    h = self.subsample(x)
    if masked is not None:
      h = jnp.where(masked[..., None], self.mask_embedding.astype(h.dtype), h)
    # Valid frames attend to valid frames only (segment 1); padding to padding (segment 0).
    segments = token_mask.astype(jnp.int32)
    unit = self.lower(h, segment_ids=segments)
    return unit, self.upper(unit, segment_ids=segments)

  def features(self, x: jax.Array, token_mask: jax.Array) -> jax.Array:
    return self.encode_layers(x, token_mask)[0]

  def __call__(self, x: jax.Array, token_mask: jax.Array, masked: jax.Array,
               train: bool = False):
    """-> (logits (B, t, num_targets), target ids (B, t), the target quantizer's metrics)."""
    ds = 2 ** len(self.cfg.channel_mult)
    q = self.targets(jax.lax.stop_gradient(stack_frames(x, ds)), train=train, mask=token_mask)
    _, last = self.encode_layers(x, token_mask, masked)
    return self.head(last), q.codes, q.metrics


@register_method("speech_ssl")
class SpeechSSL(Method):
  """Masked prediction of log-mel cluster ids; units by k-means. See the module docstring."""
  Config = SpeechSSLConfig
  state_collections = (STATS,)    # the target k-means (EMA codebook)

  def __init__(self, config: SpeechSSLConfig):
    if not 1 <= config.unit_layer <= config.num_layers:
      raise ConfigError(f"config.model.unit_layer={config.unit_layer} must be in 1.."
                        f"{config.num_layers} (config.model.num_layers)")
    if config.d_model % config.num_heads:
      raise ConfigError(f"config.model.d_model={config.d_model} must divide by num_heads="
                        f"{config.num_heads}")
    if not config.channel_mult:
      raise ConfigError("config.model.channel_mult is empty; give one entry per stride-2 "
                        "stage, e.g. (1, 2) for 25 Hz frames")
    if not 0.0 < config.mask_prob <= 1.0 or config.mask_span < 1:
      raise ConfigError(f"config.model.mask_prob={config.mask_prob} must be in (0, 1] and "
                        f"mask_span={config.mask_span} >= 1")
    if config.num_targets < 2 or config.num_units < 2:
      raise ConfigError(f"config.model.num_targets={config.num_targets} and num_units="
                        f"{config.num_units} must be >= 2")
    super().__init__(config)
    self.module = SpeechSSLModule(config)

  @property
  def downsampling(self) -> int:
    """Mel frames per encoder frame."""
    return 2 ** len(self.config.channel_mult)

  @property
  def frame_rate_hz(self) -> float:
    return MEL_FRAME_RATE_HZ / self.downsampling

  def bits_per_second(self, units: int | None = None) -> float:
    """Frame rate x log2(k) for k units (default config.model.num_units)."""
    return self.frame_rate_hz * float(np.log2(units or self.config.num_units))

  def _frames(self, batch_or_mel: Batch | jax.Array) -> audio.MelFrames:
    return audio.mel_frames(batch_or_mel, self.config.mel_bins, self.downsampling,
                            "speech_ssl")

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    f = self._frames(batch)
    x = audio.normalise_log_mel(f.mel)
    variables = self.module.init({"params": rng}, x, f.token_mask, f.token_mask > 0)
    return {"params": variables["params"], STATS: variables[STATS]}

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array, state: PyTree = None):
    mask_rng, q_rng = jax.random.split(rng)
    f = self._frames(batch)
    masked = span_mask(mask_rng, f.token_mask > 0, self.config.mask_prob,
                       self.config.mask_span)
    (logits, targets, qm), new_state = self.module.apply(
        as_variables(params, state), audio.normalise_log_mel(f.mel), f.token_mask, masked,
        train=True, rngs={"quantizer": q_rng}, mutable=[STATS])
    loss, metrics = self._loss_and_metrics(logits, targets, qm, masked, f)
    return loss, metrics, dict(new_state)

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array,
                   state: PyTree = None) -> dict[str, Any]:
    f = self._frames(batch)
    # A fixed mask draw per eval batch position: comparable across checkpoints.
    masked = span_mask(jax.random.key(0), f.token_mask > 0, self.config.mask_prob,
                       self.config.mask_span)
    logits, targets, qm = self.module.apply(
        as_variables(params, state), audio.normalise_log_mel(f.mel), f.token_mask, masked)
    return self._loss_and_metrics(logits, targets, qm, masked, f)[1]

  def _loss_and_metrics(self, logits, targets, qm, masked, f: audio.MelFrames):
    weight = masked.astype(jnp.float32) * f.token_mask
    seen = (1.0 - masked.astype(jnp.float32)) * f.token_mask
    n, n_seen = jnp.sum(weight), jnp.sum(seen)
    nll = token_nll(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    loss = jnp.sum(nll * weight) / jnp.maximum(n, 1.0)
    if self.config.unmasked_weight:
      loss = loss + self.config.unmasked_weight * jnp.sum(nll * seen) / jnp.maximum(n_seen, 1.0)
    return loss, {
        "loss": Average.of(loss * n, n),
        "masked_nll": Average.of(jnp.sum(nll * weight), n),
        "masked_accuracy": Average.of(jnp.sum(correct * weight), n),
        "unmasked_accuracy": Average.of(jnp.sum(correct * seen), n_seen),
        "mask_fraction": Average.of(jnp.sum(weight), jnp.sum(f.token_mask)),
        # The target k-means' code statistics over valid frames.
        "target_usage": qm["usage"], "target_perplexity": qm["perplexity"],
    }

  # -------------------------------------------------------------- tokenizer interface

  def features(self, variables: PyTree, batch_or_mel: Batch | jax.Array) -> tuple[
      jax.Array, jax.Array]:
    """(unit-layer features (B, t, d_model) float32, token mask (B, t) float), no masking."""
    f = self._frames(batch_or_mel)
    feats = self.module.apply(variables, audio.normalise_log_mel(f.mel), f.token_mask,
                              method=SpeechSSLModule.features)
    return feats.astype(jnp.float32), f.token_mask

  def encode(self, variables: PyTree, batch_or_mel: Batch | jax.Array) -> jax.Array:
    """A speech batch or log-mel (B, T, M) -> int32 unit ids (B, t), t = ceil(T / 2^S);
    needs the fitted centroids in variables['units'] (load_frozen_tokenizer adds them)."""
    if UNITS not in variables:
      raise TokenlabError("speech_ssl.encode needs k-means units: load the run with "
                          "tokenlab.train.inference.load_frozen_tokenizer(workdir, units=k) "
                          "after fitting them with speech_ssl.fit_units(workdir, k)")
    feats, _ = self.features(variables, batch_or_mel)
    return assign(feats, jnp.asarray(variables[UNITS]["centroids"]))

  def decode(self, variables: PyTree, codes: jax.Array) -> jax.Array:
    raise TokenlabError("speech_ssl units have no decoder (they come from k-means over "
                        "encoder features, which do not determine the audio); decode speech "
                        "with an audio_codec run, e.g. a unit-to-codec model as in ham_tts")

  def frozen_variables(self, workdir: str, variables: PyTree,
                       units: int | None = None) -> PyTree:
    """The run's variables plus the k-means centroids fitted for `units` (default
    config.model.num_units) by `fit_units`."""
    k = int(units or self.config.num_units)
    path = units_path(workdir, k)
    from etils import epath  # pylint: disable=g-import-not-at-top
    if not epath.Path(path).exists():
      raise TokenlabError(f"{workdir} has no k-means units for k={k} ({path}); fit them "
                          f"first: python -m tokenlab.methods.speech_ssl --workdir {workdir} "
                          f"--units {k}")
    with epath.Path(path).open("rb") as fh:
      centroids = np.load(fh)["centroids"]
    return {**variables, UNITS: {"centroids": centroids}}


def units_path(workdir: str, k: int) -> str:
  return os.path.join(workdir, "units", f"k{k}.npz")


def _load(workdir: str, step: int | None = None):
  """(config, method, variables, batch size) of a trained speech_ssl run."""
  from tokenlab import data as data_lib  # pylint: disable=g-import-not-at-top
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  config = load_config_from_workdir(workdir)
  if config.model.name != "speech_ssl":
    raise TokenlabError(f"{workdir} holds a '{config.model.name}' run; units need a "
                        f"speech_ssl run")
  batch_size = int(config.train.batch_size)
  spec = data_lib.batch_spec(config.data, batch_size)
  run = load_trained(workdir, {n: np.zeros(s.shape, s.dtype) for n, s in spec.items()}, step)
  return config, run.method, jax.device_get(as_variables(run.params, run.model_state)), \
      batch_size


def _collect(config, method, variables, batch_size: int, split: str) -> dict[str, np.ndarray]:
  """Over one pass of `split`, at valid frames: unit-layer features, stacked normalised
  log-mel of each token, and the phoneme at each token's centre."""
  from tokenlab import data as data_lib  # pylint: disable=g-import-not-at-top
  ds = method.downsampling

  @jax.jit
  def run(b):
    feats, mask = method.features(variables, b)
    f = method._frames(b)   # pylint: disable=protected-access
    return feats, mask, stack_frames(audio.normalise_log_mel(f.mel), ds)

  out = {"features": [], "mel": [], "phonemes": []}
  for batch in data_lib.make_iterator(config.data, split=split, batch_size=batch_size,
                                      seed=0, shuffle=False, num_epochs=1):
    feats, mask, mel = jax.device_get(run({n: batch[n] for n in ("mel", "mel_lengths",
                                                                  "mask")}))
    keep = mask > 0
    out["features"].append(feats[keep])
    out["mel"].append(mel[keep])
    # The phoneme at each token's centre: tokens pool ds mel frames centred 160 samples apart.
    out["phonemes"].append(frame_labels(batch["phonemes"], batch["phoneme_starts"],
                                        batch["phoneme_ends"], mask.shape[1], hop=160 * ds,
                                        offset=80 * (ds - 1))[keep])
  return {k: np.concatenate(v) for k, v in out.items()}


def _subsample(x: np.ndarray, max_frames: int, seed: int) -> np.ndarray:
  if len(x) <= max_frames:
    return x
  rng = np.random.default_rng(seed)
  return x[np.sort(rng.choice(len(x), max_frames, replace=False))]


def _code_stats(ids: np.ndarray, k: int) -> dict[str, float]:
  p = np.bincount(ids, minlength=k) / max(len(ids), 1)
  return {"usage": float(np.mean(p > 0)),
          "perplexity": float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))}


def purity(ids: np.ndarray, labels: np.ndarray) -> float:
  """Cluster purity: the share of frames whose unit's most frequent label is their own
  (HuBERT's phone purity, with frame labels at the token centres)."""
  table = np.zeros((int(ids.max()) + 1, int(labels.max()) + 1))
  np.add.at(table, (ids, labels), 1)
  return float(table.max(axis=1).sum() / max(len(ids), 1))


def fit_units(workdir: str, k: int | None = None, *, max_frames: int = 20_000,
              iters: int = 30, seed: int = 0, step: int | None = None) -> dict[str, Any]:
  """Fits k-means units (k clusters, default config.model.num_units) to the unit-layer
  features of the trained encoder in `workdir` over the training split (one pass; at most
  `max_frames` valid frames, a uniform subsample beyond that), saves
  WORKDIR/units/k{k}.npz (centroids, inertia per Lloyd step, frames used, layer) and returns
  {'path', 'k', 'frames', 'inertia' (list), 'usage', 'perplexity'} (the last two of the
  training frames' unit ids)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  config, method, variables, batch_size = _load(workdir, step)
  k = int(k or config.model.num_units)
  x = _subsample(_collect(config, method, variables, batch_size, "train")["features"],
                 max_frames, seed)
  if len(x) < k:
    raise TokenlabError(f"fit_units: {len(x)} valid frames in the training split, fewer "
                        f"than k={k} units; lower k or train on more data")
  result = kmeans(jax.random.key(seed), jnp.asarray(x), k, iters)
  ids = np.asarray(assign(jnp.asarray(x), result.centroids))
  stats = {"k": k, "frames": int(len(x)), "inertia": [float(v) for v in result.inertia],
           **_code_stats(ids, k)}
  path = units_path(workdir, k)
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(path).open("wb") as fh:
    np.savez(fh, centroids=np.asarray(result.centroids), inertia=np.asarray(result.inertia),
             frames=len(x), layer=config.model.unit_layer)
  return {"path": path, **stats}


def evaluate_units(workdir: str, k: int | None = None, *, max_frames: int = 20_000,
                   iters: int = 30, seed: int = 0) -> dict[str, float]:
  """Phone purity, usage and perplexity of the fitted k units on the validation split,
  beside two baselines with the same k: k-means on the tokens' stacked log-mel frames
  (fitted on the training split like the units: what the encoder adds over the input) and
  one cluster for everything (the majority phoneme's share)."""
  config, method, variables, batch_size = _load(workdir)
  k = int(k or config.model.num_units)
  frozen = method.frozen_variables(workdir, variables, units=k)
  val = _collect(config, method, variables, batch_size, "validation")
  train_mel = _subsample(_collect(config, method, variables, batch_size, "train")["mel"],
                         max_frames, seed)
  units = np.asarray(assign(jnp.asarray(val["features"]),
                            jnp.asarray(frozen[UNITS]["centroids"])))
  mel_km = kmeans(jax.random.key(seed), jnp.asarray(train_mel), k, iters)
  mel_units = np.asarray(assign(jnp.asarray(val["mel"]), mel_km.centroids))
  labels = val["phonemes"]
  out = {"k": float(k), "frames": float(len(labels)),
         "bits_per_second": method.bits_per_second(k),
         "purity": purity(units, labels), "mel_kmeans_purity": purity(mel_units, labels),
         "majority_purity": float(np.bincount(labels).max() / len(labels))}
  out.update(_code_stats(units, k))
  out.update({f"mel_kmeans_{n}": v for n, v in _code_stats(mel_units, k).items()})
  return out


def main(argv: list[str] | None = None) -> int:
  """`python -m tokenlab.methods.speech_ssl --workdir W --units 50,100,200`."""
  parser = argparse.ArgumentParser(prog="python -m tokenlab.methods.speech_ssl",
                                   description="fit k-means units to a trained speech_ssl run")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--units", default="", help="comma-separated k (default: the run's "
                      "config.model.num_units)")
  parser.add_argument("--max-frames", type=int, default=20_000)
  parser.add_argument("--iters", type=int, default=30)
  parser.add_argument("--evaluate", action="store_true", help="then report phone purity "
                      "of the units on the validation split, beside k-means on log-mel")
  args = parser.parse_args(argv)
  ks = [int(v) for v in args.units.split(",") if v] or [None]
  for k in ks:
    out = fit_units(args.workdir, k, max_frames=args.max_frames, iters=args.iters)
    print(f"k={out['k']}: {out['frames']} frames, inertia {out['inertia'][0]:.4g} -> "
          f"{out['inertia'][-1]:.4g}, usage {out['usage']:.3f}, perplexity "
          f"{out['perplexity']:.1f} -> {out['path']}")
    if args.evaluate:
      ev = evaluate_units(args.workdir, out["k"], max_frames=args.max_frames,
                          iters=args.iters)
      print("  validation: " + ", ".join(f"{n}={v:.4g}" for n, v in ev.items()))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
