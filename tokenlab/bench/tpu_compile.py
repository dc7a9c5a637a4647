"""`tokenlab bench tpu_compile`: every Pallas TPU kernel compiled by libtpu, against the roofline.

No TPU needed: each kernel is compiled (`jax.jit(f).lower(...).compile()`) for one device of
a libtpu topology (v5e:2x2 and v6e:2x2 by default) through the public functions with
`implementation="pallas_tpu"`. Per case it prints the compile time, the compiled program's
temporary memory (`memory_analysis()`), XLA's estimated seconds (`cost_analysis()`
"optimal_seconds") and, as the named peer, the analytic roofline time
max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) from the chip's published figures
(`tokenlab.topology.CHIPS`). All three times are ESTIMATES, not measurements: nothing runs.

Analytic counts: windowed attention FLOPs are the band's matmul FLOPs as the kernels execute
them (forward 2 matmuls of 2*D FLOPs per visible (query, key) pair and head; the gradient
program adds 7: the dq kernel's 3 and the dk/dv kernel's 4); bytes are the program's inputs
read and outputs written once. Token merges are memory-bound: bytes are x (and the metric)
read once and the merged rows written once (the gradient program also reads the cotangent and
writes dx); FLOPs count the similarity matmuls and weighted sums.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import numpy as np

from tokenlab.argparsing import Parser

MiB = 2 ** 20


def _visible_pairs(seq: int, left: int, right: int) -> int:
  """Number of (query, key) pairs inside the band |window| for a sequence of `seq`."""
  i = np.arange(seq)
  lo = np.maximum(i - left, 0)
  hi = np.minimum(i + right, seq - 1)
  return int(np.sum(hi - lo + 1))


def _nbytes(*specs) -> int:
  return int(sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in specs))


def cases(quick: bool) -> list[dict[str, Any]]:
  """(name, builder) of every kernel case; builders take a spec factory and return
  (fn, args, flops, bytes)."""
  import jax
  import jax.numpy as jnp
  from tokenlab.kernels import token_merge as tm
  from tokenlab.kernels import windowed_attention

  seq = 1024 if quick else 4096
  out = []
  for window in ([(256, 0)] if quick else [(256, 0), (511, 0), (128, 128)]):
    for grad in (False, True):
      def build(s, dtype, window=window, grad=grad):
        b, h, kvh, d = 2, 8, 8, 128
        q = s((b, seq, h, d), dtype)
        kv = s((b, seq, kvh, d), dtype)
        attn = lambda q, k, v: windowed_attention(q, k, v, window=window,
                                                  implementation="pallas_tpu")
        pairs = _visible_pairs(seq, *window)
        matmuls = 9 if grad else 2
        flops = matmuls * 2 * d * pairs * b * h
        io = _nbytes(q, kv, kv) + _nbytes(q)  # q, k, v in; out (or do) once
        if grad:
          fn = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32)),
                        argnums=(0, 1, 2))
          io += _nbytes(q, kv, kv)  # dq, dk, dv out
        else:
          fn = attn
        return fn, (q, kv, kv), flops, io
      out.append({"kernel": f"windowed_attention {window}", "grad": grad, "build": build})

  def merge_case(kind: str, grad: bool):
    def build(s, dtype):
      b, n, d, c = 4, seq, 256, 256
      x = s((b, n, d), dtype)
      if kind == "merge_by_boundaries":
        other = s((b, n), jnp.bool_)
        f = lambda x, o: tm.merge_by_boundaries(x, o, max_groups=n // 4,
                                                implementation="pallas_tpu")[0]
        m_out, flops = n // 4, 2 * b * n * d
      elif kind == "bipartite_soft_matching+merge_tokens":
        other = s((b, n, c), dtype)
        f = lambda x, o: tm.merge_tokens(
            x, tm.bipartite_soft_matching(o, n // 4, implementation="pallas_tpu"),
            implementation="pallas_tpu")[0]
        m_out, flops = n - n // 4, 2 * b * (n // 2) ** 2 * c + 2 * b * n * d
      else:
        other = s((b, n, c), dtype)
        f = lambda x, o: tm.local_window_merge(x, o, window=16, r=4,
                                               implementation="pallas_tpu")[0]
        m_out, flops = n - n // 4, 2 * b * n * c + 4 * b * n * d
      io = _nbytes(x, other) + b * m_out * d * np.dtype(dtype).itemsize
      if grad:
        fn = jax.grad(lambda x, o: jnp.sum(f(x, o).astype(jnp.float32)))
        io += _nbytes(x) + b * m_out * d * 4  # dx out, f32 cotangent in
      else:
        fn = f
      return fn, (x, other), flops, io
    return {"kernel": kind, "grad": grad, "build": build}

  for kind in ("merge_by_boundaries", "bipartite_soft_matching+merge_tokens",
               "local_window_merge"):
    for grad in (False, True):
      out.append(merge_case(kind, grad))
  return out


def compile_case(case: dict[str, Any], topology: str, dtype) -> dict[str, Any]:
  """Compiles one case for one device of `topology`; returns the row of figures."""
  import jax
  from tokenlab.plan import _cost
  from tokenlab.topology import chip_of_topology, get_topology
  chip = chip_of_topology(topology)
  sharding = jax.sharding.SingleDeviceSharding(get_topology(topology).devices[0])
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  fn, args, flops, io = case["build"](spec, dtype)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  roofline = max(flops / chip.bf16_flops, io / chip.hbm_bytes_per_s)
  xla_s = _cost(compiled, "optimal_seconds")
  return {"kernel": case["kernel"], "pass": "fwd+bwd" if case["grad"] else "fwd",
          "topology": topology, "dtype": np.dtype(dtype).name,
          "mosaic_calls": compiled.as_text().count("tpu_custom_call"),
          "compile_s": compile_s, "temp_bytes": int(mem.temp_size_in_bytes),
          "xla_optimal_s": xla_s, "analytic_flops": flops, "analytic_bytes": io,
          "roofline_s": roofline,
          "xla_over_roofline": (xla_s / roofline) if xla_s and roofline else None}


def main(argv: list[str]) -> int:
  """Compiles every case; prints a markdown table (and writes --json)."""
  parser = Parser(prog="tokenlab bench tpu_compile", description=__doc__.splitlines()[0])
  parser.add_argument("--topologies", default="v5e:2x2,v6e:2x2")
  parser.add_argument("--dtypes", default="bfloat16")
  parser.add_argument("--quick", action="store_true", help="seq 1024, one window")
  parser.add_argument("--json", default="", help="also write the rows here")
  args = parser.parse_args(argv)
  os.environ.pop("TOKENLAB_PALLAS_INTERPRET", None)  # Compile the Mosaic kernels.
  import jax.numpy as jnp
  rows = []
  print("| kernel | pass | topology | dtype | Mosaic calls | compile s | temp MiB | XLA "
        "optimal_seconds (est.) | analytic FLOPs | analytic bytes | roofline s (est.) | "
        "XLA / roofline |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for topology in args.topologies.split(","):
    for dtype in args.dtypes.split(","):
      for case in cases(args.quick):
        r = compile_case(case, topology, jnp.dtype(dtype))
        rows.append(r)
        ratio = f"{r['xla_over_roofline']:.2f}" if r["xla_over_roofline"] else "n/a"
        xla = f"{r['xla_optimal_s']:.3e}" if r["xla_optimal_s"] is not None else "n/a"
        print(f"| {r['kernel']} | {r['pass']} | {topology} | {r['dtype']} | "
              f"{r['mosaic_calls']} | {r['compile_s']:.1f} | {r['temp_bytes'] / MiB:.1f} | "
              f"{xla} | {r['analytic_flops']:.3e} | {r['analytic_bytes']:.3e} | "
              f"{r['roofline_s']:.3e} | {ratio} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return 0
