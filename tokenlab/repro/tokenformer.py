"""Mini-reproduction of TokenFormer's progressive scaling (Wang et al., arXiv 2410.23168).

The paper's claim (its incremental-scaling experiment): a TokenFormer grown from a trained
smaller one by appending key/value parameter tokens, then trained for a fraction of the
from-scratch budget, reaches a loss comparable to the larger model trained from scratch, at a
fraction of the total training compute (counting the smaller model's training).

Setup: byte-level Python source (the embedded `pysrc` dataset, 128-byte rows, batch 16), a
2-layer d=64 TokenFormer with 4 heads; S = 300 steps, G = S / 5 = 60 steps. Arms per seed:
  small:           16 tokens for q/k/v/out, 64 for the feed-forward Pattention, S steps.
  grown:           `tokenlab grow small --factor 4` (64 / 256 tokens; new keys zero, new
                   values fresh, sqrt(n) held at the small counts so growth is exact), G steps
                   on fresh batches (config seed + 1), its own warm-up + cosine schedule.
  small_continued: the control issue 12 asked for: the small model trained on from its
                   checkpoint with the grown run's config (same G steps, batches, schedule),
                   only the parameter tokens are not added. Without it, "grown beats scratch
                   at equal compute" does not isolate growth: the old run's small model alone
                   already beat that arm.
  scratch:         the 64 / 256-token model from scratch, S steps.
  scratch_eq:      the same from scratch with the grown arm's total compute (small + grown).
Trivial baselines on the same eval batches: `uniform` (ln 256), `count n-gram` (the best of
orders 3-6 x add-alpha 0.1 / 0.3, fitted on the S x 16 training rows the small arm saw;
best chosen on the eval batches, which favours the baseline) and `untrained` (the scratch
architecture at init). Compute = training FLOPs (`flops_per_token` x tokens); compute-matched
comparisons say so. Exactness at growth (the grown model starts as the small one's function)
is true by construction: a unit test (tests/test_tokenformer.py), not a check.
"""

from __future__ import annotations


import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("Growing a trained TokenFormer by appending key/value parameter tokens reaches a loss "
         "comparable to the larger model trained from scratch, at a fraction of the total "
         "training compute (the smaller model's included).")

EXPERIMENT = "experiments/tokenformer.py"
SMALL_TOKENS, FACTOR, DELTA = 16, 4, 0.03
S_STEPS, G_STEPS, EVAL_BATCHES = 300, 60, 8
NGRAM_ORDERS, NGRAM_ALPHAS = (3, 4, 5, 6), (0.1, 0.3)
LOSS = "eval loss nats"
NGRAM, UNTRAINED, UNIFORM = "count n-gram", "untrained", "uniform"

BASELINES = (UNIFORM, NGRAM, UNTRAINED)
CHECKS = (
    prerequisite("small_beats_ngram", "the small model predicts held-out bytes better than a "
                 "count n-gram fitted on the same training rows",
                 ("small", LOSS), "<", (NGRAM, LOSS)),
    prerequisite("scratch_beats_ngram", "the large model from scratch beats the count n-gram",
                 ("scratch", LOSS), "<", (NGRAM, LOSS)),
    prerequisite("beats_untrained", "the small model beats the same kind of network at init",
                 ("small", LOSS), "<", (UNTRAINED, LOSS)),
    prerequisite("beats_uniform", "the small model beats the uniform law over bytes",
                 ("small", LOSS), "<", (UNIFORM, LOSS)),
    prerequisite("larger_helps", "not saturated: at equal steps the 4x-token model beats the "
                 "small one (else growth has nothing to reach)",
                 ("scratch", LOSS), "<", ("small", LOSS)),
    claim("comparable_to_scratch", f"the grown model is within {DELTA} nats of the large "
          f"model from scratch (at ~0.6x its total compute)",
          ("grown", LOSS), "<", ("scratch", LOSS + " + delta")),
    claim("growth_beats_continuing", "growing beats training the small model on for the same "
          "steps and batches (isolates the added parameter tokens)",
          ("grown", LOSS), "<", ("small_continued", LOSS)),
    claim("beats_scratch_equal_compute", "the grown model beats the large model trained from "
          "scratch with the same total compute",
          ("grown", LOSS), "<", ("scratch_eq", LOSS)),
)
SEEDS = 3
ARMS = ("small", "grown", "small_continued", "scratch", "scratch_eq")

