"""Mini-reproduction of VIOLET's masked visual-token modeling (Fu et al., arXiv 2111.12681).

The paper's claim under test: adding Masked Visual-token Modeling (MVM: 3-D blockwise masked
patches zeroed at the input, a head predicting the discrete visual token of a frozen frame
tokenizer at every masked position) to video-text matching (VTM) + masked language modeling
(MLM) pre-training improves text-to-video retrieval (the paper's Table 4 ablation: VTM+MLM
vs VTM+MLM+MVM).

In miniature (tokenlab/methods/violet.py, experiments/violet.py:size=small): `moving_shapes`
clips of 4 frames of 32x32 RGB, two events each, with their template captions ("a red square
moves left, then a blue circle appears") as word ids of the template vocabulary. Per
reproduction, a frame tokenizer (tokenlab's image tokenizer: ViT encoder, 8x8-pixel patches,
EMA VQ of CODEBOOK codes) is trained once on the training clips' frames; its codes of every
frame, a 4 x 4 grid per frame, are the MVM targets on the model's 4 x 4 x 4 patch grid.

Second design (the paper's order: pre-training, then retrieval fine-tuning; see HISTORY for
the first, single-stage design and its result). Per seed, each arm has two stages, with the
same steps, batch and learning rates for both arms (budget = steps; the MVM arm's extra head
costs a little more compute in pre-training):

1. pre-training from scratch for PRETRAIN_STEPS steps at peak lr LR, VTM + MLM + InfoNCE
   and, in the MVM arm, MVM:
   - VTM + MLM + MVM: cubes of 2 x 2 x 2 patches masked until 30% of the grid is covered;
   - VTM + MLM (no MVM): no patch masked, no MVM head loss (the paper's ablation);
2. retrieval fine-tuning for FINETUNE_STEPS steps at peak lr FINETUNE_LR from the arm's
   pre-trained parameters (`config.train.init_from`, a fresh AdamW with its own warm-up +
   cosine): whole clips (no masking, no MVM) and the matching losses only (VTM + InfoNCE,
   no MLM), as VIOLET's retrieval fine-tuning trains its matching loss alone; the same
   configuration for both arms, so the arms differ only in their pre-training.

The split (400 + 200 steps, fine-tuning at a third of the pre-training lr) was fixed before
any run of this design, from the first design's timing (500 steps per arm took 53-71 s, the
3-seed run 7 min 4 s wall): 600 steps per arm keeps the 3 seeds near 9 minutes.

Both arms train an InfoNCE loss between the pooled video tokens and the caption's [CLS]
token (a departure from the paper, see HISTORY: retrieval by the VTM score alone did not
leave chance within the CPU budget). Retrieval on NUM_EVAL held-out validation clips with
distinct captions, after fine-tuning: every clip x every caption scored by the cosine of
those embeddings; text-to-video (t2v: rank the clips for each caption) and video-to-text
(v2t) recall@1 and @5, and their mean (judged). Reported beside it, not judged: the VTM
head's retrieval (the cross-modal transformer on every pair, the paper's scoring) and the
pre-trained arms' retrieval before fine-tuning. The MVM head's masked-code accuracy is
measured on the pre-trained MVM run (fine-tuning does not train that head). Ties count as a
uniformly random order among the tied items (a constant scorer gets exactly k / N).

Trivial baselines (arms): chance (k / N), the untrained network (same architecture, the
seed's initialisation), and the colour bag: a training-free matcher that scores a (clip,
caption) pair by the cosine between the clip's pixel counts of the six palette colours (all
frames) and the caption's counts of the six colour words (colour is the cheapest cue a
caption gives; it ignores shapes, events and their order).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any

import numpy as np

from tokenlab.methods.violet import retrieval_recall
from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite

CLAIM = ("Adding masked visual-token modeling (3-D blockwise masked patches, predict a frozen "
         "frame tokenizer's codes there) to video-text matching + masked language modeling "
         "improves text-video retrieval.")

EXPERIMENT = "experiments/violet.py"
TOKENIZER = "experiments/image_tokenizer.py"
DATA = {"size": 32, "num_frames": 4, "num_events": 2, "seed": 0}
NUM_TRAIN = 2000
NUM_EVAL = 100              # held-out clips (distinct captions) ranked against each other
PRETRAIN_STEPS = 400        # second design: pre-training, then retrieval fine-tuning,
FINETUNE_STEPS = 200        # equal for both arms (fixed from the first design's timing)
BATCH = 32
LR = 3e-3                   # pre-training peak lr (the first design's)
FINETUNE_LR = 1e-3          # fine-tuning peak lr: a third of pre-training's
CODEBOOK = 64
TOKENIZER_STEPS = 300
TOKENIZER_BATCH = 64
NUM_SHOWN = 4

R1, R5 = "mean R@1", "mean R@5"
PER_DIR = ("t2v R@1", "v2t R@1", "t2v R@5", "v2t R@5")
MVM_ACC, PRIOR_ACC = "masked-code accuracy", "majority-code accuracy"
MVM, NO_MVM = "VTM + MLM + MVM", "VTM + MLM (no MVM)"
ARMS = ((MVM, "mvm=true", "mvm"), (NO_MVM, "mvm=false", "no_mvm"))   # (arm, pre-training, folder)
PRE = "pre-trained "        # prefix of the rows measured before fine-tuning (not judged)
CHANCE, UNTRAINED, COLOUR = "chance", "untrained network", "colour bag"
BASELINES = (CHANCE, UNTRAINED, COLOUR)
TOKENIZER_ARM = "frame tokenizer"
HISTORY = (
    "Development probes before the first full run (one seed each, seconds at load 5-10 from "
    "other sessions; not under this protocol). (1) The paper's retrieval by the VTM score "
    "alone (4 candidates per clip, d=64, batch 32, lr 1e-3, 60 steps through this runner): "
    "the VTM loss stayed at ln 4 (scores did not depend on the pair) and every arm sat at "
    "chance (mean R@5 0.05 / 0.045, untrained 0.045, colour bag 0.524), at 1.4-1.8 steps/s. "
    "(2) The same VTM-only model at d=32, batch 16, lr 3e-3, 600 steps (a plain optax loop, no "
    "MVM): the VTM loss left ln 4 only after ~300 steps; mean R@1 0.02, R@5 0.125. (3) VTM with "
    "2 candidates + MLM + an InfoNCE loss between pooled video and [CLS] text embeddings "
    "(one text layer), retrieval by their cosine, d=32, batch 32, lr 3e-3, 600 steps, MVM "
    "targets a stand-in (each patch's thresholded mean colour, not the frame VQ): without MVM "
    "mean R@1 0.07 / R@5 0.38, with MVM 0.08 / 0.41 (colour bag 0.18 / 0.52). Hence this "
    "design: the contrastive retrieval head (a departure from VIOLET, whose retrieval is the "
    "VTM score of every pair; the VTM score's retrieval is still reported, not judged), 500 "
    "steps to fit the CPU budget, and the checks, declared before the full run, unchanged "
    "from the first draft.\n\n"
    "First design (commit d0ef0f8; its repro.md, repro.json and figures are kept in "
    "docs/repro/violet/design1/): ONE training stage per arm, 500 steps from scratch, batch "
    "32, lr 3e-3: VTM (2 candidates) + MLM + InfoNCE, with or without MVM, retrieval scored "
    "right after it (`tokenlab repro violet --workdir docs/repro/violet`, 3 seeds, 413 s in "
    "the runner, 7 min 4 s wall, load average 1.76-1.96). Frame tokenizer 16.05 dB PSNR, 64 "
    "codes used. Mean +- std over 3 seeds:\n\n"
    "| arm | mean R@1 | mean R@5 | t2v R@1 / R@5 | v2t R@1 / R@5 | VTM-score R@1 / R@5 |\n"
    "|---|---|---|---|---|---|\n"
    "| VTM + MLM + MVM | 0.093 +- 0.008 | 0.357 +- 0.049 | 0.100 / 0.350 | 0.087 / 0.363 "
    "| 0.070 / 0.305 |\n"
    "| VTM + MLM (no MVM) | 0.157 +- 0.028 | 0.500 +- 0.061 | 0.170 / 0.497 | 0.143 / 0.503 "
    "| 0.130 / 0.440 |\n"
    "| untrained network | 0.008 | 0.048 | 0.007 / 0.050 | 0.010 / 0.047 | |\n"
    "| colour bag | 0.183 | 0.524 | 0.180 / 0.570 | 0.187 / 0.478 | |\n"
    "| chance | 0.010 | 0.050 | | | |\n\n"
    "MVM head: masked-code accuracy 0.615 +- 0.014 vs 0.172 for the most frequent code. "
    "Verdict: NOT ASSESSABLE: 5 of 7 prerequisites passed; mvm_arm_beats_colour_bag (0.357 vs "
    "0.524) and no_mvm_arm_beats_colour_bag (0.500 vs 0.524, margin -0.024, spread 0.061) "
    "failed. Both claim checks failed too: MVM lowered mean R@1 by 0.063 (spread 0.033) and "
    "R@5 by 0.143 (spread 0.077), on every seed. Likely reason named then: one training stage, "
    "the MVM arm's retrieval embedding only ever saw clips with 30% of the grid blanked and was "
    "scored on whole clips; VIOLET pre-trains and then fine-tunes retrieval on whole clips. "
    "Hence the second design (this module): the paper's order, pre-training (400 steps) then "
    "retrieval fine-tuning on unmasked clips (200 steps, the same for both arms); every "
    "check, baseline, data set, model size and the tokenizer unchanged, declared before its "
    "run.")

CHECKS = (
    prerequisite("mvm_arm_beats_chance", "the MVM arm learned retrieval: mean R@5 at least 0.1 "
                 "above chance", (MVM, R5), ">", (CHANCE, R5), by=0.1),
    prerequisite("no_mvm_arm_beats_chance", "the arm without MVM learned retrieval too: mean "
                 "R@5 at least 0.1 above chance", (NO_MVM, R5), ">", (CHANCE, R5), by=0.1),
    prerequisite("beats_untrained", "the arm without MVM is at least 0.1 above its untrained "
                 "network (mean R@5)", (NO_MVM, R5), ">", (UNTRAINED, R5), by=0.1),
    prerequisite("mvm_arm_beats_colour_bag", "the MVM arm uses more than colour: mean R@5 above "
                 "the training-free colour bag", (MVM, R5), ">", (COLOUR, R5)),
    prerequisite("no_mvm_arm_beats_colour_bag", "the arm without MVM uses more than colour: "
                 "mean R@5 above the colour bag", (NO_MVM, R5), ">", (COLOUR, R5)),
    prerequisite("mvm_learned", "the MVM head learned its task: masked-code accuracy on "
                 "held-out clips above always predicting the most frequent training code",
                 (MVM, MVM_ACC), ">", (MVM, PRIOR_ACC)),
    prerequisite("not_saturated", "room for a gain: the arm without MVM has mean R@1 below 0.95",
                 (NO_MVM, R1), "<", 0.95),
    claim("mvm_improves_r1", "MVM raises mean recall@1 (t2v and v2t averaged)", (MVM, R1), ">",
          (NO_MVM, R1)),
    claim("mvm_improves_r5", "MVM raises mean recall@5", (MVM, R5), ">", (NO_MVM, R5)),
)
SEEDS = 3


# ------------------------------------------------------------------------------- data


def vocabulary() -> list[str]:
  """The template captions' words; id = index + 1 (0 is padding)."""
  from tokenlab.data import moving_shapes, shapes
  words = ["a", "the", "then", ",", *shapes.COLOURS, *shapes.SHAPES, *moving_shapes.KINDS,
           *moving_shapes.DIRECTIONS]
  return list(dict.fromkeys(words))


