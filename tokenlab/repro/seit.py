"""Mini-reproduction of SeiT / SeiT++ (arXiv 2312.10105), under the protocol.

Claims in miniature: (1) a ViT trained on stored VQ tokens reaches accuracy close to the same
ViT trained on pixels, at far fewer bits per image; (2) masked token modeling (MTM)
pretraining on the tokens helps few-label fine-tuning; (3) the token augmentations ColorAdapt
and (4) TokenAdapt help that fine-tuning further.

Toy: scikit-learn digits (8x8, 17 grey levels; 1,617 train / 180 validation images). Per seed:
a ViT-VQ tokenizer (tokenlab's image_tokenizer, 2x2 pixel patches -> a 4x4 grid, EMA codebook
of K = 32, 5 bits per code: 80 bits per image against 64 log2(17) = 261.6 for the pixels) is
trained through the trainer as the first arm and frozen; the train and validation images are
encoded once and only the codes are read afterwards. Arms, all the same ViT (d = 64, 2 layers,
4 heads, 16 grid tokens + a class token; pixels enter as 2x2 patches, tokens as their
codebook vectors):

  pixel_vit            all labels, pixels, STEPS steps
  token_vit            all labels, tokens, STEPS steps
  token_vit_10pct      10% of the labels (stratified), from scratch, FT_STEPS steps
  mtm                  MTM pretraining on all train tokens, no labels, MTM_STEPS steps
  mtm_ft_10pct         10% labels, from the MTM weights, FT_STEPS steps
  mtm_ft_10pct_coloradapt, mtm_ft_10pct_tokenadapt   the same + an augmentation (p = 0.5)
  tokenadapt_adapter   TokenAdapt's f / g trained to map codes through a pixel translation

Budget: the compared arms of each claim have the same steps, batch and learning rate (budget
= steps);
MTM's pretraining is the extra compute the claim is about. Trivial baselines (arms): the
majority class, the untrained token ViT (same architecture at init), and a count-based
classifier on the same stored tokens: per-position code naive Bayes (add-alpha, alpha by
2-fold cross-validation on the training labels), fitted on all labels and on the 10% subset.
Accuracy is exact over the 180 validation images.
"""

from __future__ import annotations

import math

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite

CLAIM = ("A ViT trained on stored VQ tokens comes close to the same ViT on pixels at far fewer "
         "bits per image; masked token modeling pretraining helps few-label fine-tuning, and "
         "ColorAdapt and TokenAdapt augmentations help further.")

TOKENIZER = "experiments/image_tokenizer.py:size=small,data=digits,arch=vit"
TOKENIZER_OVERRIDES = ("--config.model.patch_size=2", "--config.model.codebook_size=32",
                       "--config.model.latent_dim=8", "--config.model.d_model=32",
                       "--config.model.num_layers=1", "--config.model.num_heads=2",
                       "--config.model.dead_after=20", "--config.train.batch_size=64",
                       "--config.optimizer.lr=2e-3", "--config.train.eval_every=0",
                       "--config.train.eval_batches=0", "--config.checkpoint.async_save=false")
EXPERIMENT = "experiments/seit.py:size=small"
TOK_STEPS, STEPS, FT_STEPS, MTM_STEPS, ADAPTER_STEPS = 400, 1200, 600, 1200, 1000
LR, ADAPTER_LR = 2e-3, 1e-2     # peak learning rates (cosine, 5% warm-up), every ViT arm alike
LABELS = 0.1
ALPHAS = (0.03, 0.1, 0.3, 1.0, 3.0)

ACC, BITS = "accuracy", "bits per image"
MAJORITY, UNTRAINED = "majority class", "untrained token_vit"
NB_ALL, NB_FEW = "code naive Bayes (all labels)", "code naive Bayes (10% labels)"
BASELINES = (MAJORITY, UNTRAINED, NB_ALL, NB_FEW)

