"""Mini-reproduction of TokenBridge (Wang et al., arXiv 2503.16430) under the protocol.

Claims of the paper in miniature: (1) quantizing a trained continuous autoencoder's latent
per dimension after training loses little reconstruction quality; (2) a plain discrete
autoregressive model on those tokens (with the channel-wise head) generates as well as the
continuous latent with a flow-matching (diffusion-style) head, and (3) better than a VQ
tokenizer of the same bits per image.

Setup, per seed (experiments/tokenbridge.py, size=small, 28 x 28 MNIST, 4,500 training
images): two tokenizers with the same ViT encoder/decoder (patch 4 -> 7 x 7 grid), trained
with the same steps and batch for reconstruction:
  continuous  KL autoencoder, 3 latent channels per position (quantizer=kl);
  VQ          EMA VQ with 4,096 codes of 8 dims: 12 bits per position, the bits of the
              quantized continuous latent (3 channels x log2 16 bins), 588 bits per image.
Three class-conditional generators with the same causal backbone (2 layers, d = 32), the
same steps and batch (budget = steps; heads differ as the methods do):
  TokenBridge AR   16-bin Gaussian-quantile tokens of the continuous latent, channel-AR head;
  flow head        the continuous (standardised) latent, a flow-matching MLP head, 25 Euler
                   steps per position;
  VQ AR            the VQ codes, one 4,096-way softmax per position.
500 samples per arm (50 per class, temperature 1, no guidance) are scored by the shared
MNIST classifier (tokenlab.evals.image_samples): class accuracy and FD-classifier (a toy
FID on its 64 features) against the 500 validation images, read against `fd_real` (500 real
training images against the same reference).

Trivial baselines (arms): for PSNR the dataset's mean training image and the decoder fed the
per-channel mean latent (no image information); for generation the class-conditional count
prior over indices (per class, position and channel histograms of the training tokens,
sampled independently; for the VQ codes per class and position), and the untrained
TokenBridge network.
"""

from __future__ import annotations

import numpy as np

from tokenlab.repro import Context, Trial, claim, compile_cache, prerequisite
from tokenlab.repro.sampling import per_class_samples, save_per_class_grid, timed_sampler

CLAIM = ("Post-training per-dimension quantization of a continuous autoencoder's latent keeps "
         "its reconstruction quality, and autoregressive generation on those discrete tokens "
         "(channel-wise head) matches the continuous latent with a flow-matching head and "
         "beats a VQ tokenizer of equal bits per image.")

EXPERIMENT = "experiments/tokenbridge.py"
NUM_SAMPLES = 500            # generated images per arm (50 per class)
SEEDS = 3

PSNR, ACC, FD = "PSNR dB (validation)", "class accuracy", "FD-classifier"
SAMPLE_S, BITS = "sampling s / 100 images", "NLL bits per image (validation)"
CONT, TBQ, VQAE = ("continuous AE (KL)", "TokenBridge quantized (16 bins)",
                   "VQ AE (4096 codes)")
TB, FLOW, VQAR = "TokenBridge AR (channel head)", "flow head (continuous)", "VQ AR (softmax)"
MEAN_IMG, BIN_MEAN = "dataset mean image", "mean latent (no image information)"
COUNT_Q, COUNT_VQ = "count prior (quantile indices)", "count prior (VQ codes)"
UNTRAINED, REAL = "untrained TokenBridge network", "real training images"
RATIO = "TokenBridge / flow head"
BASELINES = (MEAN_IMG, BIN_MEAN, COUNT_Q, COUNT_VQ, UNTRAINED)

