"""Quantizers written once, with one interface, for image, audio and video tokenizers.

Every quantizer maps z (..., D) to a :class:`Quantized` named tuple:

* ``values`` (..., D): the quantized vectors with a straight-through gradient (forward value
  exactly the quantized vector, backward the identity to z), so gradients reach the encoder;
* ``codes``: int32 codes, (...,) for one code per position or (..., G) for G code streams
  (RVQ levels, binary sub-tokens, Gaussian-quantile dimensions);
* ``loss``: the scalar auxiliary loss the method defines (0 where there is none);
* ``metrics``: ``usage`` (fraction of the codebook used in this batch), ``perplexity``
  (exp of the entropy of the batch's code histogram; with G streams both are means over
  streams) and ``bits_per_token``, plus quantizer-specific entries.

and has ``decode(codes) -> values``, ``codebook_size`` (how many values one entry of ``codes``
takes) and ``bits_per_token`` (bits of all codes at one position). ``__call__`` takes
``train`` (EMA updates, Bernoulli sampling) and ``rng`` (else ``make_rng('quantizer')``).

- :class:`VectorQuantizer`: VQ-VAE (van den Oord et al. 2017) nearest-neighbour codebook,
  either learned by the codebook loss (``ema=False``, codebook in ``params``) or updated by
  exponential moving averages with Laplace smoothing (VQ-VAE-2 style, ``ema=True``) and
  dead-code restart from batch vectors; the EMA state lives in the ``vq_stats`` collection and
  the update is also the pure function :func:`ema_update` (see "EMA state" below).
- :class:`ResidualVQ`: L VQ levels on successive residuals (SoundStream / EnCodec RVQ).
- :class:`FSQ`: finite scalar quantization (Mentzer et al. 2023), per-dimension levels, codes as
  mixed-radix integers.
- :class:`LFQ`: lookup-free quantization (MAGVIT-2, Yu et al. 2023): sign per dimension, code =
  binary integer, entropy loss = mean per-sample entropy - gamma * batch (codebook) entropy.
- :class:`BinaryQuantizer`: the ELM binary autoencoder's tokens (arXiv 2410.16257): Bernoulli
  samples of sigmoid(logits) in training, threshold at eval; :func:`split_code` /
  :func:`merge_codes` are its vocabulary decomposition (code = hi * 2^k + lo).
- :class:`GaussianQuantile`: TokenBridge's post-training per-dimension quantization (arXiv
  2503.16430): B bins with standard-normal-quantile edges, reconstruction at the truncated-
  normal mean of each bin (or the bin's median).
- :class:`GaussianPosterior`: no quantizer, the continuous diagonal-Gaussian latent of a KL
  autoencoder behind the same interface; :func:`make_quantizer` builds any of them from a
  tokenizer config's `quantizer` name (image and video tokenizers), and
  :func:`quantizer_latent_size` gives the encoder output size it needs.

EMA state. The EMA codebook lives in the flax collection ``vq_stats`` (``codebook``,
``cluster_size``, ``embed_sum``, ``unused`` per VQ), which a loop that holds it updates with
``apply(..., train=True, mutable=['vq_stats'])``; the same update is the pure
:func:`ema_update` (and :func:`restart_dead_codes`) on a :class:`VQState`, for a method that
runs it itself. A method declares ``state_collections = ('vq_stats',)`` and
the trainer carries it (tokenlab/method.py).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from tokenlab.errors import TokenlabError
from tokenlab.nn.layers import param_with_axes

__all__ = ["Quantized", "straight_through", "code_metrics", "VQState", "init_vq_state",
           "nearest_code", "ema_update", "restart_dead_codes", "VectorQuantizer", "ResidualVQ",
           "FSQ", "LFQ", "BinaryQuantizer", "GaussianQuantile", "bits_to_code", "code_to_bits",
           "split_code", "merge_codes", "gaussian_quantile_bins", "GaussianPosterior",
           "QUANTIZER_NAMES", "STATEFUL_QUANTIZERS", "quantizer_latent_size", "make_quantizer"]

Dtype = Any
STATS = "vq_stats"


class Quantized(NamedTuple):
  """What every quantizer returns (see the module docstring)."""
  values: jax.Array
  codes: jax.Array
  loss: jax.Array
  metrics: dict[str, jax.Array]


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
  """Forward: exactly q. Backward: identity to z (the straight-through estimator)."""
  # `q + (z - sg(z))` rather than `z + sg(q - z)`: z - z is exactly 0, so the forward value is
  # q to the last bit and code -> vector round trips stay exact.
  return jax.lax.stop_gradient(q) + (z - jax.lax.stop_gradient(z))


def code_metrics(codes: jax.Array, codebook_size: int, bits_per_token: float,
                 weights: jax.Array | None = None) -> dict[str, jax.Array]:
  """Usage and perplexity of a batch of codes.

  codes: (..., G) ints in [0, codebook_size), G independent code streams. Returns ``usage``
  (fraction of the codebook's entries used at least once), ``perplexity`` (exp of the entropy
  in nats of the empirical code distribution: 1 when one code is used, codebook_size when all
  are used equally), each a mean over the G streams, and ``bits_per_token``. ``weights``
  (...,) (e.g. a 0/1 mask of valid positions; None = all 1) weigh each position's codes, so
  a position of weight 0 (padding) neither counts as used nor enters the distribution.
  """
  g = codes.shape[-1]
  flat = codes.reshape(-1, g)
  w = (jnp.ones((flat.shape[0], 1), jnp.float32) if weights is None
       else jnp.asarray(weights, jnp.float32).reshape(-1, 1))
  counts = jnp.zeros((g, codebook_size), jnp.float32).at[jnp.arange(g)[None, :], flat].add(
      jnp.broadcast_to(w, flat.shape))
  p = counts / jnp.maximum(jnp.sum(w), 1e-12)
  entropy = -jnp.sum(xlogy(p, p), axis=-1)
  return {"usage": jnp.mean(counts > 0, dtype=jnp.float32),
          "perplexity": jnp.mean(jnp.exp(entropy)),
          "bits_per_token": jnp.asarray(bits_per_token, jnp.float32)}


def _float(dtype) -> Any:
  """At least float32 (float64 stays float64) for distances and statistics."""
  return jnp.promote_types(dtype, jnp.float32)


# ---------------------------------------------------------------------------------------------
# VQ: nearest neighbour, EMA codebook, dead-code restart (pure functions), and the module.


@flax.struct.dataclass
class VQState:
  """EMA codebook state: codebook (K, D); cluster_size (K,) EMA of assignment counts per update;
  embed_sum (K, D) EMA of the sum of vectors assigned; unused (K,) int32 updates since the
  code was last assigned."""
  codebook: jax.Array
  cluster_size: jax.Array
  embed_sum: jax.Array
  unused: jax.Array


def init_vq_state(codebook: jax.Array) -> VQState:
  """State for a starting codebook (K, D): each code counts as assigned once to itself, so
  codebook = embed_sum / cluster_size from the start (no division by zero, and a code that is
  never assigned keeps its vector instead of collapsing to 0)."""
  k = codebook.shape[0]
  return VQState(codebook=codebook, cluster_size=jnp.ones((k,), codebook.dtype),
                 embed_sum=codebook, unused=jnp.zeros((k,), jnp.int32))


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """z (..., D), codebook (K, D) -> (...,) int32 index of the nearest entry in squared L2."""
  dt = _float(z.dtype)
  z, cb = z.astype(dt), codebook.astype(dt)
  dist = (jnp.sum(z * z, -1, keepdims=True) - 2.0 * jnp.einsum("...d,kd->...k", z, cb)
          + jnp.sum(cb * cb, -1))
  return jnp.argmin(dist, axis=-1).astype(jnp.int32)


def ema_update(state: VQState, z: jax.Array, codes: jax.Array, *, decay: float = 0.99,
               epsilon: float = 1e-5, weights: jax.Array | None = None) -> VQState:
  """One EMA codebook update from a batch z (..., D) assigned to codes (...,).

  With n_k the batch count and s_k the batch sum of code k:
    cluster_size_k <- decay * cluster_size_k + (1 - decay) * n_k
    embed_sum_k    <- decay * embed_sum_k + (1 - decay) * s_k
    codebook_k     <- embed_sum_k / smoothed_k,
  smoothed = (cluster_size + eps) / (N + K eps) * N with N = sum(cluster_size): Laplace
  smoothing, which keeps a code with a tiny count finite. Under pjit the sums are global.
  `weights` (...,) (None = all 1) weigh each vector in n_k and s_k: weight-0 vectors
  (padding) leave the codebook as if they were not in the batch.
  """
  k, d = state.codebook.shape
  dt = state.cluster_size.dtype
  flat_z = jax.lax.stop_gradient(z).reshape(-1, d).astype(dt)
  flat_c = codes.reshape(-1)
  w = (jnp.ones(flat_c.shape, dt) if weights is None
       else jnp.asarray(weights, dt).reshape(-1))
  counts = jax.ops.segment_sum(w, flat_c, num_segments=k)
  sums = jax.ops.segment_sum(flat_z * w[:, None], flat_c, num_segments=k)
  cluster_size = decay * state.cluster_size + (1.0 - decay) * counts
  embed_sum = decay * state.embed_sum + (1.0 - decay) * sums
  total = jnp.sum(cluster_size)
  smoothed = (cluster_size + epsilon) / (total + k * epsilon) * total
  codebook = (embed_sum / smoothed[:, None]).astype(state.codebook.dtype)
  unused = jnp.where(counts > 0, 0, state.unused + 1).astype(jnp.int32)
  return VQState(codebook=codebook, cluster_size=cluster_size, embed_sum=embed_sum,
                 unused=unused)


def restart_dead_codes(state: VQState, z: jax.Array, rng: jax.Array, *, dead_after: int = 0,
                       threshold: float = 0.0,
                       weights: jax.Array | None = None) -> tuple[VQState, jax.Array]:
  """Resets dead codes to encoder outputs drawn uniformly (with replacement) from z (..., D)
  (with `weights` (...,): only from vectors of weight > 0, e.g. not from padding).

  Dead: unused for at least `dead_after` updates (if > 0), or EMA count below `threshold`
  (if > 0). A restarted code gets count c = max(1, threshold) and embed_sum = c * vector, so
  the next EMA update starts from the new vector. Returns (state, number restarted).
  """
  k, d = state.codebook.shape
  dead = jnp.zeros((k,), bool)
  if dead_after > 0:
    dead = dead | (state.unused >= dead_after)
  if threshold > 0:
    dead = dead | (state.cluster_size < threshold)
  flat = jax.lax.stop_gradient(z).reshape(-1, d)
  if weights is None:
    index = jax.random.randint(rng, (k,), 0, flat.shape[0])
  else:
    valid = jnp.asarray(weights).reshape(-1) > 0
    # Uniform over the valid vectors (over all when none is valid: nothing better to pick).
    logits = jnp.where(valid | ~jnp.any(valid), 0.0, -jnp.inf)
    index = jax.random.categorical(rng, logits, shape=(k,))
  picks = flat[index].astype(state.codebook.dtype)
  count = max(1.0, threshold)
  new = VQState(
      codebook=jnp.where(dead[:, None], picks, state.codebook),
      cluster_size=jnp.where(dead, jnp.asarray(count, state.cluster_size.dtype),
                             state.cluster_size),
      embed_sum=jnp.where(dead[:, None], count * picks.astype(state.embed_sum.dtype),
                          state.embed_sum),
      unused=jnp.where(dead, 0, state.unused))
  return new, jnp.sum(dead.astype(jnp.int32))


def _rng(module: nn.Module, rng: jax.Array | None, what: str) -> jax.Array:
  if rng is not None:
    return rng
  if module.scope is None:
    raise TokenlabError(f"{type(module).__name__}: {what} needs randomness: pass rng=")
  return module.make_rng("quantizer")


def _masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean of x (..., D) over the positions where mask (...,) is nonzero (all if None)."""
  if mask is None:
    return jnp.mean(x)
  m = jnp.asarray(mask, x.dtype)[..., None]
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m) * x.shape[-1], 1e-12)


