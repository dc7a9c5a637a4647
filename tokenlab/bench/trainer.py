"""`tokenlab bench trainer`: training throughput and MFU against this machine's matmul peak.

Runs a short training of an experiment (default `transformer_lm:size=small`) through the real
trainer (data pipeline, sharded jit step, metrics), and in the same run measures the peak
FLOP/s of the default device with one large matmul. MFU = model FLOPs per second over that
peak. Model FLOPs per step are what the trainer logs as `perf/flops_per_step`: the method's
analytic count (`flops_per_token`, language models) or, for methods without one (image
tokenizers, diffusion), XLA's cost analysis of the compiled step. The first logged window
(which still warms caches) is dropped.
"""

from __future__ import annotations

from tokenlab.argparsing import Parser
import json
import os
import tempfile

DEFAULT = "experiments/transformer_lm.py:size=small"


def main(argv: list[str], *, prog: str = "tokenlab bench trainer", default: str = DEFAULT,
         doc: str | None = None) -> int:
  parser = Parser(prog=prog, description=doc or __doc__)
  parser.add_argument("--config", default=default)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--log_every", type=int, default=10)
  parser.add_argument("--peak_size", type=int, default=2048,
                      help="n of the n x n x n float32 matmul that measures the peak")
  parser.add_argument("--peak_dtype", choices=("float32", "bfloat16"), default="float32",
                      help="dtype of the peak matmul (bfloat16 on accelerators)")
  parser.add_argument("--json", default="", help="also write the results to this file")
  args, overrides = parser.parse_with_overrides(argv)

  from tokenlab import registry
  from tokenlab.config import load_config
  from tokenlab.train.loop import train
  from tokenlab.train.metrics import measure_matmul_peak, read_metrics

  overrides = [f"--config.train.steps={args.steps}", f"--config.train.log_every={args.log_every}",
               "--config.train.eval_every=0", "--config.train.eval_batches=1",
               f"--config.checkpoint.every_steps={args.steps}",
               "--config.checkpoint.async_save=false", "--config.train.progress=false",
               *overrides]
  config = load_config(args.config, overrides)
  peak_before = measure_matmul_peak(args.peak_size, dtype=args.peak_dtype)
  with tempfile.TemporaryDirectory() as workdir:
    train(config, workdir)
    metrics = read_metrics(workdir)
  peak_after = measure_matmul_peak(args.peak_size, dtype=args.peak_dtype)
  peak = max(peak_before, peak_after)
  rows = [r for r in metrics if "perf/steps_per_sec" in r]
  flops_step = next(r["perf/flops_per_step"] for r in metrics if "perf/flops_per_step" in r)
  steady = rows[1:] or rows
  steps_s = sum(r["perf/steps_per_sec"] for r in steady) / len(steady)
  tok_s = sum(r["perf/tokens_per_sec"] for r in steady) / len(steady)
  # The trainer counts seq_len tokens per example for token batches ("inputs"), 1 otherwise.
  seq_len = tok_s / (steps_s * config.train.batch_size)
  language = seq_len > 1.5
  analytic = language and registry.build_method(config.model).flops_per_token(
      round(seq_len)) is not None
  # perf/mfu in the log uses the cached peak; recompute against the peak measured here.
  model_flops_s = steps_s * flops_step
  mfu = model_flops_s / peak
  batch = config.train.batch_size
  result = {
      "config": args.config, "steps": args.steps, "batch_size": batch,
      "steps_per_sec": steps_s, "examples_per_sec": steps_s * batch,
      "tokens_per_sec": tok_s if language else None,
      "flops_source": "analytic (method.flops_per_token)" if analytic else "XLA cost analysis",
      "model_tflops_per_sec": model_flops_s / 1e12,
      "matmul_peak_tflops_per_sec": peak / 1e12, "mfu": mfu,
      "peak_before_after_gflops": [peak_before / 1e9, peak_after / 1e9],
      "cpu_count": os.cpu_count(),
  }
  print(f"trainer benchmark: {args.config}, {args.steps} steps, batch {batch}")
  if language:
    print(f"  tokens/s (steady state)      {tok_s:12.0f}")
  print(f"  examples/s (steady state)    {steps_s * batch:12.1f}")
  print(f"  model FLOP/s                 {model_flops_s / 1e9:12.2f} GFLOP/s "
        f"({result['flops_source']})")
  print(f"  peer: {args.peak_size}^3 {args.peak_dtype} matmul {peak / 1e9:12.2f} GFLOP/s "
        f"(best of before/after: "
        f"{peak_before / 1e9:.1f}, {peak_after / 1e9:.1f})")
  print(f"  MFU = ratio                  {100 * mfu:11.1f} %")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0
