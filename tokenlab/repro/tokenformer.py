"""Mini-reproduction of TokenFormer's progressive scaling (Wang et al., arXiv 2410.23168).

The paper's claim (its incremental-scaling experiment): a TokenFormer grown from a trained
smaller one by appending key/value parameter tokens, then trained for a fraction of the
from-scratch budget, reaches a loss comparable to the larger model trained from scratch, at a
fraction of the total training compute (counting the smaller model's training).

Setup: byte-level Python source (the embedded `pysrc` dataset, 128-byte rows, batch 16), a
2-layer d=64 TokenFormer with 4 heads.
  small:      16 tokens for q/k/v/out, 64 for the feed-forward Pattention; S = 800 steps.
  grown:      `tokenlab grow small --factor 4` (64 / 256 tokens; new keys zero, new values
              fresh, sqrt(n) held at the small counts so growth is exact); G = S / 5 = 160
              steps (a fifth of the from-scratch budget), data seed + 1 (fresh batches).
  scratch:    the 64 / 256-token model from scratch, S steps.
  scratch_eq: the same from scratch with the grown arm's total compute (small + grown), its
              own full schedule.
Compute = training FLOPs from `flops_per_token` (6 x matmul parameters + attention) x tokens.
Also measured: the eval loss of the grown model before its first step minus the small
model's (exactness of growth on trained weights).

Verdict rule (fixed before the runs), final eval loss L on 16 validation batches, delta =
0.03 nats: (a) L_grown <= L_scratch + delta, and the small model alone does not already
reach that (L_small > L_scratch + delta), with the grown arm's total compute below the
scratch arm's; (b) L_grown < L_scratch_eq (growing beats training from scratch at equal
compute). held = both; partly = one; did not hold = neither.
"""

from __future__ import annotations

import os

import numpy as np

from tokenlab.repro import HELD, NOT_HELD, PARTLY, Context, Report

CLAIM = ("Growing a trained TokenFormer by appending key/value parameter tokens reaches a loss "
         "comparable to the larger model trained from scratch, at a fraction of the total "
         "training compute (the smaller model's included).")

EXPERIMENT = "experiments/tokenformer.py"
SMALL_TOKENS, FACTOR, DELTA = 16, 4, 0.03


def _flops(workdir: str) -> float:
  """Training FLOPs per step of a finished arm (written by the trainer at step 0)."""
  from tokenlab.train.metrics import read_metrics
  return next(r["perf/flops_per_step"] for r in read_metrics(workdir)
              if "perf/flops_per_step" in r)


