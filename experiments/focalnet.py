"""FocalNet (tokenlab/methods/focalnet.py): an isotropic image classifier whose token mixer is
focal modulation, and its peers at equal parameters: self-attention (the ViT block) and a
plain depthwise-separable convolution.

  tokenlab train --config experiments/focalnet.py --workdir runs/focal            # shapes
  tokenlab train --config experiments/focalnet.py:mixer=attention --workdir runs/vit
  tokenlab train --config experiments/focalnet.py:mixer=conv,data=mnist --workdir runs/conv
  tokenlab repro focalnet   # focal vs attention vs conv: accuracy, images/s, FLOPs, 3 seeds

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: width 384, 12
blocks, bfloat16, FSDP); data=shapes (32x32 RGB, shape class) | mnist (28x28);
mixer=focal | attention | conv; levels (focal levels L, kernels 3, 5, ...).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads mlp  batch steps  lr
    "tiny": (16, 2, 2, 32, 8, 3, 3e-3),
    "small": (48, 4, 4, 96, 32, 500, 3e-3),
    "base": (384, 12, 6, 1024, 256, 20000, 1e-3),
}
CLASSES = {"shapes": 4, "mnist": 10}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="shapes", mixer="focal", levels=2)
  d, layers, heads, mlp, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split (masked padding rows)
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.05
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "focalnet"
  c.model.patch_size = 4
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mlp_dim = mlp
  c.model.num_classes = choose("data", arg.data, CLASSES)
  c.model.mixer = arg.mixer
  c.model.focal_level = arg.levels
  # The tests' tiny models: XLA's grouped convolution compiles in a fraction of the time of
  # the CPU's shifted sums (same function; tests/test_focalnet.py compares them), and at
  # these sizes its slower run time does not matter.
  c.model.dwconv_impl = "xla" if arg.size == "tiny" else "auto"
  c.data = default_data_config(arg.data)
  return c
