"""`tokenlab plan`: will this config fit, before a pod is paid for.

  tokenlab plan --config experiments/transformer_lm.py:size=1b --devices 8 --chip v5e \\
      [--config.mesh.fsdp=8 ...] [--json plan.json]

Compiles the real train step (the trainer's `make_train_step`, shardings from the logical axis
rules, donated state) ahead of time for a mesh of N devices, using abstract inputs only: the
state is `jax.ShapeDtypeStruct`s from `state_layout`, the batch shape comes from
`config.data.seq_len` and `config.train.batch_size`; no parameter is allocated and no dataset
is built. It reports, per device:

* parameters and optimizer state (from the shardings: exact),
* XLA's memory analysis of the compiled step: arguments, outputs, aliased (donated) bytes and
  temporaries (activations, gradients, collectives' buffers),
* the peak estimate `arguments + outputs - aliased + temporaries`,
* the largest arrays and their shardings, and whether the peak fits each named chip's HBM.

The devices are fake CPU devices (`--xla_force_host_platform_device_count=N`), so the figures
are those of XLA:CPU's buffer assignment. State sizes are exact for any backend; temporaries on
TPU/GPU differ (other fusions, native bfloat16), so treat a fit within ~10% of HBM as unsure.
(MaxText's `train_compile.py` compiles for a real TPU topology, which needs libtpu; this runs
anywhere.) If jax is already initialised with fewer devices, the command re-runs itself in a
subprocess with the right device count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any

from tokenlab.argparsing import Parser
from tokenlab.errors import ConfigError, TokenlabError

GiB = 1024 ** 3

# HBM per chip (bytes), as published by the vendors.
CHIPS = {
    "v5e": 16 * GiB,
    "v5p": 95 * GiB,
    "v6e": 32 * GiB,
    "h100": 80 * GiB,
    "h200": 141 * GiB,
}

_CHILD_ENV = "TOKENLAB_PLAN_CHILD"


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = Parser(prog="tokenlab plan", description=__doc__.splitlines()[0],
                  epilog="example:\n  tokenlab plan --config experiments/transformer_lm.py:"
                         "size=small --devices 8 --chip v5e\n")
  parser.add_argument("--config", default="experiments/transformer_lm.py:size=small",
                      help="experiment file[:arg]")
  parser.add_argument("--devices", type=int, required=True,
                      help="number of devices of the target slice (fake CPU devices here)")
  parser.add_argument("--chip", action="append", default=[],
                      help=f"chip(s) to check the fit against ({', '.join(CHIPS)}); "
                           f"default: all")
  parser.add_argument("--top", type=int, default=8, help="largest arrays to list")
  parser.add_argument("--json", default="", help="also write the report to this file")
  args, rest = parser.parse_with_overrides(argv)
  if args.devices < 1:
    raise ConfigError(f"--devices must be at least 1, got {args.devices}")
  for chip in args.chip:
    if chip.lower() not in CHIPS:
      from tokenlab.errors import nearest
      raise ConfigError(f"unknown --chip '{chip}'{nearest(chip.lower(), CHIPS)}; "
                        f"known: {', '.join(CHIPS)}")
  return args, rest


def _with_device_count(xla_flags: str, n: int) -> str:
  """XLA_FLAGS with --xla_force_host_platform_device_count set to n (others kept)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", xla_flags).split()
  return " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])


def ensure_cpu_devices(n: int, argv: list[str], module: str = "tokenlab.plan") -> int | None:
  """Makes jax see at least `n` CPU devices in this process, or re-runs `module` in a child.

  Returns None when this process can go on (jax now has >= n CPU devices), or the exit code
  of the child process that did the work. The env var must be set before jax's backends start,
  which is why a process whose jax already started with fewer devices has to re-exec.
  """
  import jax
  from jax._src import xla_bridge
  if not xla_bridge.backends_are_initialized():
    os.environ["XLA_FLAGS"] = _with_device_count(os.environ.get("XLA_FLAGS", ""), n)
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
  if jax.default_backend() == "cpu" and len(jax.devices()) >= n:
    return None
  if os.environ.get(_CHILD_ENV):
    raise TokenlabError(f"could not get {n} fake CPU devices (jax sees {len(jax.devices())} "
                        f"{jax.default_backend()} devices); unset XLA_FLAGS and JAX_PLATFORMS")
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_CHILD_ENV: "1"})
  env["XLA_FLAGS"] = _with_device_count(env.get("XLA_FLAGS", ""), n)
  return subprocess.call([sys.executable, "-m", module, *argv], env=env)


