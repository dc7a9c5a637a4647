"""Video tokenizer: a 3-D VQ autoencoder (tokenlab/methods/video_tokenizer.py) with a
factorised space-time transformer, trained on reconstruction; its codes on a (t, h, w) grid
are the video tokens of issue 18's video methods.

  tokenlab train --config experiments/video_tokenizer.py:dataset=moving_digits,size=cpu \
      --workdir W
  tokenlab eval --workdir W       # mean per-frame PSNR and bits per clip on validation clips

variants: size=tiny (tests: 4 frames of 32x32, seconds) | cpu (a few CPU minutes) | base
(accelerators: bfloat16, FSDP, remat); dataset=moving_digits | moving_shapes | pulse;
quantizer=vq_ema | vq | rvq | fsq | lfq | binary; frames=0 (the size's default: tiny 4, cpu 8,
base 16); causal=0|1 (causal temporal attention); frame_mask=0.0 (MotionAura's masked
training: the share of latent frames masked) with mask_kind=frame|patch; norm=0|1
(`token_norm`: RMS-normalised token embeddings before the positions; BUILD_NOTES "Video
tokenizer" measures both). Another experiment
loads a trained run frozen with `tokenlab.train.inference.load_frozen_tokenizer(workdir)`.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        frames tubelet d_model layers heads latent codebook batch steps  lr
    "tiny": (4, 2, 16, 1, 2, 8, 16, 4, 3, 3e-3),
    "cpu": (8, 2, 64, 2, 4, 16, 256, 16, 400, 2e-3),
    "base": (16, 2, 256, 6, 8, 32, 1024, 128, 20000, 4e-4),
}

#                  channels, frame size (tiny: the smallest each dataset builds), patch size
DATASETS = {
    "moving_digits": (1, {"tiny": 32, "cpu": 64, "base": 64}, {"tiny": 8, "cpu": 8, "base": 8}),
    "moving_shapes": (3, {"tiny": 24, "cpu": 32, "base": 32}, {"tiny": 8, "cpu": 4, "base": 4}),
    "pulse": (1, {"tiny": 16, "cpu": 32, "base": 32}, {"tiny": 8, "cpu": 4, "base": 4}),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="cpu", dataset="moving_digits", quantizer="vq_ema", frames=0,
                  causal=0, frame_mask=0.0, mask_kind="frame", bits=10, norm=0)
  (frames, tubelet, d_model, layers, heads, latent, codebook, batch, steps,
   lr) = choose("size", arg.size, SIZES)
  channels, sizes, patches = choose("dataset", arg.dataset, DATASETS)
  frames = arg.frames or frames
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "video_tokenizer"
  c.model.channels = channels
  c.model.frames = frames
  c.model.size = sizes[arg.size]
  c.model.tubelet = tubelet
  c.model.patch_size = patches[arg.size]
  c.model.d_model = d_model
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.causal_time = bool(arg.causal)
  c.model.remat = "full" if arg.size == "base" else "none"
  c.model.token_norm = bool(arg.norm)
  c.model.quantizer = arg.quantizer
  c.model.latent_dim = latent
  c.model.codebook_size = codebook
  c.model.num_bits = arg.bits     # lfq / binary bits per position
  c.model.rvq_levels = 2
  c.model.fsq_levels = (8, 5, 5, 5)
  # A code unused for this many EMA updates is restarted from an encoder output (VQ, RVQ).
  c.model.dead_after = 0 if arg.size == "tiny" else 20
  c.model.frame_mask_ratio = arg.frame_mask
  c.model.mask_kind = arg.mask_kind
  c.data = default_data_config(arg.dataset)
  c.data.options.size = sizes[arg.size]
  c.data.options.num_frames = frames
  if arg.size == "tiny":
    c.data.options.num_train, c.data.options.num_validation = 16, 8
    # One eval and one checkpoint, at the end: a tiny run is compile-bound.
    c.train.eval_batches = 1
    c.train.eval_every = c.checkpoint.every_steps = steps
  return c
