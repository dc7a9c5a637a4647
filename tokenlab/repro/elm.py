"""Mini-reproduction of ELM (Liu et al., "Elucidating the design space of language models for
image generation", arXiv 2410.16257) on MNIST, under the reproduction protocol
(tokenlab/repro/protocol.py).

Claims tested (the paper's, in miniature): on the same binary-autoencoder tokens and at equal
training compute, (1) an autoregressive (AR) model gives better samples than a masked (MLM,
MaskGIT) model; (2) vocabulary decomposition (each K-bit code as 2 sub-tokens of K/2 bits with
their own embeddings and heads) beats one vocabulary of 2^K codes on sample quality, and is at
least not worse (within 5 bits per image) on NLL.

Setup. Tokenizer arm: experiments/image_tokenizer.py (size=small, data=mnist,
quantizer=binary, 10 bits per position; conv encoder/decoder, 2 stride-2 stages: 28x28 -> a
7x7 grid, 490 bits per image; 400 steps of batch 32), trained once (seed 0) and shared by every seed: the claims are
about the language models on fixed tokens, and one tokenizer keeps three seeds in budget.
Train (4,500) and validation (500) images are encoded once. Language-model arms
(experiments/elm.py, size=small): a 2-layer d=64 transformer, batch 64, AdamW lr 3e-3, the same
number of steps each (600; budget = steps x batch x body size; the FLOPs per position are
printed in the notes):
  AR, 2 sub-tokens    causal, two 5-bit sub-tokens (32 + 32 outputs);
  AR, 1 vocabulary    causal, one 1024-way head;
  MLM, 2 sub-tokens   bidirectional, MaskGIT training, 8-step MaskGIT decoding.
Samples: 50 per class (500), temperature 1, no guidance or top-k, decoded by the tokenizer.
Scores (tokenlab/evals/image_samples.py, the cached MNIST sample classifier): class accuracy
of the class-conditional samples, FD-classifier (a toy FID on the classifier's features;
against the 500 validation images; `fd_real` = 500 real train images, the floor), sampling
seconds per 100 images. NLL: bits per validation image given the class (AR exact; MLM an upper
bound, the random-order bound of tokenlab/methods/elm.py).

Trivial baselines (arms):
  uniform         every code equally likely: 490 bits per image;
  count prior     per-position code counts on the training codes, class-conditional,
                  interpolated with the class-free per-position counts (add-alpha; alpha and
                  the weight picked on validation from a small grid); its samples (codes drawn
                  per position independently for the label) decoded by the tokenizer;
  untrained       the AR 2-sub-token network at initialisation (NLL).
Three seeds (initialisation, batches, sampling); judged on the mean with the spread stated.
"""

from __future__ import annotations

import os
import time

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite
from tokenlab.repro.baselines import best_position_count_prior, sample_count_prior

CLAIM = ("On the same binary-autoencoder tokens at equal training compute, an autoregressive "
         "model gives better samples than a masked (MLM) model, and splitting each code into "
         "2 sub-tokens beats one large vocabulary (sample quality) and is not worse in NLL.")

EXPERIMENT = "experiments/elm.py"
BITS, GRID, CLASSES = 10, 7, 10
TOKENIZER_EXPERIMENT = ("experiments/image_tokenizer.py:size=small,data=mnist,quantizer=binary,"
                        f"bits={BITS}")
ARMS = (("ar2", "ar", 2, "AR, 2 sub-tokens"), ("ar1", "ar", 1, "AR, 1 vocabulary"),
        ("mlm2", "mlm", 2, "MLM, 2 sub-tokens"))
AR2, AR1, MLM2 = (a[3] for a in ARMS)
UNIFORM, COUNTS, UNTRAINED = "uniform", "count prior", "untrained"
BASELINES = (UNIFORM, COUNTS, UNTRAINED)
TOKENIZER, REAL = "tokenizer (BAE)", "real images"
NLL, ACC, FD, FD_REAL = ("NLL bits/image", "class accuracy", "FD-classifier",
                         "FD-classifier floor (real)")