def _curve(workdir: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  from tokenlab.train.metrics import read_metrics
  rows = [r for r in read_metrics(workdir) if key in r]
  return (np.array([r["step"] for r in rows], float), np.array([r[key] for r in rows], float))


def _final(workdir: str, key: str = "eval/loss") -> float:
  return float(_curve(workdir, key)[1][-1])


def loss_at_growth(small_dir: str, grown_dir: str, batches: int) -> tuple[float, float]:
  """(small's eval loss, the grown model's eval loss before its first update) on the first
  `batches` validation batches: the grown parameters are what the trainer starts from
  (TokenFormer.adopt_params of a fresh init and small's latest checkpoint)."""
  import jax
  from tokenlab import data as data_lib
  from tokenlab import registry
  from tokenlab.train.inference import load_config_from_workdir
  from tokenlab.train.init_from import load_params
  import flax.linen as nn
  small_cfg, grown_cfg = load_config_from_workdir(small_dir), load_config_from_workdir(grown_dir)
  small, grown = registry.build_method(small_cfg.model), registry.build_method(grown_cfg.model)
  it = data_lib.make_iterator(small_cfg.data, split="validation", seed=0, shuffle=False,
                              batch_size=small_cfg.train.batch_size, num_epochs=1)
  data = [b for _, b in zip(range(batches), it)]
  small_params = load_params(small_dir)
  fresh = nn.unbox(jax.jit(grown.init)(jax.random.key(grown_cfg.seed), data[0]))
  grown_params = grown.adopt_params(fresh, small_params)

  def mean_loss(method, params):
    step = jax.jit(lambda p, b: method.loss(p, b, jax.random.key(0))[1]["loss"])
    avgs = [step(params, b) for b in data]
    return float(sum(a.total for a in avgs) / sum(a.count for a in avgs))
  return mean_loss(small, small_params), mean_loss(grown, grown_params)


def run(ctx: Context) -> Report:
  from tokenlab.methods.tokenformer import grow_main
  size = "tiny" if ctx.quick else "small"
  small_tokens = 8 if ctx.quick else SMALL_TOKENS
  s_steps, g_steps = ctx.steps(800, 3), ctx.steps(160, 3)
  evals = (["--config.train.eval_batches=1", "--config.train.eval_every=0"] if ctx.quick
           else ["--config.train.eval_batches=16"])
  small_dir, grown_dir = ctx.path("small"), ctx.path("grown")
  ctx.train(f"{EXPERIMENT}:size={size},tokens={small_tokens}", "small",
            [f"--config.train.steps={s_steps}", *evals])
  print(f"[{ctx.name}] growing 'small' x{FACTOR} into 'grown' ({g_steps} steps) ...",
        flush=True)
  if grow_main([small_dir, "--workdir", grown_dir, "--factor", str(FACTOR), "--steps",
                str(g_steps), f"--config.seed={ctx.seed + 1}", "--config.train.progress=false",
                *evals]) != 0:
    raise RuntimeError("tokenlab grow failed")
  l_small0, l_grown0 = loss_at_growth(small_dir, grown_dir, 1 if ctx.quick else 8)
  rows = [("small", "eval loss nats", _final(small_dir)),
          ("grown", "eval loss nats", _final(grown_dir)),
          ("grown@0", "eval loss - small's", l_grown0 - l_small0)]
  if ctx.quick:
    return Report(CLAIM, rows, NOT_HELD, "quick run: small and grown only, nothing compared")

  big = f"{EXPERIMENT}:size={size},tokens={small_tokens * FACTOR}"
  ctx.train(big, "scratch", [f"--config.train.steps={s_steps}", *evals])
  f_small, f_big = _flops(small_dir), _flops(ctx.path("scratch"))
  c_small, c_grown_stage = f_small * s_steps, _flops(grown_dir) * g_steps
  c_grown, c_scratch = c_small + c_grown_stage, f_big * s_steps
  eq_steps = int(round(c_grown / f_big))
  ctx.train(big, "scratch_eq", [f"--config.train.steps={eq_steps}", *evals])

  loss = {arm: _final(ctx.path(arm)) for arm in ("small", "grown", "scratch", "scratch_eq")}
  compute = {"small": c_small, "grown": c_grown, "scratch": c_scratch,
             "scratch_eq": f_big * eq_steps}
  rows = []
  for arm in loss:
    rows += [(arm, "eval loss nats", loss[arm]), (arm, "train PFLOPs (total)",
                                                  compute[arm] / 1e15)]
  rows += [("grown", "compute / scratch's", c_grown / c_scratch),
           ("grown@0", "eval loss - small's", l_grown0 - l_small0)]
  ok_a = (loss["grown"] <= loss["scratch"] + DELTA and loss["small"] > loss["scratch"] + DELTA
          and c_grown < c_scratch)
  ok_b = loss["grown"] < loss["scratch_eq"]
  verdict = HELD if ok_a and ok_b else PARTLY if ok_a or ok_b else NOT_HELD
  reason = (f"(a) grown {loss['grown']:.4f} vs scratch {loss['scratch']:.4f} + {DELTA} at "
            f"{c_grown / c_scratch:.2f}x its compute (small alone {loss['small']:.4f}): "
            f"{'yes' if ok_a else 'no'}; (b) grown vs scratch at equal compute "
            f"{loss['scratch_eq']:.4f}: {'yes' if ok_b else 'no'}")
  notes = (f"pysrc bytes, batch 16 x 128, 2-layer d=64 TokenFormer; small {SMALL_TOKENS}/"
           f"{4 * SMALL_TOKENS} tokens (qkv, out / ffn) x {s_steps} steps, grown x{FACTOR} "
           f"for {g_steps} steps (norm_tokens held, grow_init zero_keys), scratch "
           f"{s_steps} steps, scratch_eq {eq_steps} steps; each arm has its own warm-up + "
           f"cosine schedule, peak lr 3e-3. One seed. At growth the grown model's eval loss "
           f"differs from the small model's by {l_grown0 - l_small0:.2e} nats (exact "
           f"preservation up to float32).")
  return Report(CLAIM, rows, verdict, reason, [_plot(ctx, s_steps)], notes)


def _plot(ctx: Context, s_steps: int) -> str:
  """Train loss (lines) and eval loss (markers) against cumulative training FLOPs."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  offset = {"small": 0.0, "grown": _flops(ctx.path("small")) * s_steps}
  styles = {"small": "C0", "grown": "C3", "scratch": "C2", "scratch_eq": "C7"}
  plotted = []
  for arm, color in styles.items():
    workdir = ctx.path(arm)
    if not os.path.isdir(workdir):
      continue
    per_step, start = _flops(workdir), offset.get(arm, 0.0)
    steps, train = _curve(workdir, "train/loss")
    ax.plot(start + steps * per_step, train, color=color, lw=1, label=f"{arm} (train)")
    steps, ev = _curve(workdir, "eval/loss")
    ax.plot(start + steps * per_step, ev, "o", color=color, ms=4)
    plotted += [*train, *ev]
  if "grown" in offset:
    ax.axvline(offset["grown"], color="C3", ls=":", lw=1)
  ax.set_xlabel("cumulative training FLOPs (grown includes small's)")
  ax.set_ylabel("loss, nats/byte (dots: eval)")
  low = min(plotted)   # the start of training is off the top: the end is what compares
  ax.set_ylim(low - 0.05, min(max(plotted), low + 1.2) + 0.05)
  ax.legend(fontsize=8)
  ax.set_title("TokenFormer: grow x4 parameter tokens vs train from scratch", fontsize=9)
  fig.tight_layout()
  path = ctx.path("tokenformer_growth.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