def word_ids(captions: list[str], length: int) -> np.ndarray:
  """Captions -> int32 (N, length) word ids (1-based, 0-padded); an unknown word or a caption
  longer than `length` is a ValueError."""
  index = {w: i + 1 for i, w in enumerate(vocabulary())}
  out = np.zeros((len(captions), length), np.int32)
  for n, text in enumerate(captions):
    words = re.findall(r"[a-z]+|,", text)
    if len(words) > length:
      raise ValueError(f"caption of {len(words)} words > {length}: {text!r}")
    out[n, :len(words)] = [index[w] for w in words]
  return out


def clips(split: str, count: int, distinct: bool = False) -> dict[str, Any]:
  """`count` moving_shapes clips of `split` generated in memory (the builder's own code):
  {'video' float32 (N, T, H, W, 3), 'captions' list[str]}; `distinct`: skip clips whose
  caption was seen (a retrieval set needs one right answer)."""
  from tokenlab.data import moving_shapes
  options = {**DATA, "num_train": count, "num_validation": count}
  videos, captions, seen, i = [], [], set(), 0
  while len(videos) < count:
    labels = moving_shapes.clip_labels(split, i, options)
    i += 1
    if distinct and labels["caption"] in seen:
      continue
    seen.add(labels["caption"])
    videos.append(moving_shapes.render(labels["objects"], DATA["size"]))
    captions.append(labels["caption"])
  return {"video": np.stack(videos).astype(np.float32) / 255.0, "captions": captions}


