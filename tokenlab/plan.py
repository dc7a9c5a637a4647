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

Two modes:

* `--topology v5e:4x4` (also v4, v5p, v6e names as libtpu spells them; `--num-slices N` for a
  multi-slice pod): the devices are those of a libtpu topology and the step is compiled by the
  TPU compiler, as MaxText's `train_compile.py` does, on a CPU-only host (needs libtpu: the
  `tpu` or `test` extra). Memory figures are XLA:TPU's. The report adds a roofline estimate
  from the chip's published figures (`tokenlab.topology.CHIPS`): analytic FLOPs against peak
  FLOP/s, the optimizer update's parameter and optimizer-state bytes against HBM bandwidth,
  and the compiled step's collective bytes against ICI bandwidth, giving a LOWER BOUND on step
  time and an UPPER BOUND on MFU (perfect overlap, peak rates: estimates, not measurements).
  XLA's own whole-step `optimal_seconds` is not used: for whole train steps it comes out
  negative (issue 13).
* `--devices N`: fake CPU devices (`--xla_force_host_platform_device_count=N`), so the figures
  are those of XLA:CPU's buffer assignment. State sizes are exact for any backend; temporaries
  on TPU/GPU differ (other fusions, native bfloat16), so treat a fit within ~10% of HBM as
  unsure. If jax is already initialised with fewer devices, the command re-runs itself in a
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
  parser.add_argument("--devices", type=int, default=0,
                      help="number of devices of the target slice (fake CPU devices here)")
  parser.add_argument("--topology", default="",
                      help="compile with the TPU compiler for this libtpu topology, e.g. "
                           "v5e:4x4, v6e:16x16, v5p:4x4x4, v4:2x2x1 (needs libtpu, no TPU)")
  parser.add_argument("--num-slices", type=int, default=1,
                      help="slices of --topology (multi-slice over DCN; sets "
                           "config.mesh_dcn.data unless the config sets mesh_dcn)")
  parser.add_argument("--chip", action="append", default=[],
                      help=f"chip(s) to check the fit against ({', '.join(CHIPS)}); "
                           f"default: all")
  parser.add_argument("--top", type=int, default=8, help="largest arrays to list")
  parser.add_argument("--json", default="", help="also write the report to this file")
  args, rest = parser.parse_with_overrides(argv)
  if bool(args.devices) == bool(args.topology):
    raise ConfigError("give exactly one of --devices N (fake CPU devices) or --topology NAME "
                      "(TPU compiler), e.g. --topology v5e:4x4")
  if args.devices < 0 or args.num_slices < 1:
    raise ConfigError(f"--devices and --num-slices must be at least 1, got {args.devices} "
                      f"and {args.num_slices}")
  if args.num_slices > 1 and not args.topology:
    raise ConfigError("--num-slices needs --topology")
  if args.topology:
    from tokenlab.topology import chip_of_topology
    chip_of_topology(args.topology)
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


