"""Image tokenizer: a VQ autoencoder (tokenlab/methods/image_tokenizer.py) trained on
reconstruction; its codes are the image tokens of the image methods.

  tokenlab train --config experiments/image_tokenizer.py:size=small,data=photos --workdir W
  tokenlab eval --workdir W          # PSNR and bits per image over the validation split
  tokenlab sample --workdir W        # PNG: validation images above their reconstructions

variants: size=tiny (tests) | small (a few CPU minutes) | base (accelerators: bfloat16, FSDP);
data=photos | shapes | mnist | digits; quantizer=vq_ema | vq | rvq | fsq | lfq | binary;
arch=conv | vit; bits=10 (lfq / binary bits per position). Another experiment loads a
trained tokenizer frozen with `tokenlab.train.inference.load_frozen_tokenizer(workdir)` (by
convention its method's config key `tokenizer_workdir`).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        width mult     res latent codebook d_model layers heads batch steps  lr
    "tiny": (8, (1, 2), 0, 8, 32, 32, 1, 2, 8, 20, 3e-3),
    "small": (32, (1, 2), 1, 16, 256, 64, 2, 4, 32, 600, 2e-3),
    "base": (128, (1, 2), 2, 32, 1024, 384, 8, 6, 256, 20000, 4e-4),
}

CHANNELS = {"photos": 3, "shapes": 3, "mnist": 1, "digits": 1}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="photos", quantizer="vq_ema", arch="conv", bits=10)
  (width, mult, res, latent, codebook, d_model, layers, heads, batch, steps,
   lr) = choose("size", arg.size, SIZES)
  channels = choose("data", arg.data, CHANNELS)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "image_tokenizer"
  c.model.channels = channels
  c.model.arch = arg.arch
  c.model.quantizer = arg.quantizer
  c.model.width = width
  c.model.channel_mult = mult
  c.model.num_res_blocks = res
  c.model.patch_size = 4
  c.model.d_model = d_model
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.latent_dim = latent
  c.model.codebook_size = codebook
  c.model.num_bits = arg.bits     # lfq / binary bits per position
  # A code unused for this many EMA updates is restarted from an encoder output (VQ, RVQ).
  c.model.dead_after = 20 if arg.size != "tiny" else 0
  c.data = default_data_config(arg.data)
  if arg.data == "photos":
    c.data.augment = "flip"
  return c