HISTORY = """\
Design 1 (before the protocol; one seed, S = 800, G = 160 steps, 16 eval batches; `tokenlab
repro tokenformer --workdir /tmp/repro_tokenformer --seed 0`, 701 s): eval loss small 1.926,
grown 1.909 (0.60x scratch's compute), scratch 1.866, scratch_eq (480 steps) 1.990; grown at
growth - small = 0.0 nats. Verdict then: partly ((a) grown within 0.03 of scratch: no; (b)
grown < scratch_eq: yes). Issue 12: (b) is confounded (the small model alone, 1.926 at 0.40x
compute, already beats scratch_eq), there were no trivial baselines, and exactness at growth
is true by construction. Design 2 (this one) adds small_continued, uniform / count n-gram /
untrained arms, 3 seeds, and cuts S and G to 300 / 60 steps (8 eval batches) to fit 3
seeds in the time budget on a shared 2-core machine."""


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


def _eval_batches(config, batches: int) -> list[dict]:
  """The trainer's eval batches: the validation split in order, first `batches`."""
  from tokenlab import data as data_lib
  it = data_lib.make_iterator(config.data, split="validation", seed=0, shuffle=False,
                              batch_size=config.train.batch_size, num_epochs=1)
  return [b for _, b in zip(range(batches), it)]


def mean_loss(method, params, data: list[dict]) -> float:
  """Mean per-token eval loss (nats) of `params` on `data`, as the trainer averages it."""
  import jax
  step = jax.jit(lambda p, b: method.loss(p, b, jax.random.key(0))[1]["loss"])
  avgs = [step(params, b) for b in data]
  return float(sum(a.total for a in avgs) / sum(a.count for a in avgs))


def loss_at_growth(small_dir: str, grown_dir: str, batches: int) -> tuple[float, float]:
  """(small's eval loss, the grown model's eval loss before its first update) on the first
  `batches` validation batches: the grown parameters are what the trainer starts from
  (TokenFormer.adopt_params of a fresh init and small's latest checkpoint). Used by the
  tests: exactness at growth holds by construction, so it is no check of the claim."""
  import flax.linen as nn
  import jax
  from tokenlab import registry
  from tokenlab.train.inference import load_config_from_workdir
  from tokenlab.train.init_from import load_params
  small_cfg, grown_cfg = load_config_from_workdir(small_dir), load_config_from_workdir(grown_dir)
  small, grown = registry.build_method(small_cfg.model), registry.build_method(grown_cfg.model)
  data = _eval_batches(small_cfg, batches)
  small_params = load_params(small_dir)
  fresh = nn.unbox(jax.jit(grown.init)(jax.random.key(grown_cfg.seed), data[0]))
  return (mean_loss(small, small_params, data),
          mean_loss(grown, grown.adopt_params(fresh, small_params), data))


def untrained_loss(config, seed: int, data: list[dict]) -> float:
  """Eval loss of the architecture of `config` at initialisation (seed `seed`)."""
  import flax.linen as nn
  import jax
  from tokenlab import registry
  method = registry.build_method(config.model)
  params = nn.unbox(jax.jit(method.init)(jax.random.key(seed), data[0]))
  return mean_loss(method, params, data)


def ngram_losses(config, seed: int, steps: int, data: list[dict]) -> dict[tuple[int, float],
                                                                          float]:
  """Eval loss of count n-grams fitted on the `steps` training batches the small arm saw
  (config seed `seed`), for every order in NGRAM_ORDERS and add-alpha in NGRAM_ALPHAS."""
  from tokenlab import data as data_lib
  from tokenlab.repro.baselines import NGram
  it = data_lib.make_iterator(config.data, split="train", batch_size=config.train.batch_size,
                              seed=seed, shuffle=True)
  rows = []
  for _, b in zip(range(steps), it):
    rows += [list(x) + [int(y[-1])] for x, y in zip(b["inputs"], b["targets"])]
  model = NGram(max(NGRAM_ORDERS), int(config.model.vocab_size)).fit(rows)
  out = {}
  for order in NGRAM_ORDERS:
    for alpha in NGRAM_ALPHAS:
      model.order, model.alpha = order, alpha     # lower orders share the same counts
      total = count = 0.0
      for b in data:
        w = np.asarray(b["loss_mask"], np.float64)
        total += float((model.nll_of(b["inputs"], b["targets"]) * w).sum())
        count += float(w.sum())
      out[(order, alpha)] = total / count
  return out


