"""`tokenlab bench token_merge`: token merging side by side with named peers, as ratios.

Cases (issue 4's targets):
- tome: bipartite matching + merge, B=8, N=4096, D=64, r=1024, against `plain_jnp_tome`, a
  plain jax.numpy ToMe that materialises the score matrix, takes max/argmax, argsorts and
  scatter-adds. Target: >= 1.8x faster.
- boundaries: merge_by_boundaries, B=8, N=65536, D=256, against a memory copy of x. Target:
  within 2x of the copy (it is memory-bound).
- window: local_window_merge (window 16, r 8) at the same size, against the copy (reported).

Peer and subject run interleaved in the same process and the best of several runs is kept,
so the ratios hold on a shared machine. On a GPU it also prints achieved bandwidth
(bytes read + written / time) against the measured device-to-device copy bandwidth.
"""

from __future__ import annotations

from tokenlab.argparsing import Parser
import time

import jax
import jax.numpy as jnp


def plain_jnp_tome(x: jax.Array, metric: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
  """The peer: ToMe's merge.py written directly in jax.numpy (scores materialised); it lives
  in tokenlab.nn.token_reduction as `plain_tome_merge` (the ViT's "plain" path uses it too)."""
  from tokenlab.nn.token_reduction import plain_tome_merge
  return plain_tome_merge(x, metric, r)


def _time(fn, args, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out.append(time.perf_counter() - t0)
  return out


def _side_by_side(subject, peer, args, repeats: int) -> tuple[float, float]:
  jax.block_until_ready(subject(*args))
  jax.block_until_ready(peer(*args))
  ts, tp = [], []
  for _ in range(repeats):  # interleaved, so background load hits both alike
    tp += _time(peer, args, 1)
    ts += _time(subject, args, 1)
  return min(ts), min(tp)


def main(argv: list[str]) -> int:
  from tokenlab.kernels import (bipartite_soft_matching, local_window_merge,
                                merge_by_boundaries, merge_tokens)

  p = Parser(prog="tokenlab bench token_merge", description=__doc__)
  p.add_argument("--cases", default="tome,boundaries,window",
                 help="comma-separated subset of: tome, boundaries, window")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, no claims)")
  p.add_argument("--implementation", default=None,
                 help="reference | pallas_gpu | pallas_tpu (default: best for the backend)")
  args = p.parse_args(argv)
  impl = args.implementation
  cases = [c.strip() for c in args.cases.split(",") if c.strip()]
  backend = jax.default_backend()
  print(f"backend={backend} devices={jax.device_count()} implementation={impl or 'auto'}")
  key = jax.random.key(0)
  ok = True

  if "tome" in cases:
    b, n, d, r = (2, 256, 16, 64) if args.quick else (8, 4096, 64, 1024)
    kx, km = jax.random.split(key)
    x = jax.random.normal(kx, (b, n, d), jnp.float32)
    metric = jax.random.normal(km, (b, n, d), jnp.float32)

    @jax.jit
    def subject(x, metric):
      plan = bipartite_soft_matching(metric, r, implementation=impl)
      return merge_tokens(x, plan, implementation=impl)

    peer = jax.jit(lambda x, metric: plain_jnp_tome(x, metric, r))
    ts, tp = _side_by_side(subject, peer, (x, metric), args.repeats)
    speedup = tp / ts
    held = speedup >= 1.8
    ok &= held or args.quick
    verdict = "quick: no claim" if args.quick else (
        f"target >= 1.8x: {'held' if held else 'NOT held'}")
    print(f"tome       B={b} N={n} D={d} r={r}: tokenlab {ts*1e3:8.2f} ms | plain_jnp_tome "
          f"{tp*1e3:8.2f} ms | speedup {speedup:5.2f}x ({verdict})")

  copy = jax.jit(lambda x: x * 1.0)
  for case in ("boundaries", "window"):
    if case not in cases:
      continue
    b, n, d = (2, 1024, 32) if args.quick else (8, 65536, 256)
    kx, kb = jax.random.split(jax.random.fold_in(key, 1))
    x = jax.random.normal(kx, (b, n, d), jnp.float32)
    if case == "boundaries":
      bnd = jax.random.uniform(kb, (b, n)) < 0.25  # mean chunk of 4, like H-Net's stage 1
      subject = jax.jit(lambda x, bnd: merge_by_boundaries(x, bnd, implementation=impl)[0])
      sargs = (x, bnd)
      out_rows = n  # padded to max_groups = N
      label = "merge_by_boundaries"
    else:
      metric = jax.random.normal(kb, (b, n, 16), jnp.float32)
      subject = jax.jit(lambda x, metric: local_window_merge(x, metric, window=16, r=8,
                                                             implementation=impl)[0])
      sargs = (x, metric)
      out_rows = n // 2
      label = "local_window_merge(w=16,r=8)"
    jax.block_until_ready(subject(*sargs))
    jax.block_until_ready(copy(x))
    ts, tc = [], []
    for _ in range(args.repeats):
      tc += _time(copy, (x,), 1)
      ts += _time(subject, sargs, 1)
    ts, tc = min(ts), min(tc)
    ratio = ts / tc
    line = (f"{case:10s} {label} B={b} N={n} D={d}: {ts*1e3:8.2f} ms | copy of x "
            f"{tc*1e3:8.2f} ms | ratio {ratio:5.2f}x copy")
    if case == "boundaries":
      held = ratio <= 2.0
      ok &= held or args.quick
      line += (" (quick: no claim)" if args.quick else
               f" (target <= 2x: {'held' if held else 'NOT held'})")
    if backend == "gpu":
      nbytes = x.size * 4 + b * out_rows * d * 4
      copy_bw = 2 * x.size * 4 / tc
      line += (f" | {nbytes / ts / 1e9:7.1f} GB/s vs copy {copy_bw / 1e9:7.1f} GB/s "
               f"({100 * nbytes / ts / copy_bw:4.1f}%)")
    print(line)
  return 0 if ok else 1
