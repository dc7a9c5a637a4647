"""Mini-reproduction of TEASER's multi-scale tokens (Liu et al., ICLR 2025; arXiv 2502.10982).

The paper's claim, for the part that runs without faces: tokens taken from features at
several scales (pooled at 1x1, 2x2, 4x4, 8x8, one token each) carry the image's appearance
better than a single-scale representation, and the token-cycle loss (re-encode the
reconstruction, match its tokens to the original ones) improves the reconstruction.

In miniature (tokenlab/methods/teaser.py, experiments/teaser.py:size=small): 32x32 `shapes`
(one to three objects of one shape and one colour on black; 5,000 train / 500 validation
images). An image is encoded into 4 tokens of 16 numbers and reconstructed from them alone
by a token-conditioned generator. As in the paper, whose token-cycle training starts from a
pre-trained encoder and generator (its train config loads both), each token kind is first
pre-trained on the reconstruction loss alone (PRETRAIN steps), then every arm continues from
it for FINETUNE steps (fresh optimizer state), so the four arms differ only in where the
tokens come from and in the fine-tuning loss, at equal steps, batch and learning rate
(budget = steps):

- multi-scale + cycle: one token per scale (the paper's TokenEncoder), fine-tuned with the
  reconstruction MSE + 0.5 x the token-cycle loss (the paper's ratio, token cycle 5 : L1 10);
- multi-scale, no cycle: the same tokens, reconstruction loss only;
- single-scale + cycle / single-scale, no cycle: the 4 tokens are the 2x2 cells of the
  deepest feature map (one scale, the usual grid of latents), same token count and width.

Measured on the 500 validation images: PSNR of the reconstruction (tokenlab.evals.image), and
attribute accuracy read back exactly from the reconstructed pixels by
`tokenlab.evals.image_samples.shapes_attribute_accuracy` (shape, colour and count all right;
positions reported too). Trivial baselines (arms): the dataset's mean training image (PSNR),
the attribute prior (the most frequent training (shape, colour, count) and each attribute's
majority), and the untrained multi-scale network.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite

CLAIM = ("Multi-scale tokens (one token per scale, features pooled at 1x1, 2x2, 4x4, 8x8) "
         "reconstruct an image better than single-scale tokens at the same token count, and "
         "the token-cycle loss improves the reconstruction.")

EXPERIMENT = "experiments/teaser.py"
PRETRAIN = 500      # steps without the cycle loss, shared by both arms of a token kind
FINETUNE = 250      # steps of each arm from the pre-trained run
BATCH = 32
LR = 3e-3
NUM_SHOWN = 8

PSNR, ATTR, POS, CYCLE, PARAMS = ("PSNR dB", "attributes (shape+colour+count)",
                                  "positions exact", "token-cycle MSE", "parameters")
PER_ATTR = ("shape", "colour", "count")
MS_C, MS, SS_C, SS = ("multi-scale + cycle", "multi-scale, no cycle", "single-scale + cycle",
                      "single-scale, no cycle")
ARMS = ((MS_C, "tokens=multi,cycle=0.5", "ms_cycle"), (MS, "tokens=multi,cycle=0", "ms"),
        (SS_C, "tokens=single,cycle=0.5", "ss_cycle"), (SS, "tokens=single,cycle=0", "ss"))
HISTORY = ("Before the first full run (development probes, one seed, not under this "
           "protocol): with the paper's L1 reconstruction loss every arm stayed at the "
           "all-black image (PSNR 14.5 dB, the mean image 14.1); with MSE and the repo's "
           "normal(0.02) initialisation the tokens carried nothing (the mean image after 300 "
           "steps); with the cycle loss from the first step (MSE, LeCun initialisation) a "
           "probe was still at the mean image after 300 steps while the same model without it "
           "reached 20.4 dB in 800. Hence MSE, LeCun-initialised pyramid and token layers, "
           "unit-RMS tokens, and the paper's order: pre-train, then fine-tune with the cycle "
           "loss. A last probe of that order (400 + 200 steps, multi-scale) gave 19.7 dB "
           "without the cycle loss and 16.7 dB with it, so the prerequisites (did the tokens "
           "learn at all?) are declared on the arms without it, and the cycle loss is judged "
           "by the claims only.")
MEAN, PRIOR, UNTRAINED = "dataset mean image", "attribute prior", "untrained network"
BASELINES = (MEAN, PRIOR, UNTRAINED)

CHECKS = (
    # Prerequisites on the arms without the cycle loss: they show that both token kinds
    # learned to reconstruct at all; the cycle loss is the treatment, judged by the claims.
    prerequisite("multi_beats_mean_image", "the multi-scale tokens reconstruct: PSNR at least "
                 "2 dB above the dataset's mean image", (MS, PSNR), ">", (MEAN, PSNR), by=2.0),
    prerequisite("single_beats_mean_image", "the single-scale tokens reconstruct too: PSNR at "
                 "least 2 dB above the mean image", (SS, PSNR), ">", (MEAN, PSNR), by=2.0),
    prerequisite("multi_beats_untrained", "PSNR at least 2 dB above the untrained network",
                 (MS, PSNR), ">", (UNTRAINED, PSNR), by=2.0),
    prerequisite("attributes_beat_prior", "the reconstructions keep the objects: attribute "
                 "accuracy at least 0.1 above always answering the most frequent training "
                 "(shape, colour, count)", (MS, ATTR), ">", (PRIOR, ATTR), by=0.1),
    prerequisite("not_saturated", "room for a comparison: the multi-scale tokens' attribute "
                 "accuracy is below 0.98", (MS, ATTR), "<", 0.98),
    claim("multi_scale_psnr", "multi-scale tokens reconstruct with higher PSNR than "
          "single-scale tokens at the same token count (both with the cycle loss)",
          (MS_C, PSNR), ">", (SS_C, PSNR)),
    claim("multi_scale_attributes", "multi-scale tokens keep shape, colour and count more "
          "often than single-scale tokens (both with the cycle loss)", (MS_C, ATTR), ">",
          (SS_C, ATTR)),
    claim("cycle_psnr", "the token-cycle loss raises the multi-scale tokens' PSNR",
          (MS_C, PSNR), ">", (MS, PSNR)),
    claim("cycle_attributes", "the token-cycle loss raises the multi-scale tokens' attribute "
          "accuracy", (MS_C, ATTR), ">", (MS, ATTR)),
)
SEEDS = 3


def attribute_prior(train: dict[str, np.ndarray], valid: dict[str, np.ndarray]
                    ) -> dict[str, float]:
  """Accuracy on `valid` of always answering the training majority: per attribute, and the
  most frequent (shape, colour, count) triple for all three together."""
  from tokenlab.repro.baselines import majority
  keys = {"shape": "label", "colour": "colour", "count": "count"}
  out = {a: float(np.mean(valid[k] == majority(train[k].tolist()))) for a, k in keys.items()}
  triples = lambda d: list(zip(d["label"].tolist(), d["colour"].tolist(), d["count"].tolist()))
  top = majority(triples(train))
  out["all"] = float(np.mean([t == top for t in triples(valid)]))
  return out


def image_scores(recon: np.ndarray, images: np.ndarray, labels: dict[str, np.ndarray]
                 ) -> dict[str, float]:
  """PSNR (mean over images) and exact attribute accuracies of reconstructions."""
  import jax.numpy as jnp
  from tokenlab.evals.image import psnr_per_image
  from tokenlab.evals.image_samples import shapes_attribute_accuracy
  wanted = {k: labels[k] for k in ("label", "colour", "count")}
  acc = shapes_attribute_accuracy(recon, wanted)   # 'all' = shape, colour and count
  with_pos = shapes_attribute_accuracy(recon, {**wanted, "positions": labels["positions"]})
  return {PSNR: float(jnp.mean(psnr_per_image(jnp.asarray(images), jnp.asarray(recon)))),
          ATTR: acc["all"], **{a: acc[a] for a in PER_ATTR}, POS: with_pos["positions"]}


def run_seed(ctx: Context) -> Trial:
  import flax.linen as nn
  import jax
  from tokenlab.config import load_config
  from tokenlab.evals.image_samples import load_split
  from tokenlab.methods.seit import ArrayIterator
  from tokenlab.methods.teaser import token_cycle_loss
  from tokenlab.registry import build_method
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  # --quick: a 64-image train split, 16 validation images, one arm of 2 steps (a smoke test).
  options = {"num_train": 64, "num_validation": 16} if ctx.quick else None
  train, valid = load_split("shapes", "train", options), load_split("shapes", "validation",
                                                                    options)
  arrays = {"image": train["image"]}
  train_fn = lambda batch_size, seed: ArrayIterator(arrays, batch_size, seed, train=True)
  no_eval = lambda batch_size, seed: iter(())   # scored below on the whole validation split
  common = [f"--config.train.batch_size={8 if ctx.quick else BATCH}",
            f"--config.optimizer.lr={LR}"]
  images = valid["image"]
  example = {"image": images[:8], "mask": np.ones(8, np.float32)}
  rows: list[tuple[str, str, Any]] = []
  recons: dict[str, np.ndarray] = {}

  def fit(spec: str, folder: str, steps: int, extra: tuple[str, ...] = ()) -> None:
    t = time.perf_counter()
    ctx.train(spec, folder, [*common, f"--config.train.steps={steps}", *extra],
              train_iter_fn=train_fn, eval_iter_fn=no_eval)
    rows.append((folder, "train seconds", time.perf_counter() - t))

  # The quick run keeps the test session's compilation cache (its programs are compiled
  # once); a full run shares one across its seeds.
  cache = compile_cache(ctx.out("jax_cache")) if not ctx.quick else contextlib.nullcontext()
  with cache:
    if ctx.quick:
      # A smoke test: one multi-scale + cycle arm, 2 steps from scratch (no pre-training).
      fit(f"{EXPERIMENT}:size={size},{ARMS[0][1]}", ARMS[0][2], 2)
      finetuned = ARMS[:1]
    else:
      # Pre-training without the cycle loss (one per token kind), then each arm continues
      # from it for FINETUNE steps with or without the cycle loss (fresh optimizer state).
      for kind in ("multi", "single"):
        fit(f"{EXPERIMENT}:size={size},tokens={kind},cycle=0", f"pretrain_{kind}", PRETRAIN)
      for arm, arg, folder in ARMS:
        kind = "multi" if "multi" in arg else "single"
        fit(f"{EXPERIMENT}:size={size},{arg}", folder, FINETUNE,
            (f"--config.train.init_from={ctx.path(f'pretrain_{kind}')}",))
      finetuned = ARMS
    for arm, _, folder in finetuned:
      run = load_trained(ctx.path(folder), example)
      method, params = run.method, jax.device_get(nn.unbox(run.params))
      recons[arm] = np.asarray(jax.jit(method.reconstruct)(params, images))
      if not ctx.quick:   # one more program to compile; the quick run skips it
        encode = jax.jit(method.encode)
        rows.append((arm, CYCLE, float(token_cycle_loss(encode(params, images),
                                                        encode(params, recons[arm])))))
      rows.append((arm, PARAMS, float(sum(a.size for a in jax.tree_util.tree_leaves(params)))))
    if not ctx.quick:
      # The untrained multi-scale network (its init: one more compile, skipped by --quick).
      config = load_config(f"{EXPERIMENT}:size={size},{ARMS[0][1]}",
                           [f"--config.seed={ctx.seed}"])
      untrained = build_method(config.model)
      init = nn.unbox(jax.jit(untrained.init)(jax.random.key(ctx.seed), example))
      recons[UNTRAINED] = np.asarray(jax.jit(untrained.reconstruct)(init, images))
  recons[MEAN] = np.broadcast_to(train["image"].mean(0), images.shape)
  for arm, recon in recons.items():
    scores = image_scores(recon, images, valid)
    rows += [(arm, k, v) for k, v in scores.items()]
  prior = attribute_prior(train, valid)
  rows += [(PRIOR, ATTR, prior["all"])] + [(PRIOR, a, prior[a]) for a in PER_ATTR]
  return Trial(rows, {"images": images[:NUM_SHOWN],
                     "recons": {arm: r[:NUM_SHOWN] for arm, r in recons.items()}})


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Reconstructions side by side (first seed): the images, then each arm and baseline."""
  from tokenlab.evals.image import save_image_grid
  first = trials[0].data
  order = [a for a, _, _ in ARMS] + [UNTRAINED, MEAN]
  shown = [a for a in order if a in first["recons"]]
  grid = np.stack([first["images"]] + [first["recons"][a] for a in shown])
  path = save_image_grid(grid, ctx.out("teaser_reconstructions.png"), scale=3)
  notes = (f"teaser_reconstructions.png rows (first seed, the first {NUM_SHOWN} "
           "validation images): the images, then " + ", ".join(shown) + ". Every trained arm: "
           f"{PRETRAIN} pre-training steps (reconstruction MSE only, shared by the two arms of "
           f"a token kind) then {FINETUNE} fine-tuning steps, batch {BATCH}, peak lr {LR} in "
           "both stages (warm-up and cosine each), AdamW (same budget in steps, no tuning per "
           "arm). 4 tokens x 16 numbers per image in every arm. Attribute "
           "accuracy: shape, colour and count read back from the reconstructed pixels "
           "(tokenlab.data.shapes.attributes: objects = 4-connected pixels brighter than "
           "half); 'positions exact' also needs every object's top-left corner exactly. "
           "Token-cycle MSE: sum over the 4 tokens of the mean squared difference between "
           "the reconstruction's tokens and the image's tokens, on validation images.")
  return [path], notes
