"""AIM (tokenlab/methods/aim.py): a small vision-language model answering visual questions
about `shapes` (which shape / colour, how many, where is the top-most object); AIM's
training-free reduction applies at inference: ToMe merging of the visual tokens before the LLM
and PageRank pruning inside it during prefill.

  tokenlab train --config experiments/aim.py --workdir runs/aim           # the VLM, no reduction
  tokenlab train --config experiments/aim.py:image=false --workdir W      # text-only baseline
  tokenlab eval --workdir runs/aim                                        # all 4 questions
  tokenlab repro aim     # AIM on the trained VLM: accuracy vs visual tokens and prefill FLOPs,
                         # vs random keeping / pooling / random pruning at equal counts

AIM itself has no parameters: `method.variant(merge_keep=16, prune="pagerank")` applies it to a
model trained with the default (keep=0, prune=none), as tokenlab/repro/aim.py does.

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: bfloat16, FSDP,
64x64 shapes); keep (visual tokens entering the LLM, 0 = all), pre=tome | random | pool,
prune=none | pagerank | random (inside the LLM, the retain schedule of the paper),
image=true | false (false: the question alone), keep_pos=false | true (reduced tokens keep
their trained RoPE positions).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #  vision_dim v_layers d_model layers heads mlp image batch steps  lr
    "tiny": (16, 0, 16, 2, 2, 32, 32, 8, 3, 3e-3),   # no vision encoder block: less to compile
    "small": (32, 1, 64, 4, 4, 128, 32, 32, 800, 3e-3),
    "base": (384, 6, 768, 12, 12, 3072, 64, 256, 20000, 5e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", keep=0, pre="tome", prune="none", image=True,
                  keep_pos=False)
  vd, vl, d, layers, heads, mlp, image, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split (masked padding rows)
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.05
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "aim"
  c.model.patch_size = 4
  c.model.image_size = image
  c.model.vision_dim = vd
  c.model.vision_layers = vl
  c.model.vision_heads = 2 if vd < 64 else 6
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mlp_dim = mlp
  c.model.use_image = arg.image
  c.model.merge_keep = arg.keep
  c.model.pre = arg.pre
  c.model.prune = arg.prune
  c.model.keep_positions = arg.keep_pos
  c.data = default_data_config("shapes")
  c.data.options.size = image
  return c
