"""Scores for generated images: class accuracy, a toy FID ("FD-classifier"), shapes attributes.

Real FID uses Inception-v3 features of 50,000 ImageNet-scale images; nothing like that runs
(or downloads) here. Instead a small conv classifier is trained on the dataset's own train
split (a few hundred optax steps on CPU, cached on disk) and gives:

- **class accuracy** of class-conditional samples: the fraction the classifier labels with the
  class they were conditioned on (`class_accuracy`);
- **FD-classifier**, a toy FID: the Frechet distance between Gaussians fitted to the
  classifier's penultimate features of the samples and of real validation images
  (`frechet_distance`, `fd_classifier`). It is NOT comparable to published FID numbers (other
  network, other features, few images); compare it only between runs on the same dataset with
  the same classifier and sample counts (FD is biased upward for small sets);
- for `shapes`, **exact attribute accuracy** read back from the pixels by
  `tokenlab.data.shapes.matches` (shape, colour, count, and all three), no classifier needed
  (`shapes_attribute_accuracy`).

Datasets and their classes: `mnist`, `digits` (digit 0..9), `shapes` (shape class 0..3),
`photos` (photo id; validation photos are held out of train, so its accuracy is measured on
the last 10% of train crops and its class accuracy of samples is meaningless: use its
features for FD only).

    clf = train_classifier("mnist", cache_dir="runs/classifiers")   # trains once, then loads
    scores = evaluate_samples(clf, samples, labels=wanted_labels)    # {'class_accuracy', 'fd'}
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Mapping

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.errors import TokenlabError

CLASSIFIER_VERSION = 2   # bump when the architecture or training changes (cache key)
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tokenlab",
                                 "sample_classifiers")
CLASS_COUNTS = {"mnist": 10, "digits": 10, "shapes": 4, "photos": None}


# --------------------------------------------------------------------------------- data


def dataset_options(dataset: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The dataset's default options (tokenlab.data.registry) updated by `options`."""
  if dataset not in CLASS_COUNTS:
    raise TokenlabError(f"no sample classifier for dataset '{dataset}'; use one of "
                        f"{sorted(CLASS_COUNTS)}")
  return merged_options(dataset, options)