def devices_per_chip(devices) -> int:
  """Devices per physical chip (2 on v4, whose TensorCores are separate devices; else 1)."""
  chips = {(getattr(d, "slice_index", 0), tuple(getattr(d, "coords", (d.id,))))
           for d in devices}
  return max(len(devices) // max(len(chips), 1), 1)


def _cost(compiled, key: str) -> float | None:
  """One entry of XLA's cost analysis (a dict, or a list of one dict in older jax)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Some backends have none.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  value = (cost or {}).get(key)
  return None if value is None else float(value)


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                "collective-permute")
_ARRAY = re.compile(r"\b(pred|s4|u4|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|"
                    r"f8e4m3fn|f8e5m2)\[([0-9,]*)\]")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "s32": 32,
         "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64,
         "f8e4m3fn": 8, "f8e5m2": 8}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OP = re.compile(r"=\s.*?\s(" + "|".join(_COLLECTIVES) + r")(-start)?\(")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLS = re.compile(r"(?:body|calls|to_apply|condition|branch_computations)=\{?([^,}\s]+(?:,\s*%"
                    r"[\w.\-]+)*)\}?")


def _group_size(line: str, num_devices: int) -> int:
  """Devices in each replica group of a collective's HLO line."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:  # replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0'}
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
    return math.prod(sizes.get(a, 1) for a in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if m and m.group(1):
    return len(m.group(1).split(","))
  return 2 if "source_target_pairs=" in line else num_devices


def _array_bytes(text: str) -> list[int]:
  return [math.prod(int(x) for x in dims.split(",") if x) * _BITS[t] // 8
          for t, dims in _ARRAY.findall(text)]


def _trip_count(line: str, bodies: dict[str, list[str]]) -> int | None:
  """A while loop's trip count: XLA's known_trip_count, else the one integer constant its
  condition compares the counter with (how jax's scan and fori_loop lower)."""
  t = _TRIP.search(line)
  if t:
    return int(t.group(1))
  cond = re.search(r"condition=%?([\w.\-]+)", line)
  consts = set()
  for l in bodies.get(cond.group(1), []) if cond else []:
    consts.update(int(c) for c in re.findall(r"s32\[\][^=]*= s32\[\]\S* constant\((\d+)\)",
                                             l))
    consts.update(int(c) for c in re.findall(r"= s32\[\]\S* constant\((\d+)\)", l))
  return consts.pop() if len(consts) == 1 else None


def collective_bytes(hlo_text: str, num_devices: int) -> dict[str, Any]:
  """Bytes each device sends over the interconnect in one run of a compiled (SPMD) program.

  Parses the optimized HLO: each collective's result bytes (summed over a combined op's
  results) times what a ring algorithm sends per device for a group of n: all-gather and
  all-to-all (n-1)/n x their result, reduce-scatter (n-1) x its shard, all-reduce
  2 (n-1)/n x its result (a reduce-scatter then an all-gather; XLA:TPU's fused
  "all-reduce-scatter" counts as the reduce-scatter it is), collective-permute its result;
  multiplied by the trip counts of the while loops around it (layer scans, gradient
  accumulation). An estimate: it ignores the torus's several links per chip and any
  algorithm beyond the ring.
  """
  bodies: dict[str, list[str]] = {}
  entry, name = None, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and not line.startswith(" "):
      name = m.group(1)
      bodies[name] = []
      if line.startswith("ENTRY"):
        entry = name
    elif name is not None and line.strip() == "}":
      name = None
    elif name is not None:
      bodies[name].append(line)
  unknown_trips = 0
  memo: dict[str, dict[str, float]] = {}

  def total(comp: str, depth: int = 0) -> dict[str, float]:
    nonlocal unknown_trips
    if comp in memo:
      return memo[comp]
    out = {k: 0.0 for k in _COLLECTIVES}
    for line in bodies.get(comp, []):
      op = _OP.search(line)
      if op:
        kind = op.group(1)
        n = max(_group_size(line, num_devices), 1)
        if kind == "all-reduce" and comp.startswith("all-reduce-scatter"):
          kind = "reduce-scatter"
          share = (n - 1) / n  # Of the full result it reduces.
        else:
          share = {"reduce-scatter": n - 1, "all-reduce": 2 * (n - 1) / n,
                   "collective-permute": 1.0}.get(kind, (n - 1) / n)
        result = _array_bytes(line[line.index("=") + 1:op.start(1)])
        # An async start's result also holds its operand: take the largest array there.
        size = max(result, default=0) if op.group(2) else sum(result)
        out[kind] += size * share
      if depth > 64 or " async-done(" in line:  # async-done names the start's computation.
        continue
      trips = 1
      if " while(" in line:
        t = _trip_count(line, bodies)
        trips = t or 1
        unknown_trips += 0 if t else 1
      for callees in _CALLS.findall(line):
        for callee in callees.split(","):
          callee = callee.strip().lstrip("%")
          if callee in bodies and callee != comp:
            sub = total(callee, depth + 1)
            for k in out:
              out[k] += trips * sub[k]
    memo[comp] = out
    return out

  per_kind = total(entry) if entry else {k: 0.0 for k in _COLLECTIVES}
  return {"bytes_per_device": sum(per_kind.values()),
          "by_kind": {k: v for k, v in per_kind.items() if v},
          "loops_without_trip_count": unknown_trips}


def mosaic_kernels(hlo_text: str) -> dict[str, int]:
  """Mosaic (Pallas TPU) calls in a compiled HLO by kernel name, e.g. splash attention's
  {"splash_mha_fwd_residuals": 2, "splash_mha_dq_no_residuals": 2, ...}."""
  counts: dict[str, int] = {}
  for m in re.finditer(r"%([\w.-]+) = [^\n]*custom_call_target=\"tpu_custom_call\"", hlo_text):
    name = re.sub(r"\.\d+$", "", m.group(1))
    counts[name] = counts.get(name, 0) + 1
  return dict(sorted(counts.items()))


def roofline_bounds(chip, per_chip: int, num_devices: int, *, flops_step: float | None,
                    xla_flops_per_device: float | None, state_bytes_per_device: int,
                    collectives: dict[str, Any]) -> dict[str, Any]:
  """Lower bound on step time and upper bound on MFU from the chip's published peaks.

  Three times per device, each a floor the step cannot beat: FLOPs / peak FLOP/s; the
  optimizer update's HBM traffic (it reads and writes every parameter and optimizer-state
  byte once: 2 x state bytes) / HBM bandwidth; collective bytes / ICI bandwidth. With perfect
  overlap the step takes at least the largest; MFU is at most compute time / that bound.
  Activation traffic, remat and imperfect overlap all make the real step slower.
  """
  peak = chip.bf16_flops / per_chip
  if flops_step is not None:
    flops, flops_source = flops_step / num_devices, "analytic (method.flops_per_token)"
  else:
    flops, flops_source = xla_flops_per_device or 0.0, "XLA cost analysis (no analytic count)"
  times = {
      "compute_s": flops / peak,
      "hbm_s": 2 * state_bytes_per_device / (chip.hbm_bytes_per_s / per_chip),
      "ici_s": collectives["bytes_per_device"] / (chip.ici_bytes_per_s / per_chip),
  }
  bound = max(times.values())
  return {
      "label": "ESTIMATE from published peak figures: lower bound on step time, upper bound "
               "on MFU (not a measurement)",
      "chip": chip.name, "chip_source": chip.source, "devices_per_chip": per_chip,
      "peak_flops_per_device": peak, "flops_per_device": flops, "flops_source": flops_source,
      "hbm_bytes_per_s_per_device": chip.hbm_bytes_per_s / per_chip,
      "ici_bytes_per_s_per_device": chip.ici_bytes_per_s / per_chip,
      "xla_flops_per_device": xla_flops_per_device,
      "hbm_bytes_per_device": 2 * state_bytes_per_device,
      "collective_bytes_per_device": collectives["bytes_per_device"],
      "collectives_by_kind": collectives["by_kind"],
      "loops_without_trip_count": collectives["loops_without_trip_count"],
      **times, "step_time_lower_bound_s": bound,
      "bound_by": max(times, key=times.get).removesuffix("_s"),
      "mfu_upper_bound": times["compute_s"] / bound if bound > 0 else None,
  }


def make_plan(config, num_devices: int | None, chips: list[str] | None = None,
              top: int = 8, *, topology: str = "", num_slices: int = 1) -> dict[str, Any]:
  """Compiles the train step of `config`; returns the report dict.

  With `topology` (e.g. "v5e:4x4"), for the devices of that libtpu topology (`num_slices`
  slices) with the TPU compiler, plus a roofline estimate; else for the first `num_devices`
  devices jax sees (fake CPU devices).
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

  dcn = dict(config.get("mesh_dcn") or {})
  if topology:
    from tokenlab.topology import get_topology
    devices = list(get_topology(topology, num_slices).devices)
    num_devices = len(devices)
    if num_slices > 1 and math.prod(int(v) for v in dcn.values()) == 1:
      dcn = {"data": num_slices}  # What launch/gke.py --num-slices sets.
  else:
    devices = jax.devices()[:num_devices]
    if len(devices) < num_devices:
      raise TokenlabError(f"jax sees {len(devices)} devices, fewer than --devices "
                          f"{num_devices}; run `tokenlab plan` as its own command")
  tc = config.train
  mesh = make_mesh(config.mesh, devices, dcn)
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
  batch_sh = partitioning.batch_shardings(mesh, rules,
                                         {k: s.shape for k, s in global_batch.items()})
  batch_in = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sh[k])
              for k, s in global_batch.items()}
  rng_in = jax.eval_shape(lambda: jax.random.key(0))
  if topology:
    # The rng is an argument of the step: on a topology it must name a topology device.
    rng_in = jax.ShapeDtypeStruct(rng_in.shape, rng_in.dtype,
                                  sharding=jax.sharding.NamedSharding(mesh, jax.P()))

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
  if topology:
    # The target chip only; v4 compiles one device per TensorCore (2 per chip).
    from tokenlab.topology import chip_of_topology
    chip = chip_of_topology(topology)
    per_chip = devices_per_chip(devices)
    hbm = {chip.name: chip.hbm_bytes // per_chip}
  else:
    hbm = {c: CHIPS[c] for c in ([c.lower() for c in chips] if chips else list(CHIPS))}
  fits = {c: {"hbm_bytes": b, "fits": peak <= b, "headroom_bytes": b - peak}
          for c, b in hbm.items()}
  roofline = None
  hlo_text = compiled.as_text()
  if topology:
    flops_token = None
    if "inputs" in global_batch and hasattr(method, "flops_per_token"):
      flops_token = method.flops_per_token(int(global_batch["inputs"].shape[1]))
    tokens = (math.prod(global_batch["inputs"].shape[:2]) if "inputs" in global_batch else 0)
    roofline = roofline_bounds(
        chip, per_chip, num_devices,
        flops_step=flops_token * tokens if flops_token else None,
        xla_flops_per_device=_cost(compiled, "flops"),
        state_bytes_per_device=per_dev(param_rows) + per_dev(opt_rows),
        collectives=collective_bytes(hlo_text, num_devices))
  backend = (f"the TPU compiler (libtpu) for {topology}"
             + (f" x {num_slices} slices" if num_slices > 1 else "") if topology else
             f"{jax.default_backend()} (fake devices: XLA:CPU buffer assignment)")
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
      "backend": backend, "topology": topology or None, "num_slices": num_slices,
      "mesh_dcn": {k: int(v) for k, v in dcn.items() if int(v) != 1},
      "roofline": roofline,
      # Which Pallas TPU kernels the step runs (splash attention on TPU by default).
      "mosaic_kernels": mosaic_kernels(hlo_text),
  }


def _gib(n: float) -> str:
  """Bytes as GiB, or MiB below 1 GiB (small configs would read 0.000 GiB)."""
  if abs(n) >= GiB:
    return f"{n / GiB:8.2f} GiB"
  return f"{n / 2**20:8.1f} MiB"


def _secs(t: float) -> str:
  """Seconds as ms, or us below 0.1 ms (small configs would read 0.0 ms)."""
  return f"{t * 1e3:.1f} ms" if t >= 1e-4 else f"{t * 1e6:.1f} us"


def format_plan(report: dict[str, Any]) -> str:
  """The human-readable report."""
  pd = report["per_device"]
  lines = [
      f"plan: {report['devices']} devices, mesh {report['mesh']}"
      + (f" (over DCN: {report['mesh_dcn']})" if report.get("mesh_dcn") else "") + ", "
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
  rf = report.get("roofline")
  if rf:
    lines += [
        f"roofline ({rf['label']}), {rf['chip']} figures from {rf['chip_source']}:",
        f"  compute   {rf['flops_per_device']:.3e} FLOP/device ({rf['flops_source']}) / "
        f"{rf['peak_flops_per_device'] / 1e12:.0f} TFLOP/s peak = {_secs(rf['compute_s'])}",
        f"  HBM       {_gib(rf['hbm_bytes_per_device']).strip()}/device (optimizer update "
        f"reads + writes the state) / {rf['hbm_bytes_per_s_per_device'] / 1e9:.0f} GB/s = "
        f"{_secs(rf['hbm_s'])}",
        f"  ICI       {_gib(rf['collective_bytes_per_device']).strip()}/device of collectives "
        f"({', '.join(f'{k} {_gib(v).strip()}' for k, v in rf['collectives_by_kind'].items())})"
        f" / {rf['ici_bytes_per_s_per_device'] / 1e9:.0f} GB/s = {_secs(rf['ici_s'])}",
        f"  step time >= {_secs(rf['step_time_lower_bound_s'])} ({rf['bound_by']}-bound); "
        f"MFU <= {rf['mfu_upper_bound']:.0%}",
    ]
    if rf["xla_flops_per_device"]:
      lines.append(f"  (XLA's FLOP count: {rf['xla_flops_per_device']:.3e}/device)")
    if rf["loops_without_trip_count"]:
      lines.append(f"  ({rf['loops_without_trip_count']} loop(s) without a known trip count "
                   "counted once: ICI bytes may be low)")
  if report.get("mosaic_kernels"):
    lines.append("Mosaic kernels in the step: " + ", ".join(
        f"{k} x{n}" for k, n in report["mosaic_kernels"].items()))
  lines.append("fits:")
  for chip, f in report["fits"].items():
    verdict = "fits" if f["fits"] else "DOES NOT FIT"
    lines.append(f"  {chip:<5} {f['hbm_bytes'] / GiB:6.1f} GiB HBM: {verdict} "
                 f"({f['headroom_bytes'] / GiB:+.2f} GiB headroom)")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  """`tokenlab plan ...`; returns the exit status (0 = compiled; fit or not is reported)."""
  args, rest = _parse_args(argv)
  overrides = rest
  if args.topology:
    # This process only compiles; computing stays on CPU (no TPU backend start-up).
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
      os.environ.setdefault("JAX_PLATFORMS", "cpu")
  else:
    child = ensure_cpu_devices(args.devices, argv)
    if child is not None:
      return child
  from tokenlab.config import load_config
  config = load_config(args.config, overrides)
  report = make_plan(config, args.devices or None, args.chip, args.top,
                     topology=args.topology, num_slices=args.num_slices)
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
