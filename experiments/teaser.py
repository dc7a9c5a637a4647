"""TEASER's multi-scale tokens (tokenlab/methods/teaser.py): a token encoder (one token per
scale, pooled at 1x1, 2x2, 4x4, 8x8) and a generator that reconstructs the image from the
tokens alone, trained with L1 + the token-cycle loss, on `shapes`.

  tokenlab train --config experiments/teaser.py --workdir runs/teaser                # multi
  tokenlab train --config experiments/teaser.py:tokens=single --workdir runs/single
  tokenlab train --config experiments/teaser.py:cycle=0 --workdir runs/nocycle
  tokenlab repro teaser   # multi vs single scale, with and without the cycle loss, 3 seeds

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: wider pyramid and
generator, bfloat16, FSDP); tokens=multi | single; cycle=<weight> (0 = no token-cycle loss;
default 0.5, the reference's ratio to its L1 weight). The paper fine-tunes a pre-trained
encoder and generator with the cycle loss; to do the same, train with cycle=0 first and pass
--config.train.init_from=THAT_WORKDIR to the cycle run (the reproduction does this).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        width token_dim d_model heads batch steps  lr
    "tiny": (4, 4, 16, 2, 8, 3, 3e-3),
    "small": (16, 16, 64, 4, 32, 750, 3e-3),
    "base": (64, 64, 512, 8, 256, 20000, 1e-3),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", tokens="multi", cycle=0.5)
  width, token_dim, d, heads, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split (masked padding rows)
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "teaser"
  c.model.tokens = arg.tokens
  # The tests' tiny model: two scales (1x1, 2x2), so two generator blocks to compile.
  c.model.scales = (1, 2) if arg.size == "tiny" else (1, 2, 4, 8)
  c.model.width = width
  c.model.token_dim = token_dim
  c.model.d_model = d
  c.model.num_heads = heads
  c.model.patch_size = 8 if arg.size != "base" else 4
  c.model.cycle_weight = float(arg.cycle)
  c.data = default_data_config("shapes")
  return c