def batch_spec(config, batch_size: int) -> dict[str, Any]:
  """Abstract batch {name: ShapeDtypeStruct} of `batch_size` rows, without building data.

  Uses `tokenlab.data.batch_spec(data_cfg, batch_size)` when the data package provides it,
  one generated batch for in-code synthetic data (config.data.name='method'); otherwise the packed-text layout of the LM pipeline: (batch, seq_len) int32 arrays.
  """
  import jax
  import numpy as np
  from tokenlab.train.loop import METHOD_DATA, method_iterator_fns
  if config.data.get("name") == METHOD_DATA:
    # In-code synthetic data: one generated batch gives the fields and shapes.
    first = next(iter(method_iterator_fns(config)[0](batch_size, 0)))
    return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in first.items()}
  try:
    from tokenlab import data as data_lib
    spec_fn = getattr(data_lib, "batch_spec", None)
  except ImportError:
    spec_fn = None
  if spec_fn is not None:
    return dict(spec_fn(config.data, batch_size))
  if "seq_len" not in config.data:
    raise ConfigError(f"cannot infer the batch shape of data '{config.data.get('name')}' "
                      f"without config.data.seq_len; add tokenlab.data.batch_spec for it")
  shape = (batch_size, int(config.data.seq_len))
  # The fields of tokenlab.data.pipeline's packed text rows.
  ints = ("inputs", "targets", "segment_ids", "positions", "target_bytes")
  spec = {k: jax.ShapeDtypeStruct(shape, np.int32) for k in ints}
  spec["loss_mask"] = jax.ShapeDtypeStruct(shape, np.float32)
  return spec


def _nbytes(shape, dtype) -> int:
  import numpy as np
  return int(math.prod(shape)) * np.dtype(dtype).itemsize


def _leaf_rows(tree: Any, shardings: Any, prefix: str) -> list[dict[str, Any]]:
  import jax
  rows = []
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  sh_leaves = jax.tree.leaves(shardings)
  for (path, leaf), sh in zip(leaves, sh_leaves):
    shard = sh.shard_shape(leaf.shape)
    rows.append({"name": prefix + jax.tree_util.keystr(path), "shape": list(leaf.shape),
                 "dtype": str(leaf.dtype), "spec": str(sh.spec),
                 "bytes": _nbytes(leaf.shape, leaf.dtype),
                 "bytes_per_device": _nbytes(shard, leaf.dtype)})
  return rows


