"""Mini-reproduction of ToMe, "Token Merging: Your ViT But Faster" (Bolya et al., ICLR 2023).

The paper's headline: merging r tokens per block with bipartite soft matching, applied off
the shelf to a trained ViT, raises throughput a lot for a small accuracy drop; merging keeps
more accuracy than pruning tokens at the same token counts; training with merging recovers
part of the drop.

In miniature (tokenlab/methods/tome.py, experiments/tome.py:size=small): a 4-block d=48 ViT
with a class token on `shapes` (32x32 RGB, 4x4 patches: 64 patches + the class token; the
label is the shape class, 4 classes, 5,000 train / 500 validation images). Per seed two arms
are trained with the real trainer for the same steps and batch (budget = steps): the plain
ViT (r = 0) and the ViT trained with ToMe at r = R_TRAIN. Then, on the 500 validation images:

- off the shelf: the plain ViT's parameters evaluated with ToMe at r in R_LEVELS (merging
  between attention and MLP of every block, class token protected, proportional attention);
- baselines at equal token counts, same parameters, same place in the block: random token
  dropping and pruning by the class token's attention (EViT's score);
- the ToMe-trained ViT at its own r.

Throughput: images/s of the jitted forward pass on the 500 validation images (one batch),
every variant timed in the same process, interleaved over rounds, best round kept, so the
ratios to r = 0 hold on a shared machine (absolute images/s depend on the machine's load).

Trivial baselines (arms): the majority class, the untrained network (the plain ViT at init,
r = 0) and a count-based classifier on the same training images (per-pixel naive Bayes over
the foreground mask, add-one smoothing).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tokenlab.repro import Context, Trial, claim, prerequisite

CLAIM = ("Token merging applied off the shelf to a trained ViT raises throughput a lot for a "
         "small accuracy drop, keeps more accuracy than random dropping or attention-score "
         "pruning at the same token counts, and training with merging recovers part of the "
         "drop.")

EXPERIMENT = "experiments/tome.py"
DATA = "shapes"
STEPS = 600
BATCH = 32
LR = 3e-3
R_LEVELS = (0, 4, 8, 12)   # tokens merged per block: 65 -> 49 / 33 / 17 tokens at the end
R_MID, R_MAX = 8, 12
R_TRAIN = R_MAX
TIMING_ROUNDS = 5

ACC, IPS, SPEED, TOKENS = "accuracy", "images/s", "speedup vs r=0", "final tokens"
VIT = "vit (r=0)"
MAJORITY, UNTRAINED, COUNTS = "majority class", "untrained ViT", "pixel naive Bayes (counts)"
BASELINES = (MAJORITY, UNTRAINED, COUNTS)


def tome_arm(r: int) -> str:
  return VIT if r == 0 else f"tome off-the-shelf r={r}"


def prune_arm(kind: str, r: int) -> str:
  return f"{'random drop' if kind == 'random' else 'attention prune'} r={r}"


TRAINED = f"tome trained r={R_TRAIN}"


def _dir(arm: str) -> str:
  """An arm's folder name: 'vit (r=0)' -> 'vit_r0'."""
  return "".join(ch for ch in arm.replace(" ", "_") if ch.isalnum() or ch == "_")

