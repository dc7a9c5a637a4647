"""Scores for reconstructed and generated video: per-frame PSNR, a frame probe, a toy FVD.

Published video metrics lean on networks trained on large real video (FVD: an I3D network
trained on Kinetics); nothing like that runs or downloads here. Instead, as
`tokenlab.evals.image_samples` does for images, small nets are trained on the procedural
dataset's own train split (seconds to a minute of CPU, cached on disk by dataset, options,
hyper-parameters and version):

- **per-frame PSNR** (`per_frame_psnr`): `image.psnr_per_image` of every frame, (B, T) dB;
  an exact frame scores `image.PSNR_CAP` (100 dB) instead of infinity.
- **frame probe** (`train_frame_probe`): a per-frame net (`FrameNet`: image_samples'
  stride = kernel patch features, 2x2-patch context, flattened and max-pooled read-outs;
  a regression or multi-label head) that reads each frame's labels, so a generated
  clip is scored by "the probe agrees with the labels the clip was meant to have":
  * `moving_digits`: the top-left (row, col) of each digit, scored as the mean pixel
    distance to the labelled positions under the better of the digit orders (the digits'
    order in a label is arbitrary, so the loss is the minimum over permutations);
  * `moving_shapes`: which shapes (4), colours (6) and position cells (a 4x4 grid of the
    frame, the cell of each object's box centre) are on screen, as multi-hot sets; scored as
    the fraction of frames whose predicted set is exactly the labelled one, per group and
    for all three ('all');
  * `pulse`: the blob's radius in pixels (mean absolute error).
  `FrameProbe.chance` holds the trivial baseline on the same validation frames (the train
  mean position / radius; the most frequent set of each group), the number to beat.
- **toy FVD** (`train_video_classifier`, `toy_fvd`): the Frechet distance
  (`image_samples.frechet_distance`) between Gaussians fitted to the penultimate features
  of real and generated clips, the features of a small *video* classifier trained here:
  per-frame `FrameNet` embeddings, two temporal convolutions (kernel 3) and a mean
  over time, trained with multi-label targets that need motion as well as appearance
  (moving_digits: which digits are shown + the directions (sign of d row, d col) the digits
  start moving in; moving_shapes: the clip's event classes, moves by direction; pulse: the
  heart-rate quartile). It is a TOY FVD: another network, other features, tens to hundreds of
  clips; NOT comparable to published FVD numbers. Compare it only between runs scored by the
  same classifier at the same clip count, against `fvd_real` (real train clips scored the
  same way: the value of a perfect generator at that count; FD is biased upward for few
  clips).

    probe = train_frame_probe("moving_digits", options=cfg.data.options)   # once, then cached
    probe.score(videos, {"positions": wanted_positions})    # {'position_error_px': ...}
    clf = train_video_classifier("moving_shapes")
    evaluate_videos(videos, probe=probe, classifier=clf, labels=batch_labels)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import TokenlabError
from tokenlab.evals import image
from tokenlab.evals import image_samples as samples

VERSION = 2          # bump when a net, a target or the training changes (cache key)
DATASETS = ("moving_digits", "moving_shapes", "pulse")
GRID = 4             # moving_shapes position cells: GRID x GRID cells of the frame
SHAPE_GROUPS = (("shape", 4), ("colour", 6), ("position", GRID * GRID))
HEART_RATE_BINS = (67.5, 85.0, 102.5)   # pulse heart rate 50..120 bpm in four classes


# ------------------------------------------------------------------------------ PSNR


def per_frame_psnr(video: jax.Array, recon: jax.Array, max_value: float = 1.0) -> jax.Array:
  """video, recon (B, T, H, W, C) in [0, max_value] -> (B, T) PSNR of each frame in dB.

  Each frame is scored as one image by `image.psnr_per_image` (recon clipped first; an exact
  frame scores `image.PSNR_CAP`). Works on numpy and jax arrays, under jit too.
  """
  if video.shape != recon.shape or video.ndim != 5:
    raise ValueError(f"per_frame_psnr takes two (B, T, H, W, C) videos of one shape, got "
                     f"{video.shape} and {recon.shape}")
  b, t = video.shape[:2]
  flat = lambda x: jnp.reshape(jnp.asarray(x), (b * t, *x.shape[2:]))
  return image.psnr_per_image(flat(video), flat(recon), max_value).reshape(b, t)


# ------------------------------------------------------------------------------- data


def load_clips(dataset: str, split: str, options: Mapping[str, Any] | None = None,
               limit: int | None = None) -> dict[str, np.ndarray]:
  """The first `limit` clips of a split, generated in memory by the builder's own code:
  {'video' uint8 (N, T, H, W, C), and the labels (positions, objects, events, radius, ...)}."""
  if dataset not in DATASETS:
    raise TokenlabError(f"no video metrics for dataset '{dataset}'; use one of {DATASETS}")
  return samples.generate_records(dataset, split, samples.merged_options(dataset, options),
                                  limit)


def as_uint8_video(videos: Any) -> np.ndarray:
  """(N, T, H, W, C) float in [0, 1] or uint8 -> uint8 (rounded, clipped)."""
  x = np.asarray(videos)
  if x.dtype == np.uint8:
    return x
  return np.round(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _shapes_frame_targets(objects: np.ndarray, size: int) -> np.ndarray:
  """objects (..., slots, 4) [shape, colour, row, col] (-1 absent) -> multi-hot (..., 26):
  shapes present (4), colours present (6), cells of box centres (GRID x GRID)."""
  from tokenlab.data.shapes import object_size
  present = objects[..., 0] >= 0                                          # (..., slots)
  centre = objects[..., 2:4] + object_size(size) / 2.0
  cell = np.clip((centre * GRID / size).astype(np.int64), 0, GRID - 1)
  cell_id = cell[..., 0] * GRID + cell[..., 1]
  groups = []
  for values, width in ((objects[..., 0], 4), (objects[..., 1], 6), (cell_id, GRID * GRID)):
    onehot = (values[..., None] == np.arange(width)) & present[..., None]
    groups.append(onehot.any(axis=-2))
  return np.concatenate(groups, axis=-1).astype(np.float32)


def frame_targets(dataset: str, labels: Mapping[str, np.ndarray],
                  options: Mapping[str, Any]) -> np.ndarray:
  """The frame probe's targets of clips' labels, float32 (N, T, K): moving_digits (row, col)
  per digit / limit (K = 2 n), moving_shapes the multi-hot sets (K = 26), pulse radius (K=1)."""
  if dataset == "moving_digits":
    from tokenlab.data.moving_digits import DIGIT
    pos = np.asarray(labels["positions"], np.float32)                    # (N, T, n, 2)
    return pos.reshape(*pos.shape[:2], -1) / (options["size"] - DIGIT)
  if dataset == "moving_shapes":
    return _shapes_frame_targets(np.asarray(labels["objects"]), options["size"])
  return np.asarray(labels["radius"], np.float32)[..., None]


def clip_targets(dataset: str, labels: Mapping[str, np.ndarray]) -> np.ndarray:
  """The video classifier's multi-label targets, float32 (N, K): moving_digits digits shown
  (10) + start directions (4: sign of d row, d col); moving_shapes event classes (8: moves
  left/right/up/down, appears, disappears, turns, becomes); pulse heart-rate quartile (4)."""
  if dataset == "moving_digits":
    digits = (np.asarray(labels["digits"])[..., None] == np.arange(10)).any(-2)
    v0 = np.asarray(labels["velocities"])[:, 0]                           # (N, n, 2)
    direction = (v0[..., 0] > 0) * 2 + (v0[..., 1] > 0)                   # (N, n) 0..3
    return np.concatenate([digits, (direction[..., None] == np.arange(4)).any(-2)],
                          -1).astype(np.float32)
  if dataset == "moving_shapes":
    from tokenlab.data.moving_shapes import MOVES
    events = np.asarray(labels["events"])
    cls = np.where(events[..., 0] == MOVES, events[..., 3], events[..., 0] + 3)   # moves 0..3
    return (cls[..., None] == np.arange(8)).any(-2).astype(np.float32)
  rate = np.asarray(labels["heart_rate"], np.float32).reshape(-1)
  return (np.digitize(rate, HEART_RATE_BINS)[:, None] == np.arange(4)).astype(np.float32)


# ------------------------------------------------------------------------------- nets


def _digits_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Squared error under the better digit order: pred, target (..., 2 n) -> (...)."""
  p, t = pred.reshape(*pred.shape[:-1], -1, 2), target.reshape(*target.shape[:-1], -1, 2)
  straight = jnp.sum(jnp.square(p - t), (-1, -2))
  swapped = jnp.sum(jnp.square(p - t[..., ::-1, :]), (-1, -2))
  return jnp.minimum(straight, swapped)