def merged_options(dataset: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Any registered dataset's default options updated by `options` (unknown keys raise)."""
  from tokenlab.data.registry import DATASETS
  merged = dict(DATASETS[dataset].default_options)
  unknown = set(options or {}) - set(merged)
  if unknown:
    raise TokenlabError(f"unknown {dataset} options {sorted(unknown)}; known: {sorted(merged)}")
  merged.update(options or {})
  return merged


def generate_records(dataset: str, split: str, options: Mapping[str, Any],
                     limit: int | None = None) -> dict[str, np.ndarray]:
  """The first `limit` (default all) records of a split, each field stacked (N, ...), made
  in memory by the dataset's own record generator (no tfds build); `options` complete."""
  import importlib
  import itertools
  from tokenlab.data.registry import DATASETS
  module = importlib.import_module(DATASETS[dataset].module)
  # The builders' record generators need no builder state (no tfds set-up): a bare instance
  # reuses each dataset's own generation code (the records `tokenlab data build` writes).
  bare = object.__new__(module.Builder)
  records = [r for _, r in itertools.islice(bare.examples(split, options), limit)]
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def load_split(dataset: str, split: str, options: Mapping[str, Any] | None = None
               ) -> dict[str, np.ndarray]:
  """Every record of a split as arrays, generated in memory (no tfds build): {'image' float32
  (N, H, W, C) in [0, 1], 'label' int64 (N,), and any other per-record fields (shapes:
  colour, count, positions)}."""
  out = generate_records(dataset, split, dataset_options(dataset, options))
  image = out["image"]
  out["image"] = (image.astype(np.float32) / 255.0 if image.dtype == np.uint8
                  else image.astype(np.float32))
  out["label"] = out["label"].astype(np.int64)
  return out


def as_float_images(images: Any) -> np.ndarray:
  """(N, H, W[, C]) uint8 0..255 or float in [0, 1] -> float32 (N, H, W, C) clipped to [0, 1]."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  return np.clip(x, 0.0, 1.0)


# --------------------------------------------------------------------------- classifier


def _patch_size(height: int) -> int:
  """4x4 patches for 16 px and larger images (28 -> 7x7 tokens), 2x2 for 8x8 digits."""
  return 4 if height % 4 == 0 and height >= 16 else 2 if height % 2 == 0 else 1


class ConvClassifier(nn.Module):
  """images (B, H, W, C) in [0, 1] -> (logits (B, classes), features (B, features)).

  A small convolutional net whose convolutions all have stride = kernel (non-overlapping
  p x p patches, p = 4 from 16 px up, else 2): a patch embedding (a p x p stride-p conv,
  written as patchify + Dense), a 1x1 conv, both ReLU, then flatten, a Dense layer of
  `features` units + ReLU (the penultimate features FD-classifier uses) and a linear head.
  Why not 3x3 stride-1 convolutions: their gradients are slow on XLA:CPU (300 steps on 28x28
  MNIST took about 400 s on the 2-core box, against seconds for these matmuls).
  """
  num_classes: int
  features: int = 64
  width: int = 64

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    from tokenlab.nn.vision import patchify
    x = patchify(images * 2.0 - 1.0, _patch_size(images.shape[1]))       # (B, N, p*p*C)
    x = nn.relu(nn.Dense(self.width)(x))
    x = nn.relu(nn.Dense(self.width)(x))
    feats = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(feats), feats


@dataclasses.dataclass
class SampleClassifier:
  """A trained `ConvClassifier` with what it was trained on.

  `val_accuracy`: accuracy on the validation split (photos: the held-out last 10% of train
  crops). `from_cache`: loaded rather than trained by this call.
  """
  dataset: str
  options: dict
  num_classes: int
  features: int
  image_shape: tuple[int, int, int]
  params: Any
  val_accuracy: float
  train_seconds: float
  from_cache: bool = False

  @functools.cached_property
  def _apply(self):
    module = ConvClassifier(self.num_classes, self.features)
    return jax.jit(lambda p, x: module.apply({"params": p}, x))

  def logits_and_features(self, images: Any, batch_size: int = 256
                          ) -> tuple[np.ndarray, np.ndarray]:
    """images (N, H, W, C) -> (logits (N, classes), features (N, features)) float32."""
    x = as_float_images(images)
    if x.shape[1:] != tuple(self.image_shape):
      raise TokenlabError(f"images of shape {x.shape[1:]} given to a classifier trained on "
                          f"{self.dataset} images of shape {tuple(self.image_shape)}")
    logits, feats = [], []
    for start in range(0, len(x), batch_size):
      chunk = x[start:start + batch_size]
      pad = batch_size - len(chunk) if len(x) > batch_size else 0
      if pad:   # one compiled shape for every batch
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
      lo, fe = self._apply(self.params, chunk)
      logits.append(np.asarray(lo)[:len(chunk) - pad])
      feats.append(np.asarray(fe)[:len(chunk) - pad])
    return np.concatenate(logits), np.concatenate(feats)

  def predict(self, images: Any) -> np.ndarray:
    """(N,) predicted classes."""
    return self.logits_and_features(images)[0].argmax(-1)

  def features_of(self, images: Any) -> np.ndarray:
    """(N, features) penultimate features."""
    return self.logits_and_features(images)[1]


def _cache_key(dataset: str, options: Mapping[str, Any], hparams: Mapping[str, Any],
               version: int = CLASSIFIER_VERSION) -> str:
  blob = json.dumps({"dataset": dataset, "options": dict(options), "hparams": dict(hparams),
                     "version": version}, sort_keys=True, default=str)
  return f"{dataset}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def cache_stem(cache_dir: str | None, dataset: str, options: Mapping[str, Any],
               hparams: Mapping[str, Any], version: int = CLASSIFIER_VERSION) -> str:
  """The path (without suffix) of a cached trained net: one per (dataset, options,
  hyper-parameters, version) under `cache_dir` (default DEFAULT_CACHE_DIR)."""
  return os.path.join(cache_dir or DEFAULT_CACHE_DIR,
                      _cache_key(dataset, options, hparams, version))


def read_cached(stem: str, params_like: Any = None) -> tuple[dict, Any] | None:
  """(metadata, params) of a complete cache entry at `stem`, or None. `params_like`: a
  callable meta -> abstract params tree (shapes) to restore the weights into."""
  if not (os.path.exists(stem + ".json") and os.path.exists(stem + ".msgpack")):
    return None
  with open(stem + ".json") as f:
    meta = json.load(f)
  with open(stem + ".msgpack", "rb") as f:
    params = flax.serialization.from_bytes(params_like(meta), f.read())
  return meta, params


def write_cached(stem: str, params: Any, meta: Mapping[str, Any]) -> None:
  """Writes a cache entry: weights first, then the metadata that marks it complete; each
  file atomically (a temporary file renamed), so concurrent writers never expose a part."""
  os.makedirs(os.path.dirname(stem), exist_ok=True)
  for suffix, data, mode in ((".msgpack", flax.serialization.to_bytes(params), "wb"),
                             (".json", json.dumps(dict(meta), indent=1, default=str), "w")):
    tmp = f"{stem}{suffix}.tmp{os.getpid()}"
    with open(tmp, mode) as f:
      f.write(data)
    os.replace(tmp, stem + suffix)


def _train_data(dataset: str, options: Mapping[str, Any]):
  """(train images, train labels, check images, check labels, classes)."""
  train = load_split(dataset, "train", options)
  if dataset == "photos":   # validation photos are unseen classes: hold out train crops
    from tokenlab.data.photos import PHOTOS
    n = len(train["label"])
    cut = n - max(1, n // 10)
    return (train["image"][:cut], train["label"][:cut], train["image"][cut:],
            train["label"][cut:], len(PHOTOS))
  val = load_split(dataset, "validation", options)
  return train["image"], train["label"], val["image"], val["label"], CLASS_COUNTS[dataset]


def adam_fit(loss_fn, params: Any, arrays: tuple, *, steps: int, batch_size: int,
             learning_rate: float, rng: jax.Array) -> Any:
  """`steps` Adam steps on `loss_fn(params, *batch)`, each batch `batch_size` rows drawn
  uniformly (with replacement) from the leading axis of every array in `arrays`; one
  compiled scan, the data passed as arguments (no large constants in the program)."""
  import optax
  opt = optax.adam(learning_rate)

  @jax.jit
  def train(p, arrays, rng):
    def body(carry, r):
      p, s = carry
      idx = jax.random.randint(r, (batch_size,), 0, arrays[0].shape[0])
      g = jax.grad(loss_fn)(p, *(a[idx] for a in arrays))
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), jax.random.split(rng, steps))
    return p

  return train(params, tuple(arrays), rng)


def train_classifier(dataset: str, *, options: Mapping[str, Any] | None = None,
                     steps: int = 500, batch_size: int = 128, learning_rate: float = 2e-3,
                     features: int = 64, seed: int = 0, cache_dir: str | None = None
                     ) -> SampleClassifier:
  """Trains (or loads from `cache_dir`) the sample classifier of `dataset`.

  Args:
    dataset: 'mnist', 'digits', 'shapes' or 'photos'.
    options: dataset options (defaults from the data registry), e.g. {'size': 16}.
    steps, batch_size, learning_rate: Adam training on the train split (random batches).
    cache_dir: where trained classifiers are kept, one file pair per (dataset, options,
      hyper-parameters, CLASSIFIER_VERSION); default ~/.cache/tokenlab/sample_classifiers.
  Returns:
    a `SampleClassifier` (val_accuracy measured after training, stored with the weights).
  """
  options = dataset_options(dataset, options)
  hparams = dict(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                 features=features, seed=seed)
  stem = cache_stem(cache_dir, dataset, options, hparams)
  module_for = lambda classes: ConvClassifier(classes, features)
  cached = read_cached(stem, lambda meta: jax.eval_shape(
      lambda: module_for(meta["num_classes"]).init(jax.random.key(0), jnp.zeros(
          (1, *meta["image_shape"]), jnp.float32))["params"]))
  if cached is not None:
    meta, params = cached
    return SampleClassifier(dataset, options, meta["num_classes"], features,
                            tuple(meta["image_shape"]), params, meta["val_accuracy"],
                            meta["train_seconds"], from_cache=True)

  start = time.time()
  x_train, y_train, x_check, y_check, classes = _train_data(dataset, options)
  module = module_for(classes)
  params = jax.jit(module.init)(jax.random.key(seed), x_train[:1])["params"]

  def loss_fn(p, x, y):
    import optax
    logits, _ = module.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  params = adam_fit(loss_fn, params, (x_train, y_train.astype(np.int32)), steps=steps,
                    batch_size=batch_size, learning_rate=learning_rate,
                    rng=jax.random.key(seed + 1))
  clf = SampleClassifier(dataset, options, classes, features, tuple(x_train.shape[1:]),
                         params, 0.0, 0.0)
  clf.val_accuracy = class_accuracy(clf, x_check, y_check)
  clf.train_seconds = round(time.time() - start, 2)
  write_cached(stem, params, {
      "dataset": dataset, "options": options, "hparams": hparams, "num_classes": classes,
      "image_shape": list(clf.image_shape), "val_accuracy": clf.val_accuracy,
      "train_seconds": clf.train_seconds, "version": CLASSIFIER_VERSION})
  return clf


# ------------------------------------------------------------------------------ metrics


def class_accuracy(clf: SampleClassifier, images: Any, labels: Any) -> float:
  """Fraction of images (N, H, W, C) the classifier assigns to `labels` (N,) (for samples:
  the classes they were conditioned on)."""
  return float(np.mean(clf.predict(images) == np.asarray(labels)))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two feature sets (Na, F) and (Nb, F):
  |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (the FID formula, any features).

  0 for identical sets (up to float error), grows with a shift of the mean or a change of
  the spread. Biased upward for small N (the covariances are estimated)."""
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
    raise ValueError(f"frechet_distance takes two (N >= 2, F) feature sets, got {a.shape} "
                     f"and {b.shape}")
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  # tr (S_a S_b)^(1/2) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD
  # matrix: eigh stays real and finite when a covariance is singular (dead ReLU features,
  # fewer images than features), where a general matrix square root warns or goes complex.
  w, v = np.linalg.eigh(cov_a)
  root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
  value = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
           - 2.0 * np.sum(np.sqrt(np.clip(cross, 0, None))))
  return float(max(value, 0.0))