SPEED = "sampling s / 100 images"
SEEDS = 3
STEPS, QUICK_STEPS = 600, 2
TOKENIZER_STEPS = 400
SAMPLES_PER_CLASS, QUICK_SAMPLES_PER_CLASS = 50, 2

CHECKS = (
    prerequisite("tokens_keep_class", "the tokenizer's reconstructions of validation images "
                 "are still classified correctly (the tokens carry the digit)",
                 (TOKENIZER, ACC), ">=", 0.8),
    prerequisite("ar2_beats_counts", "AR (2 sub-tokens) predicts codes clearly better than "
                 "the count prior", (AR2, NLL), "<", (COUNTS, NLL), by=10.0),
    prerequisite("ar2_beats_untrained", "AR (2 sub-tokens) is far from its initialisation",
                 (AR2, NLL), "<", (UNTRAINED, NLL), by=10.0),
    prerequisite("ar1_beats_uniform", "AR (1 vocabulary) learnt (beats uniform codes)",
                 (AR1, NLL), "<", (UNIFORM, NLL), by=10.0),
    prerequisite("ar1_beats_counts", "AR (1 vocabulary) predicts codes clearly better than "
                 "the count prior", (AR1, NLL), "<", (COUNTS, NLL), by=10.0),
    prerequisite("mlm_beats_counts", "MLM's NLL bound is clearly below the count prior's NLL",
                 (MLM2, NLL), "<", (COUNTS, NLL), by=10.0),
    prerequisite("ar2_samples_beat_counts", "AR samples show the asked class far more often "
                 "than count-prior samples", (AR2, ACC), ">", (COUNTS, ACC), by=0.1),
    claim("ar_beats_mlm", "AR samples are closer to real images than MLM samples "
          "(FD-classifier, lower is better), same tokens and compute", (AR2, FD), "<",
          (MLM2, FD)),
    claim("decomposition_beats_one_vocab", "2 sub-tokens give better AR samples than one "
          "1024-code vocabulary (FD-classifier)", (AR2, FD), "<", (AR1, FD)),
    claim("decomposition_nll_not_worse", "2 sub-tokens are not worse than one vocabulary in "
          "NLL (within 5 bits per image)", (AR2, NLL), "<", (AR1, NLL), by=-5.0),
)

HISTORY = """\
Before the first full run (checks already declared, commit 6a63dd2): one timing probe, seed 0,
tokenizer 400 steps and every language-model arm 400 steps, on the 2-core box at load average
about 7 (other sessions' jobs): tokenizer PSNR 22.9 dB, its reconstructions classified 0.962
(real images 0.966), 428 of 1024 codes used; validation NLL bits/image AR 2 sub-tokens 144.0,
AR 1 vocabulary 123.7, MLM bound 209.2; 64 / 111 / 81 s per arm. No samples were scored. The
language-model arms were then set to 600 steps (the most that fits about 15 idle-box minutes
for three seeds); nothing else changed."""

# ---------------------------------------------------------------------------------------------
# Shared pieces (one tokenizer, one classifier, the encoded splits).

_CACHE: dict = {}


def _tokenizer(ctx: Context) -> str:
  """Trains (or reuses) the one binary tokenizer in ROOT/tokenizer; returns its workdir."""
  shared = Context(name=ctx.name, workdir=ctx.root or ctx.workdir, seed=0, quick=ctx.quick,
                   root=ctx.root)
  overrides = [f"--config.train.steps={ctx.steps(TOKENIZER_STEPS, 2)}",
               "--config.train.eval_every=0", "--config.checkpoint.async_save=false"]
  if ctx.quick:
    overrides += ["--config.model.width=8", "--config.model.num_res_blocks=0",
                  "--config.train.eval_batches=1"]
  metrics = shared.train(TOKENIZER_EXPERIMENT, "tokenizer", overrides)
  _CACHE["tokenizer_metrics"] = metrics
  return shared.path("tokenizer")


