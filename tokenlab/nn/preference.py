"""Preference-optimisation pieces written once: per-token and per-sequence log-probabilities,
the DPO loss (Rafailov et al. 2023), its token-weighted form (cDPO, Lin et al. 2024) and
contrastive token scores between a positive and a negative model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenlab.nn.losses import token_nll


def token_logps(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target) of each token in float32: logits (..., vocab), targets (...) -> (...)."""
  return -token_nll(logits, targets)


def sequence_logps(token_lp: jax.Array, mask: jax.Array,
                   weights: jax.Array | None = None) -> jax.Array:
  """sum_t w_t m_t log p_t over the last axis: (batch, length) -> (batch,)."""
  w = mask.astype(jnp.float32)
  if weights is not None:
    w = w * weights.astype(jnp.float32)
  return jnp.sum(token_lp * w, axis=-1)


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, beta: float) -> tuple[jax.Array, jax.Array]:
  """Sequence-level DPO: all inputs (batch,) summed log-probs.

  Returns (losses, margins), each (batch,): margin = (pi_c - ref_c) - (pi_r - ref_r) and
  loss = -log sigmoid(beta * margin).
  """
  margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
  return -jax.nn.log_sigmoid(beta * margin), margin


def token_weighted_dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array,
                            ref_chosen: jax.Array, ref_rejected: jax.Array,
                            chosen_mask: jax.Array, rejected_mask: jax.Array,
                            chosen_weights: jax.Array, rejected_weights: jax.Array,
                            beta: float) -> tuple[jax.Array, jax.Array]:
  """Token-weighted DPO (cDPO's form): inputs are per-token log-probs (batch, length).

  margin = sum_t wc_t D+_t - sum_t wr_t D-_t with D = log pi - log pi_ref on the masked
  tokens; loss = -log sigmoid(beta * margin). All weights 1 is sequence-level DPO exactly.
  Returns (losses, margins), each (batch,).
  """
  d_chosen = sequence_logps(policy_chosen - ref_chosen, chosen_mask, chosen_weights)
  d_rejected = sequence_logps(policy_rejected - ref_rejected, rejected_mask, rejected_weights)
  margin = d_chosen - d_rejected
  return -jax.nn.log_sigmoid(beta * margin), margin


def contrastive_scores(pos_logits: jax.Array, neg_logits: jax.Array, targets: jax.Array,
                       alpha: float = 1.0) -> jax.Array:
  """Contrastive-estimation score of each target token: s_t = softmax(l_cd)[y_t] with
  l_cd = (1 + alpha) l_pos - alpha l_neg (alpha = 1: 2 l_pos - l_neg).

  logits (..., vocab), targets (...) -> (...) in [0, 1]. A low score marks a token the
  negative model prefers much more than the positive one: a critical token. Identical
  models give s_t = p(y_t).
  """
  pos = jax.nn.log_softmax(pos_logits.astype(jnp.float32), -1)
  neg = jax.nn.log_softmax(neg_logits.astype(jnp.float32), -1)
  # Log-softmax first: l_cd changes only by a per-position constant, so its softmax is the same.
  return jnp.exp(token_logps((1.0 + alpha) * pos - alpha * neg, targets))
