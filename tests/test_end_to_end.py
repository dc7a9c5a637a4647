"""End to end: real data pipeline, 4 fake CPU devices, mesh data=2 x fsdp=2.

Checks that the loss falls, that parameters are really sharded, that the workdir contract
holds, and that a run stopped by SIGTERM resumes to exactly the metrics of an uninterrupted run.
"""

import json
import os
import signal

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tokenlab.config import load_config
from tokenlab.train.loop import train
from tokenlab.train.metrics import read_metrics

EXP = "experiments/transformer_lm.py:size=tiny"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, *overrides):
  return load_config(EXP, ["--config.mesh.data=2", "--config.mesh.fsdp=2",
                           f"--config.data.data_dir={data_dir}",
                           "--config.train.progress=false", *overrides])


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_lm_trains_sharded_and_keeps_the_workdir_contract(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = _config(data_dir, "--config.train.steps=60", "--config.train.log_every=10",
                   "--config.train.eval_every=30", "--config.checkpoint.every_steps=30")
  result = train(config, workdir)
  rows = _rows(workdir)
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 6
  # Bytes start at ln(256) = 5.5 nats; a working trainer is well below after 60 steps.
  assert losses[-1] < losses[0] - 1.0, losses
  assert result["eval/bits_per_byte"] < 5.0
  assert all(k in rows[-1] or k in rows[-2] for k in ("eval/loss", "perf/mfu"))
  assert any("perf/tokens_per_sec" in r for r in rows)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["30", "60"]
  assert os.listdir(os.path.join(workdir, "tb"))
  assert json.load(open(os.path.join(workdir, "config.json")))["mesh"]["fsdp"] == 2

  # Parameters restored from the checkpoint are split over fsdp along `embed`.
  from tokenlab import data as data_lib
  from tokenlab.train.inference import load_trained
  batch = next(iter(data_lib.make_iterator(config.data, split="validation", batch_size=8,
                                           seed=0, shuffle=False, num_epochs=1)))
  run = load_trained(workdir, batch)
  kernel = run.params["decoder"]["layer_0"]["mlp"]["gate"]["kernel"]   # (embed, mlp)
  assert kernel.sharding.spec == P("fsdp", "tensor")
  shard_shapes = {s.data.shape for s in kernel.addressable_shards}
  assert shard_shapes == {(kernel.shape[0] // 2, kernel.shape[1])}
  assert len(kernel.sharding.device_set) == 4

  # The plot command turns the workdir into PNGs.
  from tokenlab.plotting import plot_workdir
  paths = plot_workdir(workdir)
  assert any(p.endswith("loss.png") for p in paths) and all(os.path.getsize(p) for p in paths)


def test_sigterm_then_rerun_resumes_exactly(tmp_path, data_dir):
  from tokenlab.train.loop import _default_iterators
  overrides = ["--config.train.steps=12", "--config.train.log_every=1",
               "--config.train.eval_every=6", "--config.checkpoint.every_steps=100"]
  config = _config(data_dir, *overrides)
  full = str(tmp_path / "full")
  train(config, full)

  default_train, default_eval = _default_iterators(config)

  def eval_then_sigterm(batch_size, seed):
    # SIGTERM arrives during the first evaluation (step 6), as a preemption notice would.
    os.kill(os.getpid(), signal.SIGTERM)
    return default_eval(batch_size, seed)

  part = str(tmp_path / "part")
  first = train(config, part, train_iter_fn=default_train, eval_iter_fn=eval_then_sigterm)
  assert first["step"] == 6
  assert sorted(os.listdir(os.path.join(part, "checkpoints"))) == ["6"]
  second = train(config, part)
  assert second["step"] == 12

  def by_step(rows):
    out = {}
    for r in rows:
      out.setdefault(r["step"], {}).update(
          {k: v for k, v in r.items() if k.startswith(("train/", "eval/"))})
    return out
  a, b = by_step(_rows(full)), by_step(_rows(part))
  assert sorted(a) == sorted(b)
  for step in a:
    assert a[step] == b[step], f"step {step}: {a[step]} != {b[step]}"


def test_workdir_with_another_config_is_refused(tmp_path, data_dir):
  from tokenlab.errors import TokenlabError
  workdir = str(tmp_path / "run")
  train(_config(data_dir, "--config.train.steps=2", "--config.checkpoint.every_steps=100"),
        workdir)
  before = open(os.path.join(workdir, "config.json")).read()
  with pytest.raises(TokenlabError, match="model.d_model"):
    train(_config(data_dir, "--config.train.steps=2", "--config.model.d_model=32"), workdir)
  assert open(os.path.join(workdir, "config.json")).read() == before


def test_checkpoint_restores_onto_another_mesh_and_refuses_another_model(tmp_path):
  """Saved with data=4, restored with data=2 x fsdp=2 (orbax reshards); a checkpoint of a
  different model is refused, naming parameters, and left as it was."""
  import flax.linen as nn
  import jax.numpy as jnp
  import optax
  from ml_collections import ConfigDict
  from tokenlab.config import DEFAULT_SHARDING_RULES
  from tokenlab.errors import TokenlabError
  from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
  from tokenlab.train import partitioning
  from tokenlab.train.checkpoint import Checkpointer
  from tokenlab.train.mesh import make_mesh
  from tokenlab.train.state import abstract_state, init_sharded_state, state_layout

  rules = partitioning.rules_from_config(DEFAULT_SHARDING_RULES)
  example = {"inputs": jnp.zeros((4, 8), jnp.int32)}
  tx = optax.adam(1e-3)

  def layout(d_model, mesh):
    method = TransformerLM(TransformerLMConfig(vocab_size=32, d_model=d_model, num_layers=1,
                                               num_heads=2))
    return lambda r: method.init(r, example), mesh

  init, mesh4 = layout(16, make_mesh(ConfigDict({"data": 4, "fsdp": 1, "tensor": 1})))
  state, _ = init_sharded_state(init, tx, jax.random.key(0), mesh4, rules, jnp.float32)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=True)
  ckpt.save(5, state)
  ckpt.close()

  mesh22 = make_mesh(ConfigDict({"data": 2, "fsdp": 2, "tensor": 1}))
  shapes, shardings = state_layout(init, tx, mesh22, rules, jnp.float32)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  restored = ckpt.restore(5, abstract_state(shardings, shapes))
  kernel = restored.params["decoder"]["layer_0"]["mlp"]["up"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert kernel.sharding.mesh.shape == mesh22.shape
  np.testing.assert_array_equal(
      np.asarray(kernel), np.asarray(state.params["decoder"]["layer_0"]["mlp"]["up"]["kernel"]))

  other, _ = layout(32, mesh22)
  shapes, shardings = state_layout(other, tx, mesh22, rules, jnp.float32)
  listing = sorted(os.listdir(tmp_path / "ckpt" / "5"))
  with pytest.raises(TokenlabError, match=r"different model .*params\.decoder\.\S+: "
                                          r"checkpoint \(\d+[^)]*\) vs model \("):
    ckpt.restore(5, abstract_state(shardings, shapes))
  assert sorted(os.listdir(tmp_path / "ckpt" / "5")) == listing
  ckpt.close()


def test_sigkill_during_saves_leaves_a_restorable_checkpoint(tmp_path, data_dir):
  """A run killed with SIGKILL while it saves every step resumes from its latest complete
  checkpoint (orbax writes to a temporary directory and renames it when done)."""
  import subprocess
  import sys
  import time
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "tokenlab.cli", "train", "--config", EXP,
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
          "--config.train.steps=400", "--config.checkpoint.every_steps=1",
          "--config.train.progress=false", "--config.train.eval_every=0",
          "--config.train.log_every=1"]
  env = dict(os.environ, XLA_FLAGS=("--xla_force_host_platform_device_count=1 "
                                    + os.environ["TOKENLAB_TEST_COMPILE_FLAGS"]))
  proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = workdir / "checkpoints"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    done = [d for d in (os.listdir(ckpts) if ckpts.exists() else []) if d.isdigit()]
    if len(done) >= 3:
      break
    time.sleep(0.05)
  time.sleep(0.13)  # Land somewhere inside a later save.
  proc.kill()
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  from tokenlab.train.checkpoint import Checkpointer
  latest = Checkpointer(str(ckpts)).latest_step()
  assert latest is not None and latest >= 3
  logged = len(read_metrics(str(workdir)))   # rows of the killed run (a partial line skipped)
  # Resumed by the same command (same device count: its compiled programs come from the
  # session's compilation cache), two steps past the checkpoint it finds.
  resumed = subprocess.run([a if not a.startswith("--config.train.steps=") else
                            f"--config.train.steps={latest + 2}" for a in args],
                           env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert Checkpointer(str(ckpts)).latest_step() == latest + 2
  # It continued from the checkpoint: the rows it appended are the two steps after it (a
  # restart from scratch would log steps 1, 2, ...).
  steps = [r["step"] for r in read_metrics(str(workdir))[logged:] if "train/loss" in r]
  assert steps == [latest + 1, latest + 2], steps
