"""Benchmark: CLEAR's circular local attention against dense attention, time vs resolution.

  tokenlab bench clear_attention                          # grids 16x16, 32x32, 64x64, r = 4
  tokenlab bench clear_attention --grids 16,32,64,96 --radius 8 --repeats 7

Both run in one process on the same inputs: ours is `tokenlab.kernels.neighborhood_attention_2d`
(shape "circle": query (y, x) sees keys with dy^2 + dx^2 < r^2; the backend's default
implementation), the peer `jax.nn.dot_product_attention` over all tokens (XLA). Each grid is
timed alternately (best of `--repeats`, the least disturbed by other work on a shared
machine), forward and forward+backward. The last lines give time(largest) / time(smallest)
for each: linear cost in the number of tokens N gives the token ratio (16 from 16x16 to
64x64), quadratic cost its square (256).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from tokenlab.argparsing import Parser
from tokenlab.bench.windowed_attention import _fwd_bwd, _ints


def _parser() -> Parser:
  p = Parser(prog="tokenlab bench clear_attention", description=__doc__.split("\n\n")[0])
  p.add_argument("--grids", type=_ints, default=[16, 32, 64],
                 help="square token grids (side lengths), e.g. 16,32,64")
  p.add_argument("--radius", type=float, default=4.0, help="circle radius in tokens")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--d-model", type=int, default=256, help="heads x head_dim")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--cases", default="forward,forward+backward",
                 help="comma-separated: forward, forward+backward")
  p.add_argument("--implementation", default=None,
                 help="ours: reference | pallas_gpu | pallas_tpu (default: by backend)")
  return p


def _best(fns: dict, inputs: dict, repeats: int) -> dict:
  """Best time of every (name, grid) function, all run alternately after one warm-up."""
  for key, fn in fns.items():
    jax.block_until_ready(fn(*inputs[key[1]]))
  best = {key: float("inf") for key in fns}
  for _ in range(repeats):
    for key, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*inputs[key[1]]))
      best[key] = min(best[key], time.perf_counter() - start)
  return best


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  from tokenlab.kernels import neighborhood_attention_2d
  dtype = jnp.dtype(args.dtype)
  head_dim = args.d_model // args.heads
  inputs = {}
  for g in args.grids:
    keys = jax.random.split(jax.random.PRNGKey(g), 3)
    shape = (args.batch, g * g, args.heads, head_dim)
    inputs[g] = tuple(jax.random.normal(key, shape, dtype) for key in keys)

  def ours(g):
    return lambda q, k, v: neighborhood_attention_2d(
        q, k, v, height=g, width=g, radius=args.radius, shape="circle",
        **({"implementation": args.implementation} if args.implementation else {}))

  def dense(q, k, v):
    return jax.nn.dot_product_attention(q, k, v)

  print(f"CLEAR attention, backend={jax.default_backend()}: ours = neighborhood_attention_2d "
        f"(circle r={args.radius:g}, {args.implementation or 'default'} implementation), "
        f"peer = jax.nn.dot_product_attention (dense, xla); batch={args.batch} "
        f"heads={args.heads} head_dim={head_dim} {args.dtype}; best of {args.repeats}, "
        "grids timed alternately")
  lo, hi = min(args.grids), max(args.grids)
  cases = [c for c in (("forward", lambda f: f), ("forward+backward", _fwd_bwd))
           if c[0] in args.cases.split(",")]
  for case, mk in cases:
    fns = {}
    for g in args.grids:
      fns[("local", g)] = jax.jit(mk(ours(g)))
      fns[("dense", g)] = jax.jit(mk(dense))
    best = _best(fns, inputs, args.repeats)
    print(f"{case}:")
    print(f"{'grid':>8}{'tokens':>8}{'local ms':>11}{'dense ms':>11}{'dense/local':>13}")
    for g in args.grids:
      t_local, t_dense = best[("local", g)], best[("dense", g)]
      print(f"{f'{g}x{g}':>8}{g * g:>8}{t_local * 1e3:11.2f}{t_dense * 1e3:11.2f}"
            f"{t_dense / t_local:12.1f}x", flush=True)
    tokens = (hi / lo) ** 2
    print(f"  time({hi}x{hi}) / time({lo}x{lo}): local "
          f"{best[('local', hi)] / best[('local', lo)]:.1f}, dense "
          f"{best[('dense', hi)] / best[('dense', lo)]:.1f} (linear = {tokens:.0f}, "
          f"quadratic = {tokens ** 2:.0f})", flush=True)
  return 0
