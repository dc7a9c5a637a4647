"""Fourier head (Gillman et al., "Fourier Head: Helping Large Language Models Learn Complex
Probability Distributions", arXiv 2410.22269).

When an LM predicts quantized continuous values (actions of a Decision Transformer, bins of a
time-series model), its last linear layer gives each bin an unrelated logit. The paper swaps
that layer for a Fourier head (`tokenlab.nn.fourier_head.FourierHead`): the output is a
continuous density given by a truncated Fourier series with autocorrelated (so non-negative)
coefficients, read at the bin centres, plus a smoothness regulariser on the coefficients.

This method is tokenlab's transformer LM over bin tokens whose output layer is either the
Fourier head (`head="fourier"`, `num_frequencies` N, regulariser weight `reg_gamma`) or the
usual linear head (`head="linear"`), so the two differ in the head alone.

Follows the paper exactly: the head (linear layer to N+1 complex coefficients,
autocorrelation, density 1/2 + Re sum c_k/c_0 e^{i pi k x} at bin centres, normalised,
logits = log(pmf + 1e-5)) and the regulariser gamma * sum 2 pi^2 k^2 |c_k|^2 added to the
cross-entropy. Simplified: bins are equal-width on [-1, 1] (the paper allows any binning of
its domain); the regulariser is averaged over positions.

Evaluation metrics (when the batch carries the true next-bin law `true_probs`, as the
synthetic task below does): KL(truth || model) in nats and a roughness score in the spirit of
the paper's smoothness metric: the mean L2 distance between the predicted pmf and its
Gaussian-blurred copies (sigma = 1, 2, 4 bins); lower is smoother.

Synthetic task (`BinMarkovIterator`): a Markov chain over B bins of [-1, 1] whose next-bin law
is a discretised two-Gaussian mixture with means and weights depending on the current bin, so
the target is an input-dependent, smooth, often bimodal distribution known exactly. Training
uses a fixed finite set of sequences (epochs), as the paper's toy experiments do.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.synthetic import StepIterator
from tokenlab.method import Average, Batch, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.fourier_head import FourierHead, bin_centres, fourier_smoothness_penalty
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

HEADS = ("fourier", "linear")


@dataclasses.dataclass(frozen=True)
class FourierHeadConfig(TransformerLMConfig):
  head: str = "fourier"          # fourier | linear
  num_frequencies: int = 8       # N (Fourier head only)
  reg_gamma: float = 1e-6        # smoothness regulariser weight (Fourier head only)


class FourierLMModule(nn.Module):
  """bin tokens (batch, length) -> (logits over bins, aux) with the configured head."""
  cfg: FourierHeadConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None):
    cfg = self.cfg
    x = Embed(cfg.vocab_size, cfg.d_model, name="embed")(tokens)
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.heads_dim, mlp_dim=cfg.hidden,
                 num_kv_heads=cfg.num_kv_heads or None, causal=True,
                 window=tuple(cfg.window) if cfg.window else None,
                 attention_impl=cfg.attention_impl or None, rope_theta=cfg.rope_theta)
    x = TransformerStack(cfg.num_layers, block, scan=cfg.scan_layers, remat=cfg.remat,
                         name="decoder")(x, positions, segment_ids)
    if cfg.head == "fourier":
      return FourierHead(cfg.vocab_size, cfg.num_frequencies, name="fourier_head")(
          x, return_aux=True)
    return DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(x), {}


def blur_matrices(num_bins: int, sigmas=(1.0, 2.0, 4.0)) -> np.ndarray:
  """(S, B, B) row-normalised Gaussian blurs (truncated at the domain's edges)."""
  i = np.arange(num_bins)
  out = []
  for s in sigmas:
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / s) ** 2)
    out.append(g / g.sum(1, keepdims=True))
  return np.stack(out).astype(np.float32)


def roughness(p: jax.Array) -> jax.Array:
  """Mean over sigma of ||p - blur_sigma(p)||_2 for pmfs (..., B) -> (...)."""
  g = jnp.asarray(blur_matrices(p.shape[-1]))
  blurred = jnp.einsum("...b,scb->s...c", p, g)
  return jnp.mean(jnp.sqrt(jnp.sum((p[None] - blurred) ** 2, -1)), 0)


