"""ToMe (tokenlab/methods/tome.py): a ViT classifier with token merging between attention and
MLP of every block; r = 0 is the plain ViT, and merging applies off the shelf to it.

  tokenlab train --config experiments/tome.py --workdir runs/vit            # plain ViT, shapes
  tokenlab train --config experiments/tome.py:r=6 --workdir runs/vit_tome   # trained with ToMe
  tokenlab train --config experiments/tome.py:r=8,r_inflect=-0.5 --workdir W  # decreasing r
  tokenlab repro tome       # off the shelf vs trained, vs random / attention pruning, 3 seeds
  tokenlab bench vit_tome   # images/s and accuracy vs r: fused kernel vs plain jnp ToMe

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: ViT-S-like,
bfloat16, FSDP); data=shapes (32x32 RGB, shape class) | mnist (28x28); r (tokens merged per
block), r_inflect (ToMe's schedule: 0 constant, < 0 decreasing); reduction=tome | random |
attention (the pruning baselines); impl=kernel | reference | pallas_gpu | pallas_tpu | plain.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads mlp  batch steps  lr
    "tiny": (16, 2, 2, 32, 8, 3, 3e-3),
    "small": (48, 4, 4, 96, 32, 600, 3e-3),
    "base": (384, 12, 6, 1536, 256, 20000, 1e-3),
}
CLASSES = {"shapes": 4, "mnist": 10}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="shapes", r=0, r_inflect=0.0, reduction="tome",
                  impl="kernel")
  d, layers, heads, mlp, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split (masked padding rows)
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.05
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "tome"
  c.model.patch_size = 4
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mlp_dim = mlp
  c.model.num_classes = choose("data", arg.data, CLASSES)
  c.model.r = arg.r
  c.model.r_inflect = arg.r_inflect
  c.model.reduction = arg.reduction
  c.model.implementation = arg.impl
  c.data = default_data_config(arg.data)
  return c
