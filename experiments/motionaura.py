"""MotionAura (arXiv 2410.07659; tokenlab/methods/motionaura.py): video prediction by discrete
diffusion over a frozen 3-D VQ tokenizer's codes, with a spectral (FFT) or attention denoiser.

  # 1. the 3-D tokenizer, trained with full-frame masking (the shared video_tokenizer method)
  tokenlab train --config experiments/video_tokenizer.py --workdir runs/vtok \
      --config.model.frame_mask_ratio=0.25
  # 2. the denoiser over its codes (the clips are encoded once when the run starts)
  tokenlab train --config experiments/motionaura.py:tokenizer=runs/vtok --workdir runs/ma
  tokenlab repro motionaura   # masking in the tokenizer, spectral vs attention, 3 seeds

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: bfloat16, FSDP);
denoiser=spectral | attention; process=absorb | uniform; grid=TxHxW (the tokenizer's latent
grid, e.g. 4x6x6), codes=K (its codebook size), context=C (latent frames given);
tokenizer=WORKDIR of a trained video_tokenizer run; data=moving_digits (the dataset the
tokenizer was trained on, with its options in config.model.dataset_options).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)

SIZES = {
    #        d_model layers heads batch steps  lr
    "tiny": (16, 1, 2, 4, 3, 3e-3),
    "small": (64, 2, 4, 32, 400, 3e-3),
    "base": (512, 12, 8, 256, 50000, 4e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", denoiser="spectral", process="absorb", grid="4x6x6",
                  codes=64, context=2, tokenizer="", data="moving_digits")
  d, layers, heads, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("denoiser", arg.denoiser, {"spectral": 0, "attention": 0})
  choose("process", arg.process, {"absorb": 0, "uniform": 0})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split (masked padding rows)
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.01
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.data.name = "method"              # clips encoded by the frozen tokenizer (iterator_fns)
  c.model.name = "motionaura"
  c.model.denoiser = arg.denoiser
  c.model.process = arg.process
  c.model.grid = tuple(int(g) for g in str(arg.grid).split("x"))
  c.model.codebook_size = int(arg.codes)
  c.model.context_frames = int(arg.context)
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.sample_steps = 4 if arg.size == "tiny" else 8
  c.model.temperature = 1.0
  c.model.tokenizer_workdir = arg.tokenizer
  c.model.dataset = arg.data
  # moving_digits at the reproduction's size: 8 frames of 48x48, one digit.
  c.model.dataset_options = {"size": 48, "num_frames": 8, "num_digits": 1}
  return c