CHECKS = (
    prerequisite("vit_beats_majority", "the plain ViT learned the task: accuracy at least 0.2 "
                 "above always answering the majority class", (VIT, ACC), ">",
                 (MAJORITY, ACC), by=0.2),
    prerequisite("vit_beats_untrained", "the plain ViT is well above its own untrained "
                 "network", (VIT, ACC), ">", (UNTRAINED, ACC), by=0.2),
    prerequisite("vit_beats_counts", "the plain ViT beats counting foreground pixels per "
                 "class on the same training images", (VIT, ACC), ">", (COUNTS, ACC)),
    prerequisite("not_saturated", "the task is not saturated (room for a drop to show)",
                 (VIT, ACC), "<", 0.995),
    claim("tome_faster", f"off-the-shelf ToMe at r={R_MAX} runs at least 1.3x the images/s "
          "of the same ViT without merging", (tome_arm(R_MAX), SPEED), ">", 1.3),
    claim("tome_small_drop", f"off-the-shelf ToMe at r={R_MID} (65 -> 33 tokens) loses at "
          "most 0.03 accuracy", (tome_arm(R_MID), ACC), ">", (VIT, ACC), by=-0.03),
    claim("tome_beats_random", f"at r={R_MAX} merging keeps more accuracy than dropping the "
          "same number of random tokens", (tome_arm(R_MAX), ACC), ">",
          (prune_arm("random", R_MAX), ACC)),
    claim("tome_beats_attention_pruning", f"at r={R_MAX} merging keeps more accuracy than "
          "pruning the same number of tokens by class-token attention",
          (tome_arm(R_MAX), ACC), ">", (prune_arm("attention", R_MAX), ACC)),
    claim("trained_beats_off_the_shelf", f"training with ToMe at r={R_TRAIN} gives higher "
          "accuracy at that r than applying it off the shelf", (TRAINED, ACC), ">",
          (tome_arm(R_TRAIN), ACC)),
)
SEEDS = 3


# ---------------------------------------------------------------------------------------------
# Baselines.


def foreground(images: np.ndarray) -> np.ndarray:
  """(N, H, W, C) in [0, 1] -> (N, H * W) bool: a pixel is lit in any channel."""
  return (images.max(axis=-1) > 0.5).reshape(len(images), -1)


def naive_bayes_accuracy(train: dict, valid: dict, num_classes: int) -> float:
  """Per-pixel Bernoulli naive Bayes over the foreground mask (add-one smoothing)."""
  xt, yt = foreground(train["image"]), train["label"]
  xv, yv = foreground(valid["image"]), valid["label"]
  log_prior = np.log(np.bincount(yt, minlength=num_classes) + 1.0)
  scores = np.zeros((len(xv), num_classes))
  for c in range(num_classes):
    p = (xt[yt == c].sum(0) + 1.0) / ((yt == c).sum() + 2.0)
    scores[:, c] = log_prior[c] + xv @ np.log(p) + (~xv) @ np.log(1 - p)
  return float(np.mean(scores.argmax(1) == yv))


# ---------------------------------------------------------------------------------------------
# Evaluation: accuracy and images/s of every variant, timed side by side.


def evaluate_variants(variants: dict, params: dict, images: np.ndarray, labels: np.ndarray,
                      rounds: int, seed: int, keep: int = 8) -> dict[str, dict[str, Any]]:
  """variants {name: (method, params key)} -> {name: {accuracy, images/s, final tokens}} and
  the group ids of the first `keep` images under 'group_ids' (None where not traced).

  Each variant's forward is jitted (one program per model configuration, shared by variants
  that differ only in parameters) and run once; then `rounds` interleaved timing rounds over
  all variants (best round kept), so load from other processes hits every variant alike.
  """
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(images)
  key = jax.random.key(seed)
  programs, out = {}, {}
  for name, (method, which) in variants.items():
    if method.config not in programs:
      programs[method.config] = jax.jit(lambda p, x, m=method: m.forward(p, x, key))
    logits, sizes, gid = jax.block_until_ready(programs[method.config](params[which], x))
    out[name] = {ACC: float(np.mean(np.argmax(np.asarray(logits), -1) == labels)),
                 TOKENS: float(sizes.shape[1]),
                 "group_ids": None if gid is None else np.asarray(gid[:keep])}
  best = {name: float("inf") for name in variants}
  for _ in range(rounds):
    for name, (method, which) in variants.items():
      t = time.perf_counter()
      jax.block_until_ready(programs[method.config](params[which], x))
      best[name] = min(best[name], time.perf_counter() - t)
  for name in variants:
    out[name][IPS] = len(images) / best[name]
  return out


