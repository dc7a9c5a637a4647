"""Non-parameter model state through the trainer (tokenlab/method.py `state_collections`):
a tiny stateful method whose state counts loss calls and sums the data it saw, so every
check is exact: gradient accumulation, checkpoint/resume, eval, init_from."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from tokenlab.config import load_config
from tokenlab.method import Average, Method
from tokenlab.registry import register_method
from tokenlab.train.inference import load_trained
from tokenlab.train.loop import train
from tokenlab.train.state import TrainState, method_init_fn
from tokenlab.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class _Cfg:
  dim: int = 3


@register_method("_test_counter")
class _Counter(Method):
  """loss = mean |w - x|^2; state 'counter' = {calls: loss calls so far, total: sum of x}."""
  Config = _Cfg
  state_collections = ("counter",)

  def init(self, rng, batch):
    return {"params": {"w": jnp.zeros((self.config.dim,))},
            "counter": {"calls": jnp.zeros((), jnp.int32), "total": jnp.zeros((), jnp.float32)}}

  def loss(self, params, batch, rng, state):
    x = batch["x"]
    loss = jnp.mean(jnp.square(params["w"] - x))
    c = state["counter"]
    new = {"counter": {"calls": c["calls"] + 1, "total": c["total"] + jnp.sum(x)}}
    return loss, {"loss": Average.of(loss, 1.0),
                  "calls": c["calls"].astype(jnp.float32)}, new


class _Iter:
  """Batch n (1-based) is x = n + row / 10 for every column: sums are known exactly."""

  def __init__(self, batch_size, dim=3):
    self.n, self.batch_size, self.dim = 0, batch_size, dim

  def __iter__(self):
    return self

  def __next__(self):
    self.n += 1
    rows = self.n + np.arange(self.batch_size, dtype=np.float32)[:, None] / 10
    return {"x": np.broadcast_to(rows, (self.batch_size, self.dim)).astype(np.float32)}

  def get_state(self):
    return json.dumps({"n": self.n}).encode()

  def set_state(self, state):
    self.n = json.loads(state)["n"]


def _config(*overrides):
  c = load_config("experiments/transformer_lm.py:size=tiny",
                  ["--config.train.steps=6", "--config.train.batch_size=4",
                   "--config.train.log_every=1", "--config.checkpoint.every_steps=2",
                   "--config.checkpoint.async_save=false", "--config.train.progress=false",
                   "--config.train.eval_every=0", "--config.optimizer.warmup_steps=0",
                   "--config.optimizer.schedule=constant",
                   *overrides])
  with c.unlocked():
    c.model = ConfigDict({"name": "_test_counter", "dim": 3})
  return c


def _run(config, workdir):
  return train(config, workdir, train_iter_fn=lambda bs, seed: _Iter(bs),
               eval_iter_fn=lambda bs, seed: iter([next(_Iter(bs))]))


def _restored(workdir):
  run = load_trained(workdir, {"x": np.zeros((4, 3), np.float32)})
  return jax.device_get(run.params), jax.device_get(run.model_state)


def test_stateless_train_state_keeps_its_three_items():
  # Checkpoints of stateless runs must keep the tree they had before model_state existed.
  state = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(2)}, opt_state=())
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert names == [".step", ".params['w']"]
  with_state = state.replace(model_state={"c": jnp.ones(())})
  assert len(jax.tree.leaves(with_state)) == 3
  assert jax.tree.map(lambda x: x, with_state).model_state is not None


def test_state_is_threaded_through_micro_batches():
  method = _Counter(_Cfg())
  batch = next(_Iter(4))
  tx = optax.sgd(0.1)
  out = {}
  for accum in (1, 2):
    params, model_state = method_init_fn(method, batch)(jax.random.key(0))
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state)
    step = jax.jit(make_train_step(method, tx, compute_dtype=jnp.bfloat16,
                                   grad_accum_steps=accum))
    new, metrics = step(state, batch, jax.random.key(1))
    out[accum] = new
    # Each micro-batch sees the state the previous one left: calls 0 then 1.
    assert float(metrics["calls"].value()) == pytest.approx((accum - 1) / 2)
  for accum, new in out.items():
    assert int(new.model_state["counter"]["calls"]) == accum
    assert new.model_state["counter"]["total"].dtype == jnp.float32   # not cast to bfloat16
    assert float(new.model_state["counter"]["total"]) == pytest.approx(float(np.sum(batch["x"])))
  np.testing.assert_allclose(out[1].params["w"], out[2].params["w"], rtol=1e-2)


def test_state_survives_checkpoint_and_resume_exactly(tmp_path):
  whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
  result = _run(_config(), whole)
  # Eval (at the last step) sees the trained state: 6 calls before the eval batch's own.
  assert result["eval/calls"] == 6
  _run(_config("--config.train.steps=4"), part)
  assert int(_restored(part)[1]["counter"]["calls"]) == 4
  _run(_config(), part)                       # resumes from the step-4 checkpoint
  (p_whole, s_whole), (p_part, s_part) = _restored(whole), _restored(part)
  assert int(s_part["counter"]["calls"]) == 6
  total = sum(3 * (4 * n + 0.6) for n in range(1, 7))   # 4 rows of n + r/10, 3 columns
  assert float(s_part["counter"]["total"]) == pytest.approx(total, rel=1e-6)
  jax.tree.map(np.testing.assert_array_equal, (p_part, s_part), (p_whole, s_whole))

  # init_from copies the model state (like parameters) into a fresh run.
  fresh = str(tmp_path / "fresh")
  _run(_config("--config.train.steps=1", f"--config.train.init_from={whole}"), fresh)
  assert int(_restored(fresh)[1]["counter"]["calls"]) == 7
