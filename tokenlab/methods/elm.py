"""ELM: language models over binary-autoencoder tokens, autoregressive vs masked, with
vocabulary decomposition. Liu, Hao, Qi, Hu, Wang, Xiao, Yao, "Elucidating the design space of
language models for image generation", arXiv 2410.16257 (reference code:
Pepper-lll/LMforImageGeneration, llama/ar_model.py and llama/mlm_model.py).

The method, in the paper's order:

1. Tokenizer. A binary autoencoder (BAE) maps an image to an h x w grid of K-bit codes: the
   encoder's K logits per position pass through Bernoulli sampling with a straight-through
   gradient in training (threshold at eval). Here: `image_tokenizer` with `quantizer=binary`
   (tokenlab/nn/quantizers.py `BinaryQuantizer`), trained first and then frozen
   (`tokenizer_workdir`); a code is the integer sum_i bit_i 2^i.
2. Vocabulary decomposition. A K-bit code c is split into G sub-tokens of k = K / G bits,
   most significant first, c = hi * 2^k + lo for G = 2 (`quantizers.split_code`). Each
   sub-token has its own embedding table (2^k rows); a position's input is the concatenation
   of its G embeddings projected to d_model (as the reference's `tok_embedder` + `proj`), and
   the output has G heads of 2^k classes, each a softmax given the same context, so
   p(c | context) = prod_g p_g(sub_g(c) | context): a normalised distribution over all 2^K
   codes (`joint_log_probs`). G = 1 is one vocabulary of 2^K codes with one head.
3. Language model. A class token (one per class, plus the null class) then the h*w codes in
   raster order, through one transformer (tokenlab/nn/transformer.py):
   - `objective="ar"`: causal, next-code cross-entropy; exact NLL; sampling left to right with
     the key/value cache through tokenlab/nn/image_ar.py (`sample_image_tokens`, which takes
     the joint logits of 2).
   - `objective="mlm"`: bidirectional, MaskGIT training (mask ratio cos(pi/2 u), u ~ U(0, 1),
     cross-entropy on masked positions); sampling by MaskGIT iterative decoding
     (tokenlab/nn/maskgit.py) on the joint logits, `maskgit_steps` steps, cosine schedule.
   Both objectives use the same module, the same parameter count and the same tokens per
   step, so "equal compute" is equal steps x batch x model size (see `flops_per_token`).

NLL reported (`eval/nll_bits_per_image`, bits per image, the class given):
   - AR: exact, sum over positions and sub-tokens of -log2 p.
   - MLM: an upper bound. The MLM defines, for every order sigma of the N positions, the
     any-order AR model prod_i p(x_sigma(i) | x_sigma(<i), class) (each factor read off the
     MLM with the other positions masked). Its NLL averaged over uniformly random orders
     equals N * E_{m ~ U{1..N}} E_{|S| = m} [(1/m) sum_{j in S} -log p(x_j | x_{not S})]
     (S the masked set); each draw of (m, S) is an unbiased estimate of it, one forward pass
     (`nll_bound_samples` draws per image, averaged). Each order's model is a normalised
     distribution, so this is the expected NLL of a valid likelihood, and by Jensen an upper
     bound on -log of the order-mixture.

Follows the paper: BAE tokens with Bernoulli straight-through; sub-tokens with separate
embeddings (concatenated and projected) and separate heads predicting them independently given
the context; AR with next-token CE and MLM with MaskGIT's cosine masking and decoding;
class-token conditioning with a null class (class dropout `class_dropout`).
Simplified, and why: a 2-layer d=64 transformer over a 7 x 7 grid of K = 10 bit codes of
28 x 28 MNIST (the paper: up to 1.5B-parameter models over 16 x 16 grids of 16-bit codes of
ImageNet 256 x 256) so that a run fits a 2-core CPU; 1-D RoPE over the raster order (the
paper's best AR uses 2-D RoPE); no AdaLN, dropout or drop-path; sampling at temperature 1
without classifier-free guidance or top-k (the paper tunes CFG and top-k per model; one
plain setting keeps the AR/MLM comparison free of per-arm tuning); the tokenizer has no
perceptual or GAN loss (image_tokenizer's MSE only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.synthetic import StepIterator
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.nn.image_ar import null_label, prefix_sequence, sample_image_tokens
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.maskgit import maskgit_decode
from tokenlab.nn.quantizers import split_code
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

OBJECTIVES = ("ar", "mlm")
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class ElmConfig:
  objective: str = "ar"           # ar | mlm
  num_bits: int = 10              # K: bits of one BAE code (one grid position)
  sub_tokens: int = 2             # G: sub-tokens per code (1 = one vocabulary of 2^K)
  num_tokens: int = 49            # N = h * w grid positions
  num_classes: int = 10
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 0                # 0 = 8/3 d_model (SwiGLU)
  class_dropout: float = 0.0      # probability of training with the null class (for CFG)
  # sampling
  maskgit_steps: int = 8
  temperature: float = 1.0
  cfg_scale: float = 0.0          # 0 = no guidance
  # MLM NLL bound
  nll_bound_samples: int = 4
  # where the codes come from (`iterator_fns`, `sample`)
  tokenizer_workdir: str = ""
  dataset: str = "mnist"


# ---------------------------------------------------------------------------------------------
# Vocabulary decomposition.


def sub_bits(cfg: ElmConfig) -> int:
  """k = K / G bits per sub-token."""
  return cfg.num_bits // cfg.sub_tokens


def joint_log_probs(logp: jax.Array) -> jax.Array:
  """Per-sub-token log-probabilities (..., G, 2^k) -> log p of every full code (..., 2^(G k)),
  log p(c) = sum_g logp[g, sub_g(c)] with sub-tokens most significant first (code index
  = hi * 2^k + lo for G = 2). A product of normalised factors: the result sums to 1."""
  groups, v = logp.shape[-2], logp.shape[-1]
  out = logp[..., 0, :]
  for g in range(1, groups):
    out = (out[..., :, None] + logp[..., g, None, :]).reshape(*out.shape[:-1], -1)
  assert out.shape[-1] == v ** groups
  return out


def code_log_prob(logp: jax.Array, codes: jax.Array, num_bits: int) -> jax.Array:
  """log p(codes) (...,) from per-sub-token log-probabilities (..., G, 2^k), without forming
  the 2^K joint: the sum over g of each sub-token's log-probability."""
  k = num_bits // logp.shape[-2]
  sub = split_code(codes, num_bits, k)                                 # (..., G)
  return jnp.sum(jnp.take_along_axis(logp, sub[..., None], axis=-1)[..., 0], axis=-1)


