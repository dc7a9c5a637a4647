"""SeiT / SeiT++: storage-efficient training of a vision transformer on stored VQ tokens.

Papers: Park et al., "SeiT: Storage-efficient Vision Training with Tokens Using 1% of Pixel
Storage" (ICCV 2023) and Lee et al., "SeiT++: Masked Token Modeling Improves
Storage-efficient Training" (arXiv 2312.10105); reference code naver-ai/seit and
naver-ai/tokenadapt (read, not copied).

1. Storage. Each image is stored once as the integer codes of a frozen VQ tokenizer
   (tokenlab/methods/image_tokenizer.py, loaded with `load_frozen_tokenizer`): a grid
   (B, h, w) of codes from a K-entry codebook costs h * w * log2(K) bits per image, against
   H * W * C * log2(levels) for the pixels. `iterator_fns` encodes a dataset once and keeps
   the codes in a file next to the tokenizer (`tokens_*.npz`); training never sees a pixel.
2. Network. The codes are turned back into vectors with the tokenizer's own codebook (frozen,
   a constant here; SeiT does the same with its ViT-VQGAN codebook) and read by the ViT of
   tokenlab/nn/vision.py with 1 x 1 patches, so a token grid is a (B, h, w, D) "image". The
   pixel arm is the same ViT over p x p pixel patches (`input="pixels"`).
3. Masked token modeling (SeiT++, MAGE-style; `objective="mtm"`): per image a mask ratio r ~
   normal(0.55, 0.25) truncated to [0.5, 1.0], round(r * N) random positions replaced by a
   learned mask vector, a linear head on the ViT's patch features predicts the codes, cross
   entropy with label smoothing 0.1 on the masked positions only. Fine-tuning starts from
   these weights (`config.train.init_from`) with a fresh classifier head.
4. ColorAdapt (`augment="coloradapt"`): AdaIN on the token embeddings, x' = (x - mu_x) /
   sigma_x * sigma_y + mu_y per channel over the h x w grid, y a partner image of the batch,
   applied to each image with probability `aug_prob`.
5. TokenAdapt (`augment="tokenadapt"`): a small learned map f (one-hot codes -> a
   pixel-aligned feature grid, s x s cells per token) and g (feature grid -> code logits) are
   trained first (`objective="tokenadapt"`) so that g(A(f(T(x)))) predicts T(A(x)) for a
   pixel-space augmentation A and the frozen tokenizer T; in fine-tuning a token grid is
   augmented as argmax g(A(f(onehot(codes)))).

Follows the papers: tokens from a frozen VQ tokenizer as the only stored data, the codebook
as the embedding, the MTM mask-ratio law, masked-only loss and label smoothing, AdaIN per
channel with a partner image, the f / A / g / argmax structure of TokenAdapt.
Simplified, and why: toy scale (8x8 digits, a 4x4 grid, K = 32, a 2-layer ViT) so a CPU
reproduces it in minutes; no embedding stem convolution (SeiT's stem) beyond the ViT's patch
projection; MAGE's token dropping and its decoder are left out (the encoder alone is
fine-tuned); TokenAdapt's A is a random translation by up to `adapter_max_shift` pixels
(flips turn digits into other glyphs; random-resized crops of 8 pixels are mostly
translations), and f / g are one linear layer plus a 3x3 convolution each, not the paper's
deeper networks; the SeiT token augmentations of the first paper (code swaps, embedding
noise) are not used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenlab.data.synthetic import ArrayIterator  # noqa: F401 (seit.ArrayIterator, teaser)
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree, dataclass_from_config
from tokenlab.nn.corruption import random_subset
from tokenlab.nn.layers import DenseGeneral, param_with_axes
from tokenlab.nn.vision import ViT, patchify, unpatchify
from tokenlab.registry import register_method

INPUTS = ("tokens", "pixels")
OBJECTIVES = ("classify", "mtm", "tokenadapt")
AUGMENTS = ("none", "coloradapt", "tokenadapt")


@dataclasses.dataclass(frozen=True)
class SeiTConfig:
  input: str = "tokens"            # tokens | pixels
  objective: str = "classify"      # classify | mtm | tokenadapt (train the adapter f, g)
  augment: str = "none"            # none | coloradapt | tokenadapt (fine-tuning on tokens)
  aug_prob: float = 0.5            # probability an image of the batch is augmented
  num_classes: int = 10
  # ViT (the same for pixels and tokens)
  patch_size: int = 2              # pixel patches of the pixel arm (tokens use 1 x 1)
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  label_smoothing: float = 0.1
  # masked token modeling (SeiT++ / MAGE)
  mask_mean: float = 0.55
  mask_std: float = 0.25
  mask_min: float = 0.5
  mask_max: float = 1.0
  # the frozen tokenizer; "" = a random fixed codebook of codebook_size x code_dim (tests)
  tokenizer_workdir: str = ""
  codebook_size: int = 32
  code_dim: int = 8
  pixel_levels: int = 256          # distinct pixel values of the stored images (bits)
  # TokenAdapt
  adapter_workdir: str = ""        # a trained objective="tokenadapt" run (augment=tokenadapt)
  adapter_scale: int = 2           # pixel-aligned cells per token side
  adapter_width: int = 16          # channels of the pixel-aligned features
  adapter_max_shift: int = 1       # A: translations by -m..m pixels in each direction


# --------------------------------------------------------------------------- mechanisms


def color_adapt(x: jax.Array, partner: jax.Array, eps: float = 1e-5) -> jax.Array:
  """ColorAdapt (AdaIN): (B, h, w, D) token embeddings restyled with the per-channel mean and
  standard deviation (over h x w) of `partner` (B, h, w, D)."""
  mu_x, sd_x = jnp.mean(x, (1, 2), keepdims=True), jnp.std(x, (1, 2), keepdims=True)
  mu_y, sd_y = jnp.mean(partner, (1, 2), keepdims=True), jnp.std(partner, (1, 2),
                                                                  keepdims=True)
  return (x - mu_x) / (sd_x + eps) * sd_y + mu_y


def mtm_mask(rng: jax.Array, batch: int, length: int, cfg: SeiTConfig) -> jax.Array:
  """(batch, length) bool: round(r * length) random positions per row, r ~ normal(mask_mean,
  mask_std) truncated to [mask_min, mask_max] (MAGE's mask-ratio law)."""
  r_ratio, r_pos = jax.random.split(rng)
  lo, hi = (cfg.mask_min - cfg.mask_mean) / cfg.mask_std, (
      cfg.mask_max - cfg.mask_mean) / cfg.mask_std
  ratio = cfg.mask_mean + cfg.mask_std * jax.random.truncated_normal(r_ratio, lo, hi, (batch,))
  count = jnp.clip(jnp.round(ratio * length), 1, length).astype(jnp.int32)
  return random_subset(r_pos, jnp.ones((batch, length), bool), count)


def shift_grid(x: jax.Array, shift: jax.Array) -> jax.Array:
  """Translates each (H, W, C) grid of x (B, H, W, C) by shift (B, 2) = (dy, dx) cells,
  zero-filling what enters: out[i, j] = x[i - dy, j - dx]."""
  def one(img, s):
    h, w = img.shape[:2]
    m = max(h, w)
    padded = jnp.pad(img, ((m, m), (m, m), (0, 0)))
    return jax.lax.dynamic_slice(padded, (m - s[0], m - s[1], 0), img.shape)
  return jax.vmap(one)(x, shift.astype(jnp.int32))


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """numpy twin of `shift_grid` for whole image arrays (N, H, W, C): the pixel-space A."""
  return np.asarray(shift_grid(jnp.asarray(images),
                               jnp.tile(jnp.array([[dy, dx]]), (len(images), 1))))


def shifts(max_shift: int) -> np.ndarray:
  """(S, 2) int32: every (dy, dx) in [-m, m]^2, identity first."""
  grid = [(0, 0)] + [(dy, dx) for dy in range(-max_shift, max_shift + 1)
                     for dx in range(-max_shift, max_shift + 1) if (dy, dx) != (0, 0)]
  return np.array(grid, np.int32)


class TokenAdapter(nn.Module):
  """TokenAdapt's f and g. f: codes (B, h, w) -> pixel-aligned features (B, h s, w s, C)
  (one-hot, a linear map to s x s cells per token, a 3x3 convolution); g: features ->
  code logits (B, h, w, K) (a 3x3 convolution, s x s cells per token to one vector, linear)."""
  num_codes: int
  scale: int
  width: int

  def setup(self):
    s, c = self.scale, self.width
    self.f_embed = DenseGeneral((s * s * c,), (None, "embed"), use_bias=True)
    self.f_conv = nn.Conv(c, (3, 3), padding="SAME")
    self.g_conv = nn.Conv(c, (3, 3), padding="SAME")
    self.g_out = DenseGeneral((self.num_codes,), ("embed", None), use_bias=True)

  def to_pixels(self, codes: jax.Array) -> jax.Array:
    b, h, w = codes.shape
    x = self.f_embed(jax.nn.one_hot(codes.reshape(b, h * w), self.num_codes))
    x = unpatchify(x, self.scale, h * self.scale, w * self.scale)
    return x + self.f_conv(nn.gelu(x))

  def to_logits(self, features: jax.Array) -> jax.Array:
    b, hs, ws, _ = features.shape
    x = features + self.g_conv(nn.gelu(features))
    x = self.g_out(nn.gelu(patchify(x, self.scale)))
    return x.reshape(b, hs // self.scale, ws // self.scale, self.num_codes)

  def __call__(self, codes: jax.Array, shift: jax.Array) -> jax.Array:
    """codes (B, h, w), shift (B, 2) pixel offsets -> logits of the augmented codes."""
    return self.to_logits(shift_grid(self.to_pixels(codes), shift))


def token_adapt(adapter: TokenAdapter, variables: PyTree, codes: jax.Array,
                shift: jax.Array) -> jax.Array:
  """TokenAdapt augmentation: argmax g(A(f(onehot(codes)))), (B, h, w) int32."""
  logits = adapter.apply(variables, codes, shift)
  return jnp.argmax(logits, -1).astype(jnp.int32)


class SeiTModule(nn.Module):
  """A ViT over a grid (pixels (B, H, W, C) or token embeddings (B, h, w, D)).

  objective classify: -> class logits (B, num_classes); mtm: masked positions (B, N) bool are
  replaced by a learned mask vector -> code logits (B, N, K)."""
  cfg: SeiTConfig
  num_codes: int

  @nn.compact
  def __call__(self, x: jax.Array, masked: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    if cfg.objective == "mtm":
      mask_vec = param_with_axes(self, "mask_embedding", nn.initializers.normal(0.02),
                                 (x.shape[-1],), (None,), jnp.float32)
      b, h, w, d = x.shape
      x = jnp.where(masked.reshape(b, h, w, 1), mask_vec.astype(x.dtype), x)
    patch = cfg.patch_size if cfg.input == "pixels" else 1
    logits, features = ViT(patch_size=patch, d_model=cfg.d_model, num_layers=cfg.num_layers,
                           num_heads=cfg.num_heads, pool="cls", position="sincos",
                           num_classes=cfg.num_classes if cfg.objective == "classify" else 0,
                           name="vit")(x)
    if cfg.objective == "classify":
      return logits
    return DenseGeneral((self.num_codes,), ("embed", None), use_bias=True,
                        name="mtm_head")(features)


# ------------------------------------------------------------------------------- method


def frozen_codebook(cfg: SeiTConfig) -> tuple[np.ndarray, float]:
  """(codebook (K, D) float32, bits per token) of the frozen tokenizer, or a fixed random
  codebook (seed 0) when no tokenizer_workdir is set."""
  if not cfg.tokenizer_workdir:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(cfg.codebook_size, cfg.code_dim)).astype(np.float32),
            math.log2(cfg.codebook_size))
  tok = load_tokenizer(cfg.tokenizer_workdir)
  k = tok.method.codebook_size
  decode = lambda m, c: m.quantizer.decode(c)
  book = tok.method.module.apply(tok.variables, jnp.arange(k), method=decode)
  return np.asarray(book, np.float32), float(tok.method.bits_per_token)


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(workdir: str):
  """`load_frozen_tokenizer`, loaded once per process and workdir."""
  from tokenlab.train.inference import load_frozen_tokenizer
  key = os.path.abspath(workdir)
  if key not in _TOKENIZERS:
    _TOKENIZERS[key] = load_frozen_tokenizer(workdir)
  return _TOKENIZERS[key]


@register_method("seit")
class SeiT(Method):
  """See the module docstring. Batches: {'tokens' (B, h, w) int32 | 'image' (B, H, W, C),
  'label' (B,), optional 'mask' (B,)}; objective tokenadapt: {'tokens', 'shift' (B, 2),
  'target' (B, h, w)}."""
  Config = SeiTConfig

  def __init__(self, config: SeiTConfig):
    for name, value, choices in (("input", config.input, INPUTS),
                                 ("objective", config.objective, OBJECTIVES),
                                 ("augment", config.augment, AUGMENTS)):
      if value not in choices:
        raise ConfigError(f"config.model.{name}='{value}'; use one of {choices}")
    if config.input == "pixels" and (config.objective != "classify" or
                                     config.augment != "none"):
      raise ConfigError("input='pixels' trains the pixel classifier only: set "
                        "config.model.objective='classify' and augment='none'")
    if config.augment == "tokenadapt" and not config.adapter_workdir:
      raise ConfigError("augment='tokenadapt' needs config.model.adapter_workdir: a run "
                        "trained with objective='tokenadapt' on the same tokenizer")
    super().__init__(config)
    self.codebook, self.bits_per_token = frozen_codebook(config)
    self.num_codes = self.codebook.shape[0]
    self.module = SeiTModule(config, self.num_codes)
    self.adapter = TokenAdapter(self.num_codes, config.adapter_scale, config.adapter_width)
    self.adapter_variables = None
    if config.augment == "tokenadapt":
      self.adapter_variables = load_adapter(config.adapter_workdir)

  # ------------------------------------------------------------------ inputs

  def embed(self, tokens: jax.Array) -> jax.Array:
    """codes (B, h, w) -> the frozen codebook's vectors (B, h, w, D)."""
    return jnp.asarray(self.codebook)[tokens]

  def bits_per_image(self, batch: Batch) -> float:
    """Storage of one image as this arm reads it: codes or pixels."""
    if self.config.input == "tokens":
      h, w = batch["tokens"].shape[1:3]
      return h * w * self.bits_per_token
    return float(np.prod(batch["image"].shape[1:])) * math.log2(self.config.pixel_levels)

  def augment(self, tokens: jax.Array, rng: jax.Array) -> jax.Array:
    """Token grid -> (B, h, w, D) embeddings with the configured augmentation applied to each
    image with probability aug_prob."""
    cfg = self.config
    r_apply, r_aug = jax.random.split(rng)
    apply = jax.random.uniform(r_apply, tokens.shape[:1]) < cfg.aug_prob
    if cfg.augment == "tokenadapt":
      options = jnp.asarray(shifts(cfg.adapter_max_shift))
      shift = options[jax.random.randint(r_aug, tokens.shape[:1], 0, len(options))]
      new = token_adapt(self.adapter, self.adapter_variables, tokens, shift)
      tokens = jnp.where(apply[:, None, None], new, tokens)
    x = self.embed(tokens)
    if cfg.augment == "coloradapt":
      partner = x[jax.random.permutation(r_aug, x.shape[0])]
      x = jnp.where(apply[:, None, None, None], color_adapt(x, partner), x)
    return x

  def _inputs(self, batch: Batch, rng: jax.Array | None) -> jax.Array:
    if self.config.input == "pixels":
      return batch["image"]
    if rng is None or self.config.augment == "none":
      return self.embed(batch["tokens"])
    return self.augment(batch["tokens"], rng)

  # ------------------------------------------------------------------ trainer contract

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    if self.config.objective == "tokenadapt":
      return self.adapter.init(rng, batch["tokens"], batch["shift"])["params"]
    x = self._inputs(batch, None)
    masked = jnp.zeros(x.shape[:1] + (x.shape[1] * x.shape[2],), bool)
    return self.module.init(rng, x, masked if self.config.objective == "mtm" else None)[
        "params"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    return self._loss(params, batch, rng)

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, Any]:
    return self._loss(params, batch, rng, train=False)[1]

  def _loss(self, params: PyTree, batch: Batch, rng: jax.Array, train: bool = True):
    cfg = self.config
    first = batch["tokens"] if "tokens" in batch else batch["image"]
    weight = batch.get("mask", jnp.ones(first.shape[:1], jnp.float32)).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    if cfg.objective == "tokenadapt":
      logits = self.adapter.apply({"params": params}, batch["tokens"], batch["shift"])
      return self._code_loss(logits, batch["target"], weight[:, None, None] *
                             jnp.ones(batch["target"].shape))
    r_mask, r_aug = jax.random.split(rng)
    x = self._inputs(batch, r_aug if train else None)
    if cfg.objective == "mtm":
      b, h, w = batch["tokens"].shape
      masked = mtm_mask(r_mask, b, h * w, cfg)
      logits = self.module.apply({"params": params}, x, masked)
      return self._code_loss(logits.reshape(b, h, w, -1), batch["tokens"],
                             masked.reshape(b, h, w) * weight[:, None, None])
    logits = self.module.apply({"params": params}, x).astype(jnp.float32)
    labels = batch["label"].astype(jnp.int32)
    ce = optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(labels, cfg.num_classes),
                                    cfg.label_smoothing))
    loss = jnp.sum(ce * weight) / count
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss, {"loss": Average.of(jnp.sum(ce * weight), jnp.sum(weight)),
                  "accuracy": Average.of(jnp.sum(correct * weight), jnp.sum(weight)),
                  "bits_per_image": self.bits_per_image(batch)}

  def _code_loss(self, logits: jax.Array, targets: jax.Array, where: jax.Array):
    """Label-smoothed cross entropy over codes at the positions `where` (B, h, w) weights;
    metrics loss and code accuracy there."""
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(targets, self.num_codes),
                                    self.config.label_smoothing))
    n = jnp.maximum(jnp.sum(where), 1.0)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return jnp.sum(ce * where) / n, {
        "loss": Average.of(jnp.sum(ce * where), jnp.sum(where)),
        "code_accuracy": Average.of(jnp.sum(correct * where), jnp.sum(where))}

  def predict(self, params: PyTree, batch: Batch) -> jax.Array:
    """Class logits (B, num_classes) without augmentation."""
    return self.module.apply({"params": params}, self._inputs(batch, None))


