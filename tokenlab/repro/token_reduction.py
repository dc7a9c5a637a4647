"""Mini-reproduction of "Token Reduction Should Go Beyond Efficiency in Generative Models"
(arXiv 2505.18227), a position paper: one of its claims, tested at toy scale.

The paper argues that token reduction should be a modelling principle, not only a speed-up,
and lists what it can do beyond efficiency, among them "improve robustness" and "mitigate
hallucinations". The claim tested here, in miniature: reduction used *while training* makes a
model more robust to irrelevant input than the same model without reduction, and more than the
same reduction applied only at test time (the efficiency use).

Task (experiments/token_reduction.py:size=small): `shapes` (32x32 RGB, 4x4 patches: 64
patches + a class token; the label is the shape class, 4 classes; 5,000 train / 500
validation images). Training images carry 0..2 distractor squares (`config.data.augment=
'clutter'`: solid 4x4 px squares of a random non-black binary colour at random positions; the
objects are 8x8). Two arms are trained per seed with the real trainer, same steps, batch and
learning rate (budget = steps; the pruned arm spends fewer FLOPs per step): the plain ViT
(r = 0) and the ViT trained with attention-score pruning (EViT's class-token score, r = R
tokens per block: the reduction that chooses tokens by relevance, the one the robustness
argument is about). The test-time-only arms reuse the plain ViT's weights with attention
pruning, ToMe merging or random dropping at the same r. All are evaluated on the 500
validation images clean, with 2 distractors each (the most seen in training) and with HEAVY
distractors each (out of the training range); the distractors of a validation image come from
a generator seeded by (seed, count), the same for every arm.

Trivial baselines (arms): the majority class of the training labels and the untrained network.
Diagnostic rows (not checks): for the pruning arms, the fraction of distractor-covered patches
and of object patches that survive the last block.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite

CLAIM = ("Token reduction used while training is a modelling choice, not only a speed-up: a "
         "ViT trained with attention-score token pruning in its blocks is more robust to "
         "distractors (higher accuracy with heavy clutter, smaller drop from clean) than the "
         "same ViT trained without reduction at equal steps, and than the same pruning "
         "applied only at test time.")

EXPERIMENT = "experiments/token_reduction.py"
STEPS = 600
BATCH = 32
LR = 3e-3
R = 8                 # tokens removed per block: 65 -> 57 -> 49 -> 41 -> 33
TRAIN_CLUTTER = 2     # distractors per validation image at the training maximum
HEAVY = 6             # distractors per validation image, 3x the training maximum
LEVELS = (0, TRAIN_CLUTTER, HEAVY)
PATCH = 4             # the experiment's patch size (pixels)

VIT = "vit (no reduction)"
PRUNE_TRAINED = f"attention prune trained r={R}"
PRUNE_TEST, TOME_TEST = f"attention prune test-only r={R}", f"tome test-only r={R}"
RANDOM_TEST = f"random drop test-only r={R}"
MAJORITY, UNTRAINED = "majority class", "untrained ViT"
BASELINES = (MAJORITY, UNTRAINED)


def acc(level: int) -> str:
  return "accuracy clean" if level == 0 else f"accuracy {level} distractors"


CLEAN, HEAVY_ACC = acc(0), acc(HEAVY)
DROP = f"drop clean -> {HEAVY} distractors"
KEPT_DISTRACTOR, KEPT_OBJECT = "distractor patches kept", "object patches kept"

CHECKS = (
    prerequisite("vit_beats_majority", "the plain ViT learned the task: clean accuracy at "
                 "least 0.2 above the majority class", (VIT, CLEAN), ">", (MAJORITY, CLEAN),
                 by=0.2),
    prerequisite("vit_beats_untrained", "the plain ViT is well above its untrained network",
                 (VIT, CLEAN), ">", (UNTRAINED, CLEAN), by=0.2),
    prerequisite("pruned_arm_learned", "the ViT trained with pruning learned the task too",
                 (PRUNE_TRAINED, CLEAN), ">", (MAJORITY, CLEAN), by=0.2),
    prerequisite("clutter_hurts", f"heavy clutter is a real test: the plain ViT loses at least "
                 f"0.03 accuracy from clean to {HEAVY} distractors", (VIT, DROP), ">", 0.03),
    claim("prune_trained_more_accurate_under_clutter", f"trained with attention pruning, the "
          f"ViT is more accurate with {HEAVY} distractors than the ViT trained without "
          "reduction", (PRUNE_TRAINED, HEAVY_ACC), ">", (VIT, HEAVY_ACC)),
    claim("prune_trained_smaller_drop", "trained with attention pruning, the ViT loses less "
          "accuracy from clean to heavy clutter than the ViT trained without reduction",
          (PRUNE_TRAINED, DROP), "<", (VIT, DROP)),
    claim("prune_trained_beats_test_only", "under heavy clutter, attention pruning learned in "
          "training beats the same pruning applied to the plain ViT at test time only",
          (PRUNE_TRAINED, HEAVY_ACC), ">", (PRUNE_TEST, HEAVY_ACC)),
)
SEEDS = 3


# ---------------------------------------------------------------------------------------------
# Data: the validation split with seeded distractors.


def cluttered(images: np.ndarray, count: int, seed: int) -> np.ndarray:
  """(N, H, W, C) -> the same images with `count` distractor squares each (the training
  augmentation's `add_clutter`), drawn from one generator per (seed, count)."""
  from tokenlab.data.pipeline import add_clutter
  if count == 0:
    return images
  rng = np.random.default_rng([seed, count])
  return np.stack([add_clutter(im, rng, count) for im in images])


def patch_masks(clean: np.ndarray, noisy: np.ndarray, patch: int) -> tuple[np.ndarray, ...]:
  """Per patch (row-major, (N, P)): touched by a distractor (any pixel changed) and holding
  object pixels of the clean image untouched by distractors."""
  n, h, w, c = clean.shape
  grid = lambda a: a.reshape(n, h // patch, patch, w // patch, patch).any(axis=(2, 4)).reshape(
      n, -1)
  changed = np.any(clean != noisy, axis=-1)
  distractor = grid(changed)
  obj = grid(clean.max(axis=-1) > 0.5) & ~distractor
  return distractor, obj


def kept_fraction(group_ids: np.ndarray, mask: np.ndarray) -> float:
  """Fraction of the patches in `mask` (N, P) that survive (group id >= 0; class token
  dropped from group_ids (N, P + 1))."""
  kept = np.asarray(group_ids)[:, 1:] >= 0
  return float((kept & mask).sum() / max(mask.sum(), 1))


# ---------------------------------------------------------------------------------------------
# One seed.


def _dir(arm: str) -> str:
  return "".join(ch for ch in arm.replace(" ", "_").replace("=", "") if ch.isalnum() or ch == "_")


def run_seed(ctx: Context) -> Trial:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from tokenlab.config import load_config
  from tokenlab.evals.image_samples import load_split
  from tokenlab.registry import build_method
  from tokenlab.repro.baselines import majority
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  # The trainer's own eval (clean images) is a log line only: the arms are judged below, on
  # clutter levels it does not see; 2 batches (1 under --quick) keep it cheap.
  common = [f"--config.train.steps={ctx.steps(STEPS, 2)}", f"--config.optimizer.lr={LR}",
            f"--config.train.eval_batches={ctx.steps(2, 1)}"]
  if not ctx.quick:
    common.append(f"--config.train.batch_size={BATCH}")
  # --quick trains one tiny arm (the pruning one: its train step through the real trainer) and
  # reuses its weights for every variant; it claims nothing.
  arms = [(PRUNE_TRAINED, R)] if ctx.quick else [(VIT, 0), (PRUNE_TRAINED, R)]
  # --quick: 16 validation images (drawn against 64 train records: generating the split's
  # 5,000 train labels, which validation must not repeat, costs seconds).
  small = {"num_train": 64, "num_validation": 16} if ctx.quick else None
  valid = load_split("shapes", "validation", small)
  train_labels = load_split("shapes", "train")["label"] if not ctx.quick else valid["label"]
  images, labels = valid["image"], valid["label"]
  example = {"image": images[:8], "label": labels[:8].astype(np.int32),
             "mask": np.ones(8, np.float32)}
  params, methods, rows = {}, {}, []
  # Seeds after the first load the arms' compiled programs from a cache (same programs).
  with contextlib.nullcontext() if ctx.quick else compile_cache(ctx.out("jax_cache")):
    for arm, r in arms:
      t = time.perf_counter()
      result = ctx.train(f"{EXPERIMENT}:size={size},r={r},reduction=attention", _dir(arm),
                         common)
      rows.append((arm, "train seconds", time.perf_counter() - t))
      if "perf/steps_per_sec" in result:
        rows.append((arm, "train steps/s", float(result["perf/steps_per_sec"])))
      run = load_trained(ctx.path(_dir(arm)), example)
      params[arm], methods[arm] = nn.unbox(run.params), run.method
  base = methods[arms[0][0]].variant(r=0, reduction="attention")
  if ctx.quick:
    params[VIT] = params[PRUNE_TRAINED]
  if not ctx.quick:   # (--quick: no untrained arm, one compile less)
    config = load_config(f"{EXPERIMENT}:size={size}", [f"--config.seed={ctx.seed}"])
    params[UNTRAINED] = nn.unbox(jax.jit(build_method(config.model).init)(
        jax.random.key(ctx.seed), example))

  # (method, weights) of every evaluated variant; one compiled program per configuration.
  pruned = base.variant(r=R, reduction="attention")
  # --quick compiles one forward program (the pruned one) for its two rows: it smoke-tests
  # the pipeline, and compiles are most of its seconds.
  variants = {VIT: (pruned if ctx.quick else base, VIT), PRUNE_TRAINED: (pruned, PRUNE_TRAINED)}
  if not ctx.quick:
    variants.update({
        UNTRAINED: (base, UNTRAINED),
        PRUNE_TEST: (pruned, VIT),
        TOME_TEST: (base.variant(r=R, reduction="tome"), VIT),
        RANDOM_TEST: (base.variant(r=R, reduction="random"), VIT)})
  programs = {}
  key = jax.random.key(ctx.seed)
  levels = (0, HEAVY) if ctx.quick else LEVELS
  data, gids = {}, {}
  for level in levels:
    x = cluttered(images, level, ctx.seed)
    data[level] = x
    for name, (method, which) in variants.items():
      if method.config not in programs:
        programs[method.config] = jax.jit(lambda p, x, m=method: m.forward(p, x, key))
      logits, _, gid = programs[method.config](params[which], jnp.asarray(x))
      rows.append((name, acc(level), float(np.mean(np.argmax(np.asarray(logits), -1)
                                                   == labels))))
      gids[name, level] = np.asarray(gid)
  values = {(a, m): v for a, m, v in rows}
  for name in variants:
    rows.append((name, DROP, values[name, CLEAN] - values[name, acc(levels[-1])]))
  # Which patches survive pruning under the heaviest clutter (the mechanism, not a check).
  dis, obj = patch_masks(images, data[levels[-1]], base.config.patch_size)
  for name in (PRUNE_TRAINED, PRUNE_TEST, RANDOM_TEST):
    if name in variants:
      rows.append((name, KEPT_DISTRACTOR, kept_fraction(gids[name, levels[-1]], dis)))
      rows.append((name, KEPT_OBJECT, kept_fraction(gids[name, levels[-1]], obj)))
  prior = majority(np.asarray(train_labels).tolist())
  for level in levels:
    rows.append((MAJORITY, acc(level), float(np.mean(labels == prior))))
  show = 2 if ctx.quick else 8    # images in the figure (--quick: fewer axes to draw)
  picks = {"images": data[levels[-1]][:show]}
  for name in (PRUNE_TRAINED, PRUNE_TEST):
    if name in variants:
      picks[name] = gids[name, levels[-1]][:show]
  return Trial(rows, {"picks": picks} if ctx.seed == 0 or ctx.quick else None)


# ---------------------------------------------------------------------------------------------
# Figures.


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Accuracy vs distractors per arm (mean +- std over seeds) and, for seed 0, the patches the
  pruning arms keep on cluttered validation images."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  per = [{(a, m): v for a, m, v in t.rows} for t in trials]
  arms = [a for a in (VIT, PRUNE_TRAINED, PRUNE_TEST, TOME_TEST, RANDOM_TEST, UNTRAINED,
                      MAJORITY) if (a, CLEAN) in per[0]]
  levels = [lv for lv in LEVELS if (VIT, acc(lv)) in per[0]]
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for arm in arms:
    vals = np.array([[p[arm, acc(lv)] for lv in levels] for p in per])
    style = "--" if "test-only" in arm else (":" if arm in BASELINES else "-")
    ax.errorbar(levels, vals.mean(0), yerr=vals.std(0), fmt="o" + style, capsize=2, label=arm)
  ax.set_xlabel(f"distractor squares per validation image (training: 0..{TRAIN_CLUTTER})")
  ax.set_ylabel("validation accuracy (shape class)")
  ax.set_title(f"Reduction in training vs at test only (shapes, mean +- std, {len(trials)} "
               "seeds)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  curve = ctx.out("token_reduction_robustness.png")
  fig.savefig(curve, dpi=60 if ctx.quick else 100)
  plt.close(fig)
  figures = [curve]
  picks = trials[0].data["picks"] if trials[0].data else None
  if picks:
    images = picks["images"]
    names = [n for n in picks if n != "images"]
    fig, axes = plt.subplots(1 + len(names), len(images),
                             figsize=(1.4 * len(images), 1.5 * (1 + len(names))), squeeze=False)
    patch = PATCH
    for j, im in enumerate(images):
      axes[0, j].imshow(np.clip(im, 0, 1), interpolation="nearest")
      for i, name in enumerate(names, start=1):
        kept = picks[name][j, 1:] >= 0
        g = images.shape[1] // patch
        mask = np.repeat(np.repeat(kept.reshape(g, g), patch, 0), patch, 1)
        axes[i, j].imshow(np.clip(im, 0, 1) * (0.15 + 0.85 * mask[..., None]),
                          interpolation="nearest")
    for i, title in enumerate(["input"] + names):
      axes[i, 0].set_ylabel(title.replace(" r=", "\nr="), fontsize=6)
    for a in axes.ravel():
      a.set_xticks([])
      a.set_yticks([])
    fig.suptitle(f"Patches kept after the last block (dimmed: pruned), {HEAVY} distractors, "
                 "seed 0", fontsize=8)
    fig.tight_layout()
    kept_png = ctx.out("token_reduction_kept.png")
    fig.savefig(kept_png, dpi=60 if ctx.quick else 100)
    plt.close(fig)
    figures.append(kept_png)
  notes = (f"Trained arms: {ctx.steps(STEPS, 2)} steps of batch {BATCH}, peak lr {LR}, the "
           f"same for both (budget = steps; the pruned arm spends fewer FLOPs a step), train "
           f"images with 0..{TRAIN_CLUTTER} distractor squares. Token counts (class token "
           f"included) after the 4 blocks at r={R}: 57/49/41/33, the same for every reduction "
           f"(pruning, ToMe, random). Validation: 500 images, clean and with {TRAIN_CLUTTER} "
           f"and {HEAVY} distractors (solid 4x4 px squares of a random non-black binary colour, "
           "seeded by seed and count, the same for every arm). 'drop' = clean accuracy minus "
           "accuracy with the heaviest clutter.")
  return figures, notes
