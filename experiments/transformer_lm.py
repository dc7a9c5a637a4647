"""Decoder-only transformer LM on byte-level text (tokenlab's baseline).

  tokenlab train --config experiments/transformer_lm.py:size=tiny --workdir runs/lm
  variants: size=tiny|small|base|1b, data=pysrc|markov|dna, window=0 (dense) or W (windowed
  attention with a left window of W tokens).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr
    "tiny": (64, 2, 2, 64, 8, 50, 3e-3),
    "small": (128, 4, 4, 256, 16, 300, 2e-3),   # README default: ~4 min on 2 CPU cores
    "base": (768, 12, 12, 1024, 256, 20000, 6e-4),
    "1b": (2048, 16, 16, 2048, 512, 50000, 3e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="pysrc", window=0)
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size in ("base", "1b"):
    set_accelerator_defaults(c)
  if arg.size == "1b":
    # 512 x 2048 tokens at once do not fit 16 GiB chips even with FSDP over 8 (`tokenlab plan`
    # estimates 87 GiB per device); 16 micro-batches bring it to ~7.7 GiB (BUILD_NOTES).
    c.train.grad_accum_steps = 16
  c.model.name = "transformer_lm"
  c.model.vocab_size = 256
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.window = (arg.window, 0) if arg.window else None
  c.model.scan_layers = arg.size in ("base", "1b")
  c.model.remat = "full" if arg.size == "1b" else "none"
  c.data = default_data_config(arg.data)
  c.data.tokenizer = "bytes"
  c.data.seq_len = seq
  return c
