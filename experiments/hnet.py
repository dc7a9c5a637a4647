"""H-Net (dynamic chunking) byte-level LM.

  tokenlab train --config experiments/hnet.py:size=tiny --workdir runs/hnet
  tokenlab repro hnet            # the mini-reproduction (size=repro arms, 3 seeds)
  variants: size=tiny|small|repro|base, data=pysrc|markov|dna, stages=1|2, smoothing=1|0,
  ratio=N (target bytes per chunk per stage; default 5 for one stage, 2.5 per stage for two).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model heads enc dec main window  seq  batch steps   lr
    "tiny": (32, 2, 1, 1, 1, 16, 64, 8, 20, 3e-3),
    "small": (128, 4, 1, 1, 3, 32, 128, 16, 300, 2e-3),
    "repro": (64, 2, 1, 1, 2, 16, 128, 16, 300, 3e-3),   # `tokenlab repro hnet` arms (CPU)
    "base": (768, 12, 2, 2, 12, 256, 2048, 256, 20000, 6e-4),   # accelerators (TPU/GPU)
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="pysrc", stages=1, smoothing=1, ratio=0.0)
  d, heads, enc, dec, main, window, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  c.train.eval_batches = 20
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "hnet"
  c.model.vocab_size = 256
  c.model.d_model = d
  c.model.num_heads = heads
  c.model.stages = arg.stages
  ratio = arg.ratio or (5.0 if arg.stages == 1 else 2.5)
  c.model.target_ratio = tuple([float(ratio)] * arg.stages)
  c.model.encoder_layers = enc
  c.model.decoder_layers = dec
  c.model.main_layers = main
  c.model.window = window
  # Chunk slots: twice the target's chunks (overflow is reported as stage*/chunk_overflow).
  c.model.max_chunks = min(1.0, 2.0 / ratio)
  c.model.ratio_loss_weight = 0.03
  c.model.smoothing = bool(arg.smoothing)
  c.data = default_data_config(arg.data)
  c.data.tokenizer = "bytes"
  c.data.seq_len = seq
  return c