CHECKS = (
    prerequisite("ae_beats_mean_image", "the continuous AE reconstructs: PSNR 3 dB above the "
                 "dataset mean image", (CONT, PSNR), ">", (MEAN_IMG, PSNR), by=3.0),
    prerequisite("ae_beats_mean_latent", "the latent carries the image: PSNR 3 dB above the "
                 "decoder fed the per-channel mean latent", (CONT, PSNR), ">",
                 (BIN_MEAN, PSNR), by=3.0),
    prerequisite("tb_beats_counts", "the TokenBridge AR learnt more than per-position "
                 "counts: lower FD than the count prior on the same indices", (TB, FD), "<",
                 (COUNT_Q, FD)),
    prerequisite("flow_beats_counts", "the flow head learnt more than per-position counts",
                 (FLOW, FD), "<", (COUNT_Q, FD)),
    prerequisite("tb_beats_untrained", "the TokenBridge AR follows the class: accuracy 0.3 "
                 "above the untrained network", (TB, ACC), ">", (UNTRAINED, ACC), by=0.3),
    prerequisite("vq_ar_learns", "the VQ AR learnt more than per-position counts of its "
                 "codes (so the comparison is between learnt models)", (VQAR, FD), "<",
                 (COUNT_VQ, FD)),
    prerequisite("not_saturated", "the task is not saturated: the flow head's FD is above "
                 "that of real images", (FLOW, FD), ">", (REAL, FD)),
    claim("ptq_keeps_psnr", "post-training quantization loses under 1 dB PSNR against the "
          "continuous latent", (TBQ, PSNR), ">", (CONT, PSNR), by=-1.0),
    claim("tb_matches_flow_fd", "TokenBridge's FD is within 25% of the flow head's (FD "
          "ratio < 1.25)", (RATIO, "FD ratio"), "<", 1.25),
    claim("tb_matches_flow_acc", "TokenBridge's class accuracy is within 0.05 of the flow "
          "head's", (TB, ACC), ">", (FLOW, ACC), by=-0.05),
    claim("tb_beats_vq_fd", "TokenBridge generates better than the VQ tokenizer of equal "
          "bits: lower FD", (TB, FD), "<", (VQAR, FD)),
    claim("tbq_beats_vq_psnr", "the quantized continuous latent reconstructs better than the "
          "VQ of equal bits", (TBQ, PSNR), ">", (VQAE, PSNR)),
)


def _psnr(images: np.ndarray, recon) -> float:
  from tokenlab.evals.image import psnr_per_image
  return float(np.mean(np.asarray(psnr_per_image(images, np.asarray(recon)))))


def count_prior_sample(tokens: np.ndarray, labels: np.ndarray, sample_labels: np.ndarray,
                       seed: int) -> np.ndarray:
  """Independent draws from per-class histograms of every token slot.

  tokens (M, S) ints with labels (M,) -> samples (len(sample_labels), S),
  slot s of a sample of class c drawn from the empirical law of slot s among class c.
  """
  rng = np.random.default_rng(seed)
  out = np.zeros((len(sample_labels), tokens.shape[1]), np.int64)
  for c in np.unique(sample_labels):
    rows = np.flatnonzero(sample_labels == c)
    pool = tokens[labels == c]
    # Each slot independently: pick, per slot, the value of a random training image.
    pick = rng.integers(0, len(pool), size=(len(rows), tokens.shape[1]))
    out[rows] = pool[pick, np.arange(tokens.shape[1])]
  return out


def _encode_all(method, images: np.ndarray, batch: int = 500) -> np.ndarray:
  import jax
  fn = jax.jit(method.tokens)
  return np.concatenate([np.asarray(fn(images[i:i + batch]))
                         for i in range(0, len(images), batch)])


def _generate(method, params, labels: np.ndarray, seed: int, image_hw) -> tuple[np.ndarray,
                                                                                   float]:
  """(samples, seconds per 100 images): compiled first, then timed."""
  import jax
  out, seconds = timed_sampler(lambda p, y, k: method.generate(p, y, k, image_hw), params,
                               labels, jax.random.key(seed))
  return out, seconds * 100.0 / len(labels)


