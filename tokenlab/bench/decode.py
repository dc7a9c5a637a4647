"""`tokenlab bench decode`: tokens/s of KV-cache decoding against the uncached loop.

Subject: `TransformerLM.sample` (tokenlab/nn/decode.py: prefill the prompt, then one token per
step with a key/value cache). Peer, in the same run: `sample_autoregressive` (nn/generate.py),
which recomputes the whole buffer at every step. Both decode greedily with the same random
parameters (a d=256, 4-layer transformer_lm by default) into a buffer of `--length` tokens.

Both loops cost the same at every step, whatever the position: the peer runs the model on the
whole buffer, and the cached step attends over the whole (masked) cache. So the peer is timed
on its last `--peer_steps` positions only (the prompt fills the rest of the buffer), which
keeps the run short without changing its tokens/s; the subject fills the buffer from a
`--prompt`-token prompt, its prefill included. Compilation is excluded (each jitted function
runs once before it is timed); the best of `--repeats` timings counts.
"""

from __future__ import annotations

from tokenlab.argparsing import Parser
import json
import os
import time


def main(argv: list[str]) -> int:
  parser = Parser(prog="tokenlab bench decode", description=__doc__)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--num_layers", type=int, default=4)
  parser.add_argument("--num_heads", type=int, default=4)
  parser.add_argument("--num_kv_heads", type=int, default=0)
  parser.add_argument("--vocab_size", type=int, default=256)
  parser.add_argument("--length", type=int, default=512, help="token buffer (and cache) length")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--prompt", type=int, default=16, help="prompt tokens (subject)")
  parser.add_argument("--peer_steps", type=int, default=32,
                      help="positions the uncached peer samples (the buffer's last ones)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", default="", help="also write the results to this file")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from tokenlab.method import random_params
  from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig

  cfg = TransformerLMConfig(vocab_size=args.vocab_size, d_model=args.d_model,
                            num_layers=args.num_layers, num_heads=args.num_heads,
                            num_kv_heads=args.num_kv_heads)
  method = TransformerLM(cfg)
  # Decoding speed does not depend on the parameters' values: random ones, nothing compiled.
  params = random_params(method, {"inputs": jax.ShapeDtypeStruct(
      (args.batch, args.length), jnp.int32)}, scale=0.05)
  rng = np.random.default_rng(0)
  buf = jnp.asarray(rng.integers(0, cfg.vocab_size, (args.batch, args.length)), jnp.int32)

  def timed(cached: bool, prompt_len: int) -> float:
    """Best wall time of one greedy decode of the buffer (compiled beforehand)."""
    lens = np.full((args.batch,), prompt_len)
    fn = jax.jit(lambda p, b, r: method.sample(p, b, lens, r, temperature=0.0, cached=cached))
    jax.block_until_ready(fn(params, buf, jax.random.key(0)))
    best = float("inf")
    for _ in range(args.repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(params, buf, jax.random.key(0)))
      best = min(best, time.perf_counter() - start)
    return best

  subject_new = args.length - args.prompt
  peer_new = min(args.peer_steps, args.length - 1)
  subject_s = timed(True, args.prompt)
  peer_s = timed(False, args.length - peer_new)
  subject_tok_s = args.batch * subject_new / subject_s
  peer_tok_s = args.batch * peer_new / peer_s
  ratio = subject_tok_s / peer_tok_s
  result = {
      "config": {"d_model": cfg.d_model, "num_layers": cfg.num_layers,
                 "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads or cfg.num_heads,
                 "vocab_size": cfg.vocab_size},
      "length": args.length, "batch": args.batch,
      "cached": {"new_tokens_per_row": subject_new, "seconds": subject_s,
                 "tokens_per_sec": subject_tok_s},
      "uncached": {"new_tokens_per_row": peer_new, "seconds": peer_s,
                   "tokens_per_sec": peer_tok_s},
      "speedup": ratio, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
  }
  print(f"decode benchmark: transformer_lm d={cfg.d_model}, {cfg.num_layers} layers, "
        f"{cfg.num_heads} heads, buffer {args.length}, batch {args.batch}, greedy, "
        f"{jax.default_backend()}")
  print(f"  KV cache (nn/decode.py)        {subject_tok_s:10.1f} tokens/s "
        f"({args.batch} x {subject_new} new tokens in {subject_s:.2f} s, prefill {args.prompt})")
  print(f"  peer: uncached (nn/generate.py){peer_tok_s:10.1f} tokens/s "
        f"({args.batch} x {peer_new} new tokens in {peer_s:.2f} s)")
  print(f"  speedup = ratio                {ratio:10.1f} x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0

