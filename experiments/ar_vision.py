"""Autoregressive models in vision (the survey arXiv 2411.05902): pixel-, token- and
scale-based class-conditional AR on one dataset with one transformer body
(tokenlab/methods/ar_vision.py).

  # the token family's tokenizer (a ViT-VQ, 2x2 pixel patches -> a 4x4 grid of 32 codes)
  tokenlab train --config experiments/ar_vision.py:stage=tokenizer --workdir runs/arv_tok
  # one model per family, the same body and budget
  tokenlab train --config experiments/ar_vision.py:family=pixel --workdir runs/arv_pixel
  tokenlab train --config experiments/ar_vision.py:family=token,tokenizer=runs/arv_tok \
      --workdir runs/arv_token
  tokenlab train --config experiments/ar_vision.py:family=scale --workdir runs/arv_scale
  tokenlab sample --workdir runs/arv_scale    # validation images above class-matched samples
  tokenlab repro ar_vision                    # the comparison, under the protocol

variants: size=tiny (tests) | small (the CPU reproduction) | base (accelerators: bfloat16,
FSDP, MNIST 28x28 at 256 intensities); family=pixel | token | scale; stage=model | tokenizer;
data=digits (8x8, 17 intensities) | mnist (28x28, 256); tokenizer=WORKDIR of a stage=tokenizer
run (family=token).
"""

import os

from tokenlab.config import (base_config, choose, load_config, parse_arg,
                             set_accelerator_defaults, set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads batch steps  lr
    "tiny": (16, 1, 2, 8, 3, 3e-3),
    "small": (64, 2, 4, 64, 500, 2e-3),
    "base": (512, 12, 8, 256, 50000, 4e-4),
}
# (image size, intensities, scales, tokenizer patch) per dataset
DATA = {"digits": (8, 17, (1, 2, 4, 8), 2), "mnist": (28, 256, (1, 2, 4, 7, 14, 28), 4)}
# The tokenizer: (codebook, latent, d_model, layers, heads, batch, steps, lr) per size
TOKENIZER = {
    "tiny": (16, 4, 16, 1, 2, 8, 3, 3e-3),
    "small": (32, 8, 32, 1, 2, 64, 400, 2e-3),
    "base": (1024, 16, 384, 8, 6, 256, 20000, 4e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", family="pixel", stage="model", data="digits",
                  tokenizer="")
  size, levels, scales, patch = choose("data", arg.data, DATA)
  choose("stage", arg.stage, {"model": 0, "tokenizer": 0})
  if arg.stage == "tokenizer":
    codebook, latent, d, layers, heads, batch, steps, lr = choose("size", arg.size, TOKENIZER)
    # The image_tokenizer experiment (its file next to this one) with a ViT encoder/decoder.
    c = load_config(os.path.join(os.path.dirname(__file__), "image_tokenizer.py") +
                    f":size={'tiny' if arg.size == 'tiny' else 'small'},data={arg.data},"
                    "arch=vit,quantizer=vq_ema")
    set_schedule(c, steps=steps, batch_size=batch, lr=lr, evals=1, checkpoints=1)
    c.model.patch_size = patch
    c.model.codebook_size, c.model.latent_dim = codebook, latent
    c.model.d_model, c.model.num_layers, c.model.num_heads = d, layers, heads
    if arg.size == "base":
      set_accelerator_defaults(c)
    c.train.eval_batches = 0          # the whole validation split
    c.checkpoint.async_save = False
    return c
  d, layers, heads, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("family", arg.family, {"pixel": 0, "token": 0, "scale": 0})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, evals=1, checkpoints=1)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.train.eval_batches = 0            # the whole validation split (180 digits)
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.01
  c.model.name = "ar_vision"
  c.model.family = arg.family
  c.model.num_classes = 10
  c.model.image_size = size
  c.model.channels = 1
  c.model.levels = levels
  c.model.scales = scales
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.temperature = 1.0
  c.model.tokenizer_workdir = arg.tokenizer
  c.data = default_data_config(arg.data)
  return c