def fd_classifier(clf: SampleClassifier, samples: Any, reference: Any) -> float:
  """FD-classifier, a toy FID: `frechet_distance` of the classifier's penultimate features
  of `samples` and of `reference` images (e.g. the validation split). Not Inception FID."""
  return frechet_distance(clf.features_of(samples), clf.features_of(reference))


def shapes_attribute_accuracy(images: Any, labels: Mapping[str, Any]) -> dict[str, float]:
  """Exact attribute accuracy of `shapes` samples (pixels read back by shapes.matches).

  images (N, size, size, 3); labels {'label' (N,) shape class, 'colour' (N,), 'count'
  (N,)[, 'positions' (N, max_count, 2)]}, the attributes each sample was asked for.
  Returns the fraction of samples whose shape / colour / count [/ positions] and all of them
  match exactly.
  """
  from tokenlab.data.shapes import matches
  x = as_float_images(images)
  positions = labels.get("positions")
  rows = [matches(x[i], int(labels["label"][i]), int(labels["colour"][i]),
                  int(labels["count"][i]), None if positions is None else positions[i])
          for i in range(len(x))]
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate_samples(clf: SampleClassifier, samples: Any, *, labels: Any = None,
                     reference: Any = None, shapes_labels: Mapping[str, Any] | None = None,
                     real_floor: bool = True) -> dict[str, float]:
  """The sample scores in one dict.

  Args:
    samples: (N, H, W, C) generated images in [0, 1] (or uint8).
    labels: (N,) the classes the samples were conditioned on -> 'class_accuracy'.
    reference: real images (e.g. `load_split(dataset, 'validation')['image']`) -> 'fd'
      (FD-classifier, the toy FID). Default: the classifier's validation split.
    shapes_labels: for `shapes`, the wanted attributes -> 'shapes/shape', 'shapes/colour',
      'shapes/count', 'shapes/all' (and 'shapes/positions' when given).
    real_floor: also 'fd_real': the FD of as many real train images as there are samples
      against the same reference, the score of a perfect generator at this sample count
      (FD's small-sample bias and the train/validation gap); read 'fd' against it.
  """
  out: dict[str, float] = {"num_samples": float(len(samples))}
  if labels is not None:
    out["class_accuracy"] = class_accuracy(clf, samples, labels)
  if reference is None:
    reference = load_split(clf.dataset, "validation", clf.options)["image"]
  out["fd"] = fd_classifier(clf, samples, reference)
  if real_floor:
    train = load_split(clf.dataset, "train", clf.options)["image"]
    pick = np.random.default_rng(0).permutation(len(train))[:len(samples)]
    out["fd_real"] = fd_classifier(clf, train[pick], reference)
  if shapes_labels is not None:
    out.update({f"shapes/{k}": v
                for k, v in shapes_attribute_accuracy(samples, shapes_labels).items()})
  return out