# ---------------------------------------------------------------------------------------------
# The model.


def special_ids(cfg: ElmConfig) -> dict[str, int]:
  """Token ids beyond the 2^K codes: class c -> 2^K + c, null -> 2^K + C, mask -> 2^K + C + 1
  (the first two as tokenlab/nn/image_ar.py's `prefix_sequence` lays them out)."""
  v = 2 ** cfg.num_bits
  return {"null": v + cfg.num_classes, "mask": v + cfg.num_classes + 1}


class ElmModule(nn.Module):
  """tokens (B, L) -> per-sub-token log-probabilities (B, L, G, 2^k), or, with `joint=True`,
  log p of every code (B, L, 2^K) (what the samplers take as logits).

  Tokens < 2^K are codes (embedded by their G sub-tokens), the rest class / null / mask tokens
  (one table). Causal for objective "ar" (`decode=True`: key/value cache), else bidirectional.
  """
  cfg: ElmConfig
  decode: bool = False
  joint: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.cfg
    v, d, g, k = 2 ** cfg.num_bits, cfg.d_model, cfg.sub_tokens, sub_bits(cfg)
    is_code = tokens < v
    sub = split_code(jnp.where(is_code, tokens, 0), cfg.num_bits, k)    # (B, L, G)
    x = jnp.concatenate([Embed(2 ** k, d, name=f"code_embed_{i}")(sub[..., i])
                         for i in range(g)], axis=-1)
    if g > 1:   # the reference concatenates the sub-token embeddings and projects them
      x = DenseGeneral((d,), (None, "embed"), name="code_proj")(x)
    special = Embed(cfg.num_classes + 2, d, name="special_embed")(
        jnp.clip(tokens - v, 0, cfg.num_classes + 1))
    x = jnp.where(is_code[..., None], x, special)
    block = dict(num_heads=cfg.num_heads, head_dim=d // cfg.num_heads,
                 mlp_dim=cfg.mlp_dim or default_mlp(d), causal=cfg.objective == "ar")
    x = TransformerStack(cfg.num_layers, block, decode=self.decode, name="body")(x)
    logits = DenseGeneral((g, 2 ** k), ("embed", None, "vocab"), name="heads")(x)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return joint_log_probs(logp) if self.joint else logp