def load_adapter(workdir: str) -> PyTree:
  """The trained TokenAdapt variables {'params': ...} (numpy) of an objective='tokenadapt'
  run."""
  from tokenlab.train.inference import load_config_from_workdir, load_trained
  config = load_config_from_workdir(workdir)
  if model_config(config).objective != "tokenadapt":
    raise ConfigError(f"config.model.adapter_workdir={workdir} holds a seit run with "
                      f"objective='{model_config(config).objective}'; train one with "
                      f"objective='tokenadapt'")
  h, w = token_grid(config)
  example = {"tokens": np.zeros((1, h, w), np.int32), "shift": np.zeros((1, 2), np.int32),
             "target": np.zeros((1, h, w), np.int32)}
  return {"params": jax.device_get(load_trained(workdir, example).params)}


# ------------------------------------------------------------------- stored token data


def token_grid(config) -> tuple[int, int]:
  """The code grid (h, w) of config.task's images under the configured tokenizer."""
  from tokenlab.data.registry import DATASETS
  import importlib
  task = config.task
  module = importlib.import_module(DATASETS[task.dataset].module)
  options = _options(task)
  height, width = module.image_shape(options)[:2]
  workdir = model_config(config).tokenizer_workdir
  if not workdir:
    return height // 2, width // 2
  return load_tokenizer(workdir).method.grid((height, width))