class _VQOptions(nn.Module):
  """The options of one VQ codebook, shared by VectorQuantizer and each ResidualVQ level:
  codebook_size K, dim D, commitment_cost, ema, decay and epsilon (:func:`ema_update`),
  dead_after and dead_threshold (:func:`restart_dead_codes`; 0 = off), init_scale (stddev of
  the normal initial codebook), param_dtype."""
  codebook_size: int
  dim: int
  commitment_cost: float = 0.25
  ema: bool = True
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_after: int = 0
  dead_threshold: float = 0.0
  init_scale: float = 1.0
  param_dtype: Dtype = jnp.float32

  def vq_options(self) -> dict[str, Any]:
    """These options as keyword arguments (without flax's parent and name)."""
    return {f: getattr(self, f) for f in _VQOptions.__annotations__
            if f not in ("parent", "name")}


class VectorQuantizer(_VQOptions):
  """Nearest-neighbour vector quantizer with a (K, D) codebook; z (..., dim) -> Quantized.

  ema=False: the codebook is a parameter learned by the VQ-VAE codebook loss;
    loss = |sg(z) - q|^2 + commitment_cost |z - sg(q)|^2 (means over elements).
  ema=True: the codebook is in the ``vq_stats`` collection, updated by :func:`ema_update` when
    called with train=True and ``vq_stats`` mutable, then dead codes restarted
    (:func:`restart_dead_codes`, if dead_after or dead_threshold > 0);
    loss = commitment_cost |z - sg(q)|^2. ``values`` always use the codebook before the update.
  codes: (...,) int32; metrics also hold ``restarted`` (codes reset by this call).
  ``mask`` (...,) (z.shape[:-1]; None = all valid) marks valid positions: the losses are
  means over valid positions only, and padding enters neither the EMA update, nor the
  restart picks, nor usage / perplexity.
  """

  @property
  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def setup(self):
    shape = (self.codebook_size, self.dim)
    init = nn.initializers.normal(stddev=self.init_scale)
    if self.ema:
      cb = self.variable(STATS, "codebook", lambda: init(self.make_rng("params"), shape,
                                                         self.param_dtype))
      self._codebook = cb
      self._cluster_size = self.variable(
          STATS, "cluster_size", lambda: jnp.ones((self.codebook_size,), self.param_dtype))
      # embed_sum starts as the codebook: each code counts as assigned once to itself.
      self._embed_sum = self.variable(STATS, "embed_sum", lambda: cb.value)
      self._unused = self.variable(STATS, "unused",
                                   lambda: jnp.zeros((self.codebook_size,), jnp.int32))
    else:
      self._param = param_with_axes(self, "codebook", init, shape, (None, None), self.param_dtype)

  def codebook(self) -> jax.Array:
    """(K, D) current codebook."""
    return self._codebook.value if self.ema else self._param

  def state(self) -> VQState:
    """The EMA state (ema=True only) as a VQState."""
    return VQState(codebook=self._codebook.value, cluster_size=self._cluster_size.value,
                   embed_sum=self._embed_sum.value, unused=self._unused.value)

  def decode(self, codes: jax.Array) -> jax.Array:
    """codes (...,) -> codebook vectors (..., D)."""
    return jnp.take(self.codebook(), codes, axis=0)

  def __call__(self, z: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None, mask: jax.Array | None = None) -> Quantized:
    if z.shape[-1] != self.dim:
      raise TokenlabError(f"VectorQuantizer(dim={self.dim}) got z of shape {z.shape}")
    codebook = self.codebook()
    codes = nearest_code(z, codebook)
    q = jnp.take(codebook, codes, axis=0).astype(z.dtype)
    dt = _float(z.dtype)
    commit = _masked_mean(jnp.square((z - jax.lax.stop_gradient(q)).astype(dt)), mask)
    loss = self.commitment_cost * commit
    if not self.ema:
      loss = loss + _masked_mean(jnp.square((jax.lax.stop_gradient(z) - q).astype(dt)), mask)
    metrics = code_metrics(codes[..., None], self.codebook_size, self.bits_per_token, mask)
    restart = self.dead_after > 0 or self.dead_threshold > 0
    if (self.ema and train and self.is_mutable_collection(STATS)
        and not self.is_initializing()):
      new = ema_update(self.state(), z, codes, decay=self.decay, epsilon=self.epsilon,
                       weights=mask)
      restarted = jnp.zeros((), jnp.int32)
      if restart:
        new, restarted = restart_dead_codes(new, z, _rng(self, rng, "dead-code restart"),
                                            dead_after=self.dead_after,
                                            threshold=self.dead_threshold, weights=mask)
      self._codebook.value, self._cluster_size.value = new.codebook, new.cluster_size
      self._embed_sum.value, self._unused.value = new.embed_sum, new.unused
      metrics["restarted"] = restarted.astype(jnp.float32)
    else:
      metrics["restarted"] = jnp.zeros((), jnp.float32)
    return Quantized(straight_through(z, q), codes, loss, metrics)