def _shared(ctx: Context) -> dict:
  """The tokenizer, classifier, encoded splits and real-image scores (computed once)."""
  key = (ctx.root, ctx.quick)
  if _CACHE.get("key") == key:
    return _CACHE["shared"]
  from tokenlab.evals.image_samples import evaluate_samples, load_split, train_classifier
  from tokenlab.methods.elm import encode_split
  from tokenlab.train.inference import load_frozen_tokenizer
  workdir = _tokenizer(ctx)
  tok = load_frozen_tokenizer(workdir)
  train = encode_split(tok, "mnist", "train")
  val = encode_split(tok, "mnist", "validation")
  clf = train_classifier("mnist", steps=20 if ctx.quick else 500)
  val_images = load_split("mnist", "validation")["image"]
  recon = np.asarray(tok.decode(val[0].reshape(-1, GRID, GRID)))
  real = evaluate_samples(clf, val_images, labels=val[1], reference=val_images)
  shared = {"tokenizer": workdir, "tok": tok, "train": train, "val": val, "clf": clf,
            "reference": val_images,
            "tokenizer_rows": {ACC: evaluate_samples(clf, recon, labels=val[1],
                                                     reference=val_images,
                                                     real_floor=False)["class_accuracy"],
                               "PSNR dB": _psnr(val_images, recon),
                               "bits/image": float(BITS * GRID * GRID)},
            "real_acc": real["class_accuracy"]}
  _CACHE.update(key=key, shared=shared)
  return shared


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean(np.square(a - b), axis=(1, 2, 3))
  return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


# ---------------------------------------------------------------------------------------------
# One seed.


def _labels(ctx: Context) -> np.ndarray:
  per = QUICK_SAMPLES_PER_CLASS if ctx.quick else SAMPLES_PER_CLASS
  return np.repeat(np.arange(CLASSES), per).astype(np.int32)


def _score(shared: dict, codes: np.ndarray, labels: np.ndarray) -> tuple[dict, np.ndarray]:
  from tokenlab.evals.image_samples import evaluate_samples
  images = np.asarray(shared["tok"].decode(codes.reshape(-1, GRID, GRID)))
  out = evaluate_samples(shared["clf"], images, labels=labels, reference=shared["reference"])
  return {ACC: out["class_accuracy"], FD: out["fd"], FD_REAL: out["fd_real"]}, images


def _arm_spec(objective: str, sub_tokens: int, ctx: Context, tokenizer: str) -> str:
  size = "tiny" if ctx.quick else "small"
  return (f"{EXPERIMENT}:size={size},objective={objective},sub_tokens={sub_tokens},"
          f"bits={BITS},grid={GRID},tokenizer={tokenizer}")


def run_seed(ctx: Context) -> Trial:
  import jax
  from tokenlab.methods.elm import CodeIterator
  from tokenlab.train.inference import load_trained
  shared = _shared(ctx)
  train, val = shared["train"], shared["val"]
  train_fn = lambda b, s: CodeIterator(*train, b, s, train=True)
  eval_fn = lambda b, s: CodeIterator(*val, b, s, train=False)
  labels = _labels(ctx)
  rows, data, grids = [], {}, {}
  steps = [f"--config.train.steps={ctx.steps(STEPS, QUICK_STEPS)}"]
  flops = {}
  for arm, objective, g, label in (ARMS[:1] if ctx.quick else ARMS):   # quick: AR only
    spec = _arm_spec(objective, g, ctx, os.path.abspath(shared["tokenizer"]))
    out = ctx.train(spec, arm, steps, train_iter_fn=train_fn, eval_iter_fn=eval_fn)
    run = load_trained(ctx.path(arm), next(train_fn(2, 0)))
    method = run.method
    flops[label] = method.flops_per_token(GRID * GRID + 1)
    rng = jax.random.key(1000 + ctx.seed)
    sample = jax.jit(method.sample_codes).lower(run.params, labels, rng).compile()
    t = time.perf_counter()                                              # compiled: time runs
    codes = np.asarray(jax.block_until_ready(sample(run.params, labels, rng)))
    seconds = (time.perf_counter() - t) / len(labels) * 100
    scores, images = _score(shared, codes, labels)
    res = {NLL: float(out["eval/nll_bits_per_image"]), **scores, SPEED: seconds}
    data[label], grids[label] = res, images
    rows += [(label, k, v) for k, v in res.items()]
  # Baselines.
  logp, bits = best_position_count_prior(train, val, 2 ** BITS, CLASSES)
  draws = sample_count_prior(logp, labels, np.random.default_rng(ctx.seed))
  scores, grids[COUNTS] = _score(shared, draws, labels)
  data[COUNTS] = {NLL: bits, **scores}
  data[UNIFORM] = {NLL: float(BITS * GRID * GRID)}
  data[UNTRAINED] = {NLL: _untrained_bits(ctx, shared, eval_fn)}
  for name in (COUNTS, UNIFORM, UNTRAINED):
    rows += [(name, k, v) for k, v in data[name].items()]
  rows += [(TOKENIZER, k, v) for k, v in shared["tokenizer_rows"].items()]
  rows.append((REAL, ACC, shared["real_acc"]))
  if ctx.seed == 0 or ctx.quick:
    _save_grids(ctx, grids, labels)
  return Trial(rows, {"data": data, "flops": flops})