def model_config(config) -> SeiTConfig:
  """config.model with every default filled in."""
  return dataclass_from_config(SeiTConfig, config.model, prefix="model")


def _options(task) -> dict[str, Any]:
  from tokenlab.evals.image_samples import dataset_options
  return dataset_options(task.dataset, dict(task.options))


def stored_tokens(config) -> dict[str, np.ndarray]:
  """The dataset of config.task encoded once by the frozen tokenizer, cached in
  TOKENIZER_WORKDIR/tokens_<dataset>_<hash>.npz: {'{split}_tokens' (N, h, w) int32,
  '{split}_label', 'train_shifted' (S, N, h, w): codes of the train images translated by each
  of `shifts(adapter_max_shift)` in pixel space (TokenAdapt's targets)}."""
  from tokenlab.evals.image_samples import load_split
  model, task = model_config(config), config.task
  if not model.tokenizer_workdir:
    raise ConfigError("input='tokens' reads stored tokens: set config.model.tokenizer_workdir "
                      "to a trained tokenizer run (experiments/image_tokenizer.py)")
  tok = load_tokenizer(model.tokenizer_workdir)
  key = json.dumps([task.dataset, _options(task), tok.step, model.adapter_max_shift],
                   sort_keys=True)
  path = os.path.join(model.tokenizer_workdir,
                      f"tokens_{task.dataset}_{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz")
  if os.path.exists(path):
    with np.load(path) as f:
      return dict(f)
  encode = jax.jit(tok.encode)
  enc = lambda x: np.concatenate([np.asarray(encode(x[i:i + 256]))
                                  for i in range(0, len(x), 256)]).astype(np.int32)
  out = {}
  for split in ("train", "validation"):
    data = load_split(task.dataset, split, _options(task))
    out[f"{split}_tokens"], out[f"{split}_label"] = enc(data["image"]), data["label"]
    if split == "train":
      out["train_shifted"] = np.stack([enc(shift_images(data["image"], dy, dx))
                                       for dy, dx in shifts(model.adapter_max_shift)])
  tmp = path + f".tmp{os.getpid()}.npz"
  np.savez(tmp, **out)
  os.replace(tmp, path)
  return out