class ResidualVQ(_VQOptions):
  """L VQ levels on successive residuals: r_0 = z, q_l = VQ_l(r_l), r_{l+1} = r_l - q_l;
  values = sum_l q_l (straight-through to z). codes (..., L); loss = sum of the levels' losses
  (each level's commitment term reaches z through r_l). Options and ``mask`` as
  VectorQuantizer, per level.

  Nearest-neighbour assignment alone does not shrink the residual (a random codebook can
  have no entry closer to r_l than the origin); fitted codebooks (EMA / codebook loss) do.
  """
  levels: int = 4

  @property
  def bits_per_token(self) -> float:
    return self.levels * math.log2(self.codebook_size)

  def setup(self):
    self.quantizers = [VectorQuantizer(**self.vq_options(), name=f"level_{i}")
                       for i in range(self.levels)]

  def decode(self, codes: jax.Array) -> jax.Array:
    """codes (..., L) -> (..., D), the sum of the levels' vectors."""
    out = self.quantizers[0].decode(codes[..., 0])
    for i in range(1, self.levels):
      out = out + self.quantizers[i].decode(codes[..., i])
    return out

  def __call__(self, z: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None, mask: jax.Array | None = None) -> Quantized:
    residual, total, codes, loss, restarted = z, jnp.zeros_like(z), [], 0.0, 0.0
    for i, vq in enumerate(self.quantizers):
      out = vq(residual, train=train, rng=None if rng is None else jax.random.fold_in(rng, i),
               mask=mask)
      q = jax.lax.stop_gradient(out.values)     # exactly the level's codebook vector
      residual = residual - q
      total = total + q
      codes.append(out.codes)
      loss = loss + out.loss
      restarted = restarted + out.metrics["restarted"]
    codes = jnp.stack(codes, axis=-1)
    metrics = code_metrics(codes, self.codebook_size, self.bits_per_token, mask)
    metrics["restarted"] = restarted
    return Quantized(straight_through(z, total), codes, jnp.asarray(loss), metrics)