def _train_continued(ctx: Context, grown_dir: str, small_cfg) -> None:
  """small_continued: the grown run's config (steps, schedule, batches, init_from = small)
  with the small model's parameter-token counts."""
  from tokenlab.train.inference import load_config_from_workdir
  from tokenlab.train.loop import train
  config = load_config_from_workdir(grown_dir).copy_and_resolve_references()
  for k in ("qkv_tokens", "proj_tokens", "ffn_tokens"):
    config.model[k] = small_cfg.model[k]
  print(f"[{ctx.name}] seed {ctx.seed}: training arm 'small_continued' "
        f"({config.train.steps} steps) ...", flush=True)
  train(config, ctx.path("small_continued"))


def run_seed(ctx: Context) -> Trial:
  from tokenlab.config import load_config
  from tokenlab.methods.tokenformer import grow_main
  from tokenlab.train.inference import load_config_from_workdir
  size = "tiny" if ctx.quick else "small"
  small_tokens = 8 if ctx.quick else SMALL_TOKENS
  s_steps, g_steps = ctx.steps(S_STEPS, 3), ctx.steps(G_STEPS, 3)
  n_eval = 1 if ctx.quick else EVAL_BATCHES
  evals = [f"--config.train.eval_batches={n_eval}"] + (["--config.train.eval_every=0"]
                                                        if ctx.quick else [])
  small_dir, grown_dir = ctx.path("small"), ctx.path("grown")
  small_exp = f"{EXPERIMENT}:size={size},tokens={small_tokens}"
  big_exp = f"{EXPERIMENT}:size={size},tokens={small_tokens * FACTOR}"
  ctx.train(small_exp, "small", [f"--config.train.steps={s_steps}", *evals])
  print(f"[{ctx.name}] seed {ctx.seed}: growing 'small' x{FACTOR} into 'grown' "
        f"({g_steps} steps) ...", flush=True)
  if grow_main([small_dir, "--workdir", grown_dir, "--factor", str(FACTOR), "--steps",
                str(g_steps), f"--config.seed={ctx.seed + 1}", "--config.train.progress=false",
                *evals]) != 0:
    raise RuntimeError("tokenlab grow failed")
  small_cfg = load_config_from_workdir(small_dir)
  _train_continued(ctx, grown_dir, small_cfg)
  c_small = _flops(small_dir) * s_steps
  compute = {"small": c_small, "grown": c_small + _flops(grown_dir) * g_steps,
             "small_continued": c_small + _flops(ctx.path("small_continued")) * g_steps}
  arms = ARMS[:3]
  if not ctx.quick:    # --quick smoke-tests growth and the baselines, not the scratch arms
    ctx.train(big_exp, "scratch", [f"--config.train.steps={s_steps}", *evals])
    f_big = _flops(ctx.path("scratch"))
    eq_steps = max(int(round(compute["grown"] / f_big)), 1)
    ctx.train(big_exp, "scratch_eq", [f"--config.train.steps={eq_steps}", *evals])
    compute.update(scratch=f_big * s_steps, scratch_eq=f_big * eq_steps)
    arms = ARMS

  loss = {arm: _final(ctx.path(arm)) for arm in arms}
  data = _eval_batches(small_cfg, n_eval)
  big_cfg = load_config(big_exp, [f"--config.train.eval_batches={n_eval}"])
  grams = ngram_losses(small_cfg, ctx.seed, s_steps, data)
  (order, alpha), best = min(grams.items(), key=lambda kv: kv[1])
  rows = []
  for arm in arms:
    rows += [(arm, LOSS, loss[arm]), (arm, "train PFLOPs (total)", compute[arm] / 1e15)]
  if not ctx.quick:
    rows += [(arm, "compute / scratch's", compute[arm] / compute["scratch"]) for arm in arms]
    rows += [("scratch", LOSS + " + delta", loss["scratch"] + DELTA),
             ("scratch_eq", "steps", eq_steps)]
  rows += [(UNIFORM, LOSS, float(np.log(big_cfg.model.vocab_size))),
           (NGRAM, LOSS, best), (NGRAM, "order (best)", order), (NGRAM, "add-alpha", alpha),
           (UNTRAINED, LOSS, untrained_loss(big_cfg, ctx.seed, data))]
  rows += [(f"{NGRAM} order {o}, alpha {a}", LOSS, v) for (o, a), v in grams.items()]
  curves = {}
  offset = {"grown": c_small, "small_continued": c_small}
  for arm in arms:
    per_step = _flops(ctx.path(arm))
    curves[arm] = {key: (offset.get(arm, 0.0) + s * per_step, v) for key, (s, v) in
                   (("train", _curve(ctx.path(arm), "train/loss")),
                    ("eval", _curve(ctx.path(arm), "eval/loss")))}
  return Trial(rows, {"curves": curves, "growth_at": c_small, "loss": loss})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from tokenlab.repro.protocol import seed_values
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
  colors = {"small": "C0", "grown": "C3", "small_continued": "C1", "scratch": "C2",
            "scratch_eq": "C7"}
  lows = []
  for i, trial in enumerate(trials):
    for arm, color in colors.items():
      if arm not in trial.data["curves"]:
        continue
      c = trial.data["curves"][arm]
      ax1.plot(*c["train"], color=color, lw=0.8, alpha=0.7, label=arm if i == 0 else None)
      ax1.plot(*c["eval"], "o", color=color, ms=3)
      lows += list(c["eval"][1]) + list(c["train"][1])
    ax1.axvline(trial.data["growth_at"], color="C3", ls=":", lw=0.8)
  values = [seed_values(t.rows) for t in trials]
  ngram = [v[(NGRAM, LOSS)] for v in values]
  ax1.axhline(np.mean(ngram), color="k", ls="--", lw=1, label="count n-gram (best)")
  low = min(lows + ngram)
  ax1.set_ylim(low - 0.05, low + 1.2)
  ax1.set_xlabel("cumulative training FLOPs (grown / small_continued include small's)")
  ax1.set_ylabel("loss, nats/byte (dots: eval)")
  ax1.legend(fontsize=7)
  ax1.set_title(f"TokenFormer: grow x{FACTOR} vs continue vs scratch ({len(trials)} seeds)",
                fontsize=9)
  arms = [a for a in ARMS if (a, LOSS) in values[0]] + [NGRAM]
  for j, arm in enumerate(arms):
    vals = [v[(arm, LOSS)] for v in values]
    ax2.bar(j, np.mean(vals), color=colors.get(arm, "k"), alpha=0.4)
    ax2.scatter([j] * len(vals), vals, color=colors.get(arm, "k"), s=10)
  ax2.set_xticks(range(len(arms)), arms, rotation=30, fontsize=7, ha="right")
  allv = [v[(a, LOSS)] for v in values for a in arms]
  ax2.set_ylim(min(allv) - 0.1, max(allv) + 0.05)
  ax2.set_ylabel("final eval loss, nats/byte")
  ax2.set_title("per-seed final eval loss (bars: mean)", fontsize=9)
  fig.tight_layout()
  path = ctx.out("tokenformer_growth.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = (f"pysrc bytes, batch 16 x 128, 2-layer d=64 TokenFormer; small {SMALL_TOKENS}/"
           f"{4 * SMALL_TOKENS} tokens (qkv, out / ffn) x {S_STEPS} steps; grown x{FACTOR} "
           f"and small_continued {G_STEPS} steps each from small's checkpoint (same config "
           f"seed + 1, same schedule: warm-up + cosine, peak lr 3e-3); scratch {S_STEPS} "
           f"steps; scratch_eq from scratch with grown's total training FLOPs. Eval: the "
           f"first {EVAL_BATCHES} validation batches (16 x 128 bytes) for every arm and "
           f"baseline. The count n-gram is fitted on the {S_STEPS} x 16 training rows the "
           f"small arm saw; its order and add-alpha are picked on the eval batches.")
  return [path], notes