def run_seed(ctx: Context) -> Trial:
  import flax.linen as nn
  import jax
  from tokenlab.evals.image_samples import evaluate_samples, load_split, train_classifier
  from tokenlab.train.inference import load_trained

  size = "tiny" if ctx.quick else "small"
  n = 20 if ctx.quick else NUM_SAMPLES
  quick = ["--config.train.steps=3"] if ctx.quick else []
  rows, data = [], {}
  with compile_cache(ctx.out("jax_cache")):
    # The metrics below replace the trainer's own eval (one compile less per arm).
    no_eval = lambda batch_size, seed: iter(())
    tok = {}
    # --quick: the continuous tokenizer and the TokenBridge generator only (a smoke test).
    for arm, latent in (("tok_kl", "kl"),) + ((("tok_vq", "vq"),) if not ctx.quick else ()):
      ctx.train(f"{EXPERIMENT}:size={size},stage=tokenizer,latent={latent}", arm, quick,
                eval_iter_fn=no_eval)
      tok[latent] = ctx.path(arm)
    runs = {}
    gens = (("gen_tb", "channel_ar", "kl"), ("gen_flow", "flow", "kl"),
            ("gen_vq", "softmax", "vq"))
    for arm, head, latent in gens[:1] if ctx.quick else gens:
      overrides = [f"--config.model.tokenizer_workdir={tok[latent]}", *quick]
      ctx.train(f"{EXPERIMENT}:size={size},stage=generator,head={head}", arm, overrides,
                eval_iter_fn=no_eval)
      runs[head] = ctx.path(arm)

    train = load_split("mnist", "train")
    val = load_split("mnist", "validation")
    images, labels = train["image"], train["label"]
    ref = val["image"]
    hw = images.shape[1:3]
    example = {"image": images[:2], "label": labels[:2].astype(np.int32)}
    trained = {h: load_trained(w, example) for h, w in runs.items()}

    # Reconstruction: continuous, quantized (TokenBridge's tokens), VQ, and the baselines.
    tb = trained["channel_ar"].method
    grid = tb.grid(hw)
    vals = ref[:n]
    rows.append((CONT, PSNR, _psnr(vals, tb.tokenizer.decode(tb.tokenizer.encode(vals)))))
    rows.append((TBQ, PSNR, _psnr(vals, jax.jit(lambda x: tb.decode(tb.tokens(x), grid))(vals))))
    if "softmax" in trained:
      vq = trained["softmax"].method
      rows.append((VQAE, PSNR, _psnr(vals, vq.tokenizer.decode(vq.tokenizer.encode(vals)))))
    rows.append((MEAN_IMG, PSNR, _psnr(vals, np.broadcast_to(images.mean(0), vals.shape))))
    mean_latent = np.broadcast_to(tb.mean, (1, *grid, tb.channels))
    rows.append((BIN_MEAN, PSNR, _psnr(vals, np.broadcast_to(
        np.asarray(tb.tokenizer.decode(mean_latent)), vals.shape))))

    # Generation: 50 samples per class from every arm and baseline.
    clf = train_classifier("mnist")
    want = np.repeat(np.arange(10), n // 10).astype(np.int32)
    samples = {}
    arms = [(h, a) for h, a in (("channel_ar", TB), ("flow", FLOW), ("softmax", VQAR))
            if h in trained]
    for head, arm in arms:
      run = trained[head]
      samples[arm], secs = _generate(run.method, run.params, want, 1000 + ctx.seed, hw)
      rows.append((arm, SAMPLE_S, secs))
    init = jax.jit(tb.init)(jax.random.key(ctx.seed), example)
    samples[UNTRAINED], _ = _generate(tb, nn.unbox(init), want, 2000 + ctx.seed, hw)
    for head, arm in (("channel_ar", COUNT_Q), ("softmax", COUNT_VQ)):
      if head not in trained:
        continue
      m = trained[head].method
      toks = _encode_all(m, images)
      flat = count_prior_sample(toks.reshape(len(toks), -1), labels, want, 3000 + ctx.seed)
      samples[arm] = np.asarray(jax.jit(lambda t: m.decode(t, grid))(
          flat.reshape(len(want), *toks.shape[1:]).astype(np.int32)))
    scores = {}
    for arm, s in samples.items():
      scores[arm] = evaluate_samples(clf, s, labels=want, reference=ref, real_floor=False)
      rows += [(arm, ACC, scores[arm]["class_accuracy"]), (arm, FD, scores[arm]["fd"])]
    real = evaluate_samples(clf, images[np.random.default_rng(0).permutation(len(images))[:n]],
                            labels=None, reference=ref, real_floor=False)
    rows.append((REAL, FD, real["fd"]))
    if FLOW in scores:
      rows.append((RATIO, "FD ratio", scores[TB]["fd"] / max(scores[FLOW]["fd"], 1e-9)))

    # Discrete arms' validation NLL in bits per image (both at most 588 bits per image).
    for head, arm in [(h, a) for h, a in arms if h != "flow"]:
      run = trained[head]
      batch = {"image": ref[:n], "label": val["label"][:n].astype(np.int32)}
      _, metrics = jax.jit(run.method.loss)(run.params, batch, jax.random.key(0))
      rows.append((arm, BITS, float(metrics["bits_per_image"].value())))
    data = per_class_samples(samples, images, labels)
  return Trial(rows, data)


def finish(ctx: Context, trials: list[Trial]) -> tuple[list[str], str]:
  """One sample per class from every arm (first seed), real digits on top."""
  path, arms = save_per_class_grid(ctx, trials[0].data)
  notes = ("samples.png rows (one sample per class 0..9, seed " f"{ctx.seed}): real training "
           "digits, then " + ", ".join(arms) + ". FD-classifier is a toy FID on the "
           "features of a small MNIST classifier (tokenlab.evals.image_samples); read it "
           f"against the '{REAL}' row (as many real images against the same validation "
           "reference). Budget = steps: both tokenizers the same steps and batch, the three "
           "generators the same backbone, steps and batch. Sampling time: the whole jitted "
           "sampler for the arm's images after compilation, on this CPU, no key/value cache "
           "in any arm.")
  return [path], notes