def _untrained_bits(ctx: Context, shared: dict, eval_fn) -> float:
  """Validation bits per image of the AR 2-sub-token network at initialisation."""
  from tokenlab.config import load_config
  from tokenlab.repro.baselines import untrained_metrics
  config = load_config(_arm_spec("ar", 2, ctx, os.path.abspath(shared["tokenizer"])),
                       [f"--config.seed={ctx.seed}"])
  batches = list(eval_fn(config.train.batch_size, 0))
  return float(untrained_metrics(config, batches, ctx.seed)["eval/nll_bits_per_image"])


def _save_grids(ctx: Context, grids: dict, labels: np.ndarray) -> None:
  from tokenlab.evals.image import save_image_grid
  per = int(np.sum(labels == 0))
  cols = min(per, 8)
  for name, images in grids.items():
    rows = np.stack([images[labels == c][:cols] for c in range(CLASSES)])
    slug = name.split(",")[0].lower().replace(" ", "_") + (
        "_" + name.split(", ")[1].split(" ")[0] if "," in name else "")
    save_image_grid(rows, ctx.out(f"samples_{slug}.png"))


def finish(ctx: Context, trials: list[Trial]):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [n for n in (AR2, AR1, MLM2, COUNTS) if n in trials[0].data["data"]]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  for ax, metric in zip(axes, (NLL, ACC, FD)):
    for i, n in enumerate(names):
      vals = [t.data["data"][n][metric] for t in trials]
      ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.5)
      ax.scatter([i] * len(vals), vals, color=f"C{i}", s=12, zorder=3)
    if metric == FD:
      floor = np.mean([t.data["data"][AR2][FD_REAL] for t in trials])
      ax.axhline(floor, color="gray", ls="--", lw=1, label="real images (floor)")
      ax.legend(fontsize=7)
    if metric == NLL:
      ax.axhline(BITS * GRID * GRID, color="gray", ls=":", lw=1, label="uniform")
      ax.legend(fontsize=7)
    ax.set_xticks(range(len(names)), [n.replace(", ", "\n") for n in names], fontsize=7)
    ax.set_title(f"{metric} ({len(trials)} seeds)", fontsize=9)
  fig.tight_layout()
  path = ctx.out("elm.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  figures = [path] + sorted(os.path.join(ctx.root, f) for f in os.listdir(ctx.root)
                            if f.startswith("samples_") and f.endswith(".png"))
  flops = trials[0].data["flops"]
  notes = ("Budget: every language-model arm trains the same steps x batch (64) x body "
           "(2 layers, d=64, 4 heads) on the same codes. Training FLOPs per position "
           "(ELM.flops_per_token, 6 x matmul parameters + attention, 50 positions): "
           + ", ".join(f"{k} {v / 1e6:.2f} MFLOP" for k, v in flops.items())
           + ". The one-vocabulary head is the larger (1024 vs 2 x 32 outputs), so it gets "
           "more compute per step, not less. MLM NLL is an upper bound (random-order bound, "
           "4 draws per image); AR NLL is exact. The tokenizer (one run, seed 0) is shared by "
           "all seeds. Sample grids (seed 0): one row per class.")
  return figures, notes