def _bce(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean sigmoid cross-entropy over the last axis (multi-hot targets)."""
  import optax
  return optax.sigmoid_binary_cross_entropy(logits, target).mean(-1)


class FrameNet(nn.Module):
  """frames (B, H, W, C) in [0, 1] -> (outputs (B, outputs), features (B, features)).

  Patch features (`ConvClassifier`'s stride = kernel design: p x p patches through two Dense
  layers, fast on XLA:CPU), then each patch joined with its right, lower and diagonal
  neighbours (a 2x2-patch receptive field, so an object cut by a patch border is seen whole)
  and one more Dense layer; two read-outs: flattened (where things are) and a max over
  patches (what is anywhere: set-valued targets like "a triangle is on screen"), joined in a
  Dense layer of `features` units + ReLU, then a linear head.
  """
  outputs: int
  features: int = 64
  width: int = 64

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    from tokenlab.nn.vision import patchify
    b, h, w = images.shape[:3]
    p = samples._patch_size(h)
    x = patchify(images * 2.0 - 1.0, p)                                   # (B, N, p*p*C)
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.relu(nn.Dense(self.width)(x)).reshape(b, h // p, w // p, self.width)
    pad = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    x = jnp.concatenate([x, pad[:, :-1, 1:], pad[:, 1:, :-1], pad[:, 1:, 1:]], -1)
    x = nn.relu(nn.Dense(self.width)(x.reshape(b, -1, 4 * self.width)))  # (B, N, width)
    flat = nn.relu(nn.Dense(self.features)(x.reshape(b, -1)))
    feats = nn.relu(nn.Dense(self.features)(jnp.concatenate([flat, x.max(axis=1)], -1)))
    return nn.Dense(self.outputs)(feats), feats


class VideoClassifier(nn.Module):
  """clips (B, T, H, W, C) in [0, 1] -> (logits (B, outputs), features (B, features)).

  Each frame through a `FrameNet` (its `frame_dim` outputs are the frame embedding), then
  two temporal convolutions (kernel 3, ReLU) over the (B, T, frame_dim) sequence, a mean
  over time, a Dense layer of `features` units + ReLU (the toy FVD's features) and a linear
  head.
  """
  outputs: int
  features: int = 64
  frame_dim: int = 64

  @nn.compact
  def __call__(self, clips: jax.Array) -> tuple[jax.Array, jax.Array]:
    b, t = clips.shape[:2]
    frames, _ = FrameNet(self.frame_dim, features=self.features)(
        clips.reshape(b * t, *clips.shape[2:]))
    x = frames.reshape(b, t, self.frame_dim)
    for _ in range(2):   # motion is a difference of neighbouring frames: temporal kernels
      x = nn.relu(nn.Conv(self.frame_dim, kernel_size=(3,), padding="SAME")(x))
    feats = nn.relu(nn.Dense(self.features)(x.mean(axis=1)))
    return nn.Dense(self.outputs)(feats), feats


@dataclasses.dataclass
class _Trained:
  """A trained net, what it read, and how it scored on the validation split."""
  kind: str                     # 'probe' (per frame) or 'classifier' (per clip)
  dataset: str
  options: dict
  outputs: int
  features: int
  video_shape: tuple[int, ...]  # (T, H, W, C) of one clip
  params: Any
  val_scores: dict
  chance: dict
  train_seconds: float
  from_cache: bool = False

  def module(self) -> nn.Module:
    return _module(self.kind, self.outputs, self.features)

  @functools.cached_property
  def _apply(self) -> Callable:
    module = self.module()
    return jax.jit(lambda p, x: module.apply({"params": p}, x.astype(jnp.float32) / 255.0))

  def outputs_and_features(self, videos: Any, batch_size: int = 64
                           ) -> tuple[np.ndarray, np.ndarray]:
    """videos (N, T, H, W, C) in [0, 1] or uint8 -> (outputs, features): per frame
    (N, T, K), (N, T, F) for a probe; per clip (N, K), (N, F) for a classifier."""
    x = as_uint8_video(videos)
    if x.ndim != 5 or x.shape[2:] != tuple(self.video_shape[1:]) or (
        self.kind == "classifier" and x.shape[1] != self.video_shape[0]):
      want = self.video_shape if self.kind == "classifier" else ("T", *self.video_shape[1:])
      raise TokenlabError(f"videos of shape {x.shape[1:]} given to a {self.kind} trained on "
                          f"{self.dataset} clips of shape {tuple(want)}")
    n, t = x.shape[:2]
    if self.kind == "probe":   # frames are independent: score them as one batch of images
      x = x.reshape(n * t, 1, *x.shape[2:])
    outs, feats = [], []
    for start in range(0, len(x), batch_size):
      chunk = x[start:start + batch_size]
      pad = batch_size - len(chunk) if len(x) > batch_size else 0
      if pad:   # one compiled shape for every chunk
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.uint8)])
      o, f = self._apply(self.params, chunk[:, 0] if self.kind == "probe" else chunk)
      outs.append(np.asarray(o)[:len(chunk) - pad])
      feats.append(np.asarray(f)[:len(chunk) - pad])
    o, f = np.concatenate(outs), np.concatenate(feats)
    if self.kind == "probe":
      o, f = o.reshape(n, t, -1), f.reshape(n, t, -1)
    return o, f


def _numpy_init(module: nn.Module, example: np.ndarray, seed: int) -> Any:
  """LeCun-normal kernels (std 1 / sqrt(fan in)) and zero biases, drawn with numpy for the
  shapes `jax.eval_shape` gives: nothing compiled (an init under jit costs a compile, about
  0.6 s here, for nets that train in seconds)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct(example.shape, jnp.float32))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if jax.tree_util.keystr(path[-1:]) == "['bias']":
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _module(kind: str, outputs: int, features: int) -> nn.Module:
  if kind == "probe":
    return FrameNet(outputs, features=features)
  return VideoClassifier(outputs, features=features)


def _train(kind: str, dataset: str, options: Mapping[str, Any] | None, *, clips: int,
           steps: int, batch_size: int, learning_rate: float, features: int, seed: int,
           cache_dir: str | None, score: Callable, cls: type) -> Any:
  """Trains (or loads) a probe or classifier (an instance of `cls`, a `_Trained`);
  `score(net, validation clips, train clips) -> (scores, chance scores)`."""
  if dataset not in DATASETS:
    raise TokenlabError(f"no video {kind} for dataset '{dataset}'; use one of {DATASETS}")
  options = samples.merged_options(dataset, options)
  hparams = dict(kind=kind, clips=clips, steps=steps, batch_size=batch_size,
                 learning_rate=learning_rate, features=features, seed=seed)
  stem = samples.cache_stem(cache_dir, dataset, options, hparams, version=VERSION)

  def abstract(meta):
    example = jnp.zeros((1, *meta["video_shape"][1 if kind == "probe" else 0:]), jnp.float32)
    return jax.eval_shape(lambda: _module(kind, meta["outputs"], features).init(
        jax.random.key(0), example)["params"])

  cached = samples.read_cached(stem, abstract)
  if cached is not None:
    meta, params = cached
    return cls(kind, dataset, options, meta["outputs"], features,
                    tuple(meta["video_shape"]), params, meta["val_scores"], meta["chance"],
                    meta["train_seconds"], from_cache=True)
  start = time.time()
  train = load_clips(dataset, "train", options, clips)
  video = train.pop("video")
  if kind == "probe":   # frames are the examples
    x = video.reshape(-1, *video.shape[2:])
    y = frame_targets(dataset, train, options).reshape(len(x), -1)
  else:
    x, y = video, clip_targets(dataset, train)
  outputs = y.shape[-1]
  module = _module(kind, outputs, features)
  params = _numpy_init(module, x[:1], seed)
  if kind == "probe" and dataset == "moving_digits":
    per_example = _digits_loss
  elif kind == "probe" and dataset == "pulse":
    per_example = lambda p, t: jnp.square(p - t / options["size"]).sum(-1)
  else:
    per_example = _bce

  def loss_fn(p, xb, yb):
    out, _ = module.apply({"params": p}, xb.astype(jnp.float32) / 255.0)
    return per_example(out, yb).mean()

  # An "unsafe_rbg" key: the training scan compiles several times faster on XLA:CPU than
  # with threefry (BUILD_NOTES "Vision blocks").
  params = samples.adam_fit(loss_fn, params, (x, y), steps=steps, batch_size=batch_size,
                            learning_rate=learning_rate,
                            rng=jax.random.key(seed + 1, impl="unsafe_rbg"))
  net = cls(kind, dataset, options, outputs, features, tuple(video.shape[1:]), params, {},
            {}, 0.0)
  val = load_clips(dataset, "validation", options, max(clips // 4, 8))
  net.val_scores, net.chance = score(net, val, train)
  net.train_seconds = round(time.time() - start, 2)
  samples.write_cached(stem, params, {
      "kind": kind, "dataset": dataset, "options": options, "hparams": hparams,
      "outputs": outputs, "video_shape": list(net.video_shape), "val_scores": net.val_scores,
      "chance": net.chance, "train_seconds": net.train_seconds, "version": VERSION})
  return net


# ------------------------------------------------------------------------------ probe


class FrameProbe(_Trained):
  """A trained per-frame probe. `val_scores`: its scores on validation clips; `chance`: the
  trivial baseline's on the same clips (train-mean position or radius; most frequent set)."""

  def predict(self, videos: Any) -> np.ndarray:
    """videos (N, T, H, W, C) -> per-frame predictions: moving_digits (N, T, n, 2) pixel
    positions, moving_shapes bool (N, T, 26) sets, pulse (N, T) radius in pixels."""
    out, _ = self.outputs_and_features(videos)
    return self.decode(out)

  def decode(self, out: np.ndarray) -> np.ndarray:
    if self.dataset == "moving_digits":
      from tokenlab.data.moving_digits import DIGIT
      return out.reshape(*out.shape[:2], -1, 2) * (self.options["size"] - DIGIT)
    if self.dataset == "moving_shapes":
      return out > 0.0
    return out[..., 0] * self.options["size"]

  def score(self, videos: Any, labels: Mapping[str, Any]) -> dict[str, float]:
    """How well clips show the labels they were meant to have, frame by frame.

    Args:
      videos: (N, T, H, W, C) generated (or real) clips, float in [0, 1] or uint8.
      labels: the wanted labels in the batch's layout: moving_digits 'positions' (N, T, n, 2);
        moving_shapes 'objects' (N, T, slots, 4); pulse 'radius' (N, T).
    Returns:
      moving_digits {'position_error_px'}: mean over frames and digits of the pixel distance
      under the better digit order; moving_shapes {'shape', 'colour', 'position', 'all'}:
      fractions of frames whose predicted sets equal the wanted ones; pulse
      {'radius_error_px'}.
    """
    return _probe_scores(self.dataset, self.decode(self.outputs_and_features(videos)[0]),
                         labels, self.options)


def _probe_scores(dataset: str, pred: np.ndarray, labels: Mapping[str, Any],
                  options: Mapping[str, Any]) -> dict[str, float]:
  """Scores decoded per-frame predictions against wanted labels (see FrameProbe.score)."""
  if dataset == "moving_digits":
    want = np.asarray(labels["positions"], np.float32)
    dist = lambda w: np.sqrt(np.square(pred - w).sum(-1)).mean(-1)        # (N, T)
    return {"position_error_px": float(np.minimum(dist(want), dist(want[..., ::-1, :])).mean())}
  if dataset == "moving_shapes":
    want = _shapes_frame_targets(np.asarray(labels["objects"]), options["size"]) > 0.5
    out, start, every = {}, 0, np.ones(want.shape[:-1], bool)
    for name, width in SHAPE_GROUPS:
      same = (pred[..., start:start + width] == want[..., start:start + width]).all(-1)
      out[name], every, start = float(same.mean()), every & same, start + width
    out["all"] = float(every.mean())
    return out
  return {"radius_error_px": float(np.abs(pred - np.asarray(labels["radius"])).mean())}


def _chance_prediction(dataset: str, train: Mapping[str, np.ndarray], shape: tuple,
                       options: Mapping[str, Any]) -> np.ndarray:
  """The trivial probe: the train mean (digits: mean position, one for every digit; pulse:
  mean radius) or the most frequent set of each moving_shapes group, for frames `shape`."""
  if dataset == "moving_digits":
    mean = np.asarray(train["positions"], np.float32).reshape(-1, 2).mean(0)
    return np.broadcast_to(mean, (*shape, options["num_digits"], 2))
  if dataset == "moving_shapes":
    sets = _shapes_frame_targets(np.asarray(train["objects"]), options["size"])
    sets = sets.reshape(-1, sets.shape[-1]) > 0.5
    parts, start = [], 0
    for _, width in SHAPE_GROUPS:
      rows, counts = np.unique(sets[:, start:start + width], axis=0, return_counts=True)
      parts.append(rows[counts.argmax()])
      start += width
    return np.broadcast_to(np.concatenate(parts), (*shape, sets.shape[-1]))
  return np.full(shape, float(np.asarray(train["radius"]).mean()), np.float32)


def _score_probe(probe: FrameProbe, val: dict, train: dict) -> tuple[dict, dict]:
  video = val.pop("video")
  chance = _chance_prediction(probe.dataset, train, video.shape[:2], probe.options)
  return (probe.score(video, val),
          _probe_scores(probe.dataset, chance, val, probe.options))


def train_frame_probe(dataset: str, *, options: Mapping[str, Any] | None = None,
                      clips: int = 200, steps: int = 400, batch_size: int = 128,
                      learning_rate: float = 2e-3, features: int = 64, seed: int = 0,
                      cache_dir: str | None = None) -> FrameProbe:
  """Trains (or loads from the cache) the frame probe of a video dataset.

  Args:
    dataset: 'moving_digits', 'moving_shapes' or 'pulse'.
    options: dataset options (registry defaults for the rest); the probe reads frames of
      exactly this size.
    clips: train clips read (all their frames are examples); clips // 4 (at least 8)
      validation clips give `val_scores` and `chance`.
    steps, batch_size, learning_rate: Adam on random batches of frames.
    cache_dir: default ~/.cache/tokenlab/sample_classifiers (image_samples'), one file pair
      per (dataset, options, hyper-parameters, VERSION).
  """
  return _train("probe", dataset, options, clips=clips, steps=steps, batch_size=batch_size,
                learning_rate=learning_rate, features=features, seed=seed,
                cache_dir=cache_dir, score=_score_probe, cls=FrameProbe)


# ------------------------------------------------------------------------- classifier


class VideoFeatures(_Trained):
  """A trained `VideoClassifier` (the toy FVD's feature net). `val_scores`: 'exact' (clips
  whose whole label set is right) and 'label' (mean per-label accuracy) on validation clips;
  `chance`: the same for predicting each label's majority value."""

  def features_of(self, videos: Any) -> np.ndarray:
    """(N, T, H, W, C) clips -> (N, features)."""
    return self.outputs_and_features(videos)[1]

  def predict(self, videos: Any) -> np.ndarray:
    """(N, T, H, W, C) clips -> bool (N, K) predicted label sets."""
    return self.outputs_and_features(videos)[0] > 0.0


def _set_scores(pred: np.ndarray, want: np.ndarray) -> dict[str, float]:
  same = pred == (want > 0.5)
  return {"exact": float(same.all(-1).mean()), "label": float(same.mean())}


def _score_classifier(net: VideoFeatures, val: dict, train: dict) -> tuple[dict, dict]:
  video = val.pop("video")
  want = clip_targets(net.dataset, val)
  pred = net.predict(video)
  majority = clip_targets(net.dataset, train).mean(0) > 0.5
  return _set_scores(pred, want), _set_scores(np.broadcast_to(majority, want.shape), want)


def train_video_classifier(dataset: str, *, options: Mapping[str, Any] | None = None,
                           clips: int = 400, steps: int = 300, batch_size: int = 32,
                           learning_rate: float = 2e-3, features: int = 64, seed: int = 0,
                           cache_dir: str | None = None) -> VideoFeatures:
  """Trains (or loads) the toy FVD's video classifier (`VideoClassifier`) of a dataset.

  Arguments as `train_frame_probe`; batches are `batch_size` whole clips.
  """
  return _train("classifier", dataset, options, clips=clips, steps=steps,
                batch_size=batch_size, learning_rate=learning_rate, features=features,
                seed=seed, cache_dir=cache_dir, score=_score_classifier, cls=VideoFeatures)


def toy_fvd(classifier: VideoFeatures, videos: Any, reference: Any) -> float:
  """Toy FVD: `frechet_distance` of the classifier's features of `videos` and `reference`
  clips (N, T, H, W, C). Not I3D FVD: compare only runs scored by the same classifier at the
  same clip counts."""
  return samples.frechet_distance(classifier.features_of(videos),
                                  classifier.features_of(reference))


def evaluate_videos(videos: Any, *, probe: FrameProbe | None = None,
                    classifier: VideoFeatures | None = None,
                    labels: Mapping[str, Any] | None = None, reference: Any = None,
                    real_floor: bool = True) -> dict[str, float]:
  """The video scores in one dict.

  Args:
    videos: (N, T, H, W, C) generated or reconstructed clips in [0, 1] (or uint8).
    probe, labels: 'probe/...' = `probe.score(videos, labels)` (labels: the wanted ones).
    classifier: 'fvd' (toy FVD) against `reference` clips (default: the classifier's
      validation clips, as many as its training scored, at least N); with `real_floor`
      also 'fvd_real': as many real train clips against the same reference.
  """
  out: dict[str, float] = {"num_videos": float(len(videos))}
  if probe is not None and labels is not None:
    out.update({f"probe/{k}": v for k, v in probe.score(videos, labels).items()})
  if classifier is not None:
    if reference is None:
      reference = load_clips(classifier.dataset, "validation", classifier.options,
                             max(len(videos), 8))["video"]
    out["fvd"] = toy_fvd(classifier, videos, reference)
    if real_floor:
      real = load_clips(classifier.dataset, "train", classifier.options, len(videos))["video"]
      out["fvd_real"] = toy_fvd(classifier, real, reference)
  return out