# ---------------------------------------------------------------------------------------------
# FSQ.


class FSQ(nn.Module):
  """Finite scalar quantization: z (..., len(levels)) -> values in [-1, 1], codes (...,).

  Dimension i is bounded to about (-L_i/2, L_i/2) by a shifted tanh, rounded (straight-through)
  to one of L_i integers and divided by L_i // 2; code = sum_i digit_i * prod_{j<i} L_j with
  digit_i in [0, L_i). No parameters, loss 0; ``mask`` (...,) only keeps padding out of
  usage / perplexity.
  """
  levels: Sequence[int]
  epsilon: float = 1e-3

  @property
  def dim(self) -> int:
    return len(self.levels)

  @property
  def codebook_size(self) -> int:
    return int(np.prod(self.levels))

  @property
  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def _consts(self):
    levels = np.asarray(self.levels, np.int64)
    basis = np.concatenate([[1], np.cumprod(levels)[:-1]])
    return levels, levels // 2, basis

  def bound(self, z: jax.Array) -> jax.Array:
    """z (..., dim) -> unrounded values in (-L/2 - eps, L/2 + eps) (even L: shifted by 1/2 so
    rounding gives exactly L integers, and bound(0) = 0)."""
    levels = np.asarray(self.levels, np.float64)
    half = (levels - 1) * (1 + self.epsilon) / 2
    offset = np.where(np.asarray(self.levels) % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half)
    return jnp.tanh(z + shift.astype(z.dtype)) * half.astype(z.dtype) - offset.astype(z.dtype)

  def values_to_codes(self, values: jax.Array) -> jax.Array:
    """Grid values (..., dim) in [-1, 1] -> codes (...,)."""
    levels, half_width, basis = self._consts()
    digits = jnp.round(values * half_width).astype(jnp.int32) + half_width
    return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)

  def decode(self, codes: jax.Array) -> jax.Array:
    """codes (...,) -> grid values (..., dim), float32."""
    levels, half_width, basis = self._consts()
    digits = (codes[..., None] // basis) % levels
    return ((digits - half_width) / half_width).astype(jnp.float32)

  def __call__(self, z: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None, mask: jax.Array | None = None) -> Quantized:
    del train, rng
    if z.shape[-1] != self.dim:
      raise TokenlabError(f"FSQ(levels={tuple(self.levels)}) got z of shape {z.shape}")
    levels, half_width, basis = self._consts()
    bounded = self.bound(z)
    rounded = jnp.round(bounded)
    digits = rounded.astype(jnp.int32) + half_width
    codes = jnp.sum(digits * basis, axis=-1).astype(jnp.int32)
    values = straight_through(bounded, rounded) / half_width.astype(z.dtype)
    return Quantized(values, codes, jnp.zeros((), jnp.float32),
                     code_metrics(codes[..., None], self.codebook_size, self.bits_per_token,
                                  mask))


# ---------------------------------------------------------------------------------------------
# Bits <-> codes, LFQ, binary.


def bits_to_code(bits: jax.Array) -> jax.Array:
  """bits (..., K) in {0, 1}, K <= 31, bit i of weight 2^i -> codes (...,) int32."""
  k = bits.shape[-1]
  if k > 31:
    raise TokenlabError(f"{k} bits do not fit an int32 code; split them into sub-tokens")
  return jnp.sum(bits.astype(jnp.int32) << jnp.arange(k, dtype=jnp.int32), axis=-1)


def code_to_bits(codes: jax.Array, num_bits: int) -> jax.Array:
  """codes (...,) -> bits (..., num_bits) int32, bit i of weight 2^i."""
  return (codes[..., None] >> jnp.arange(num_bits, dtype=jnp.int32)) & 1


def split_code(codes: jax.Array, total_bits: int, sub_bits: int) -> jax.Array:
  """Vocabulary decomposition (ELM): a total_bits code (...,) -> ceil(total_bits / sub_bits)
  sub-tokens (..., G) of sub_bits each, most significant first (code = hi * 2^k + lo)."""
  groups = -(-total_bits // sub_bits)
  shifts = sub_bits * jnp.arange(groups - 1, -1, -1, dtype=jnp.int32)
  return (codes[..., None] >> shifts) & ((1 << sub_bits) - 1)


def merge_codes(sub_tokens: jax.Array, sub_bits: int) -> jax.Array:
  """Inverse of :func:`split_code`: sub-tokens (..., G), most significant first -> (...,)."""
  groups = sub_tokens.shape[-1]
  shifts = sub_bits * jnp.arange(groups - 1, -1, -1, dtype=jnp.int32)
  return jnp.sum(sub_tokens.astype(jnp.int32) << shifts, axis=-1)


class LFQ(nn.Module):
  """Lookup-free quantization (MAGVIT-2): z (..., dim) -> values in {-1, +1}^dim (+1 where
  z_i > 0, else -1), codes (...,) = sum_i [z_i > 0] 2^i.

  loss = commitment_cost |z - sg(q)|^2 + entropy_weight (H_sample - gamma H_batch), with the
  code distribution p(c | z) = softmax_c(2 z.c / temperature) over c in {-1, +1}^dim (i.e. of
  -|z - c|^2 / temperature). It factorises over bits, p(c_i = +1 | z) = sigmoid(4 z_i / T),
  so H_sample (mean over positions) is exact. H_batch, the entropy of the batch-mean
  distribution, is exact over all 2^dim codes when dim <= exact_entropy_max_bits, else the
  sum of per-bit entropies of the mean bit probabilities (an upper bound). Entropies in nats;
  metrics add ``sample_entropy`` and ``batch_entropy``.
  """
  dim: int
  commitment_cost: float = 0.25
  entropy_weight: float = 0.1
  gamma: float = 1.0
  temperature: float = 0.01
  exact_entropy_max_bits: int = 10

  @property
  def codebook_size(self) -> int:
    return 2 ** self.dim

  @property
  def bits_per_token(self) -> float:
    return float(self.dim)

  def decode(self, codes: jax.Array) -> jax.Array:
    """codes (...,) -> (..., dim) in {-1, +1}, float32."""
    return (2 * code_to_bits(codes, self.dim) - 1).astype(jnp.float32)

  def entropies(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean per-sample entropy, batch entropy) in nats of the code distribution of z."""
    # Everything from log-probabilities (log_sigmoid, log_softmax, logsumexp): saturated
    # probabilities of exactly 0 would give p log p a NaN gradient.
    dt = _float(z.dtype)
    flat = z.reshape(-1, self.dim).astype(dt)
    logits = (4.0 / self.temperature) * flat                              # per bit
    # H(sigmoid(l)) = softplus(l) - l sigmoid(l), finite for every l.
    sample = jnp.mean(jnp.sum(jax.nn.softplus(logits) - logits * jax.nn.sigmoid(logits), -1))
    log_n = jnp.log(jnp.asarray(flat.shape[0], dt))
    if self.dim <= self.exact_entropy_max_bits:
      signs = self.decode(jnp.arange(self.codebook_size)).astype(dt)      # (2^dim, dim)
      logp = jax.nn.log_softmax((2.0 / self.temperature) * flat @ signs.T, axis=-1)
      log_mean = jax.nn.logsumexp(logp, axis=0) - log_n                   # log E_z p(c | z)
      batch = -jnp.sum(jnp.exp(log_mean) * log_mean)
    else:
      log_on = jax.nn.logsumexp(jax.nn.log_sigmoid(logits), axis=0) - log_n
      log_off = jax.nn.logsumexp(jax.nn.log_sigmoid(-logits), axis=0) - log_n
      batch = -jnp.sum(jnp.exp(log_on) * log_on + jnp.exp(log_off) * log_off)
    return sample, batch

  def __call__(self, z: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> Quantized:
    del train, rng
    if z.shape[-1] != self.dim:
      raise TokenlabError(f"LFQ(dim={self.dim}) got z of shape {z.shape}")
    bits = z > 0
    q = jnp.where(bits, 1.0, -1.0).astype(z.dtype)
    codes = bits_to_code(bits)
    dt = _float(z.dtype)
    commit = jnp.mean(jnp.square((z - jax.lax.stop_gradient(q)).astype(dt)))
    sample, batch = self.entropies(z)
    loss = self.commitment_cost * commit + self.entropy_weight * (sample - self.gamma * batch)
    metrics = code_metrics(codes[..., None], self.codebook_size, self.bits_per_token)
    metrics.update(sample_entropy=sample, batch_entropy=batch)
    return Quantized(straight_through(z, q), codes, loss, metrics)


class BinaryQuantizer(nn.Module):
  """The ELM binary autoencoder's tokens: logits (..., num_bits) -> bits in {0, 1}.

  train=True: bits ~ Bernoulli(sigmoid(logits)) (rng, else make_rng('quantizer')); eval:
  bits = [logits > 0]. values = bits with the gradient of sigmoid(logits) (straight-through).
  codes: (...,) integer of all bits (bit i of weight 2^i) when sub_bits is None, else the
  vocabulary decomposition (..., ceil(num_bits / sub_bits)) of that code, most significant
  first. Loss 0 (the BAE has no auxiliary loss here).
  """
  num_bits: int
  sub_bits: int | None = None

  @property
  def codebook_size(self) -> int:
    return 2 ** (self.sub_bits or self.num_bits)

  @property
  def bits_per_token(self) -> float:
    return float(self.num_bits)

  def bits_to_codes(self, bits: jax.Array) -> jax.Array:
    """bits (..., num_bits) -> codes, (...,) or (..., G) sub-tokens."""
    if self.sub_bits is None:
      return bits_to_code(bits)
    k, groups = self.sub_bits, -(-self.num_bits // self.sub_bits)
    pad = groups * k - self.num_bits
    bits = jnp.pad(bits.astype(jnp.int32), [(0, 0)] * (bits.ndim - 1) + [(0, pad)])
    sub = bits_to_code(bits.reshape(*bits.shape[:-1], groups, k))       # least significant first
    return sub[..., ::-1]

  def decode(self, codes: jax.Array) -> jax.Array:
    """codes -> bits (..., num_bits) in {0, 1}, float32."""
    if self.sub_bits is None:
      return code_to_bits(codes, self.num_bits).astype(jnp.float32)
    bits = code_to_bits(codes[..., ::-1], self.sub_bits)                  # (..., G, k)
    bits = bits.reshape(*bits.shape[:-2], -1)[..., :self.num_bits]
    return bits.astype(jnp.float32)

  def __call__(self, logits: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> Quantized:
    if logits.shape[-1] != self.num_bits:
      raise TokenlabError(f"BinaryQuantizer(num_bits={self.num_bits}) got {logits.shape}")
    p = jax.nn.sigmoid(logits)
    if train:
      bits = jax.random.bernoulli(_rng(self, rng, "train=True sampling"), p)
    else:
      bits = logits > 0
    codes = self.bits_to_codes(bits)
    values = straight_through(p, bits.astype(p.dtype))
    stream = codes if self.sub_bits is not None else codes[..., None]
    return Quantized(values, codes, jnp.zeros((), jnp.float32),
                     code_metrics(stream, self.codebook_size, self.bits_per_token))


# ---------------------------------------------------------------------------------------------
# Gaussian-quantile (TokenBridge).


def gaussian_quantile_bins(bins: int, centres: str = "mean") -> tuple[np.ndarray, np.ndarray]:
  """(edges (bins - 1,), centres (bins,)) float64 for a standard normal split into `bins`
  equal-probability bins: edge_i = Phi^-1(i / bins). centres='mean': the truncated-normal mean
  of each bin, B (phi(a) - phi(b)) (TokenBridge's reconstruction values, the MSE-optimal
  point for a Gaussian); 'median': Phi^-1((i + 1/2) / bins), the bin's quantile midpoint."""
  n = statistics.NormalDist()
  edges = np.array([n.inv_cdf(i / bins) for i in range(1, bins)], np.float64)
  if centres == "mean":
    pdf = np.concatenate([[0.0], [n.pdf(e) for e in edges], [0.0]])
    mids = bins * (pdf[:-1] - pdf[1:])
  elif centres == "median":
    mids = np.array([n.inv_cdf((i + 0.5) / bins) for i in range(bins)], np.float64)
  else:
    raise TokenlabError(f"GaussianQuantile centres must be 'mean' or 'median', got {centres!r}")
  return edges, mids


class GaussianQuantile(nn.Module):
  """Post-training per-dimension quantization of a (standardised, roughly N(0, 1)) latent:
  z (..., dim) -> codes (..., dim) in [0, bins), the bin of each value among the standard-
  normal quantile edges; values = bin centres (see :func:`gaussian_quantile_bins`),
  straight-through. No parameters, loss 0; usage and perplexity are means over dimensions.
  """
  dim: int
  bins: int = 64
  centres: str = "mean"

  @property
  def codebook_size(self) -> int:
    return self.bins

  @property
  def bits_per_token(self) -> float:
    return self.dim * math.log2(self.bins)

  def decode(self, codes: jax.Array) -> jax.Array:
    """codes (..., dim) -> bin centres (..., dim), float32 (float64 under jax.enable_x64)."""
    _, mids = gaussian_quantile_bins(self.bins, self.centres)
    return jnp.take(jnp.asarray(mids, jnp.asarray(0.0).dtype), codes)

  def __call__(self, z: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> Quantized:
    del train, rng
    if z.shape[-1] != self.dim:
      raise TokenlabError(f"GaussianQuantile(dim={self.dim}) got z of shape {z.shape}")
    edges, mids = gaussian_quantile_bins(self.bins, self.centres)
    # Bin c holds (edge_{c-1}, edge_c]: the number of edges strictly below the value.
    codes = jnp.searchsorted(jnp.asarray(edges, z.dtype), z, side="left").astype(jnp.int32)
    q = jnp.take(jnp.asarray(mids, z.dtype), codes)
    return Quantized(straight_through(z, q), codes, jnp.zeros((), jnp.float32),
                     code_metrics(codes, self.bins, self.bits_per_token))


# ------------------------------------------------------------- a quantizer from a config


class GaussianPosterior(nn.Module):
  """The continuous bottleneck of a KL autoencoder, behind the quantizers' interface.

  z (..., 2 dim) = (mean, log variance) -> `Quantized` with values = mean + std * eps in
  training (eps on the "quantizer" rng) and the mean at eval, codes = the mean (float: the
  continuous latent is the token), loss = KL(N(mean, var) || N(0, 1)) averaged over latent
  elements, no code metrics. bits_per_token counts float32 numbers (32 per channel).
  """
  dim: int

  @property
  def codebook_size(self) -> int:
    return 0

  @property
  def bits_per_token(self) -> float:
    return 32.0 * self.dim

  def decode(self, codes: jax.Array) -> jax.Array:
    return codes

  def __call__(self, z: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> Quantized:
    mean, logvar = jnp.split(z.astype(jnp.float32), 2, axis=-1)
    logvar = jnp.clip(logvar, -30.0, 20.0)
    values = mean
    if train:
      rng = rng if rng is not None else self.make_rng("quantizer")
      values = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return Quantized(values, mean, kl, {})


# The `quantizer` names a tokenizer config may take (`make_quantizer`); the two EMA ones keep
# their codebooks in the STATS collection (the method is then stateful).
QUANTIZER_NAMES = ("vq_ema", "vq", "rvq", "fsq", "lfq", "binary", "kl")
STATEFUL_QUANTIZERS = ("vq_ema", "rvq")


def quantizer_latent_size(cfg: Any) -> int:
  """The encoder's output size per position for `cfg.quantizer` (cfg: a tokenizer config with
  the fields `make_quantizer` reads)."""
  return {"fsq": len(cfg.fsq_levels), "lfq": cfg.num_bits, "binary": cfg.num_bits,
          "kl": 2 * cfg.latent_dim}.get(cfg.quantizer, cfg.latent_dim)


def make_quantizer(cfg: Any) -> nn.Module:
  """The quantizer a tokenizer config names (the image and video tokenizers share it).

  cfg fields: quantizer (one of QUANTIZER_NAMES), codebook_size, latent_dim, commitment_cost,
  ema_decay, dead_after (vq / vq_ema / rvq), rvq_levels, fsq_levels, num_bits (lfq / binary),
  lfq_entropy_weight.
  """
  vq = dict(codebook_size=cfg.codebook_size, dim=cfg.latent_dim,
            commitment_cost=cfg.commitment_cost, decay=cfg.ema_decay,
            dead_after=cfg.dead_after)
  if cfg.quantizer == "vq_ema":
    return VectorQuantizer(**vq, ema=True)
  if cfg.quantizer == "vq":
    return VectorQuantizer(**vq, ema=False)
  if cfg.quantizer == "rvq":
    return ResidualVQ(**vq, ema=True, levels=cfg.rvq_levels)
  if cfg.quantizer == "fsq":
    return FSQ(tuple(cfg.fsq_levels))
  if cfg.quantizer == "kl":
    return GaussianPosterior(cfg.latent_dim)
  if cfg.quantizer == "lfq":
    return LFQ(cfg.num_bits, commitment_cost=cfg.commitment_cost,
               entropy_weight=cfg.lfq_entropy_weight)
  return BinaryQuantizer(cfg.num_bits)
