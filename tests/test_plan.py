"""`tokenlab plan`: AOT compile on fake devices, per-device memory, chip fit, re-exec."""

import json
import os
import subprocess
import sys

import jax
import pytest

from tokenlab import plan
from tokenlab.config import load_config
from tokenlab.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments/transformer_lm.py:size=tiny")
GiB = 1024 ** 3


def _plan(*overrides, devices=4, chips=None):
  """make_plan in this process (conftest gives it 4 fake CPU devices)."""
  return plan.make_plan(load_config(TINY, list(overrides)), devices, chips, top=4)


def _num_params(overrides):
  """Parameter count from a real (tiny-width) init of the same architecture family."""
  from tokenlab import registry
  import flax.linen as nn
  import jax.numpy as jnp
  method = registry.build_method(load_config(TINY, list(overrides)).model)
  shapes = jax.eval_shape(lambda: method.init(jax.random.key(0),
                                              {"inputs": jnp.zeros((1, 8), jnp.int32)}))
  return sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes)))


def test_fsdp_fits_where_data_parallel_does_not():
  # ~1.8B parameters (d_model 12288, 1 layer): float32 state ~22 GB. Nothing is allocated.
  big = ("config.model.d_model=12288", "config.model.num_heads=96",
         "config.model.num_layers=1", "config.train.batch_size=4")
  dp = _plan(*big, "config.mesh.data=4", "config.mesh.fsdp=1", chips=["v5e", "h100"])
  fsdp = _plan(*big, "config.mesh.data=1", "config.mesh.fsdp=4", chips=["v5e"])
  n = dp["num_params"]
  assert n == fsdp["num_params"] == _num_params(big)
  assert n > 1.8e9
  # Data parallel: every device holds all float32 parameters and both Adam moments.
  assert dp["per_device"]["params"] == 4 * n
  assert dp["per_device"]["opt_state"] >= 2 * 4 * n
  assert dp["per_device"]["params"] + dp["per_device"]["opt_state"] > 16 * GiB
  # FSDP over 4: all but the (replicated) norm scales are split four ways.
  assert 4 * n / 4 < fsdp["per_device"]["params"] < 4 * n / 4 + 4 * 12288 * 3
  assert fsdp["per_device"]["peak"] < dp["per_device"]["peak"] / 2
  for r in (dp, fsdp):
    pd = r["per_device"]
    # XLA's argument bytes are the state and batch shards (+ the rng key), read from XLA.
    assert 0 <= pd["xla_arguments"] - (pd["params"] + pd["opt_state"] + pd["batch"]) <= 64
    assert pd["xla_aliased"] > 0  # The donated state is reused for the new state.
    assert pd["peak"] == (pd["xla_arguments"] + pd["xla_outputs"] - pd["xla_aliased"]
                          + pd["xla_temp"])
  assert dp["fits"]["v5e"]["fits"] is False and dp["fits"]["h100"]["fits"] is True
  assert fsdp["fits"]["v5e"]["fits"] is True
  assert list(fsdp["fits"]) == ["v5e"]
  top = fsdp["largest_arrays"]
  assert top[0]["bytes"] == max(r["bytes"] for r in top) and len(top) == 4
  assert "fsdp" in top[0]["spec"] and top[0]["bytes_per_device"] * 4 == top[0]["bytes"]
  assert dp["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  text = plan.format_plan(dp)
  assert "v5e" in text and "DOES NOT FIT" in text


def test_bad_inputs_get_clear_errors():
  with pytest.raises(ConfigError, match="known: v5e"):
    plan._parse_args(["--devices", "4", "--chip", "v7x"])
  with pytest.raises(ConfigError, match="devices"):
    _plan("config.mesh.data=3")  # 3 != 4 devices.
  with pytest.raises(ConfigError, match="batch_size"):
    _plan("config.train.batch_size=6")


def test_cli_reexecs_with_more_devices_than_this_process_has(tmp_path):
  assert len(jax.devices()) == 4  # conftest
  out = tmp_path / "plan.json"
  proc = subprocess.run(
      [sys.executable, "-m", "tokenlab.cli", "plan", "--config", TINY, "--devices", "8",
       "--chip", "v5e", "--json", str(out), "--config.mesh.fsdp=2",
       "--config.model.num_layers=1"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, XLA_FLAGS=("--xla_force_host_platform_device_count=4 "
                                      + os.environ["TOKENLAB_TEST_COMPILE_FLAGS"]),
               JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "plan: 8 devices" in proc.stdout and "v5e" in proc.stdout
  report = json.loads(out.read_text())
  assert report["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
  assert report["overrides"] == ["--config.mesh.fsdp=2", "--config.model.num_layers=1"]


def test_ensure_cpu_devices_reexecs_only_when_needed(monkeypatch):
  calls = []
  monkeypatch.setattr(plan.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 7)
  assert plan.ensure_cpu_devices(4, ["--devices", "4"]) is None
  assert plan.ensure_cpu_devices(2, ["--devices", "2"]) is None
  assert calls == []
  assert plan.ensure_cpu_devices(16, ["--devices", "16"]) == 7
  cmd, env = calls[0]
  assert cmd[1:] == ["-m", "tokenlab.plan", "--devices", "16"]
  assert "--xla_force_host_platform_device_count=16" in env["XLA_FLAGS"]
  assert env["JAX_PLATFORMS"] == "cpu"


def test_in_code_data_and_a_frozen_reference_plan():
  """config.data.name='method' takes its batch from the method's generator; frozen
  parameters (cDPO's reference) have no optimizer state."""
  spec = os.path.join(REPO, "experiments/cdpo.py:size=tiny,stage=preference,weighting=uniform")
  report = plan.make_plan(load_config(spec), 4, None, top=4)
  assert "chosen_inputs" in report["batch"]
  pd = report["per_device"]
  # Adam keeps two moments of the policy only: about as large as the policy = half the params.
  assert 0.8 * pd["params"] <= pd["opt_state"] <= 1.2 * pd["params"], pd


# --- `--topology`: the TPU compiler (libtpu) on a compile-only topology (issue 13).


def test_topology_plan_compiles_for_tpu_with_roofline_bounds():
  pytest.importorskip("libtpu", reason="--topology needs libtpu (the test extra, Linux)")
  from tokenlab.topology import CHIPS
  config = load_config(TINY, ["config.mesh.data=1", "config.mesh.fsdp=-1"])
  r = plan.make_plan(config, None, top=3, topology="v5e:2x2")
  assert "TPU compiler" in r["backend"] and r["devices"] == 4
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  pd = r["per_device"]
  # XLA:TPU's argument bytes are the state and batch shards, padded to the chip's tiles.
  assert pd["xla_arguments"] >= pd["params"] + pd["opt_state"] + pd["batch"]
  assert pd["peak"] == (pd["xla_arguments"] + pd["xla_outputs"] - pd["xla_aliased"]
                        + pd["xla_temp"])
  assert list(r["fits"]) == ["v5e"] and r["fits"]["v5e"]["hbm_bytes"] == 16 * GiB
  rf, chip = r["roofline"], CHIPS["v5e"]
  method_flops = plan.batch_spec(config, config.train.batch_size)["inputs"].shape
  from tokenlab import registry
  tokens = method_flops[0] * method_flops[1]
  flops = registry.build_method(config.model).flops_per_token(method_flops[1]) * tokens / 4
  assert rf["flops_per_device"] == pytest.approx(flops)
  assert rf["compute_s"] == pytest.approx(flops / chip.bf16_flops)
  assert rf["hbm_s"] == pytest.approx(2 * (pd["params"] + pd["opt_state"])
                                      / chip.hbm_bytes_per_s)
  # FSDP: parameters are gathered and gradients reduce-scattered over the ICI.
  assert {"all-gather", "reduce-scatter"} <= set(rf["collectives_by_kind"])
  assert rf["collective_bytes_per_device"] > pd["params"]
  bound = max(rf["compute_s"], rf["hbm_s"], rf["ici_s"])
  assert rf["step_time_lower_bound_s"] == bound
  assert 0 < rf["mfu_upper_bound"] <= 1
  text = plan.format_plan(r)
  assert "lower bound on step time" in text and "MFU <=" in text


def test_collective_bytes_counts_loops_and_ring_shares():
  hlo = "\n".join([
      "%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {",
      "  %ag = bf16[64,256]{1,0} all-gather(%x), replica_groups=mesh['a'=4,'b'=2] {'a'}, "
      "dimensions={0}",
      "}",
      "%cond (p: (s32[], f32[8])) -> pred[] {",
      "  %c = s32[]{:T(128)} constant(3)",
      "}",
      "ENTRY %main (x: f32[8]) -> f32[8] {",
      "  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body",
      "  %ar = (f32[100]{0}, f32[28]{0}) all-reduce(%a, %b), replica_groups=[1,8]<=[8], "
      "to_apply=%add",
      "}",
  ])
  out = plan.collective_bytes(hlo, 8)
  # all-gather: 3 trips x 64*256*2 bytes x 3/4; all-reduce: 2 x 7/8 x (100 + 28) * 4 bytes.
  assert out["by_kind"]["all-gather"] == pytest.approx(3 * 64 * 256 * 2 * 3 / 4)
  assert out["by_kind"]["all-reduce"] == pytest.approx(2 * 7 / 8 * 128 * 4)
  assert out["loops_without_trip_count"] == 0


def test_topology_arguments_are_checked():
  with pytest.raises(ConfigError, match="exactly one of --devices"):
    plan._parse_args(["--devices", "4", "--topology", "v5e:2x2"])
  with pytest.raises(ConfigError, match="exactly one of --devices"):
    plan._parse_args([])
  with pytest.raises(ConfigError, match="unknown TPU generation 'v9'"):
    plan._parse_args(["--topology", "v9:2x2"])
  with pytest.raises(ConfigError, match="--num-slices needs --topology"):
    plan._parse_args(["--devices", "4", "--num-slices", "2"])


def test_two_slice_topology_plan_spans_slices_with_the_data_axis():
  pytest.importorskip("libtpu", reason="--topology needs libtpu (the test extra, Linux)")
  r = plan.make_plan(load_config(TINY), None, top=1, topology="v5e:2x2", num_slices=2)
  assert r["devices"] == 8 and r["num_slices"] == 2
  assert r["mesh_dcn"] == {"data": 2} and r["mesh"]["data"] == 8
  assert "x 2 slices" in r["backend"]