def make_plan(config, num_devices: int, chips: list[str] | None = None,
              top: int = 8) -> dict[str, Any]:
  """Compiles the train step of `config` for `num_devices` devices; returns the report dict.

  Needs jax to see at least `num_devices` devices (the first `num_devices` are used).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from tokenlab import registry
  from tokenlab.train import partitioning
  from tokenlab.train.loop import jit_train_step, validate_batch
  from tokenlab.train.mesh import make_mesh
  from tokenlab.train.optimizer import make_optimizer, make_schedule
  from tokenlab.train.state import abstract_state, method_init_fn, state_layout

  devices = jax.devices()[:num_devices]
  if len(devices) < num_devices:
    raise TokenlabError(f"jax sees {len(devices)} devices, fewer than --devices "
                        f"{num_devices}; run `tokenlab plan` as its own command")
  tc = config.train
  mesh = make_mesh(config.mesh, devices)
  rules = partitioning.rules_from_config(config.sharding_rules)
  partitioning.check_rules(rules, mesh)
  _, micro = validate_batch(config, mesh, rules)
  method = registry.build_method(config.model)
  global_batch = batch_spec(config, tc.batch_size)
  micro_example = {k: jax.ShapeDtypeStruct((micro, *s.shape[1:]), s.dtype)
                   for k, s in global_batch.items()}
  tx = make_optimizer(config.optimizer, tc.steps, tc.clip_grad_norm, tc.get("freeze", ""))
  schedule = make_schedule(config.optimizer, tc.steps)
  init_params = method_init_fn(method, micro_example)
  state_abs, state_sh = state_layout(init_params, tx, mesh, rules, jnp.dtype(tc.param_dtype))
  state_in = abstract_state(state_sh, state_abs)
  batch_sh = {k: partitioning.batch_sharding(mesh, rules, len(s.shape))
              for k, s in global_batch.items()}
  batch_in = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sh[k])
              for k, s in global_batch.items()}
  rng_in = jax.eval_shape(lambda: jax.random.key(0))

  jitted = jit_train_step(config, method, tx, schedule, mesh, rules, state_sh, batch_sh)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = jitted.lower(state_in, batch_in, rng_in).compile()
  compile_sec = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if mem is None:
    raise TokenlabError("XLA gave no memory analysis for this backend; run plan on CPU")
  xla = {k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
         for k in ("argument", "output", "alias", "temp", "generated_code")}
  peak = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]

  param_rows = _leaf_rows(state_abs.params, state_sh.params, "params")
  opt_rows = _leaf_rows(state_abs.opt_state, state_sh.opt_state, "opt_state")
  per_dev = lambda rows: sum(r["bytes_per_device"] for r in rows)
  batch_per_dev = sum(_nbytes(batch_sh[k].shard_shape(s.shape), s.dtype)
                      for k, s in global_batch.items())
  largest = sorted(param_rows + opt_rows, key=lambda r: -r["bytes"])[:top]
  chips = [c.lower() for c in chips] if chips else list(CHIPS)
  fits = {c: {"hbm_bytes": CHIPS[c], "fits": peak <= CHIPS[c],
              "headroom_bytes": CHIPS[c] - peak} for c in chips}
  return {
      "config_model": dict(config.model), "devices": num_devices,
      "mesh": dict(mesh.shape), "batch": {k: list(s.shape) for k, s in global_batch.items()},
      "micro_batch": micro, "grad_accum_steps": tc.grad_accum_steps,
      "param_dtype": tc.param_dtype, "compute_dtype": tc.compute_dtype,
      "num_params": sum(math.prod(r["shape"]) for r in param_rows),
      "per_device": {"params": per_dev(param_rows), "opt_state": per_dev(opt_rows),
                     "batch": batch_per_dev, "xla_arguments": xla["argument"],
                     "xla_outputs": xla["output"], "xla_aliased": xla["alias"],
                     "xla_temp": xla["temp"], "generated_code": xla["generated_code"],
                     "peak": peak},
      "largest_arrays": largest, "fits": fits, "compile_sec": compile_sec,
      "backend": f"{jax.default_backend()} (fake devices: XLA:CPU buffer assignment)",
  }


def _gib(n: float) -> str:
  """Bytes as GiB, or MiB below 1 GiB (small configs would read 0.000 GiB)."""
  if abs(n) >= GiB:
    return f"{n / GiB:8.2f} GiB"
  return f"{n / 2**20:8.1f} MiB"


def format_plan(report: dict[str, Any]) -> str:
  """The human-readable report."""
  pd = report["per_device"]
  lines = [
      f"plan: {report['devices']} devices, mesh {report['mesh']}, "
      f"{report['num_params'] / 1e6:.1f}M parameters ({report['param_dtype']} master, "
      f"{report['compute_dtype']} compute)",
      f"  global batch {report['batch'].get('inputs', next(iter(report['batch'].values())))}"
      f", micro-batch {report['micro_batch']} x {report['grad_accum_steps']} accumulation "
      f"steps; compiled in {report['compile_sec']:.1f} s on {report['backend']}",
      "per device:",
      f"  parameters              {_gib(pd['params'])}",
      f"  optimizer state         {_gib(pd['opt_state'])}",
      f"  batch                   {_gib(pd['batch'])}",
      f"  XLA arguments           {_gib(pd['xla_arguments'])}  (state + batch)",
      f"  XLA outputs             {_gib(pd['xla_outputs'])}  ({_gib(pd['xla_aliased']).strip()}"
      f" aliased to donated inputs)",
      f"  XLA temporaries         {_gib(pd['xla_temp'])}  (activations, gradients, buffers)",
      f"  peak estimate           {_gib(pd['peak'])}  (arguments + outputs - aliased + temp)",
      "largest arrays (global shape -> per-device bytes, sharding):",
  ]
  for r in report["largest_arrays"]:
    lines.append(f"  {r['name']:<48} {str(tuple(r['shape'])):<22} {r['dtype']:<9} "
                 f"{r['bytes_per_device'] / 2**20:10.1f} MiB/dev  {r['spec']}")
  lines.append("fits:")
  for chip, f in report["fits"].items():
    verdict = "fits" if f["fits"] else "DOES NOT FIT"
    lines.append(f"  {chip:<5} {f['hbm_bytes'] / GiB:6.0f} GiB HBM: {verdict} "
                 f"({f['headroom_bytes'] / GiB:+.2f} GiB headroom)")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  """`tokenlab plan ...`; returns the exit status (0 = compiled; fit or not is reported)."""
  args, rest = _parse_args(argv)
  overrides = rest
  child = ensure_cpu_devices(args.devices, argv)
  if child is not None:
    return child
  from tokenlab.config import load_config
  config = load_config(args.config, overrides)
  report = make_plan(config, args.devices, args.chip, args.top)
  report["config"] = args.config
  report["overrides"] = overrides
  print(format_plan(report))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2, default=str)
  return 0


if __name__ == "__main__":
  from tokenlab.cli import main as cli_main
  sys.exit(cli_main(["plan", *sys.argv[1:]]))
