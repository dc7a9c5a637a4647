"""CharBench (Uzan & Pinter): a transformer LM trained on character-level task lines.

  tokenlab repro charbench
  variants: size=tiny|small|base, tokenizer=bytes|bpe, vocab=384 (BPE)

The data is the CharBench task stream (`tokenlab.evals.charbench`: lines such as
"between find w=3" over train words; eval on held-out words), fed to the trainer through
`charbench.iterator_fns(config)`: config.data.name = "method" makes `tokenlab train` use it
too (single process; it is not a tfds set). Every arm has
the same transformer, steps and batch of *tokens*. `size=base` is meant for an accelerator.
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_schedule
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr
    "tiny": (32, 1, 2, 32, 8, 4, 3e-3),
    "small": (64, 2, 4, 128, 16, 300, 3e-3),
    "base": (512, 8, 8, 512, 128, 20000, 6e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", tokenizer="bytes", vocab=384)
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("tokenizer", arg.tokenizer, {"bytes": 0, "bpe": 0})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=1, checkpoints=1)
  c.train.eval_batches = 10
  c.checkpoint.async_save = False
  if arg.size == "base":
    c.train.compute_dtype = "bfloat16"
  c.data = default_data_config("pysrc")
  c.data.name = "method"   # the CharBench task stream (tokenlab.evals.charbench.iterator_fns)
  c.data.tokenizer = "bytes"
  c.data.seq_len = seq
  c.charbench = ConfigDict(dict(tokenizer=arg.tokenizer, bpe_vocab=arg.vocab))
  c.model.name = "charbench"
  c.model.vocab_size = 256 if arg.tokenizer == "bytes" else arg.vocab
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  return c