def labeled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Indices of a class-stratified `fraction` of the examples (at least one per class)."""
  rng = np.random.default_rng(seed)
  keep = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    keep.append(rng.choice(idx, max(1, round(fraction * len(idx))), replace=False))
  return np.sort(np.concatenate(keep))


def iterator_fns(config):
  """(train_fn, eval_fn) for `config.data.name = 'method'`: stored tokens (or pixels for the
  pixel arm) of config.task; the labeled train rows are a stratified `label_fraction`."""
  model, task = model_config(config), config.task
  if model.input == "pixels":
    from tokenlab.evals.image_samples import load_split
    splits = {s: load_split(task.dataset, s, _options(task)) for s in ("train", "validation")}
    data = {s: {"image": d["image"], "label": d["label"].astype(np.int32)}
            for s, d in splits.items()}
  else:
    st = stored_tokens(config)
    data = {s: {"tokens": st[f"{s}_tokens"], "label": st[f"{s}_label"].astype(np.int32)}
            for s in ("train", "validation")}
  train, extra = data["train"], None
  if model.objective == "classify" and task.label_fraction < 1.0:
    keep = labeled_subset(train["label"], task.label_fraction, task.label_seed)
    train = {k: v[keep] for k, v in train.items()}
  if model.objective == "mtm":
    train = {"tokens": train["tokens"]}        # no labels: self-supervised
  if model.objective == "tokenadapt":
    shifted, options = st["train_shifted"], shifts(model.adapter_max_shift)
    train = {"tokens": train["tokens"]}

    def extra(rng, rows):
      s = rng.integers(0, len(options), len(rows))
      return {"shift": options[s], "target": shifted[s, rows]}
    # Evaluated on the identity round trip of the validation grids (TokenAdapt's check).
    v = data["validation"]["tokens"]
    data["validation"] = {"tokens": v, "shift": np.zeros((len(v), 2), np.int32), "target": v}
  valid = data["validation"]
  if model.objective == "mtm":
    valid = {"tokens": valid["tokens"]}

  def train_fn(batch_size, seed):
    return ArrayIterator(train, batch_size, seed, True, extra)

  def eval_fn(batch_size, seed):
    return ArrayIterator(valid, batch_size, seed, False)
  return train_fn, eval_fn