@register_method("fourier_head")
class FourierHeadLM(TransformerLM):
  """A transformer LM over bin tokens with a Fourier (or linear) output head."""
  Config = FourierHeadConfig

  def __init__(self, config: FourierHeadConfig):
    if config.head not in HEADS:
      from tokenlab.errors import ConfigError
      raise ConfigError(f"config.model.head='{config.head}' unknown; use one of {HEADS}")
    super().__init__(config)
    self.module = FourierLMModule(config)

  def logits(self, params: PyTree, batch: Batch) -> jax.Array:
    return self._apply(params, batch)[0]

  def _apply(self, params, batch):
    return self.module.apply({"params": params}, batch["inputs"], batch.get("positions"),
                             batch.get("segment_ids"))

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    logits, aux = self._apply(params, batch)
    ce, metrics = lm_loss(logits, batch)
    mask = batch.get("loss_mask", jnp.ones(logits.shape[:-1])).astype(jnp.float32)
    count = jnp.sum(mask)
    loss = ce
    if aux:
      penalty = jnp.sum(fourier_smoothness_penalty(aux["coeffs"]) * mask)
      loss = ce + self.config.reg_gamma * penalty / jnp.maximum(count, 1.0)
      metrics["smoothness_penalty"] = Average.of(penalty, count)
    if "true_probs" in batch:
      q = jax.nn.softmax(logits.astype(jnp.float32), -1)
      t = batch["true_probs"].astype(jnp.float32)
      kl = jnp.sum(jnp.where(t > 0, t * (jnp.log(jnp.maximum(t, 1e-30)) - jnp.log(q)), 0.0), -1)
      metrics["kl"] = Average.of(jnp.sum(kl * mask), count)
      metrics["roughness"] = Average.of(jnp.sum(roughness(q) * mask), count)
      metrics["true_roughness"] = Average.of(jnp.sum(roughness(t) * mask), count)
    return loss, metrics

  def sample(self, params, prompt, prompt_len, rng, *, temperature=1.0, top_k=0):
    from tokenlab.nn.generate import sample_autoregressive
    logits_fn = lambda tokens: self.module.apply({"params": params}, tokens)[0]
    return sample_autoregressive(logits_fn, prompt, prompt_len, rng, temperature=temperature,
                                 top_k=top_k)

  def flops_per_token(self, seq_len: int) -> float:
    c = self.config
    base = super().flops_per_token(seq_len)
    if c.head == "linear":
      return base
    # Swap the d x V unembedding for d x 2(N+1) plus the O(N^2 + N B) series evaluation.
    n = c.num_frequencies + 1
    return base - 6.0 * c.d_model * c.vocab_size + 6.0 * (2 * c.d_model * n + 4 * n * n
                                                           + 2 * n * c.vocab_size)


# --- the synthetic task -------------------------------------------------------------------

def transition_matrix(num_bins: int, sigma: float = 0.1) -> np.ndarray:
  """(B, B): P(next bin | current bin), a discretised two-Gaussian mixture on [-1, 1] whose
  means and weights move smoothly with the current bin's centre z."""
  from scipy.special import erf
  z = bin_centres(num_bins)
  edges = np.linspace(-1.0, 1.0, num_bins + 1)
  m1 = -0.45 + 0.35 * z
  m2 = 0.5 - 0.3 * np.sin(np.pi * z)
  w = 0.5 + 0.3 * z

  def mass(m):
    cdf = 0.5 * (1 + erf((edges[None, :] - m[:, None]) / (sigma * math.sqrt(2))))
    return np.diff(cdf, axis=1)
  p = w[:, None] * mass(m1) + (1 - w)[:, None] * mass(m2)
  return p / p.sum(1, keepdims=True)


def sample_chain(trans: np.ndarray, n: int, length: int, rng: np.random.Generator) -> np.ndarray:
  cum = np.cumsum(trans, 1)
  x = np.zeros((n, length), np.int32)
  x[:, 0] = rng.integers(0, trans.shape[0], n)
  for t in range(1, length):
    u = rng.random(n)
    x[:, t] = np.minimum((cum[x[:, t - 1]] < u[:, None]).sum(1), trans.shape[0] - 1)
  return x


class BinMarkovIterator(StepIterator):
  """Checkpointable batches {inputs, targets, loss_mask, true_probs} of the bin chain.

  split 'train': batches drawn (with the run's seed) from a fixed set of `num_train`
  sequences made with `data_seed`; 'validation': fresh sequences, `num_batches` of them.
  """

  def __init__(self, task, batch_size: int, seed: int, split: str = "train",
               num_batches: int | None = None):
    self.trans = transition_matrix(task.num_bins, task.sigma)
    self.task, self.batch_size, self.seed, self.split = task, batch_size, seed, split
    self.num_batches = num_batches
    self.step = 0
    if split == "train":
      self.data = sample_chain(self.trans, task.num_train, task.seq_len + 1,
                               np.random.default_rng((task.data_seed, 0)))

  def __next__(self):
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    if self.split == "train":
      rng = np.random.default_rng((self.seed, 0, self.step))
      x = self.data[rng.integers(0, len(self.data), self.batch_size)]
    else:
      rng = np.random.default_rng((self.task.data_seed, 1, self.step))
      x = sample_chain(self.trans, self.batch_size, self.task.seq_len + 1, rng)
    self.step += 1
    return {"inputs": x[:, :-1], "targets": x[:, 1:],
            "loss_mask": np.ones((self.batch_size, self.task.seq_len), np.float32),
            "true_probs": self.trans[x[:, :-1]].astype(np.float32)}


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn) over `config.task` for `tokenlab.train.loop.train`."""
  def train_fn(batch_size, seed):
    return BinMarkovIterator(config.task, batch_size, seed, "train")

  def eval_fn(batch_size, seed):
    return BinMarkovIterator(config.task, batch_size, seed, "validation",
                             num_batches=config.train.eval_batches or 10)
  return train_fn, eval_fn