def colour_bag_scores(video: np.ndarray, captions: list[str]) -> np.ndarray:
  """(Nv, Nt) cosine between each clip's palette-colour pixel counts (all frames) and each
  caption's colour-word counts: the training-free colour-only matcher."""
  from tokenlab.data import shapes
  palette = shapes.PALETTE.astype(np.float32) / 255.0                    # (6, 3)
  pix = video.reshape(len(video), -1, 3)
  lit = pix.max(-1) > 0.5
  nearest = np.argmin(((pix[:, :, None] - palette[None, None]) ** 2).sum(-1), -1)
  hist = np.stack([((nearest == c) & lit).sum(1) for c in range(len(palette))], 1)
  words = np.array([[len(re.findall(rf"\b{c}\b", t)) for c in shapes.COLOURS]
                    for t in captions], np.float32)
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
  return unit(hist.astype(np.float32)) @ unit(words).T


# -------------------------------------------------------------------------------- run


def _frame_tokenizer(ctx: Context, frames: np.ndarray) -> tuple[Any, Any]:
  """Trains (once per reproduction, in WORKDIR/frame_tokenizer) or reloads the frame VQ;
  returns jitted (encode: frames (N, H, W, 3) -> codes (N, 4, 4), reconstruct: frames ->
  frames)."""
  import jax
  from tokenlab.data.synthetic import ArrayIterator
  from tokenlab.repro import Context as Ctx
  from tokenlab.train.inference import load_trained
  root = Ctx(name=ctx.name, workdir=ctx.root or ctx.workdir, seed=0, quick=ctx.quick,
             root=ctx.root)
  size = "tiny" if ctx.quick else "small"
  overrides = ["--config.model.patch_size=8", f"--config.model.codebook_size={CODEBOOK}",
               "--config.model.latent_dim=8", "--config.model.num_layers=1",
               f"--config.train.steps={ctx.steps(TOKENIZER_STEPS, 2)}",
               f"--config.train.batch_size={8 if ctx.quick else TOKENIZER_BATCH}",
               "--config.train.eval_every=1000000", "--config.checkpoint.async_save=false"]
  arrays = {"image": frames}
  root.train(f"{TOKENIZER}:size={size},data=shapes,arch=vit", "frame_tokenizer", overrides,
             train_iter_fn=lambda b, s: ArrayIterator(arrays, b, s, train=True),
             eval_iter_fn=lambda b, s: iter(()))
  run = load_trained(root.path("frame_tokenizer"), {"image": frames[:2],
                                                    "mask": np.ones(2, np.float32)})
  from tokenlab.method import as_variables
  variables = jax.device_get(as_variables(run.params, run.model_state))
  encode = jax.jit(lambda x: run.method.encode(variables, x))
  recon = jax.jit(lambda x: run.method.reconstruct(variables, x))
  return encode, recon


