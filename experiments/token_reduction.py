"""Token reduction beyond efficiency (tokenlab/methods/token_reduction.py): a ViT on `shapes`
(or `mnist`) with distractor squares, trained with or without token reduction in its blocks.

  tokenlab train --config experiments/token_reduction.py --workdir runs/tr_vit          # r=0
  tokenlab train --config experiments/token_reduction.py:r=8 --workdir runs/tr_prune    # EViT
  tokenlab train --config experiments/token_reduction.py:r=8,reduction=tome --workdir W
  tokenlab repro token_reduction   # trained-with vs test-time-only reduction, distractors

variants: size=tiny (tests) | small (the CPU reproduction: 4 blocks, d=48) | base
(accelerators: ViT-S-like, bfloat16, FSDP); r (tokens removed per block); reduction=attention
| tome | random | pagerank | window (nn.token_reduction.REDUCTIONS); data=shapes (shape class)
| mnist; clutter=1 (train images get 0..2 distractor squares, `config.data.augment='clutter'`)
| 0 (clean).
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
CLASSES = {"mnist": 10, "shapes": 4}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="shapes", r=0, reduction="attention", clutter=1)
  d, layers, heads, mlp, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole (clean) validation split
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.05
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "token_reduction"
  c.model.patch_size = 4
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mlp_dim = mlp
  c.model.num_classes = choose("data", arg.data, CLASSES)
  c.model.r = arg.r
  c.model.reduction = arg.reduction
  c.data = default_data_config(arg.data)
  c.data.augment = "clutter" if arg.clutter else ""
  return c
