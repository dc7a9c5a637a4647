"""The loop's non-finite policy and the resume=force escape hatch, end to end."""

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from tokenlab.config import load_config
from tokenlab.errors import TokenlabError
from tokenlab.method import Average, Method
from tokenlab.registry import register_method
from tokenlab.train.loop import train


@dataclasses.dataclass(frozen=True)
class _Cfg:
  dim: int = 4


@register_method("_test_blowup")
class _BlowUp(Method):
  """loss = scale * |w - 1|^2, where the data decides the scale (NaN on demand)."""
  Config = _Cfg

  def init(self, rng, batch):
    return {"w": jnp.zeros((self.config.dim,))}

  def loss(self, params, batch, rng):
    loss = jnp.mean(batch["scale"]) * jnp.sum((params["w"] - 1.0) ** 2)
    return loss, {"loss": Average.of(loss, 1.0)}


class _Iter:
  """Batches {'scale': 1} except NaN at the given (1-based) batch numbers."""

  def __init__(self, batch_size, nan_at=()):
    self.n, self.batch_size, self.nan_at = 0, batch_size, set(nan_at)

  def __iter__(self):
    return self

  def __next__(self):
    self.n += 1
    value = np.nan if self.n in self.nan_at else 1.0
    return {"scale": np.full((self.batch_size,), value, np.float32)}

  def get_state(self):
    return json.dumps({"n": self.n}).encode()

  def set_state(self, state):
    self.n = json.loads(state)["n"]


def _config(*overrides):
  c = load_config("experiments/transformer_lm.py:size=tiny",
                  ["--config.train.steps=8", "--config.train.log_every=1",
                   "--config.checkpoint.every_steps=1", "--config.checkpoint.async_save=false",
                   "--config.train.progress=false", "--config.train.eval_every=0",
                   "--config.optimizer.warmup_steps=0", *overrides])
  with c.unlocked():
    c.model = ConfigDict({"name": "_test_blowup", "dim": 4})
  return c


def _run(config, workdir, nan_at):
  return train(config, workdir, train_iter_fn=lambda bs, seed: _Iter(bs, nan_at),
               eval_iter_fn=lambda bs, seed: iter([{"scale": np.ones((bs,), np.float32)}]))


def test_halt_stops_before_checkpointing_the_bad_step(tmp_path):
  workdir = str(tmp_path / "halt")
  with pytest.raises(TokenlabError, match=r"steps 5\.\.5; the last good checkpoint is step 4"):
    _run(_config(), workdir, nan_at={5})
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit())[-1] == 4


def test_skip_drops_the_update_and_counts_it(tmp_path):
  workdir = str(tmp_path / "skip")
  result = _run(_config("--config.train.on_nonfinite=skip"), workdir, nan_at={3, 6})
  assert result["step"] == 8
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  skipped = {r["step"]: r["train/skipped_steps"] for r in rows if "train/skipped_steps" in r}
  assert skipped == {s: (1.0 if s in (3, 6) else 0.0) for s in range(1, 9)}
  assert all(np.isfinite(r["train/loss"]) for r in rows if r["step"] not in (3, 6)
             and "train/loss" in r)


def test_resume_force_keeps_the_old_config(tmp_path):
  workdir = str(tmp_path / "w")
  _run(_config(), workdir, nan_at=())
  with pytest.raises(TokenlabError, match="--config.resume=force"):
    _run(_config("--config.optimizer.lr=0.5", "--config.train.steps=9"), workdir, nan_at=())
  result = _run(_config("--config.optimizer.lr=0.5", "--config.train.steps=9",
                        "--config.resume=force"), workdir, nan_at=())
  assert result["step"] == 9
  backups = [f for f in os.listdir(workdir) if f.startswith("config.replaced_")]
  assert len(backups) == 1
  assert json.load(open(os.path.join(workdir, backups[0])))["optimizer"]["lr"] != 0.5
  assert json.load(open(os.path.join(workdir, "config.json")))["optimizer"]["lr"] == 0.5