def merge_map(images: np.ndarray, group_ids: np.ndarray, patch: int) -> np.ndarray:
  """ToMe's visualisation: every patch painted with the mean colour of the token it ended in.

  images (B, H, W, C), group_ids (B, N + 1) (class token first) -> (B, 4H, 4W, C) in
  [0, 1], borders between tokens drawn in grey.
  """
  gid = np.asarray(group_ids)[:, 1:]                # drop the class token
  # Upsampled 4x (nearest) first, so one-pixel borders stay thin next to the patches.
  images = np.repeat(np.repeat(np.asarray(images), 4, axis=1), 4, axis=2)
  patch *= 4
  b, h, w, c = images.shape
  gh, gw = h // patch, w // patch
  patches = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(b, gh * gw, patch, patch, c)
  out = np.zeros_like(patches)
  for i in range(b):
    for g in np.unique(gid[i]):
      sel = gid[i] == g
      out[i, sel] = patches[i, sel].mean(axis=(0, 1, 2))
  out = out.reshape(b, gh, gw, patch, patch, c)
  grid = gid.reshape(b, gh, gw)
  # Borders: the last pixel column / row of a patch whose right / lower neighbour differs.
  out[:, :, :-1, :, -1] = np.where((grid[:, :, :-1] != grid[:, :, 1:])[..., None, None],
                                   0.5, out[:, :, :-1, :, -1])
  out[:, :-1, :, -1, :] = np.where((grid[:, :-1, :] != grid[:, 1:, :])[..., None, None],
                                   0.5, out[:, :-1, :, -1, :])
  return out.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


# ---------------------------------------------------------------------------------------------
# One seed.


def run_seed(ctx: Context) -> Trial:
  import flax.linen as nn
  import jax
  from tokenlab.config import load_config
  from tokenlab.evals.image_samples import load_split
  from tokenlab.registry import build_method
  from tokenlab.repro.baselines import majority
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  common = [f"--config.train.steps={ctx.steps(STEPS, 2)}",
            f"--config.train.batch_size={BATCH}", f"--config.optimizer.lr={LR}"]
  # --quick trains one tiny arm, with merging (so the test suite runs ToMe's train step in the
  # real trainer on its 4-device mesh), and reuses it for every variant; it claims nothing.
  arms = [(TRAINED, R_TRAIN)] if ctx.quick else [(VIT, 0), (TRAINED, R_TRAIN)]
  valid = load_split(DATA, "validation")
  train = load_split(DATA, "train")
  images, labels = valid["image"], valid["label"]
  example = {"image": images[:8], "label": labels[:8].astype(np.int32),
             "mask": np.ones(8, np.float32)}
  params, train_rows = {}, []
  for arm, r in arms:
    spec = f"{EXPERIMENT}:size={size},data={DATA},r={r}"
    t = time.perf_counter()
    result = ctx.train(spec, _dir(arm), common)
    train_rows.append((arm, "train seconds", time.perf_counter() - t))
    if "perf/steps_per_sec" in result:
      train_rows.append((arm, "train steps/s", float(result["perf/steps_per_sec"])))
    run = load_trained(ctx.path(_dir(arm)), example)
    params[arm] = nn.unbox(run.params)
  if ctx.quick:
    params[VIT] = params[TRAINED]
  base = run.method.variant(r=0)   # any arm's method: parameters do not depend on r
  config = load_config(f"{EXPERIMENT}:size={size},data={DATA}", [f"--config.seed={ctx.seed}"])
  untrained = build_method(config.model)
  params[UNTRAINED] = nn.unbox(jax.jit(untrained.init)(jax.random.key(ctx.seed), example))

  levels = (0, R_MAX) if ctx.quick else R_LEVELS
  variants = {UNTRAINED: (base, UNTRAINED)}
  for r in levels:
    variants[tome_arm(r)] = (base.variant(r=r), VIT)
    if r and not ctx.quick:   # (quick: two programs; the tests compile the pruning ones)
      for kind in ("random", "attention"):
        variants[prune_arm(kind, r)] = (base.variant(r=r, reduction=kind), VIT)
  variants[TRAINED] = (base.variant(r=R_TRAIN), TRAINED)
  if ctx.quick:
    images, labels = images[:64], labels[:64]
  res = evaluate_variants(variants, params, images, labels,
                          1 if ctx.quick else TIMING_ROUNDS, ctx.seed)
  rows = list(train_rows)
  for name, m in res.items():
    rows += [(name, k, m[k]) for k in (ACC, IPS, TOKENS)]
    rows.append((name, SPEED, m[IPS] / res[VIT][IPS]))
  rows.append((MAJORITY, ACC, float(np.mean(labels == majority(train["label"].tolist())))))
  rows.append((COUNTS, ACC, naive_bayes_accuracy(train, valid,
                                                     base.config.num_classes)))
  data = {"res": {n: {k: v for k, v in m.items() if k != "group_ids"} for n, m in res.items()}}
  if ctx.seed == 0 or ctx.quick:
    picks = images[:8]
    patch = base.config.patch_size
    names = {f"off the shelf r={r}": tome_arm(r) for r in levels if r}
    names[f"trained r={R_TRAIN}"] = TRAINED
    data["merges"] = {title: merge_map(picks, res[name]["group_ids"], patch)
                      for title, name in names.items()}
    data["images"] = picks
  return Trial(rows, data)


