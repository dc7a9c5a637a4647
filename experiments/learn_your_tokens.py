"""Learn Your Tokens (eTok): words pooled from bytes, a word-level transformer, a parallel
per-word character decoder.

  tokenlab train --config experiments/learn_your_tokens.py:size=tiny --workdir runs/lyt
  tokenlab sample --workdir runs/lyt --prompt "def "
  tokenlab repro learn_your_tokens   # the mini-reproduction (size=small arms)
  variants: size=tiny|small|base, data=pysrc|markov.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model heads enc main dec  K  words  seq  batch steps   lr
    "tiny": (16, 2, 1, 1, 1, 8, 0.5, 64, 4, 20, 3e-3),
    "small": (64, 4, 1, 2, 1, 12, 0.25, 128, 16, 250, 2e-3),   # CPU repro arm
    "base": (768, 12, 2, 12, 2, 16, 0.3, 2048, 256, 20000, 6e-4),   # accelerators
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="pysrc")
  d, heads, enc, main, dec, k, words, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  c.train.eval_batches = 20
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "learn_your_tokens"
  c.model.vocab_size = 256
  c.model.d_model = d
  c.model.num_heads = heads
  c.model.encoder_layers = enc
  c.model.main_layers = main
  c.model.decoder_layers = dec
  c.model.max_word_len = k
  c.model.max_words = words
  c.data = default_data_config(arg.data)
  c.data.tokenizer = "bytes"
  c.data.seq_len = seq
  return c