def default_mlp(d: int) -> int:
  return int(8 * d / 3) // 8 * 8


# ---------------------------------------------------------------------------------------------
# Objectives.


def ar_nll(module: ElmModule, params: PyTree, codes: jax.Array, labels: jax.Array,
           drop: jax.Array | None = None) -> jax.Array:
  """Exact NLL in nats per image (B,): -sum_i log p(code_i | class, code_<i)."""
  cfg = module.cfg
  tokens = prefix_sequence(codes, labels, 2 ** cfg.num_bits, cfg.num_classes, drop)
  logp = module.apply({"params": params}, tokens[:, :-1])             # (B, N, G, 2^k)
  return -jnp.sum(code_log_prob(logp, codes, cfg.num_bits), axis=-1)


def random_mask(rng: jax.Array, shape: tuple[int, int], num_masked: jax.Array) -> jax.Array:
  """(B, N) bool with exactly num_masked[b] True per row at uniformly random positions."""
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(rng, shape), axis=-1), axis=-1)
  return rank < num_masked[:, None]


def mlm_log_probs(module: ElmModule, params: PyTree, codes: jax.Array, labels: jax.Array,
                  masked: jax.Array, drop: jax.Array | None = None) -> jax.Array:
  """log p(code_j | class, unmasked codes) (B, N) at every position (meaningful where masked)."""
  cfg = module.cfg
  inputs = jnp.where(masked, special_ids(cfg)["mask"], codes)
  tokens = prefix_sequence(inputs, labels, 2 ** cfg.num_bits, cfg.num_classes, drop)
  logp = module.apply({"params": params}, tokens)[:, 1:]              # skip the class token
  return code_log_prob(logp, codes, cfg.num_bits)


def maskgit_num_masked(rng: jax.Array, batch: int, n: int) -> jax.Array:
  """MaskGIT training: ceil(n cos(pi/2 u)) masked positions, u ~ U(0, 1), at least 1."""
  u = jax.random.uniform(rng, (batch,))
  return jnp.clip(jnp.ceil(n * jnp.cos(0.5 * jnp.pi * u)), 1, n).astype(jnp.int32)


def mlm_nll_bound(module: ElmModule, params: PyTree, codes: jax.Array, labels: jax.Array,
                  rng: jax.Array, samples: int) -> jax.Array:
  """(B,) nats: an unbiased estimate (mean of `samples` draws) of the random-order NLL bound
  N * E_m E_S [(1/m) sum_{j in S} -log p(x_j | x_not S)], m ~ U{1..N} (module docstring)."""
  b, n = codes.shape

  def one(r):
    r_m, r_s = jax.random.split(r)
    m = jax.random.randint(r_m, (b,), 1, n + 1)
    masked = random_mask(r_s, (b, n), m)
    lp = mlm_log_probs(module, params, codes, labels, masked)
    return -n * jnp.sum(jnp.where(masked, lp, 0.0), axis=-1) / m

  return jnp.mean(jax.lax.map(one, jax.random.split(rng, samples)), axis=0)


# ---------------------------------------------------------------------------------------------
# The method (trainer contract).


