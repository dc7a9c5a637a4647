"""`tokenlab scale` and the shard_map data-parallel step it compares against jit FSDP."""

import csv
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tokenlab import registry, scale
from tokenlab.config import load_config
from tokenlab.errors import ConfigError
from tokenlab.train import dp_shard_map, partitioning
from tokenlab.train.mesh import make_mesh
from tokenlab.train.optimizer import make_optimizer
from tokenlab.train.state import init_sharded_state
from tokenlab.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(REPO, "experiments/transformer_lm.py")


def _batch(i, b=8, length=32):
  r = np.random.RandomState(i)
  x = r.randint(0, 256, (b, length + 1)).astype(np.int32)
  # Unequal masks per shard: an unweighted mean of shard gradients would be wrong.
  mask = (r.rand(b, length) > np.linspace(0.1, 0.9, b)[:, None]).astype(np.float32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": mask}


def test_shard_map_dp_step_matches_jit_fsdp_step():
  # SGD: Adam would amplify float reassociation noise on near-zero gradients.
  cfg = load_config(EXP + ":size=tiny", ["config.mesh.data=1", "config.mesh.fsdp=-1",
                                         "config.optimizer.name=sgd", "config.optimizer.lr=0.5",
                                         "config.optimizer.warmup_steps=0",
                                         "config.model.num_layers=1"])
  method = registry.build_method(cfg.model)
  tx = make_optimizer(cfg.optimizer, cfg.train.steps, cfg.train.clip_grad_norm)
  rng = jax.random.key(0)
  example = {k: jnp.zeros(v.shape, v.dtype) for k, v in _batch(0).items()}

  mesh = make_mesh(cfg.mesh)
  rules = partitioning.rules_from_config(cfg.sharding_rules)
  state, sh = init_sharded_state(lambda r: method.init(r, example), tx, rng, mesh, rules,
                                 jnp.float32)
  bsh = {k: partitioning.batch_sharding(mesh, rules, 2) for k in example}
  jit_losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step = jax.jit(make_train_step(method, tx, compute_dtype=jnp.float32),
                   in_shardings=(sh, bsh, None), out_shardings=(sh, None))
    for i in range(3):
      state, m = step(state, {k: jax.device_put(v, bsh[k]) for k, v in _batch(i).items()}, rng)
      jit_losses.append(float(m["loss"].value()))

  dmesh = dp_shard_map.dp_mesh()
  dstate = dp_shard_map.init_replicated_state(method, tx, example, rng, dmesh, jnp.float32)
  assert dstate.params["embed"]["embedding"].sharding.is_fully_replicated
  dstep = dp_shard_map.make_dp_train_step(method, tx, dmesh, compute_dtype=jnp.float32)
  dsh = NamedSharding(dmesh, P("data"))
  dp_losses = []
  for i in range(3):
    dstate, m = dstep(dstate, {k: jax.device_put(v, dsh) for k, v in _batch(i).items()}, rng)
    dp_losses.append(float(m["loss"].value()))

  np.testing.assert_allclose(dp_losses, jit_losses, rtol=1e-5)
  assert abs(jit_losses[2] - jit_losses[0]) > 1e-3  # Training moved the parameters.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a),
                                                       atol=2e-6, rtol=1e-5),
               state.params, dstate.params)
  assert int(dstate.step) == 3


def test_sweeps_expand_and_map_to_experiment_args_and_overrides():
  assert scale.parse_sweep("mesh.data=1, 2,4") == ("mesh.data", ["1", "2", "4"])
  with pytest.raises(ConfigError, match="KEY=v1,v2"):
    scale.parse_sweep("mesh.data")
  with pytest.raises(ConfigError, match="unknown mode"):
    scale.parse_sweep("mode=pmap")
  points = scale.expand([("model.size", ["tiny", "small"]), ("mesh.data", ["1", "4"])])
  assert points == [{"model.size": "tiny", "mesh.data": "1"},
                    {"model.size": "tiny", "mesh.data": "4"},
                    {"model.size": "small", "mesh.data": "1"},
                    {"model.size": "small", "mesh.data": "4"}]
  assert scale.merge_arg("e.py:size=small,data=markov", {"size": "tiny"}) == \
      "e.py:size=tiny,data=markov"
  p = scale.resolve_point(EXP + ":data=markov", {"model.size": "tiny", "mesh.data": "4"},
                          ["--config.train.batch_size=16"])
  assert p["spec"] == EXP + ":data=markov,size=tiny"
  assert p["overrides"] == ["--config.train.batch_size=16", "--config.mesh.data=4"]
  assert (p["devices"], p["mode"]) == (4, "jit")
  # mode=fsdp reshapes the point's devices into the fsdp axis.
  p = scale.resolve_point(EXP + ":size=tiny", {"devices": "2", "mode": "fsdp"}, [])
  assert p["devices"] == 2
  assert p["overrides"][-3:] == ["--config.mesh.data=1", "--config.mesh.fsdp=-1",
                                 "--config.mesh.tensor=1"]
  with pytest.raises(ConfigError, match="unknown config key"):
    scale.resolve_point(EXP + ":size=tiny", {"mesh.dta": "2"}, [])


