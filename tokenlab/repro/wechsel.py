"""Mini-reproduction of WECHSEL (Minixhofer et al., NAACL 2022), under the protocol.

The paper moves English GPT-2/RoBERTa to other languages by swapping in a target-language
tokenizer whose embeddings are softmax-weighted sums of semantically similar English token
embeddings (aligned static word embeddings); it reports lower loss than random new
embeddings (TransInit) and than training from scratch, from the start of training on.

Here, on the tokenizer-transfer harness (tokenlab/transfer), per seed:
  source     transformer_lm (d 128, 4 layers) trained 100 steps on the `multilingual`
             English corpus with T0 = sentencepiece:1024 (experiments/wechsel.py, size=small;
             the harness found the 400-step run overfitting);
  target     sentencepiece:1024@de, trained on the German corpus;
  inits      random (the model's own init), mean_subtokens (mean of the T0 pieces that spell
             the token; shared tokens copied), wechsel (k = 10, tau = 0.1; PPMI/SVD word
             vectors of both corpora aligned by Procrustes on the en-de dictionary's train
             pairs);
  measured   bits per character on the German validation split zero-shot, and after k = 100
             steps of full adaptation (every parameter, the source run's lr and batch, a fresh
             warm-up/cosine schedule) on the German train split;
  scratch    the same architecture trained from its random init for the same 100 steps on
             German with the target tokenizer (the paper's "from scratch" comparison; equal
             step budget).
Trivial baselines (arms): the uniform law over the target vocabulary (bits/char = log2 V x
scored tokens / scored characters), the count bigram of target tokens fitted on the German
train split (add-alpha interpolated with the unigram, alpha by 2-fold cross-validation on the
train documents), the count bigram of T0 tokens on English (for the source model), and the
two initialisers the issue names as trivial, random and mean_subtokens. Rows also give the
untouched source model on German (T0, no transfer) and diagnostics of the alignment
(held-out dictionary translation P@1/P@10, target tokens with a word vector).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite
from tokenlab.repro.baselines import docs_bigram_bits_per_char

CLAIM = ("Initialising a target-language tokenizer's embeddings with WECHSEL (softmax-weighted "
         "nearest source tokens in aligned static word embeddings) gives a lower loss on the "
         "target language than random or mean-of-subtoken embeddings, zero-shot and after a "
         "short adaptation, and beats training from scratch with the same steps.")

EXPERIMENT = "experiments/wechsel.py"
FULL_SIZE = "small"     # the experiment's size of a full run (quick: tiny)
INITS = ("random", "mean_subtokens", "wechsel")
SEEDS = 3

BPC = "bits/char"
ZS = "zero-shot bits/char (German)"
AD = "adapted bits/char (German, k full steps)"
UNIFORM, BIGRAM_DE, BIGRAM_EN = "uniform", "bigram (counts, de)", "bigram (counts, en)"
SOURCE_EN, SOURCE_DE = "T0 source on English", "T0 source on German (no transfer)"
SCRATCH = "scratch (k steps on German)"
BEST_ZS, BEST_AD = "best zero-shot init", "best adapted arm"
BASELINES = (UNIFORM, BIGRAM_DE, BIGRAM_EN, "random", "mean_subtokens", SCRATCH)
ALPHAS = (0.01, 0.03, 0.1, 0.3)

CHECKS = (
    prerequisite("source_beats_bigram", "the source LM learnt English beyond counts: T0's "
                 "bits/char on English validation text are below the count bigram's",
                 (SOURCE_EN, BPC), "<", (BIGRAM_EN, BPC)),
    prerequisite("adapted_beats_uniform", "the best adapted arm is far (>= 1 bit/char) below "
                 "the uniform law on German", (BEST_AD, AD), "<", (UNIFORM, BPC), by=1.0),
    prerequisite("adapted_beats_bigram", "the best adapted arm beats the count bigram of the "
                 "target tokens on German (a language model, not counts)", (BEST_AD, AD), "<",
                 (BIGRAM_DE, BPC)),
    prerequisite("not_saturated", "zero-shot is far from the adapted level (>= 0.25 bits/char), "
                 "so the initialisation has something to change", (BEST_ZS, ZS), ">",
                 (BEST_AD, AD), by=0.25),
    claim("zero_shot_beats_random", "WECHSEL's zero-shot bits/char are below random "
          "embeddings'", ("wechsel", ZS), "<", ("random", ZS)),
    claim("zero_shot_beats_mean_subtokens", "WECHSEL's zero-shot bits/char are below "
          "mean-of-subtokens'", ("wechsel", ZS), "<", ("mean_subtokens", ZS)),
    claim("adapted_beats_random", "after k full adaptation steps WECHSEL is below random "
          "embeddings", ("wechsel", AD), "<", ("random", AD)),
    claim("adapted_beats_mean_subtokens", "after k full adaptation steps WECHSEL is below "
          "mean-of-subtokens", ("wechsel", AD), "<", ("mean_subtokens", AD)),
    claim("beats_scratch", "after k steps on German, the WECHSEL-initialised model is below "
          "the same model trained from scratch for k steps", ("wechsel", AD), "<",
          (SCRATCH, AD)),
)


def run_seed(ctx: Context) -> Trial:
  if ctx.quick:    # one seed, nothing to share (the test session has its own cache)
    return _run_seed(ctx)
  # Seeds after the first load the compiled programs (the same shapes every seed).
  with compile_cache(ctx.out("jax_cache")):
    return _run_seed(ctx)


def _run_seed(ctx: Context) -> Trial:
  from tokenlab.config import load_config
  from tokenlab.data import get_tokenizer, multilingual
  from tokenlab.methods import wechsel as method
  from tokenlab.train.init_from import load_params
  from tokenlab.transfer import harness

  # Arms live in seed<S>/runs/<arm>: the runner plots the curves of every arm folder one level
  # down (5 s an arm in a quick run); these arms' curves are in wechsel.png instead.
  run_dir = lambda name: f"runs/{name}"
  size = "tiny" if ctx.quick else FULL_SIZE
  spec = f"{EXPERIMENT}:size={size}"
  config = load_config(spec, [f"--config.seed={ctx.seed}", "--config.train.progress=false"])
  tc = config.transfer
  k = ctx.steps(tc.adapt_steps, 2)
  # 1. The English source LM (T0). Quick: the untrained tiny model stands in for it (a
  # training compile would double the smoke test's time; the adaptation below trains).
  if ctx.quick:
    params = harness.fresh_params(config.model, ctx.seed)
  else:
    ctx.train(spec, run_dir("source"))
    params = load_params(ctx.path(run_dir("source")))
  old_tok = get_tokenizer(config.data)
  target = harness.parse_target(tc.target)
  new_data = harness.target_data_config(config.data, target)
  new_tok = get_tokenizer(new_data)
  de_val, de_train = (method.documents(new_data.to_dict(), s) for s in ("validation", "train"))
  en_val, en_train = (method.documents(config.data.to_dict(), s)
                      for s in ("validation", "train"))
  rows: list[tuple[str, str, Any]] = []
  rows.append((SOURCE_EN, BPC, harness.evaluate(config, params, old_tok, en_val)["bits_per_char"]))
  rows.append((SOURCE_DE, BPC, harness.evaluate(config, params, old_tok, de_val)["bits_per_char"]))
  for arm, tok, train, val in ((BIGRAM_EN, old_tok, en_train, en_val),
                               (BIGRAM_DE, new_tok, de_train, de_val)):
    # Quick: one alpha (the smoke test skips the baseline's tuning, which is pure Python).
    bpc, alpha = docs_bigram_bits_per_char(tok, train, val,
                                           ALPHAS[1:2] if ctx.quick else ALPHAS)
    rows += [(arm, BPC, bpc), (arm, "alpha (2-fold CV, train docs)", alpha)]

  # 2. Swap in the German tokenizer with each initialiser; zero-shot, then k full steps.
  aux = {"neighbors": tc.neighbors, "temperature": tc.temperature, "word_dim": tc.word_dim,
         "window": tc.window}
  # Quick: zero-shot only. The adaptations and the scratch arm are the trainer's runs (the
  # harness's tests cover adaptation); one trainer compile would triple the smoke test.
  adapted_arms = () if ctx.quick else INITS
  res: dict[str, dict[str, float]] = {}
  curves: dict[str, list[tuple[int, float]]] = {}
  for init in INITS:
    new_config, new_params = harness.swap_tokenizer(config, params, new_data, init,
                                                    seed=ctx.seed, aux=aux)
    zs = harness.evaluate(new_config, new_params, new_tok, de_val)
    res[init] = {ZS: zs["bits_per_char"]}
    if init == INITS[0]:
      # Uniform over the target vocabulary, on the same scored tokens and characters.
      rows.append((UNIFORM, BPC, math.log2(new_tok.vocab_size) * zs["scored_tokens"]
                   / zs["scored_chars"]))
      rows.append(("target tokenizer", "tokens/char vs T0",
                   zs["tokens_per_char"] / harness.tokens_per_char(old_tok, de_val)))
    if init in adapted_arms:
      swapped = ctx.path(run_dir(f"swapped_{init}"))
      harness.save_run(new_config, new_params, swapped)
      adapted = harness.adapt(new_config, swapped, ctx.path(run_dir(f"adapt_{init}")), steps=k,
                              mode="full")
      res[init][AD] = harness.evaluate(new_config, adapted, new_tok, de_val)["bits_per_char"]
      curves[init] = _train_curve(ctx.path(run_dir(f"adapt_{init}")))
  # 3. The same model from scratch on German, k steps (same schedule as the adaptations).
  if not ctx.quick:
    scratch_over = [f"--config.data.options.lang={target.lang}",
                    f"--config.data.vocab_size={new_tok.vocab_size}",
                    f"--config.model.vocab_size={new_tok.vocab_size}",
                    f"--config.train.steps={k}", "--config.train.eval_every=0",
                    f"--config.optimizer.warmup_steps={max(int(k * 0.05), 1)}"]
    ctx.train(spec, run_dir("scratch"), scratch_over)
    scratch_cfg = load_config(spec, [f"--config.seed={ctx.seed}", *scratch_over])
    res[SCRATCH] = {AD: harness.evaluate(scratch_cfg, load_params(ctx.path(run_dir("scratch"))),
                                         new_tok, de_val)["bits_per_char"]}
    curves[SCRATCH] = _train_curve(ctx.path(run_dir("scratch")))
  for arm, metrics in res.items():
    rows += [(arm, m, v) for m, v in metrics.items()]
  rows.append((BEST_ZS, ZS, min(res[i][ZS] for i in INITS)))
  if not ctx.quick:
    rows.append((BEST_AD, AD, min(m[AD] for m in res.values() if AD in m)))

  # Diagnostics of WECHSEL's alignment (not judged).
  full_aux = {"source_data": config.data.to_dict(), "target_data": new_data.to_dict(), **aux}
  src_vecs, tgt_vecs, info = method.aligned_token_vectors(old_tok, new_tok, full_aux)
  held = multilingual.dictionary(target.lang, "validation")
  prec = method.translation_precision(info["source"], info["target"], info["W"], held)
  rows += [("wechsel alignment", "held-out dictionary P@1", prec[1]),
           ("wechsel alignment", "held-out dictionary P@10", prec[10]),
           ("wechsel alignment", "dictionary pairs used (train)", info["pairs"]),
           ("wechsel alignment", "target tokens with a word vector",
            int((np.linalg.norm(tgt_vecs, axis=1) > 0).sum())),
           ("wechsel alignment", "source tokens with a word vector",
            int((np.linalg.norm(src_vecs, axis=1) > 0).sum()))]
  return Trial(rows, {"res": res, "curves": curves, "k": k})


def _train_curve(workdir: str) -> list[tuple[int, float]]:
  """(step, train loss) pairs of an arm's metrics.jsonl."""
  import json
  import os
  out = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        m = json.loads(line)
        if "train/loss" in m:
          out.append((int(m["step"]), float(m["train/loss"])))
  return out


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Bits/char per arm (mean +- std over seeds), zero-shot and adapted; training curves of
  the adaptations and of scratch (first seed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from tokenlab.repro.protocol import seed_values
  vals = [seed_values(t.rows) for t in trials]
  fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
  for ax, metric, arms in ((axes[0], ZS, INITS), (axes[1], AD, INITS + (SCRATCH,))):
    arms = [a for a in arms if all((a, metric) in v for v in vals)]
    means = [np.mean([v[(a, metric)] for v in vals]) for a in arms]
    stds = [np.std([v[(a, metric)] for v in vals]) for a in arms]
    ax.bar(range(len(arms)), means, yerr=stds, color="C0")
    ax.set_xticks(range(len(arms)), arms, rotation=15, fontsize=8)
    for name, style in ((UNIFORM, "k--"), (BIGRAM_DE, "r:"), (SOURCE_DE, "g-.")):
      if all((name, BPC) in v for v in vals):
        ax.axhline(np.mean([v[(name, BPC)] for v in vals]), ls=style[1:], color=style[0],
                   label=name)
    ax.set_ylabel("bits/char, German validation")
    ax.set_title(metric + f" (mean +- std, {len(trials)} seeds)", fontsize=9)
    ax.legend(fontsize=7)
  ax = axes[2]
  for arm, curve in trials[0].data["curves"].items():
    if curve:
      s, l = zip(*curve)
      ax.plot(s, l, label=arm)
  ax.set_xlabel("adaptation step")
  ax.set_ylabel("train loss (nats/token)")
  ax.set_title(f"training on German (seed {ctx.seed})", fontsize=9)
  if ax.lines:    # a quick run trains nothing
    ax.legend(fontsize=7)
  fig.tight_layout()
  path = ctx.out("wechsel.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  k = trials[0].data["k"]
  notes = (f"k = {k} steps of full adaptation for every initialiser and {k} steps from scratch "
           "(budget = steps; same batch, lr and warm-up/cosine schedule). Bits per character "
           "on the German validation split of `multilingual` (a document's first token is "
           "context only). WECHSEL settings: k = 10 neighbours, temperature 0.1 (the paper's); "
           "PPMI/SVD word vectors (dim 64, window 4) on each language's train split, aligned "
           "by Procrustes on the en-de dictionary's train pairs; P@1/P@10 on held-out pairs "
           "measure that alignment.")
  return [path], notes