CHECKS = (
    prerequisite("pixels_learn", "the pixel ViT clearly beats the majority class (by 0.3)",
                 ("pixel_vit", ACC), ">", (MAJORITY, ACC), by=0.3),
    prerequisite("tokens_beat_counts", "the token ViT beats counting codes per position on "
                 "the same stored tokens and labels", ("token_vit", ACC), ">", (NB_ALL, ACC)),
    prerequisite("finetune_beats_counts", "the MTM fine-tuned arm beats counting codes on the "
                 "same 10% labels", ("mtm_ft_10pct", ACC), ">", (NB_FEW, ACC)),
    prerequisite("finetune_learns", "the MTM fine-tuned arm clearly beats the untrained "
                 "network (by 0.3)", ("mtm_ft_10pct", ACC), ">", (UNTRAINED, ACC), by=0.3),
    prerequisite("few_labels_not_saturated", "the few-label scratch arm leaves room to help "
                 "(accuracy below 0.95)", ("token_vit_10pct", ACC), "<", 0.95),
    prerequisite("adapter_round_trip", "TokenAdapt's f / g keep >= 95% of codes through an "
                 "identity augmentation (validation grids)",
                 ("tokenadapt_adapter", "identity round trip"), ">=", 0.95),
    claim("tokens_close_to_pixels", "tokens (80 bits per image, 31% of the pixels' 261.6) "
          "reach the pixel ViT's accuracy within 0.10 (declared before the run; SeiT: 90% of "
          "pixel accuracy at 1% of the storage)", ("token_vit", ACC), ">", ("pixel_vit", ACC),
          by=-0.10),
    claim("mtm_helps", "MTM pretraining raises 10%-label fine-tuning accuracy over training "
          "from scratch on the same labels and steps", ("mtm_ft_10pct", ACC), ">",
          ("token_vit_10pct", ACC)),
    claim("coloradapt_helps", "ColorAdapt raises MTM fine-tuning accuracy",
          ("mtm_ft_10pct_coloradapt", ACC), ">", ("mtm_ft_10pct", ACC)),
    claim("tokenadapt_helps", "TokenAdapt raises MTM fine-tuning accuracy",
          ("mtm_ft_10pct_tokenadapt", ACC), ">", ("mtm_ft_10pct", ACC)),
)
SEEDS = 3

HISTORY = """\
First design (`tokenlab repro seit --workdir docs/repro/seit`, 3 seeds, 475 s at load average
3.5 to 4.0; its repro.json is kept as docs/repro/seit/design1_repro.json): the same arms and
checks with 500 steps for the full-label arms, 300 for the 10%-label arms and the TokenAdapt
adapter, 600 for MTM, peak learning rate 1e-3 everywhere. Accuracy: pixel_vit 0.330 +- 0.19,
token_vit 0.767 +- 0.089, token_vit_10pct 0.620 +- 0.082, mtm_ft_10pct 0.735 +- 0.033,
+ColorAdapt 0.776 +- 0.009, +TokenAdapt 0.680 +- 0.079; baselines: majority 0.083, untrained
0.102, code naive Bayes 0.917 (all labels) / 0.785 (10%); adapter identity round trip 0.42.
Verdict: not assessable (pixels_learn, tokens_beat_counts, finetune_beats_counts and
adapter_round_trip failed). Diagnosis: every network underfit its training data (pixel ViT
train accuracy 0.46 at the end, token ViT 0.74; the adapter's train code accuracy 0.38), so
the run compared unfinished trainings. Changed (second design): more steps (full-label 1200,
10%-label 600, MTM 1200, adapter 1000) and peak learning rate 2e-3 for every ViT arm alike
(1e-2 for the small adapter); checks, arms and baselines unchanged."""


