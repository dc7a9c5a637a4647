"""`tokenlab bench gpu`: the whole GPU check in one call (correctness, then every GPU benchmark).

For a machine with one GPU, lent for a few minutes: run it once and commit its report.

1. Correctness of the Pallas GPU kernels (Triton) against their jax.numpy references on random
   data: windowed attention (forward and gradients; causal, two-sided, GQA, packed segments,
   bfloat16) and the token-merge ops (merge_by_boundaries, ToMe matching + merge_tokens,
   local_window_merge; values and gradients). The references run in float32 at HIGHEST matmul
   precision on the same GPU.
2. `tokenlab bench windowed_attention --suite gpu`: ours vs cuDNN's local window at seq 8k and
   32k (window 511, causal), ours vs XLA dense at 16k two-sided; against a measured bf16 peak.
3. `tokenlab bench token_merge`: ToMe vs the plain jnp ToMe, merges vs the measured
   device-to-device copy bandwidth.
4. `tokenlab bench trainer` on `transformer_lm:size=1b` scaled to fit one GPU for a short run
   (batch 32 x 2048 tokens, no gradient accumulation, 12 steps), MFU against a measured
   bfloat16 matmul peak.
5. `tokenlab bench decode`: KV-cache decoding vs the uncached loop.

Writes OUT/gpu_check.json (everything, with each step's status and seconds) and
OUT/gpu_check.md (one table). Each step runs even if an earlier one failed; the exit status is
1 if any failed. `--smoke` runs step 1 at tiny sizes in the Pallas interpreter and skips the
benchmarks: it checks this script on a machine without a GPU, and measures nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import time
import traceback
from collections.abc import Callable
from typing import Any

from tokenlab.argparsing import Parser
from tokenlab.errors import TokenlabError

TRAINER_ARGS = ["--config", "experiments/transformer_lm.py:size=1b", "--steps", "12",
                "--log_every", "4", "--peak_size", "8192", "--peak_dtype", "bfloat16",
                "--config.train.batch_size=32", "--config.train.grad_accum_steps=1"]


# --------------------------------------------------------------------------- correctness


def _max_err(a, b) -> float:
  import jax
  import jax.numpy as jnp
  errs = jax.tree.map(lambda x, y: jnp.max(jnp.abs(x.astype(jnp.float32) -
                                                   y.astype(jnp.float32))), a, b)
  return float(max(jax.tree.leaves(errs)))


def attention_cases(smoke: bool) -> list[dict[str, Any]]:
  """(name, shapes, window, segments, dtype, tolerance) of the windowed-attention checks."""
  seq = 128 if smoke else 2048
  cases = [
      dict(name=f"causal w=(127,0) seq {seq}", b=1, s=seq, h=2, kv=2, d=64, window=(127, 0),
           segments=False, dtype="float32", tol=2e-3),
      dict(name=f"two-sided w=(64,64) GQA 4:2 seq {seq}", b=2, s=seq, h=4, kv=2, d=64,
           window=(64, 64), segments=False, dtype="float32", tol=2e-3),
      dict(name=f"causal w=(100,0) packed segments seq {seq}", b=1, s=seq, h=2, kv=2, d=64,
           window=(100, 0), segments=True, dtype="float32", tol=2e-3),
      dict(name=f"causal w=(255,0) bfloat16 seq {seq}", b=1, s=seq, h=2, kv=2, d=128,
           window=(255, 0), segments=False, dtype="bfloat16", tol=6e-2),
  ]
  # --smoke checks the script, not the kernels (tests/test_windowed_attention.py does, in the
  # interpreter): one case keeps the interpreter's compiles short.
  return cases[1:2] if smoke else cases


def check_attention(case: dict[str, Any], interpret: bool) -> dict[str, Any]:
  """Forward and q/k/v gradients of pallas_gpu vs the reference on one random case."""
  import jax
  import jax.numpy as jnp
  from tokenlab.kernels import windowed_attention
  dtype = jnp.dtype(case["dtype"])
  kq, kk, kv, kg = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(kq, (case["b"], case["s"], case["h"], case["d"]), dtype)
  k = jax.random.normal(kk, (case["b"], case["s"], case["kv"], case["d"]), dtype)
  v = jax.random.normal(kv, (case["b"], case["s"], case["kv"], case["d"]), dtype)
  g = jax.random.normal(kg, q.shape, jnp.float32)
  seg = None
  if case["segments"]:
    seg = jnp.cumsum(jax.random.bernoulli(jax.random.key(1), 0.01, (case["b"], case["s"])),
                     axis=1).astype(jnp.int32)

  def run(impl):
    def f(q, k, v):
      out = windowed_attention(q, k, v, window=case["window"], segment_ids=seg,
                               implementation=impl,
                               interpret=interpret if impl == "pallas_gpu" else None)
      return jnp.sum(out.astype(jnp.float32) * g), out
    with jax.default_matmul_precision("highest"):
      (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads

  out, grads = run("pallas_gpu")
  ref_out, ref_grads = run("reference")
  fwd, bwd = _max_err(out, ref_out), _max_err(grads, ref_grads)
  scale = max(1.0, _max_err(ref_grads, jax.tree.map(jnp.zeros_like, ref_grads)))
  ok = fwd <= case["tol"] and bwd <= case["tol"] * scale
  return {"kernel": "windowed_attention", "case": case["name"], "max_err_forward": fwd,
          "max_err_grads": bwd, "grad_scale": scale, "tolerance": case["tol"], "ok": ok}


def check_token_merge(smoke: bool, interpret: bool) -> list[dict[str, Any]]:
  """Values and x-gradients of the three merges, pallas_gpu vs reference."""
  import jax
  import jax.numpy as jnp
  from tokenlab.kernels import (bipartite_soft_matching, local_window_merge,
                                merge_by_boundaries, merge_tokens)
  b, n, d = (2, 64, 32) if smoke else (4, 2048, 128)
  x = jax.random.normal(jax.random.key(2), (b, n, d), jnp.float32)
  metric = jax.random.normal(jax.random.key(3), (b, n, d), jnp.float32)
  boundaries = jax.random.bernoulli(jax.random.key(4), 0.2, (b, n)).at[:, 0].set(True)
  r = n // 4
  cases: dict[str, Callable] = {
      "merge_by_boundaries": lambda impl, x: merge_by_boundaries(
          x, boundaries, implementation=impl, interpret=interpret)[0],
      f"ToMe r={r} (bipartite_soft_matching + merge_tokens)": lambda impl, x: merge_tokens(
          x, bipartite_soft_matching(metric, r, implementation=impl, interpret=interpret),
          implementation=impl, interpret=interpret)[0],
      "local_window_merge window 16 r 8": lambda impl, x: local_window_merge(
          x, metric, window=16, r=8, implementation=impl, interpret=interpret)[0],
  }
  if smoke:   # the script's plumbing only (tests/test_token_merge.py checks the kernels)
    cases = dict(list(cases.items())[:1])
  rows = []
  for name, fn in cases.items():
    def value_and_grad(impl, fn=fn):
      with jax.default_matmul_precision("highest"):
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(fn(impl, x) ** 2)))(x), fn(impl, x)
    (_, gk), outk = value_and_grad("pallas_gpu")
    (_, gr), outr = value_and_grad("reference")
    fwd, bwd = _max_err(outk, outr), _max_err(gk, gr)
    rows.append({"kernel": "token_merge", "case": name, "max_err_forward": fwd,
                 "max_err_grads": bwd, "tolerance": 1e-4, "ok": fwd <= 1e-4 and bwd <= 1e-3})
  return rows


# ----------------------------------------------------------------------------- the check


def _step(name: str, fn: Callable[[], Any], results: dict[str, Any]) -> None:
  """Runs one step, recording its status, seconds, printed output and value."""
  print(f"== {name}", flush=True)
  out = io.StringIO()
  t0 = time.perf_counter()
  entry: dict[str, Any] = {}
  try:
    with contextlib.redirect_stdout(out):
      entry["value"] = fn()
    entry["status"] = "ok"
  except Exception as e:  # noqa: BLE001 (a failed step is reported; the check goes on)
    entry["status"] = "failed"
    entry["error"] = f"{type(e).__name__}: {e}"[:2000]
    entry["traceback"] = traceback.format_exc()[-4000:]
  entry["seconds"] = time.perf_counter() - t0
  entry["output"] = out.getvalue()
  print(entry["output"], end="", flush=True)
  if entry["status"] != "ok":
    print(f"   FAILED: {entry['error']}", flush=True)
  print(f"   ({entry['seconds']:.1f} s)", flush=True)
  results["steps"][name] = entry


def _bench(module: str, argv: list[str], json_path: str | None = None) -> Any:
  import importlib
  code = importlib.import_module(f"tokenlab.bench.{module}").main(
      argv + (["--json", json_path] if json_path else []))
  if code:
    raise TokenlabError(f"tokenlab bench {module} exited with status {code}")
  if json_path:
    with open(json_path) as f:
      return json.load(f)
  return None


def markdown(results: dict[str, Any]) -> str:
  """The report as one markdown table per part (correctness, then benchmark outputs)."""
  lines = [f"# GPU check: {results['device']}", "",
           f"Command: `{results['command']}`; {results['date']}; total "
           f"{results['total_seconds']:.0f} s.", "",
           "| step | status | seconds |", "|---|---|---|"]
  for name, e in results["steps"].items():
    lines.append(f"| {name} | {e['status']} | {e['seconds']:.1f} |")
  checks = (results["steps"].get("correctness") or {}).get("value") or []
  if checks:
    lines += ["", "| kernel | case | max err fwd | max err grads | ok |", "|---|---|---|---|---|"]
    for c in checks:
      lines.append(f"| {c['kernel']} | {c['case']} | {c['max_err_forward']:.2e} | "
                   f"{c['max_err_grads']:.2e} | {'yes' if c['ok'] else 'NO'} |")
  for name, e in results["steps"].items():
    if name != "correctness" and e.get("output"):
      lines += ["", f"## {name}", "", "```", e["output"].rstrip(), "```"]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  parser = Parser(prog="tokenlab bench gpu", description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="docs/gpu", help="where gpu_check.json/.md go")
  parser.add_argument("--smoke", action="store_true",
                      help="no GPU: tiny correctness checks in the Pallas interpreter only")
  args = parser.parse_args(argv)

  import jax
  backend = jax.default_backend()
  if backend != "gpu" and not args.smoke:
    raise TokenlabError(f"tokenlab bench gpu needs a GPU (jax.default_backend() is "
                        f"'{backend}'); run it on a GPU machine, or pass --smoke to check the "
                        f"script here")
  os.makedirs(args.out, exist_ok=True)
  results: dict[str, Any] = {
      "device": f"{jax.devices()[0].device_kind} ({backend})", "smoke": args.smoke,
      "command": "tokenlab bench gpu " + " ".join(argv), "date": time.strftime("%Y-%m-%d %H:%M"),
      "jax": jax.__version__, "host": platform.node(), "steps": {}}
  t0 = time.perf_counter()

  def correctness():
    rows = [check_attention(c, interpret=args.smoke) for c in attention_cases(args.smoke)]
    rows += check_token_merge(args.smoke, interpret=args.smoke)
    for r in rows:
      print(f"{r['kernel']:20s} {r['case']:52s} fwd {r['max_err_forward']:.2e} grads "
            f"{r['max_err_grads']:.2e} {'ok' if r['ok'] else 'MISMATCH'}")
    bad = [r["case"] for r in rows if not r["ok"]]
    if bad:
      raise TokenlabError(f"kernel mismatches: {bad}")
    return rows

  _step("correctness", correctness, results)
  if not args.smoke:
    _step("windowed_attention", lambda: _bench("windowed_attention", ["--suite", "gpu"]), results)
    _step("token_merge", lambda: _bench("token_merge", []), results)
    _step("trainer transformer_lm 1b (scaled)", lambda: _bench(
        "trainer", TRAINER_ARGS, os.path.join(args.out, "trainer.json")), results)
    _step("decode", lambda: _bench("decode", [], os.path.join(args.out, "decode.json")),
          results)
  results["total_seconds"] = time.perf_counter() - t0
  with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
  with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
    f.write(markdown(results))
  print(f"wrote {args.out}/gpu_check.json and {args.out}/gpu_check.md "
        f"({results['total_seconds']:.0f} s)")
  return 0 if all(e["status"] == "ok" for e in results["steps"].values()) else 1
