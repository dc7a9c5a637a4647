"""Class-conditional autoregressive decoding over a grid of image tokens.

A grid of H x W codes (from a frozen image tokenizer) is flattened in raster order and decoded
left to right after one class prefix token, as in VQGAN / LlamaGen's class-conditional
transformers. One vocabulary holds everything:

    0 .. num_codes-1                  image codes
    num_codes + c                     the prefix token of class c (c < num_classes)
    num_codes + num_classes           the null class (classifier-free guidance, dropout)

so a plain causal token model (e.g. `TransformerLMModule`) with `vocab_size =
prefix_vocab_size(num_codes, num_classes)` is a class-conditional image model. The loops are
tokenlab/nn/generate.py's `sample_autoregressive` (recompute everything) and
tokenlab/nn/decode.py's `sample_cached` (key/value cache); guidance runs the conditional and
the null-class rows as one batch of 2B rows through the same loop (`cfg_scale`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.decode import init_cache, module_step_fn, sample_cached
from tokenlab.nn.generate import sample_autoregressive

PyTree = Any


def prefix_vocab_size(num_codes: int, num_classes: int) -> int:
  """Vocabulary of codes, one prefix token per class and the null class."""
  return num_codes + num_classes + 1


def null_label(num_classes: int) -> int:
  """The label whose prefix token is the null class (unconditional)."""
  return num_classes


def prefix_sequence(codes: jax.Array, labels: jax.Array, num_codes: int, num_classes: int,
                    drop: jax.Array | None = None) -> jax.Array:
  """Training input: codes (B, N) and labels (B,) -> tokens (B, 1 + N), [class; codes].

  `drop` (B,) bool replaces the class with the null class (classifier-free guidance dropout).
  A causal model on these tokens predicts codes[:, i] at position i (targets tokens[:, 1:]).
  """
  if drop is not None:
    labels = jnp.where(drop, null_label(num_classes), labels)
  prefix = (labels.astype(codes.dtype) + num_codes)[:, None]
  return jnp.concatenate([prefix, codes], axis=1)


def restrict_to_codes(logits: jax.Array, num_codes: int) -> jax.Array:
  """logits (..., vocab) with every non-code entry (class prefixes, null) at -inf: image
  positions only ever sample image codes."""
  allowed = jnp.arange(logits.shape[-1]) < num_codes
  return jnp.where(allowed, logits, -jnp.inf)


def _prompt(labels: jax.Array, num_tokens: int, num_codes: int, num_classes: int,
            guided: bool) -> jax.Array:
  """The (B or 2B, 1 + num_tokens) buffer: prefix token then zeros; guided: [labels; null]."""
  labels = jnp.asarray(labels, jnp.int32)
  if guided:
    labels = jnp.concatenate([labels, jnp.full_like(labels, null_label(num_classes))])
  buf = jnp.zeros((labels.shape[0], 1 + num_tokens), jnp.int32)
  return buf.at[:, 0].set(labels + num_codes)


def sample_image_tokens(module: nn.Module, params: PyTree, labels: jax.Array, rng: jax.Array,
                        *, num_tokens: int, num_codes: int, num_classes: int,
                        cfg_scale: float | jax.Array | None = None, temperature: float = 1.0,
                        top_k: int = 0, cached: bool = True) -> jax.Array:
  """Samples B grids of image codes, one per label.

  Args:
    module: tokens (batch, length) -> logits (batch, length, vocab), causal, vocab at least
      `prefix_vocab_size(num_codes, num_classes)`. For `cached=True` it must have a `decode`
      field (like `TransformerLMModule`): `module.clone(decode=True)` keeps a key/value cache.
    labels: (B,) int in [0, num_classes]; num_classes itself = unconditional.
    num_tokens: H * W, the grid's codes in raster order.
    cfg_scale: None (no guidance) or s: logits null + s (cond - null), both halves run as one
      batch of 2B rows (s = 1 gives the conditional samples, s = 0 the unconditional ones).
    temperature, top_k: as in `tokenlab.nn.generate.sample_logits` (temperature 0 = greedy).
    cached: key/value cache (prefill the prefix, then one token per step) or recompute the
      whole buffer every step; the two give the same tokens for the same rng.
  Returns:
    (B, num_tokens) int32 codes in [0, num_codes).
  """
  guided = cfg_scale is not None
  prompt = _prompt(labels, num_tokens, num_codes, num_classes, guided)
  prompt_len = jnp.ones((prompt.shape[0],), jnp.int32)
  kwargs = dict(temperature=temperature, top_k=top_k, start=1, cfg_scale=cfg_scale)
  if cached:
    decoder = module.clone(decode=True)
    step = module_step_fn(decoder, params)

    def step_fn(tokens, cache):
      logits, cache = step(tokens, cache)
      return restrict_to_codes(logits, num_codes), cache

    cache = init_cache(decoder, prompt.shape[0], prompt.shape[1])
    out = sample_cached(step_fn, cache, prompt, prompt_len, rng, **kwargs)
  else:
    logits_fn = lambda t: restrict_to_codes(module.apply({"params": params}, t), num_codes)
    out = sample_autoregressive(logits_fn, prompt, prompt_len, rng, **kwargs)
  return out[:labels.shape[0], 1:]