def naive_bayes(train_codes: np.ndarray, train_labels: np.ndarray, codes: np.ndarray,
                num_codes: int, num_classes: int, alpha: float) -> np.ndarray:
  """Predicted classes (N,) of a per-position code naive Bayes: log p(c) + sum over positions
  of log p(code at position | c), add-alpha estimates. codes (N, h, w) int."""
  x = train_codes.reshape(len(train_codes), -1)
  counts = np.zeros((num_classes, x.shape[1], num_codes))
  for c in range(num_classes):
    rows = x[train_labels == c]
    for pos in range(x.shape[1]):
      counts[c, pos] = np.bincount(rows[:, pos], minlength=num_codes)
  logp = np.log(counts + alpha) - np.log(counts.sum(-1, keepdims=True) + alpha * num_codes)
  prior = np.log(np.bincount(train_labels, minlength=num_classes) + 1.0)
  q = codes.reshape(len(codes), -1)
  scores = prior[None] + logp[:, np.arange(q.shape[1])[None], q].sum(-1).T
  return np.argmax(scores, -1)


def tune_alpha(codes: np.ndarray, labels: np.ndarray, num_codes: int, num_classes: int) -> float:
  """The add-alpha weight of the best 2-fold cross-validated accuracy on the training labels."""
  rng = np.random.default_rng(0)
  order = rng.permutation(len(codes))
  a, b = order[: len(order) // 2], order[len(order) // 2:]
  def cv(alpha):
    return sum(np.mean(naive_bayes(codes[f], labels[f], codes[h], num_codes, num_classes,
                                   alpha) == labels[h]) for f, h in ((a, b), (b, a)))
  return max(ALPHAS, key=cv)


def run_seed(ctx: Context) -> Trial:
  with compile_cache(ctx.out("jax_cache")):
    return _run_seed(ctx)


def _run_seed(ctx: Context) -> Trial:
  from tokenlab.config import load_config
  from tokenlab.methods.seit import labeled_subset, stored_tokens
  from tokenlab.repro.baselines import majority, untrained_metrics
  size = "tiny" if ctx.quick else "small"
  exp = f"experiments/seit.py:size={size}"
  rows: list = []

  # 1. the tokenizer, trained and frozen
  tok_dir = ctx.path("tokenizer")
  tok = ctx.train(TOKENIZER, "tokenizer", [*TOKENIZER_OVERRIDES,
                                           f"--config.train.steps={ctx.steps(TOK_STEPS)}",
                                           f"--config.checkpoint.every_steps="
                                           f"{ctx.steps(TOK_STEPS)}"])
  rows += [("tokenizer", "validation PSNR dB", tok.get("eval/psnr", math.nan)),
           ("tokenizer", "code usage (validation batch)", tok.get("eval/usage", math.nan)),
           ("tokenizer", BITS, tok.get("eval/bits_per_image", math.nan))]

  def arm(name, arg="", overrides=(), steps=STEPS, lr=LR):
    spec = f"{exp},tokenizer={tok_dir}{',' + arg if arg else ''}"
    result = ctx.train(spec, name, [f"--config.train.steps={ctx.steps(steps)}",
                                    f"--config.optimizer.lr={lr}",
                                    f"--config.checkpoint.every_steps={ctx.steps(steps)}",
                                    f"--config.task.label_seed={ctx.seed}", *overrides])
    return result

  few = f"labels={LABELS}"
  init = [f"--config.train.init_from={ctx.path('mtm')}"]
  res = {}
  res["token_vit"] = arm("token_vit")
  if not ctx.quick:         # --quick: the tokenizer, one token arm and the baselines
    res["pixel_vit"] = arm("pixel_vit", "input=pixels")
    res["token_vit_10pct"] = arm("token_vit_10pct", few, steps=FT_STEPS)
    res["mtm"] = arm("mtm", "objective=mtm", steps=MTM_STEPS)
    res["mtm_ft_10pct"] = arm("mtm_ft_10pct", few, init, steps=FT_STEPS)
    res["tokenadapt_adapter"] = arm("tokenadapt_adapter", "objective=tokenadapt",
                                    steps=ADAPTER_STEPS, lr=ADAPTER_LR)
    res["mtm_ft_10pct_coloradapt"] = arm("mtm_ft_10pct_coloradapt",
                                         f"{few},augment=coloradapt", init, steps=FT_STEPS)
    res["mtm_ft_10pct_tokenadapt"] = arm(
        "mtm_ft_10pct_tokenadapt",
        f"{few},augment=tokenadapt,adapter={ctx.path('tokenadapt_adapter')}", init,
        steps=FT_STEPS)
  for name, r in res.items():
    if name == "mtm":
      rows.append((name, "masked code accuracy", r.get("eval/code_accuracy", math.nan)))
    elif name == "tokenadapt_adapter":
      rows.append((name, "identity round trip", r.get("eval/code_accuracy", math.nan)))
      rows.append((name, "shifted-code accuracy (train)",
                   r.get("train/code_accuracy", math.nan)))
    else:
      rows.append((name, ACC, r.get("eval/accuracy", math.nan)))
      rows.append((name, BITS, r.get("eval/bits_per_image", math.nan)))

  # baselines on the same stored tokens
  config = load_config(f"{exp},tokenizer={tok_dir}", [f"--config.seed={ctx.seed}"])
  st = stored_tokens(config)
  k = 32                                    # the tokenizer's codebook (TOKENIZER_OVERRIDES)
  tr_x, tr_y = st["train_tokens"], st["train_label"].astype(np.int64)
  va_x, va_y = st["validation_tokens"], st["validation_label"].astype(np.int64)
  rows.append((MAJORITY, ACC, float(np.mean(va_y == majority(tr_y.tolist())))))
  keep = labeled_subset(tr_y, LABELS, ctx.seed)
  for name, idx in ((NB_ALL, np.arange(len(tr_y))), (NB_FEW, keep)):
    alpha = tune_alpha(tr_x[idx], tr_y[idx], k, 10)
    pred = naive_bayes(tr_x[idx], tr_y[idx], va_x, k, 10, alpha)
    rows.append((name, ACC, float(np.mean(pred == va_y))))
    rows.append((name, "alpha (2-fold CV)", alpha))
  batches = [{"tokens": va_x, "label": va_y.astype(np.int32),
              "mask": np.ones(len(va_y), np.float32)}]
  rows.append((UNTRAINED, ACC, float(untrained_metrics(config, batches, ctx.seed)[
      "eval/accuracy"])))
  rows.append(("stored tokens", "train + validation images", len(tr_y) + len(va_y)))
  accs = {name: r.get("eval/accuracy") for name, r in res.items()}
  return Trial(rows, {"acc": accs})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Accuracy per arm (mean +- std over seeds) with the bits per image of its input."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [n for n in trials[0].data["acc"] if trials[0].data["acc"][n] is not None]
  means = [np.mean([t.data["acc"][n] for t in trials]) for n in names]
  stds = [np.std([t.data["acc"][n] for t in trials]) for n in names]
  fig, ax = plt.subplots(figsize=(9, 3.6))
  colours = ["tab:gray" if n == "pixel_vit" else "tab:blue" for n in names]
  ax.bar(range(len(names)), means, yerr=stds, color=colours)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([n.replace("_", "\n", 1) for n in names], fontsize=7)
  ax.set_ylabel("validation accuracy")
  ax.set_ylim(0, 1)
  ax.set_title(f"SeiT on digits: pixels (261.6 bits/image) vs tokens (80 bits/image), "
               f"{len(trials)} seeds", fontsize=9)
  fig.tight_layout()
  path = ctx.out("seit_accuracy.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  notes = (f"Steps (batch 64): tokenizer {ctx.steps(TOK_STEPS)}, full-label arms "
           f"{ctx.steps(STEPS)}, MTM {ctx.steps(MTM_STEPS)}, TokenAdapt adapter "
           f"{ctx.steps(ADAPTER_STEPS)}, every 10%-label arm {ctx.steps(FT_STEPS)} (scratch "
           f"and fine-tuned alike); peak learning rate {LR} for every ViT arm, {ADAPTER_LR} "
           "for the adapter (AdamW, cosine, 5% warm-up). A new tokenizer, label subset and initialisation per seed. "
           "Bits per image: pixels 64 x log2(17) (the digits' 17 grey levels), tokens "
           "16 x log2(32). ColorAdapt on grey digits can only change brightness and contrast "
           "of the code vectors; TokenAdapt's A is a translation by up to 1 pixel.")
  return [path], notes
