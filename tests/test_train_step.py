"""The jitted train step: gradient accumulation, mixed precision, non-finite policy."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenlab.method import Average, Method
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.train.state import TrainState
from tokenlab.train.step import make_train_step


def _lm_batch(rng, batch=8, length=16, vocab=32):
  x = np.asarray(jax.random.randint(rng, (batch, length + 1), 0, vocab), np.int32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:],
          "loss_mask": np.ones((batch, length), np.float32)}


def _state(method, batch, tx):
  params = nn.meta.unbox(jax.jit(method.init)(jax.random.key(0), batch))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def test_grad_accumulation_matches_full_batch():
  method = TransformerLM(TransformerLMConfig(vocab_size=32, d_model=32, num_layers=1,
                                             num_heads=2))
  batch = _lm_batch(jax.random.key(1))
  tx = optax.sgd(0.1)
  outs = []
  for accum in (1, 2):
    step = jax.jit(make_train_step(method, tx, compute_dtype=jnp.float32,
                                   grad_accum_steps=accum))
    state, metrics = step(_state(method, batch, tx), batch, jax.random.key(2))
    outs.append((state.params, float(metrics["loss"].value()),
                 float(metrics["grad_norm"].value())))
  for params, loss, gnorm in outs[1:]:
    chex.assert_trees_all_close(params, outs[0][0], rtol=1e-5, atol=1e-6)
    assert loss == pytest.approx(outs[0][1], rel=1e-5)
    assert gnorm == pytest.approx(outs[0][2], rel=1e-4)


def test_bfloat16_compute_keeps_float32_master_weights():
  method = TransformerLM(TransformerLMConfig(vocab_size=32, d_model=32, num_layers=1,
                                             num_heads=2))
  batch = _lm_batch(jax.random.key(1))
  tx = optax.adam(1e-3)
  losses = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    step = jax.jit(make_train_step(method, tx, compute_dtype=dtype))
    state, metrics = step(_state(method, batch, tx), batch, jax.random.key(2))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    losses[dtype] = float(metrics["loss"].value())
  assert np.isfinite(losses[jnp.bfloat16])
  assert losses[jnp.bfloat16] == pytest.approx(losses[jnp.float32], rel=2e-2)
  assert losses[jnp.bfloat16] != losses[jnp.float32]  # the cast really happened


@dataclasses.dataclass(frozen=True)
class _QuadConfig:
  dim: int = 4


class _Quadratic(Method):
  """loss = scale * |w|^2: a non-finite scale makes a non-finite loss on demand."""
  Config = _QuadConfig

  def init(self, rng, batch):
    return {"w": jnp.ones((self.config.dim,))}

  def loss(self, params, batch, rng):
    loss = batch["scale"][0] * jnp.sum(params["w"] ** 2)
    return loss, {"loss": Average.of(loss, 1.0)}


@pytest.mark.parametrize("policy", ["skip", "halt"])
def test_nonfinite_policy(policy):
  method = _Quadratic(_QuadConfig())
  tx = optax.sgd(0.1)
  step = jax.jit(make_train_step(method, tx, compute_dtype=jnp.float32, on_nonfinite=policy))
  state = _state(method, None, tx)
  state, m = step(state, {"scale": jnp.array([1.0])}, jax.random.key(0))
  w_good = state.params["w"]
  state, m = step(state, {"scale": jnp.array([jnp.nan])}, jax.random.key(0))
  assert int(state.step) == 2
  if policy == "skip":
    # Exact: a skipped step must leave the parameters bit-identical.
    np.testing.assert_array_equal(state.params["w"], w_good)
    assert float(m["skipped_steps"].value()) == 1.0
  else:  # halt: the update is applied; the loop stops on the logged non-finite loss.
    assert not np.all(np.isfinite(state.params["w"]))
    assert "skipped_steps" not in m