def mean_colour_codes(video: np.ndarray, patch: int = 8) -> np.ndarray:
  """(N, T, H, W, 3) -> int32 (N, T, H/patch, W/patch) in 0..7: each patch's mean colour,
  each channel thresholded at 1/8 (the quick run's stand-in for the frame tokenizer)."""
  n, t, h, w, _ = video.shape
  mean = video.reshape(n, t, h // patch, patch, w // patch, patch, 3).mean((3, 5))
  return ((mean > 0.125) * np.array([1, 2, 4])).sum(-1).astype(np.int32)


def _codes(encode, video: np.ndarray) -> np.ndarray:
  n, t = video.shape[:2]
  flat = video.reshape(n * t, *video.shape[2:])
  out = np.concatenate([np.asarray(encode(flat[i:i + 512])) for i in range(0, len(flat), 512)])
  return out.reshape(n, t, *out.shape[1:]).astype(np.int32)


def run_seed(ctx: Context) -> Trial:
  import dataclasses

  import flax.linen as nn
  import jax
  from tokenlab.config import load_config
  from tokenlab.methods.violet import Violet
  from tokenlab.data.synthetic import ArrayIterator
  from tokenlab.evals.image import psnr_per_image
  from tokenlab.registry import build_method
  from tokenlab.train.inference import load_trained
  from tokenlab.train.metrics import reduce_metrics

  quick = ctx.quick
  num_train, num_eval = (16, 8) if quick else (NUM_TRAIN, NUM_EVAL)
  train, valid = clips("train", num_train), clips("validation", num_eval, distinct=True)
  length = max(len(re.findall(r"[a-z]+|,", t)) for t in train["captions"] + valid["captions"])
  train_ids, valid_ids = word_ids(train["captions"], length), word_ids(valid["captions"], length)
  rows: list[tuple[str, str, Any]] = []
  data: dict[str, Any] = {}

  cache = compile_cache(ctx.out("jax_cache")) if not quick else contextlib.nullcontext()
  with cache:
    t0 = time.perf_counter()
    if quick:
      # A smoke test of the VIOLET arm only: stand-in codes (each patch's mean colour
      # thresholded per channel), no tokenizer training (its trainer run would double the
      # quick run's compiles; the image tokenizer has its own tests).
      train_codes, valid_codes = mean_colour_codes(train["video"]), mean_colour_codes(
          valid["video"])
    else:
      frames = train["video"].reshape(-1, *train["video"].shape[2:])
      encode, recon = _frame_tokenizer(ctx, frames)
      train_codes, valid_codes = _codes(encode, train["video"]), _codes(encode, valid["video"])
      vframes = valid["video"].reshape(-1, *valid["video"].shape[2:])
      rows.append((TOKENIZER_ARM, "PSNR dB (validation frames)", float(np.mean(
          psnr_per_image(vframes, np.asarray(recon(vframes)))))))
    rows.append((TOKENIZER_ARM, "codes used (train frames)",
                 float(len(np.unique(train_codes)))))
    rows.append((TOKENIZER_ARM, "seconds", time.perf_counter() - t0))
    # The most frequent training code, always predicted: MVM's trivial baseline.
    top = np.bincount(train_codes.ravel(), minlength=CODEBOOK).argmax()
    prior_acc = float(np.mean(valid_codes == top))

    arrays = {"video": train["video"], "caption": train_ids, "codes": train_codes}
    train_fn = lambda b, s: ArrayIterator(arrays, b, s, train=True)
    no_eval = lambda b, s: iter(())
    size = "tiny" if quick else "small"
    common = [f"--config.train.batch_size={8 if quick else BATCH}",
              f"--config.model.text_vocab={len(vocabulary()) + 1}",
              f"--config.model.max_text_len={length}", f"--config.model.codebook_size={CODEBOOK}",
              "--config.train.eval_every=1000000"]
    pretrain = [*common, f"--config.train.steps={ctx.steps(PRETRAIN_STEPS, 2)}",
                f"--config.optimizer.lr={LR}"]
    # Retrieval fine-tuning: whole clips (mvm=false: no masked patch, no MVM loss), the
    # matching losses only (no MLM), a fresh optimizer; one configuration for both arms.
    finetune = [*common, f"--config.train.steps={FINETUNE_STEPS}",
                f"--config.optimizer.lr={FINETUNE_LR}", "--config.model.mlm_weight=0"]
    example = {"video": valid["video"][:2], "caption": valid_ids[:2],
               "codes": valid_codes[:2], "mask": np.ones(2, np.float32)}
    arms = ARMS[:1] if quick else ARMS
    score = vtm_score = None
    eval_batch = {"video": valid["video"], "caption": valid_ids, "codes": valid_codes,
                  "mask": np.ones(num_eval, np.float32)}

    def trained(experiment: str, folder: str, overrides: list[str]) -> tuple[Any, Any, dict]:
      """Trains (or reuses) one stage; returns (method, params, retrieval scores (N, N))."""
      nonlocal score
      ctx.train(experiment, folder, overrides, train_iter_fn=train_fn, eval_iter_fn=no_eval)
      run = load_trained(ctx.path(folder), example)
      params = jax.device_get(nn.unbox(run.params))
      score = score or jax.jit(run.method.score_matrix)   # one program for every stage
      return run.method, params, np.asarray(score(params, valid["video"], valid_ids))

    for arm, arg, folder in arms:
      t = time.perf_counter()
      method, params, s = trained(f"{EXPERIMENT}:size={size},{arg}", f"pretrain_{folder}",
                                  pretrain)
      if arm == MVM and not quick:   # masked-code accuracy on held-out clips (one more compile)
        metrics = reduce_metrics([jax.jit(method.eval_metrics)(
            params, eval_batch, jax.random.key(ctx.seed))])
        rows.append((MVM, MVM_ACC, float(metrics["mvm_accuracy"])))
        rows.append((MVM, PRIOR_ACC, prior_acc))
      if not quick:
        # The pre-trained arm's retrieval before fine-tuning (reported, not judged), then the
        # retrieval fine-tuning from its parameters. The quick run stops after pre-training:
        # the fine-tuning stage is another loss to compile (init_from has its own tests).
        rows += [(arm, PRE + k, v) for k, v in retrieval_recall(s).items() if k in (R1, R5)]
        init = f"--config.train.init_from={os.path.abspath(ctx.path(f'pretrain_{folder}'))}"
        method, params, s = trained(f"{EXPERIMENT}:size={size},mvm=false", folder,
                                    [*finetune, init])
      rows += [(arm, k, v) for k, v in retrieval_recall(s).items()]
      rows.append((arm, "seconds", time.perf_counter() - t))
      data[arm] = s
      if not quick:   # the paper's scoring: the VTM head on every pair (reported, not judged)
        vtm_score = vtm_score or jax.jit(Violet(dataclasses.replace(
            method.config, retrieval="vtm")).score_matrix)
        vtm = retrieval_recall(np.asarray(vtm_score(params, valid["video"], valid_ids)))
        rows += [(arm, f"VTM-score {k}", vtm[k]) for k in (R1, R5)]
    if not quick:
      # The untrained network: the same architecture at the seed's initialisation.
      config = load_config(f"{EXPERIMENT}:size={size},{ARMS[0][1]}",
                           [f"--config.seed={ctx.seed}", *common])
      untrained = build_method(config.model)
      init = nn.unbox(jax.jit(untrained.init)(jax.random.key(ctx.seed), example))
      s = np.asarray(score(init, valid["video"], valid_ids))
      rows += [(UNTRAINED, k, v) for k, v in retrieval_recall(s).items()]
  rows += [(COLOUR, k, v) for k, v in
           retrieval_recall(colour_bag_scores(valid["video"], valid["captions"])).items()]
  rows += [(CHANCE, k, v) for k, v in retrieval_recall(np.zeros((num_eval, num_eval))).items()]
  data["captions"] = valid["captions"]
  data["video"] = valid["video"][:NUM_SHOWN]
  return Trial(rows, data)


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """Recall per arm (mean +- std over seeds) and the first held-out clips with the caption
  each arm ranks first (first seed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from tokenlab.evals.video import save_video_strip
  # Bars: (arm, metric prefix, label); the arms' retrieval before fine-tuning is hatched.
  series = [(a, "", a) for a in (MVM, NO_MVM, UNTRAINED, COLOUR, CHANCE)]
  series[2:2] = [(a, PRE, f"{a}, pre-trained only") for a in (MVM, NO_MVM)]
  series = [x for x in series if any(r[0] == x[0] and r[1] == x[1] + R1 for r in trials[0].rows)]
  fig, ax = plt.subplots(figsize=(7.5, 3.8))
  width = 0.8 / len(series)
  for i, (arm, prefix, label) in enumerate(series):
    vals = [[r[2] for t in trials for r in t.rows if r[0] == arm and r[1] == prefix + m]
            for m in (R1, R5)]
    ax.bar(np.arange(2) + i * width, [np.mean(v) for v in vals], width,
           yerr=[np.std(v) for v in vals], capsize=3, label=label,
           hatch="//" if prefix else None)
  ax.set_xticks(np.arange(2) + width * (len(series) - 1) / 2, [R1, R5])
  ax.set_ylabel(f"recall, {len(trials[0].data['captions'])} held-out clips")
  ax.legend(fontsize=8)
  ax.set_title(f"VIOLET toy: retrieval with vs without MVM ({len(trials)} seed(s))")
  fig.tight_layout()
  bars = ctx.out("violet_recall.png")
  fig.savefig(bars, dpi=100)
  plt.close(fig)
  first = trials[0].data
  strip = save_video_strip(first["video"], ctx.out("violet_clips.png"))
  lines = []
  for n in range(len(first["video"])):
    picks = "; ".join(f"{arm}: '{first['captions'][int(np.argmax(first[arm][n]))]}'"
                      for arm in (MVM, NO_MVM) if arm in first)
    lines.append(f"- clip {n}: '{first['captions'][n]}' -> top-1 caption {picks}")
  notes = (f"violet_clips.png: the first {len(first['video'])} held-out clips (rows, frames "
           "left to right); their captions and the caption each arm ranks first (seed "
           f"{ctx.seed}):\n" + "\n".join(lines) + "\n\n"
           f"Every arm: pre-training {PRETRAIN_STEPS} steps at peak lr {LR} (with or without "
           f"MVM), then retrieval fine-tuning {FINETUNE_STEPS} steps at peak lr {FINETUNE_LR} "
           "from its parameters on whole clips (no masking, no MVM, no MLM: VTM + InfoNCE); "
           f"batch {BATCH}, warm-up + cosine, AdamW with a fresh state per stage; the same "
           "steps and settings for both arms (no tuning per arm). Rows 'pre-trained mean R@k': "
           "retrieval before fine-tuning (not judged); the masked-code accuracy is the "
           "pre-trained MVM run's. MVM targets: the frame tokenizer's codes "
           f"({CODEBOOK}-code EMA VQ over 8x8-pixel patches, {TOKENIZER_STEPS} steps, trained "
           "once per reproduction on the training frames).")
  return [bars, strip], notes