@register_method("elm")
class ELM(Method):
  """A class-conditional AR or MLM transformer over (decomposed) binary-autoencoder codes;
  see the module docstring. Batches: codes (B, N) int32, label (B,), optional mask (B,)."""
  Config = ElmConfig

  def __init__(self, config: ElmConfig):
    if config.objective not in OBJECTIVES:
      raise ConfigError(f"config.model.objective='{config.objective}'; use one of {OBJECTIVES}")
    if config.sub_tokens < 1 or config.num_bits % config.sub_tokens:
      raise ConfigError(f"config.model.num_bits={config.num_bits} does not split into "
                        f"sub_tokens={config.sub_tokens} equal sub-tokens; pick a divisor")
    super().__init__(config)
    self.module = ElmModule(config)
    self.num_codes = 2 ** config.num_bits
    self._tokenizer = None

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    codes = batch["codes"]
    if codes.shape[-1] != self.config.num_tokens:
      raise ConfigError(f"batches have {codes.shape[-1]} codes per image but "
                        f"config.model.num_tokens={self.config.num_tokens}; set it to the "
                        f"tokenizer's grid h*w")
    tokens = jnp.zeros((codes.shape[0], codes.shape[1] + 1), jnp.int32)
    return self.module.init(rng, tokens)["params"]

  def _masks(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    mask = batch.get("mask", jnp.ones(batch["codes"].shape[:1])).astype(jnp.float32)
    return mask, jnp.maximum(jnp.sum(mask), 1.0)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    return self._objective(params, batch, rng, self.config.class_dropout)

  def _objective(self, params: PyTree, batch: Batch, rng: jax.Array,
                 class_dropout: float) -> tuple[jax.Array, dict]:
    """AR: mean next-code NLL per position (nats); MLM: MaskGIT's mean CE over the masked
    positions of each image. Both averaged over (unpadded) images."""
    cfg = self.config
    codes, labels = batch["codes"].astype(jnp.int32), batch["label"].astype(jnp.int32)
    mask, count = self._masks(batch)
    r_drop, r_m, r_s = jax.random.split(rng, 3)
    drop = (jax.random.bernoulli(r_drop, class_dropout, labels.shape) if class_dropout
            else None)
    metrics = {}
    if cfg.objective == "ar":
      nll = ar_nll(self.module, params, codes, labels, drop)            # (B,) nats
      per_image = nll / cfg.num_tokens
      metrics["nll_bits_per_image"] = Average.of(jnp.sum(nll * mask) / LN2, count)
    else:
      masked = random_mask(r_s, codes.shape, maskgit_num_masked(r_m, *codes.shape))
      lp = mlm_log_probs(self.module, params, codes, labels, masked, drop)
      per_image = -jnp.sum(jnp.where(masked, lp, 0.0), -1) / jnp.sum(masked, -1)
    loss = jnp.sum(per_image * mask) / count
    metrics["loss"] = Average.of(loss * count, count)
    return loss, metrics

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict[str, Any]:
    """loss (the objective's own, the class always given) and nll_bits_per_image (AR exact,
    MLM the random-order bound of the module docstring)."""
    cfg = self.config
    _, metrics = self._objective(params, batch, rng, 0.0)
    if cfg.objective == "mlm":
      codes, labels = batch["codes"].astype(jnp.int32), batch["label"].astype(jnp.int32)
      mask, count = self._masks(batch)
      nll = mlm_nll_bound(self.module, params, codes, labels, jax.random.fold_in(rng, 1),
                          cfg.nll_bound_samples)
      metrics["nll_bits_per_image"] = Average.of(jnp.sum(nll * mask) / LN2, count)
    return metrics

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per position (forward + backward = 6 x matmul parameters + attention):
    the input projection, the body and the G heads of 2^k; causal attention sees on average
    (L + 1) / 2 keys, bidirectional L. The heads differ by G 2^k vs 2^K outputs."""
    c = self.config
    d, mlp = c.d_model, c.mlp_dim or default_mlp(c.d_model)
    k = sub_bits(c)
    matmul = (c.num_layers * (4 * d * d + 3 * d * mlp) + d * c.sub_tokens * 2 ** k
              + (c.sub_tokens * d * d if c.sub_tokens > 1 else 0))
    context = (seq_len + 1) / 2 if c.objective == "ar" else seq_len
    return 6.0 * matmul + 3.0 * c.num_layers * 4 * d * context

  # ------------------------------------------------------------------------- sampling

  def sample_codes(self, params: PyTree, labels: jax.Array, rng: jax.Array) -> jax.Array:
    """Class-conditional codes (B, N): AR with the key/value cache (image_ar), or MaskGIT
    decoding with `maskgit_steps` steps (maskgit); temperature `temperature`, guidance
    `cfg_scale` (0 = none)."""
    cfg = self.config
    scale = cfg.cfg_scale or None
    labels = jnp.asarray(labels, jnp.int32)
    joint = self.module.clone(joint=True)
    if cfg.objective == "ar":
      return sample_image_tokens(joint, params, labels, rng, num_tokens=cfg.num_tokens,
                                 num_codes=self.num_codes, num_classes=cfg.num_classes,
                                 cfg_scale=scale, temperature=cfg.temperature, cached=True)
    cls = labels if scale is None else jnp.concatenate(
        [labels, jnp.full_like(labels, null_label(cfg.num_classes))])

    def logits_fn(tokens: jax.Array) -> jax.Array:
      prefix = (cls + self.num_codes)[:, None]
      return joint.apply({"params": params}, jnp.concatenate([prefix, tokens], 1))[:, 1:]

    return maskgit_decode(logits_fn, (labels.shape[0], cfg.num_tokens), cfg.maskgit_steps,
                          mask_id=special_ids(cfg)["mask"], rng=rng,
                          temperature=cfg.temperature, cfg_scale=scale)

  def tokenizer(self):
    """The frozen tokenizer of `tokenizer_workdir` (loaded once)."""
    if self._tokenizer is None:
      if not self.config.tokenizer_workdir:
        raise ConfigError("config.model.tokenizer_workdir is empty; point it at a trained "
                          "binary tokenizer run (experiments/image_tokenizer.py:quantizer="
                          "binary)")
      from tokenlab.train.inference import load_frozen_tokenizer
      self._tokenizer = load_frozen_tokenizer(self.config.tokenizer_workdir)
    return self._tokenizer

  def decode_images(self, codes: jax.Array) -> jax.Array:
    """codes (B, N) -> images (B, H, W, C) through the frozen tokenizer."""
    tok = self.tokenizer()
    h = int(round(math.sqrt(self.config.num_tokens)))
    return tok.decode(jnp.reshape(codes, (codes.shape[0], h, -1)))

  def sample(self, params: PyTree, batch: Batch, rng: jax.Array) -> jax.Array:
    """`tokenlab sample`: images (B, H, W, C) for the batch's labels."""
    return self.decode_images(self.sample_codes(params, batch["label"], rng))


# ---------------------------------------------------------------------------------------------
# Data: images encoded once by the frozen tokenizer (config.data.name = "method").


class CodeIterator(StepIterator):
  """Batches {codes (B, N) int32, label (B,) int32, mask (B,) float32} from arrays.

  train: rows drawn with replacement from (seed, step), endless and checkpointable;
  validation: every row once in order, the last batch padded (mask 0)."""

  def __init__(self, codes: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, *,
               train: bool):
    self.codes, self.labels = np.asarray(codes, np.int32), np.asarray(labels, np.int32)
    self.batch_size, self.seed, self.train, self.step = batch_size, seed, train, 0

  def __next__(self) -> dict[str, np.ndarray]:
    n, b = len(self.codes), self.batch_size
    if self.train:
      idx = np.random.default_rng((self.seed, self.step)).integers(0, n, b)
      mask = np.ones(b, np.float32)
    else:
      start = self.step * b
      if start >= n:
        raise StopIteration
      idx = np.arange(start, start + b) % n
      mask = (np.arange(start, start + b) < n).astype(np.float32)
    self.step += 1
    return {"codes": self.codes[idx], "label": self.labels[idx], "mask": mask}


def encode_split(tokenizer, dataset: str, split: str, batch_size: int = 500
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(codes (N, h*w) int32, labels (N,)) of a dataset split through a frozen tokenizer."""
  from tokenlab.evals.image_samples import load_split
  data = load_split(dataset, split)
  encode = jax.jit(tokenizer.encode)
  codes = np.concatenate([np.asarray(encode(data["image"][i:i + batch_size]))
                          for i in range(0, len(data["image"]), batch_size)])
  return codes.reshape(len(codes), -1).astype(np.int32), data["label"].astype(np.int32)


def iterator_fns(config) -> tuple[Callable, Callable]:
  """(train_fn, eval_fn) over the dataset's splits encoded by `model.tokenizer_workdir`."""
  from tokenlab.registry import build_method
  method = build_method(config.model)
  tok = method.tokenizer()
  train = encode_split(tok, config.model.dataset, "train")
  val = encode_split(tok, config.model.dataset, "validation")
  return (lambda b, s: CodeIterator(*train, b, s, train=True),
          lambda b, s: CodeIterator(*val, b, s, train=False))
