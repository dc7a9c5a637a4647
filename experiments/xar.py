"""xAR (Ren et al. 2025, arXiv 2502.20388): next-X prediction over entities of k x k cells of
tokens, flow matching per entity, noisy context learning (tokenlab/methods/xar.py).

  tokenlab train --config experiments/xar.py:size=small --workdir runs/xar
  tokenlab sample --workdir runs/xar            # class-conditional samples as a PNG
  tokenlab repro xar                            # the mini-reproduction (three arms, 3 seeds)

variants: size=tiny (tests) | small (the CPU mini-reproduction) | base (accelerators:
bfloat16, FSDP); cell=k (entity = k x k tokens; 1 = next-token prediction); context=noisy
(NCL, the paper) | clean (teacher forcing; runs half the batch, so every arm passes the same
number of tokens through the network per step); data=digits (8 x 8, 2 x 2 pixel tokens: a
4 x 4 grid; the mini-reproduction) | digits16 (upsampled to 16 x 16, 4 x 4 pixel tokens) |
mnist (28 x 28, 7 x 7 pixel tokens) | shapes (32 x 32 RGB, 8 x 8 pixel tokens), all 4 x 4
grids of tokens.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads batch steps   lr   sample_steps
    "tiny": (16, 1, 2, 8, 3, 3e-3, 2),
    "small": (64, 2, 4, 32, 1500, 2e-3, 16),
    "base": (768, 16, 12, 256, 400000, 4e-4, 50),
}
DATA = {
    #          image_size channels patch classes
    "digits": (8, 1, 2, 10),
    "digits16": (16, 1, 4, 10),     # digits upsampled to 16 x 16 (data option size=16)
    "mnist": (28, 1, 7, 10),
    "shapes": (32, 3, 8, 4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", cell=2, context="noisy", data="digits")
  d, layers, heads, batch, steps, lr, sample_steps = choose("size", arg.size, SIZES)
  noisy = choose("context", arg.context, {"noisy": True, "clean": False})
  image_size, channels, patch, classes = choose("data", arg.data, DATA)
  c = base_config()
  # Teacher forcing passes [clean; noisy], twice the tokens per image: half the batch keeps
  # the tokens per step (the compute) equal across arms.
  set_schedule(c, steps=steps, batch_size=batch if noisy else max(batch // 2, 1), lr=lr,
               logs=20, evals=1, checkpoints=1)
  c.train.eval_batches = 4
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "xar"
  c.model.cell = arg.cell
  c.model.noisy_context = noisy
  c.model.image_size = image_size
  c.model.channels = channels
  c.model.patch_size = patch
  c.model.num_classes = classes
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.sample_steps = sample_steps
  c.model.cfg_scale = 1.0          # no guidance (pilot on digits: CFG 2 raised the FD)
  c.data = default_data_config("digits" if arg.data == "digits16" else arg.data)
  if arg.data == "digits16":
    c.data.options.size = 16
  return c