# ---------------------------------------------------------------------------------------------
# Figures.


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Accuracy vs images/s per reduction (mean over seeds) and ToMe's merge visualisation."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  res = [t.data["res"] for t in trials]
  mean = lambda name, k: float(np.mean([r[name][k] for r in res if name in r]))
  std = lambda name, k: float(np.std([r[name][k] for r in res if name in r]))
  levels = [r for r in R_LEVELS if tome_arm(r) in res[0]]
  fig, ax = plt.subplots(figsize=(6, 4.5))
  curves = (("ToMe (off the shelf)", [tome_arm(r) for r in levels], "o-"),
            ("random drop", [VIT] + [prune_arm("random", r) for r in levels if r], "s--"),
            ("attention prune", [VIT] + [prune_arm("attention", r) for r in levels if r],
             "^--"))
  for label, names, fmt in curves:
    names = [n for n in names if n in res[0]]
    ax.errorbar([mean(n, IPS) for n in names], [mean(n, ACC) for n in names],
                yerr=[std(n, ACC) for n in names], fmt=fmt, label=label, capsize=2)
    for n, r in zip(names, levels):
      ax.annotate(f"r={r}", (mean(n, IPS), mean(n, ACC)), fontsize=7,
                  textcoords="offset points", xytext=(3, 3))
  if TRAINED in res[0]:
    ax.errorbar([mean(TRAINED, IPS)], [mean(TRAINED, ACC)], yerr=[std(TRAINED, ACC)],
                fmt="*", ms=12, label=f"ToMe trained, r={R_TRAIN}")
  ax.set_xlabel("images/s (forward, 500 validation images, same run)")
  ax.set_ylabel("validation accuracy")
  ax.set_title(f"ToMe vs pruning at equal token counts ({DATA}, mean +- std, "
               f"{len(trials)} seeds)", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  curve_path = ctx.out("tome_tradeoff.png")
  fig.savefig(curve_path, dpi=100)
  plt.close(fig)

  first = trials[0].data
  rows = [("images", first["images"])] + list(first["merges"].items())
  n = len(first["images"])
  fig, axes = plt.subplots(len(rows), n, figsize=(1.4 * n, 1.5 * len(rows)), squeeze=False)
  for i, (title, imgs) in enumerate(rows):
    for j in range(n):
      axes[i, j].imshow(np.clip(imgs[j], 0, 1), interpolation="nearest")
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(title, fontsize=7)
  fig.suptitle("ToMe's visualisation (seed 0): each patch painted with the mean colour of the "
               "token it ended in; grey lines between tokens", fontsize=8)
  fig.tight_layout()
  merge_path = ctx.out("tome_merges.png")
  fig.savefig(merge_path, dpi=100)
  plt.close(fig)
  notes = (f"Both trained arms: {ctx.steps(STEPS, 2)} steps of batch {BATCH}, peak lr {LR} "
           "(same budget in steps). Token counts (class token included) after each of the 4 "
           "blocks: r=4: 61/57/53/49, r=8: 57/49/41/33, r=12: 53/41/29/17 (constant r per "
           "block, r clamped to (N - 1) // 2); "
           "random drop and attention pruning remove exactly as many tokens as ToMe in every "
           "block. images/s: forward pass on one batch of 500 validation images, best of "
           f"{TIMING_ROUNDS} interleaved rounds, on the CPU the run used; the attention-prune "
           "arm recomputes q k^T for its scores.")
  return [curve_path, merge_path], notes
