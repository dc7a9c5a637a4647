"""Auxiliary multi-token prediction heads: head i predicts the token t+1+i.

Written once for methods that train with extra future-token heads on top of a decoder
(concept-aware fine-tuning, CAFT; Medusa- / multi-token-prediction-style objectives).

* `MultiTokenHeads`: K heads, each `num_layers` transformer blocks plus an RMSNorm, applied to
  the decoder's last hidden states; returns (K, batch, length, d). The caller unembeds them
  (shared unembedding: the base model's output layer), so the heads add no vocab matrix.
* `shifted_targets(targets, loss_mask, offset, segment_ids)`: the labels of head `offset`
  (offset 0 = the ordinary next token; offset i: targets[t + i]), masked where t + i runs off
  the row, crosses a document boundary, or lands on a masked target.
* `multi_token_losses(logits, batch)`: the masked cross-entropy of each head.

Heads are separate modules from the base model, so dropping them at inference leaves the
base model's next-token logits untouched.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.nn.layers import RMSNorm
from tokenlab.nn.losses import token_nll
from tokenlab.nn.transformer import TransformerBlock


class MultiTokenHeads(nn.Module):
  """hidden (batch, length, d) -> (num_heads, batch, length, d): one hidden state per head."""
  num_heads: int
  block: dict                 # TransformerBlock keyword arguments
  num_layers: int = 1
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    outs = []
    for i in range(self.num_heads):
      x = h
      for j in range(self.num_layers):
        x = TransformerBlock(**self.block, name=f"head_{i}_layer_{j}")(x, positions, segment_ids)
      outs.append(RMSNorm(param_dtype=self.param_dtype, name=f"head_{i}_norm")(x))
    return jnp.stack(outs)


def shifted_targets(targets: jax.Array, loss_mask: jax.Array, offset: int,
                    segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(targets, mask) of a head predicting `offset` tokens past the next one.

  targets (batch, length) are next-token labels (targets[t] = token t+1), so the label of
  head `offset` at position t is targets[t + offset].
  """
  if offset == 0:
    return targets, loss_mask.astype(jnp.float32)
  length = targets.shape[-1]
  pad = lambda x, v: jnp.concatenate(
      [x[..., offset:], jnp.full(x.shape[:-1] + (min(offset, length),), v, x.dtype)],
      -1)[..., :length]
  t = pad(targets, 0)
  m = pad(loss_mask.astype(jnp.float32), 0.0)
  if segment_ids is not None:
    m = m * (pad(segment_ids, -1) == segment_ids).astype(jnp.float32)
  return t, m


def multi_token_losses(logits: jax.Array, batch: dict) -> list[tuple[jax.Array, jax.Array]]:
  """logits (1 + K, batch, length, vocab) -> [(nll total, count)] for heads 0..K."""
  mask = batch.get("loss_mask", jnp.ones(batch["targets"].shape, jnp.float32))
  out = []
  for i in range(logits.shape[0]):
    t, m = shifted_targets(batch["targets"], mask, i, batch.get("segment_ids"))
    nll = token_nll(logits[i], t)
    out.append((jnp.sum(nll * m), jnp.sum(m)))
  return out
