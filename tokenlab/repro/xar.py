"""Mini-reproduction of xAR / next-X prediction (Ren et al., arXiv 2502.20388) under the
protocol.

Claims of the paper in miniature: (1) predicting a cell of k x k tokens per autoregressive
step (an entity) generates better images than next-token prediction (k = 1), and (2) noisy
context learning (training on noisy context entities, one block-causal pass) generates better
than teacher forcing on clean context, each at equal training compute.

Setup, per seed (experiments/xar.py, size=small, data=digits: the 8 x 8 handwritten digits,
1,617 training and 180 validation images): a 4 x 4 grid of 2 x 2 pixel tokens (4 values in
[-1, 1]); one DiT-style network (2 adaLN-Zero blocks, d = 64, 4 heads) trained with flow
matching, 1,500 steps, peak lr 2e-3, in three arms:
  xAR cells        k = 2: 4 entities of 2 x 2 tokens (4 x 4 pixels), noisy context (NCL);
  next-token       k = 1: 16 entities of one token, noisy context;
  teacher forcing  k = 2, clean context: the sequence [clean; noisy] (twice the tokens), so it
                   runs batch 16 where the others run 32: equal tokens through the network per
                   step and equal steps (the budget: steps x tokens).
Sampling: 16 Euler steps per entity, no guidance (CFG 1), the same in every arm; NUM_SAMPLES
samples per arm (20 per class) scored by the shared digits sample classifier
(tokenlab.evals.image_samples): class accuracy and FD-classifier (a toy FID on its 64
features) against the 180 validation images, read against the FD of as many real training
images against the same reference (the floor: a perfect generator's score at this count).

Why digits and these settings (chosen on pilots of the xAR arm alone, before any arm was
compared): on 28 x 28 MNIST (7 x 7 pixel tokens) 1,500 steps gave class accuracy 0.24 and FD
253 against a floor of 30: every arm would be far from learnt within a 15-minute CPU budget.
On 8 x 8 digits the xAR arm learns (pilot: accuracy 0.97, FD 22 with CFG 1; CFG 2 raised FD
to 60). Since the xAR arm can reach the real-data floor, the saturation prerequisites ask that
the arms it is compared with are above the floor (room to beat them), and the claims are on
FD; class accuracy (near 1 when learnt) is a prerequisite that each arm learnt the condition.

Trivial baselines (arms): the untrained network (adaLN-Zero: zero velocity, so its samples
are the Gaussian noise itself) and the per-class position prior: every token of a sample
drawn independently from the same-class training images' tokens at that position (the
continuous analogue of a per-position count model).
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite
from tokenlab.repro.sampling import per_class_samples, save_per_class_grid, timed_sampler

CLAIM = ("Next-X prediction with cells of k x k tokens as entities and flow matching per "
         "entity generates better than next-token prediction (k = 1), and noisy context "
         "learning generates better than teacher forcing on clean context, at equal training "
         "compute.")

EXPERIMENT = "experiments/xar.py"
DATASET, OPTIONS, VARIANT = "digits", None, "digits"   # dataset, its options, data= variant
NUM_SAMPLES = 200            # generated images per arm (20 per class)
SEEDS = 3

ACC, FD = "class accuracy", "FD-classifier"
SAMPLE_S, NFE = "sampling s / 100 images", "sequential network passes per image"
LOSS = "final train flow loss"
XAR, NT, TF = ("xAR cells 2x2 (noisy context)", "next-token k=1 (noisy context)",
               "xAR cells 2x2, teacher forcing")
UNTRAINED, PRIOR = "untrained network", "position prior (per class)"
REAL = "real training images (floor)"
BASELINES = (UNTRAINED, PRIOR)

CHECKS = (
    prerequisite("xar_beats_prior", "the xAR arm learnt more than independent per-position "
                 "tokens of its class: lower FD than the position prior", (XAR, FD), "<",
                 (PRIOR, FD)),
    prerequisite("xar_follows_class", "the xAR arm follows the class: accuracy 0.3 above the "
                 "untrained network", (XAR, ACC), ">", (UNTRAINED, ACC), by=0.3),
    prerequisite("next_token_learns", "the next-token arm learnt the condition: accuracy 0.2 "
                 "above the untrained network", (NT, ACC), ">", (UNTRAINED, ACC), by=0.2),
    prerequisite("teacher_forcing_learns", "the teacher-forcing arm learnt the condition: "
                 "accuracy 0.2 above the untrained network", (TF, ACC), ">", (UNTRAINED, ACC),
                 by=0.2),
    prerequisite("next_token_not_saturated", "room to beat next-token: its FD is above the "
                 "real-image floor", (NT, FD), ">", (REAL, FD)),
    prerequisite("teacher_forcing_not_saturated", "room to beat teacher forcing: its FD is "
                 "above the real-image floor", (TF, FD), ">", (REAL, FD)),
    claim("cell_beats_token", "cells of 2 x 2 tokens generate closer to the data than "
          "next-token prediction at equal compute: lower FD", (XAR, FD), "<", (NT, FD)),
    claim("ncl_beats_teacher_forcing", "noisy context learning generates closer to the data "
          "than teacher forcing at equal compute: lower FD", (XAR, FD), "<", (TF, FD)),
)

ARMS = (  # (arm folder, row name, experiment variant)
    ("xar_cell2", XAR, "cell=2,context=noisy"),
    ("next_token", NT, "cell=1,context=noisy"),
    ("teacher_forcing", TF, "cell=2,context=clean"),
)


def _generate(method, params, labels: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
  """(samples, seconds per 100 images): compiled first, then timed."""
  import jax
  out, seconds = timed_sampler(method.generate, params, labels, jax.random.key(seed))
  return out, seconds * 100.0 / len(labels)


def run_seed(ctx: Context) -> Trial:
  import flax.linen as nn
  import jax
  from tokenlab.evals.image_samples import evaluate_samples, load_split, train_classifier
  from tokenlab.repro.baselines import sample_position_prior
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  n = 10 if ctx.quick else NUM_SAMPLES
  rows, samples = [], {}
  with compile_cache(ctx.out("jax_cache")):
    # The sample scores below replace the trainer's own eval (one compile less per arm).
    no_eval = lambda batch_size, seed: iter(())
    train = load_split(DATASET, "train", OPTIONS)
    val = load_split(DATASET, "validation", OPTIONS)
    images, labels, ref = train["image"], train["label"], val["image"]
    example = {"image": images[:2], "label": labels[:2].astype(np.int32)}
    want = np.repeat(np.arange(10), n // 10).astype(np.int32)
    methods = {}
    # --quick: the xAR arm only (a smoke test of training, sampling and scoring).
    for folder, arm, variant in ARMS[:1] if ctx.quick else ARMS:
      result = ctx.train(f"{EXPERIMENT}:size={size},data={VARIANT},{variant}", folder,
                         eval_iter_fn=no_eval)
      run = load_trained(ctx.path(folder), example)
      method = methods[arm] = run.method
      rows.append((arm, LOSS, float(result.get("train/loss", float("nan")))))
      samples[arm], secs = _generate(method, run.params, want, 1000 + ctx.seed)
      rows += [(arm, SAMPLE_S, secs),
               (arm, NFE, float(method.num_entities * method.config.sample_steps))]
    # Baselines in the xAR arm's geometry (cells 2x2; the untrained network's zero velocity
    # makes its samples the initial noise whatever k is).
    method = methods[XAR]
    init = jax.jit(method.init)(jax.random.key(ctx.seed), example)
    samples[UNTRAINED], _ = _generate(method, nn.unbox(init), want, 2000 + ctx.seed)
    tokens = np.asarray(jax.jit(method.tokens)(images))
    drawn = sample_position_prior(tokens, labels, want, np.random.default_rng(3000 + ctx.seed))
    samples[PRIOR] = np.asarray(jax.jit(method.images)(drawn))

    clf = train_classifier(DATASET, options=OPTIONS, steps=30 if ctx.quick else 500)
    for arm, s in samples.items():
      score = evaluate_samples(clf, s, labels=want, reference=ref, real_floor=False)
      rows += [(arm, ACC, score["class_accuracy"]), (arm, FD, score["fd"])]
    real = images[np.random.default_rng(ctx.seed).permutation(len(images))[:n]]
    rows.append((REAL, FD, evaluate_samples(clf, real, reference=ref, real_floor=False)["fd"]))
    data = per_class_samples(samples, images, labels)
  return Trial(rows, data)


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """One sample per class from every arm (first seed), real digits on top."""
  path, arms = save_per_class_grid(ctx, trials[0].data)
  notes = (f"samples.png rows (one sample per class 0..9, seed {ctx.seed}): real training "
           "digits, then " + ", ".join(arms) + ". FD-classifier is a toy FID on the features "
           "of a small MNIST classifier (tokenlab.evals.image_samples); read it against the "
           f"'{REAL}' row (as many real images against the same validation reference). "
           "Budget: equal steps and equal tokens through the network per step (the teacher-"
           "forcing arm's doubled sequence runs half the batch). Sampling time: the whole "
           "jitted sampler after compilation, on this CPU, no key/value cache in any arm; "
           "next-token needs 4x the sequential passes of the cell arms by construction.")
  return [path], notes
