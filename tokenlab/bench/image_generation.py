"""`tokenlab bench image_generation`: images/s of the three image samplers on one backbone size.

Peer: autoregressive decoding of a grid of image codes with the key/value cache (the `elm`
method's AR sampler, tokenlab/nn/image_ar.py: one forward step per code). Subjects, in the same
run and at the same transformer size (d_model, layers, heads) and grid: MaskGIT iterative
decoding (elm's MLM sampler, tokenlab/nn/maskgit.py: `--maskgit_steps` full forwards of the
grid) and flow matching (a DiT, tokenlab/nn/vision.py, integrated by
tokenlab/nn/flow_matching.py's Euler sampler: `--flow_steps` full forwards of a continuous
latent grid with `--latent_channels` channels). Sampling speed does not depend on the
parameters' values: random ones. All three are class-conditional without guidance (guidance
doubles every sampler's batch alike). Compilation is excluded (each jitted sampler runs once
before it is timed); the best of `--repeats` timings counts.
"""

from __future__ import annotations

from tokenlab.argparsing import Parser
import json
import os
import time


def main(argv: list[str]) -> int:
  parser = Parser(prog="tokenlab bench image_generation", description=__doc__)
  parser.add_argument("--grid", type=int, default=16, help="image tokens per side (grid x grid)")
  parser.add_argument("--batch", type=int, default=8, help="images per sampler call")
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--num_layers", type=int, default=4)
  parser.add_argument("--num_heads", type=int, default=4)
  parser.add_argument("--num_bits", type=int, default=10, help="bits per code (2^bits codes)")
  parser.add_argument("--maskgit_steps", type=int, default=8)
  parser.add_argument("--flow_steps", type=int, default=25)
  parser.add_argument("--latent_channels", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", default="", help="also write the results to this file")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from tokenlab.method import random_params
  from tokenlab.methods.elm import ELM, ElmConfig
  from tokenlab.nn.flow_matching import euler_sample
  from tokenlab.nn.vision import DiT

  n, b = args.grid * args.grid, args.batch
  labels = jnp.asarray(np.arange(b) % 10, jnp.int32)

  def best_time(fn, *inputs) -> float:
    jax.block_until_ready(fn(*inputs))
    best = float("inf")
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(*inputs))
      best = min(best, time.perf_counter() - start)
    return best

  def token_sampler(objective: str) -> float:
    method = ELM(ElmConfig(
        objective=objective, num_bits=args.num_bits, sub_tokens=1, num_tokens=n,
        num_classes=10, d_model=args.d_model, num_layers=args.num_layers,
        num_heads=args.num_heads, maskgit_steps=args.maskgit_steps))
    params = random_params(method, {"codes": jax.ShapeDtypeStruct((b, n), jnp.int32)},
                           scale=0.05)
    fn = jax.jit(lambda p, r: method.sample_codes(p, labels, r))
    return best_time(fn, params, jax.random.key(0))

  def flow_sampler() -> float:
    dit = DiT(patch_size=1, d_model=args.d_model, num_layers=args.num_layers,
              num_heads=args.num_heads, num_classes=10)
    noise = jax.random.normal(jax.random.key(1), (b, args.grid, args.grid,
                                                  args.latent_channels))
    shapes = jax.eval_shape(dit.init, jax.random.key(0), noise, jnp.zeros((b,)), labels)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(np.float32),
                          shapes)

    def sample(p, x0):
      return euler_sample(lambda x, t: dit.apply(p, x, t, labels), x0, args.flow_steps)

    return best_time(jax.jit(sample), params, noise)

  ar_s = token_sampler("ar")
  mg_s = token_sampler("mlm")
  fl_s = flow_sampler()
  rows = [("AR, KV cache (peer)", ar_s, n), ("MaskGIT", mg_s, args.maskgit_steps),
          ("flow matching, Euler", fl_s, args.flow_steps)]
  result = {
      "config": {"grid": args.grid, "batch": b, "d_model": args.d_model,
                 "num_layers": args.num_layers, "num_heads": args.num_heads,
                 "num_bits": args.num_bits, "maskgit_steps": args.maskgit_steps,
                 "flow_steps": args.flow_steps, "latent_channels": args.latent_channels},
      "samplers": {name: {"seconds": s, "images_per_sec": b / s, "forward_passes": f,
                          "speedup_vs_ar": ar_s / s} for name, s, f in rows},
      "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
  }
  print(f"image generation benchmark: {args.grid}x{args.grid} tokens, batch {b}, "
        f"d={args.d_model}, {args.num_layers} layers, {args.num_heads} heads, "
        f"{jax.default_backend()}")
  print(f"  {'sampler':24s} {'images/s':>10s} {'forwards':>9s} {'vs AR':>8s}")
  for name, s, f in rows:
    print(f"  {name:24s} {b / s:10.2f} {f:9d} {ar_s / s:7.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0
