"""The source LM of tokenizer transfer (issue 20): transformer_lm with a trained tokenizer T0.

  tokenlab train --config experiments/transfer.py:size=small --workdir runs/t0
  tokenlab transfer --from runs/t0 --tokenizer sentencepiece:1024@de --workdir runs/transfer

variants: size=tiny (tests) | small (2-core CPU) | base (accelerator); lang=en (the
`multilingual` dataset's monolingual corpus of that language, tokenlab/data/multilingual.py);
tokenizer=sentencepiece | bpe; vocab (default 512 tiny, 1024 otherwise). Evaluation covers
the whole validation split (eval_batches=0) so `tokenlab transfer` and the trainer score the
same text.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr
    "tiny": (64, 2, 2, 64, 8, 30, 3e-3),
    "small": (128, 4, 4, 128, 16, 400, 2e-3),
    "base": (512, 8, 8, 256, 64, 3000, 1e-3),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", lang="en", tokenizer="sentencepiece", vocab=0)
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("tokenizer", arg.tokenizer, {"sentencepiece": 0, "bpe": 0})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.train.eval_batches = 0
  c.model.name = "transformer_lm"
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.data = default_data_config("multilingual")
  c.data.options.lang = arg.lang
  c.data.options.kind = "monolingual"
  c.data.tokenizer = arg.tokenizer
  c.data.vocab_size = arg.vocab or (512 if arg.size == "tiny" else 1024)
  c.data.seq_len = seq
  c.model.vocab_size = c.data.vocab_size
  return c