def test_synthetic_batches_are_deterministic_and_checkpointable():
  cfg = load_config(EXP + ":size=tiny")
  a = scale.SyntheticBatches(cfg, 4, seed=1)
  first = next(a)
  assert first["inputs"].shape == (4, 64) and first["loss_mask"].dtype == np.float32
  assert np.all(first["loss_mask"] == 1) and np.all(first["segment_ids"] == 1)
  np.testing.assert_array_equal(first["positions"][2], np.arange(64))
  np.testing.assert_array_equal(first["inputs"][:, 1:], first["targets"][:, :-1])
  state = a.get_state()
  second = next(a)
  b = scale.SyntheticBatches(cfg, 4, seed=1)
  b.set_state(state)
  np.testing.assert_array_equal(next(b)["inputs"], second["inputs"])
  assert not np.array_equal(first["inputs"], second["inputs"])


def test_scale_cli_runs_points_and_writes_csv_and_png(tmp_path):
  out = tmp_path / "study"
  proc = subprocess.run(
      [sys.executable, "-m", "tokenlab.cli", "scale", "--config", EXP + ":size=tiny",
       "--sweep", "devices=2", "--compare", "--steps", "3", "--out", str(out),
       "--config.model.num_layers=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
  with open(out / "scaling.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["mode"], r["devices"], r["status"]) for r in rows] == [
      ("fsdp", "2", "ok"), ("dp_shard_map", "2", "ok")]
  fsdp, dp = rows
  for r in rows:
    assert float(r["step_time_ms"]) > 0 and float(r["tokens_per_sec"]) > 0
    assert 0 < float(r["step_time_best_ms"]) <= float(r["step_time_ms"]) * (1 + 1e-6)
    assert 0 < float(r["mfu"]) < 1.5
    assert np.isfinite(float(r["final_loss"]))
    assert int(r["tokens_per_step"]) == 8 * 64
  assert fsdp["mesh"] == '{"data": 1, "fsdp": 2, "tensor": 1}'
  # Same model: same parameter count; DP replicates the state, FSDP halves it.
  assert fsdp["num_params"] == dp["num_params"]
  assert float(dp["mem_state_per_device_mib"]) > 1.8 * float(fsdp["mem_state_per_device_mib"])
  png = out / "scaling.png"
  assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # --plot-only redraws the figure from the CSV alone.
  png.unlink()
  assert scale.main(["--plot-only", "--out", str(out)]) == 0
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_topology_study_compiles_for_tpu_and_records_bounds(tmp_path):
  """A compile-only point: the TPU compiler's memory per chip and the roofline bounds."""
  with pytest.raises(ConfigError, match="do not sweep devices or mode with topology"):
    scale.resolve_point(EXP + ":size=tiny", {"topology": "v5e:2x2", "devices": "4"}, [])
  with pytest.raises(ConfigError, match="slice counts are integers"):
    scale.parse_sweep("num_slices=0")
  p = scale.resolve_point(EXP + ":size=tiny", {"topology": "v5e:2x2", "num_slices": "1"}, [])
  assert (p["topology"], p["num_slices"], p["overrides"]) == ("v5e:2x2", 1, [])
  out = tmp_path / "topo"
  assert scale.main(["--config", EXP + ":size=tiny", "--sweep", "topology=v5e:2x2",
                     "--out", str(out), "--config.model.num_layers=1"]) == 0
  with open(out / "scaling.csv") as f:
    (row,) = list(csv.DictReader(f))
  assert (row["status"], row["devices"], row["topology"]) == ("ok", "4", "v5e:2x2")
  assert row["mesh"] == '{"data": 4, "fsdp": 1, "tensor": 1}'
  assert row["fits_hbm"] == "True" and float(row["hbm_per_device_mib"]) == 16 * 1024  # v5e
  bound = float(row["step_time_lower_bound_ms"])
  assert bound > 0 and row["bound_by"] in ("compute", "hbm", "ici")
  assert 0 < float(row["mfu_upper_bound"]) <= 1
  assert float(row["tokens_per_sec_upper_bound"]) == pytest.approx(8 * 64 / (bound / 1e3),
                                                                   rel=1e-4)
  assert 0 < float(row["mem_state_per_device_mib"]) < float(row["mem_peak_per_device_mib"])
  assert row["step_time_ms"] == ""   # nothing trained
  assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_topology_point_that_does_not_fit_is_a_result(monkeypatch):
  """The TPU compiler's refusal (temporaries over HBM) becomes a 'does not fit' row with the
  memory it asked for, not a failed point."""
  import tokenlab.plan

  def refuse(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
                       "required for HLO temporaries (41.79G) exceeds available HBM (15.75G).")
  monkeypatch.setattr(tokenlab.plan, "make_plan", refuse)
  point = scale.resolve_point(EXP + ":size=tiny", {"topology": "v5e:2x2"}, [])
  row = scale._run_topology_point(point)
  assert row["status"] == "does not fit" and row["fits_hbm"] is False and row["devices"] == 4
  assert row["mem_temp_per_device_mib"] == pytest.approx(41.79 * 1024)
  assert row["hbm_per_device_mib"] == pytest.approx(15.75 * 1024)
  monkeypatch.setattr(tokenlab.plan, "make_plan", lambda *a, **k: 1 / 0)
  with pytest.raises(ZeroDivisionError):   # any other error stays an error
    scale._run_topology_point(point)
