"""TokenBridge (Wang et al. 2025, arXiv 2503.16430): a continuous autoencoder, quantized per
dimension after training, and a class-conditional autoregressive model whose small head
predicts each channel's bin given the previous channels (tokenlab/methods/tokenbridge.py).

Two stages, two trainings:

  tokenlab train --config experiments/tokenbridge.py:stage=tokenizer --workdir T
  tokenlab train --config experiments/tokenbridge.py:stage=generator \\
      --config.model.tokenizer_workdir=T --workdir G
  tokenlab sample --workdir G       # PNG of class-conditional samples, one per label

variants: size=tiny (tests) | small (the CPU mini-reproduction) | base (accelerators:
bfloat16, FSDP); data=mnist | shapes; stage=tokenizer | generator;
latent=kl (continuous KL autoencoder, the paper's tokenizer) | vq (a VQ tokenizer with the
same bits per position as the quantized latent: 2^(channels x log2 bins) codes);
head=channel_ar (TokenBridge) | flow (continuous latent, flow-matching head, MAR-like) |
softmax (one code per position, for the VQ tokenizer).
"""

import math
import os

from tokenlab.config import (base_config, choose, load_config, parse_arg,
                             set_accelerator_defaults, set_schedule)
from tokenlab.data import default_data_config

TOKENIZER = {
    #        d_model layers heads latent bins vq_dim batch steps  lr
    "tiny": (32, 1, 2, 2, 4, 4, 16, 4, 3e-3),
    "small": (32, 1, 2, 3, 16, 8, 32, 600, 3e-3),
    "base": (384, 6, 6, 16, 64, 8, 256, 50000, 4e-4),
}
GENERATOR = {
    #        d_model layers heads head_layers flow_width batch steps  lr
    "tiny": (32, 1, 2, 1, 32, 16, 4, 3e-3),
    "small": (32, 2, 2, 1, 64, 32, 600, 3e-3),
    "base": (512, 12, 8, 2, 1024, 256, 200000, 3e-4),
}
CHANNELS = {"mnist": 1, "shapes": 3}
KL_WEIGHT = 1e-3     # KL per latent element vs pixel MSE (small, as latent-diffusion VAEs)


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="mnist", stage="generator", latent="kl",
                  head="channel_ar")
  choose("stage", arg.stage, {"tokenizer": 0, "generator": 0})
  (d_model, layers, heads, latent, bins, vq_dim, batch, steps,
   lr) = choose("size", arg.size, TOKENIZER)
  choose("latent", arg.latent, {"kl": 0, "vq": 0})
  if arg.stage == "tokenizer":
    # The image_tokenizer experiment (its file next to this one) with a ViT encoder/decoder.
    c = load_config(os.path.join(os.path.dirname(__file__), "image_tokenizer.py") +
                    f":size={'tiny' if arg.size == 'tiny' else 'small'},data={arg.data},"
                    "arch=vit,quantizer=vq_ema")
    set_schedule(c, steps=steps, batch_size=batch, lr=lr, evals=1, checkpoints=1)
    c.model.d_model, c.model.num_layers, c.model.num_heads = d_model, layers, heads
    c.model.patch_size = 4
    if arg.latent == "kl":
      c.model.quantizer = "kl"
      c.model.latent_dim = latent
      with c.unlocked():    # load_config returns a locked config
        c.model.quantizer_weight = KL_WEIGHT
    else:
      # Equal bits per position: one code of channels x log2(bins) bits.
      c.model.quantizer = "vq_ema"
      c.model.latent_dim = vq_dim
      c.model.codebook_size = 2 ** int(round(latent * math.log2(bins)))
    if arg.size == "base":
      set_accelerator_defaults(c)
    c.train.eval_batches = 8
    return c

  (g_model, g_layers, g_heads, head_layers, flow_width, g_batch, g_steps,
   g_lr) = choose("size", arg.size, GENERATOR)
  choose("head", arg.head, {"channel_ar": 0, "flow": 0, "softmax": 0})
  c = base_config()
  set_schedule(c, steps=g_steps, batch_size=g_batch, lr=g_lr, evals=1, checkpoints=1)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "tokenbridge"
  c.model.tokenizer_workdir = ""      # set to a trained stage=tokenizer run
  c.model.head = arg.head
  c.model.num_classes = 10 if arg.data == "mnist" else 4
  c.model.bins = bins
  c.model.d_model = g_model
  c.model.num_layers = g_layers
  c.model.num_heads = g_heads
  c.model.head_layers = head_layers
  c.model.flow_width = flow_width
  c.model.flow_depth = 2
  c.model.flow_steps = 25
  c.data = default_data_config(arg.data)
  c.train.eval_batches = 8
  return c
