"""The loop's non-finite policy, the resume=force escape hatch, a failing save and the SIGTERM
stop, end to end (a 4-parameter method, so each run costs little to compile)."""

import dataclasses
import errno
import json
import os
import signal

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
  """Batches {'scale': 1} except NaN at the given (1-based) batch numbers; SIGTERM to this
  process when batch `sigterm_at` is drawn."""

  def __init__(self, batch_size, nan_at=(), sigterm_at=None):
    self.n, self.batch_size, self.nan_at = 0, batch_size, set(nan_at)
    self.sigterm_at = sigterm_at

  def __iter__(self):
    return self

  def __next__(self):
    self.n += 1
    if self.n == self.sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
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


def _run(config, workdir, nan_at, sigterm_at=None):
  return train(config, workdir, train_iter_fn=lambda bs, seed: _Iter(bs, nan_at, sigterm_at),
               eval_iter_fn=lambda bs, seed: iter([{"scale": np.ones((bs,), np.float32)}]))


def test_halt_stops_before_checkpointing_the_bad_step(tmp_path):
  workdir = str(tmp_path / "halt")
  with pytest.raises(TokenlabError, match=r"steps 5\.\.5; the last good checkpoint is step 4"):
    _run(_config(), workdir, nan_at={5})
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                if d.isdigit())[-1] == 4


def test_halt_before_any_checkpoint_says_so(tmp_path):
  with pytest.raises(TokenlabError, match=r"steps 1\.\.1; no checkpoint was saved yet"):
    _run(_config("--config.checkpoint.every_steps=100"), str(tmp_path / "w"), nan_at={1})


def _strict(value):
  raise ValueError(f"{value} is not JSON")


def test_skip_drops_the_update_and_counts_it(tmp_path):
  workdir = str(tmp_path / "skip")
  result = _run(_config("--config.train.on_nonfinite=skip",
                        "--config.train.max_skipped_fraction=0.25"), workdir, nan_at={3, 6})
  assert result["step"] == 8
  assert result["train/skipped_steps"] == 2 and result["info/steps_run"] == 8
  with open(os.path.join(workdir, "metrics.jsonl")) as f:   # strict JSON: no bare NaN
    rows = [json.loads(line, parse_constant=_strict) for line in f]
  skipped = {r["step"]: r["train/skipped_steps"] for r in rows if "train/skipped_steps" in r}
  assert skipped == {s: (1.0 if s in (3, 6) else 0.0) for s in range(1, 9)}
  total = {r["step"]: r["train/skipped_steps_total"] for r in rows
           if "train/skipped_steps_total" in r}
  assert total[2] == 0 and total[3] == 1 and total[8] == 2
  assert all(np.isfinite(r["train/loss"]) for r in rows if r["step"] not in (3, 6)
             and "train/loss" in r)
  bad = next(r for r in rows if r["step"] == 3 and "train/loss" in r)
  assert bad["train/loss"] is None and bad["nonfinite"]["train/loss"] == "nan"


def test_skip_fails_past_the_allowed_fraction(tmp_path):
  """Default max_skipped_fraction 0.1 of 8 steps: the first skip is already too many."""
  workdir = str(tmp_path / "w")
  with pytest.raises(TokenlabError, match=r"1 of the 2 steps run so far had a non-finite .* "
                     r"config\.train\.max_skipped_fraction=0\.1 of this run's 8 steps; the last good "
                     r"checkpoint is step 1"):
    _run(_config("--config.train.on_nonfinite=skip"), workdir, nan_at={2, 3, 4})
  assert not os.path.exists(os.path.join(workdir, "train.lock"))   # released on the way out


def test_failing_save_stops_the_run_with_one_message(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  save = ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    if step == 3:
      raise OSError(errno.EROFS, "Read-only file system")
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(TokenlabError) as e:
    _run(_config(), str(tmp_path / "w"), nan_at=())
  assert "\n" not in str(e.value)
  assert (f"saving the checkpoint of step 3 into {tmp_path / 'w' / 'checkpoints'} failed "
          f"(OSError: [Errno 30] Read-only file system); the run stopped there; the last saved "
          f"checkpoint is step 2") in str(e.value)


def test_sigterm_without_a_progress_bar_says_what_happened(tmp_path, capsys):
  workdir = str(tmp_path / "w")
  config = _config("--config.checkpoint.every_steps=100")
  result = _run(config, workdir, nan_at=(), sigterm_at=4)
  assert result["step"] == 4 and result["info/stopped_by"] == "SIGTERM"
  assert ("tokenlab: stopped by SIGTERM at step 4, checkpoint saved; re-run to resume"
          in capsys.readouterr().err)
  assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]


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
