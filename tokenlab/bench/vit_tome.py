"""`tokenlab bench vit_tome`: the ToMe ViT's images/s and accuracy vs r, fused kernel vs plain jnp.

The subject is the ToMe ViT of tokenlab/methods/tome.py merging through the token_merge
kernel API (`implementation` None: the Pallas kernels on GPU/TPU, the tuned jnp reference on
CPU); the peer is the same model and parameters merging with `plain_tome_merge`, ToMe's
merge.py written directly in jax.numpy (score matrix materialised, argsort, scatter-add). For
every r the two run interleaved in one process on the same validation images (best of
--repeats), and both accuracies are printed: they differ only through the token order (ToMe's
[unmerged A, B] vs the kernel's original order), which changes later A/B splits.

  tokenlab bench vit_tome --workdir RUN    # RUN: a trained `experiments/tome.py` run
  tokenlab bench vit_tome --quick          # tiny untrained ViT (smoke test, no claims)
"""

from __future__ import annotations

import time

from tokenlab.argparsing import Parser


def _timed(fn, args, repeats: int) -> float:
  import jax
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def main(argv: list[str]) -> int:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  p = Parser(prog="tokenlab bench vit_tome", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="", help="a trained experiments/tome.py run (its data "
                 "and parameters); required unless --quick")
  p.add_argument("--rs", default="0,4,8,12", help="comma-separated r (tokens merged per block)")
  p.add_argument("--images", type=int, default=500, help="validation images per forward")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--quick", action="store_true", help="tiny untrained ViT, 16 images, r=4")
  args = p.parse_args(argv)
  from tokenlab.evals.image_samples import load_split
  from tokenlab.train.inference import load_trained

  if args.quick:
    from tokenlab.config import load_config
    from tokenlab.registry import build_method
    config = load_config("experiments/tome.py:size=tiny")
    dataset, rs, count, repeats = config.data.name, [4], 16, 1
  else:
    if not args.workdir:
      from tokenlab.errors import TokenlabError
      raise TokenlabError("tokenlab bench vit_tome needs --workdir RUN (a trained "
                          "experiments/tome.py run), or --quick for a smoke test")
    dataset, rs, count, repeats = None, [int(r) for r in args.rs.split(",")], args.images, \
        args.repeats
  if not args.quick:
    import json
    import os
    with open(os.path.join(args.workdir, "config.json")) as f:
      dataset = json.load(f)["data"]["name"]
  valid = load_split(dataset, "validation")
  images = jnp.asarray(valid["image"][:count])
  labels = np.asarray(valid["label"][:count])
  example = {"image": np.asarray(images[:8]), "label": labels[:8].astype(np.int32),
             "mask": np.ones(8, np.float32)}
  if args.quick:
    method = build_method(config.model)
    params = nn.unbox(jax.jit(method.init)(jax.random.key(0), example))
  else:
    run = load_trained(args.workdir, example)
    method, params = run.method, nn.unbox(run.params)

  backend = jax.default_backend()
  print(f"backend={backend} devices={jax.device_count()} dataset={dataset} images={count} "
        f"model d={method.config.d_model} layers={method.config.num_layers} "
        f"(kernel implementation: {'pallas' if backend in ('gpu', 'tpu') else 'reference'})")
  print(f"{'r':>3} {'tokens':>7} | {'kernel img/s':>12} {'acc':>6} | {'plain img/s':>11} "
        f"{'acc':>6} | kernel/plain")
  key = jax.random.key(0)
  for r in rs:
    fns = {impl: jax.jit(lambda p, x, m=method.variant(r=r, implementation=impl):
                         m.forward(p, x, key)[0])
           for impl in ("kernel", "plain")}
    acc = {impl: float(np.mean(np.argmax(np.asarray(fn(params, images)), -1) == labels))
           for impl, fn in fns.items()}
    best = {impl: float("inf") for impl in fns}
    for _ in range(repeats):   # interleaved, so background load hits both alike
      for impl, fn in fns.items():
        best[impl] = min(best[impl], _timed(fn, (params, images), 1))
    ips = {impl: count / t for impl, t in best.items()}
    tokens = method.variant(r=r).token_counts(images.shape[1] * images.shape[2] //
                                               method.config.patch_size ** 2)[-1]
    print(f"{r:>3} {tokens:>7} | {ips['kernel']:>12.1f} {acc['kernel']:>6.3f} | "
          f"{ips['plain']:>11.1f} {acc['plain']:>6.3f} | {ips['kernel'] / ips['plain']:.2f}x"
          + ("  (quick: no claim)" if args.quick else ""))
  return 0
