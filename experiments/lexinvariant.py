"""Lexinvariant LMs (Huang et al.): per-sequence random Gaussian token embeddings.

  tokenlab train --config experiments/lexinvariant.py:size=tiny --workdir runs/lx
  tokenlab repro lexinvariant
  variants: size=tiny|small|base, lexinvariant=1|0 (0 = the standard LM of the same shape),
  data=synthetic|pysrc.

data=synthetic is the order-2 Markov source over 32 symbols of `config.source`
(tokenlab.methods.lexinvariant.MarkovSource); the trainer gets it through
`lexinvariant.iterator_fns(config)` (config.data.name = "method", so `tokenlab train` uses it
too, on one process). `size=base` is meant for an
accelerator (bfloat16, pysrc or a tfds text set at seq 1024).
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_schedule
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr
    "tiny": (32, 1, 2, 32, 8, 4, 3e-3),
    "small": (64, 2, 4, 256, 16, 400, 3e-3),
    "base": (512, 8, 8, 1024, 128, 20000, 6e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", lexinvariant=1, data="synthetic")
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("data", arg.data, {"synthetic": 0, "pysrc": 0})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=1, checkpoints=1)
  c.train.eval_batches = 10
  c.checkpoint.async_save = False
  if arg.size == "base":
    c.train.compute_dtype = "bfloat16"
  c.data = default_data_config("pysrc")
  if arg.data == "synthetic":
    c.data.name = "method"   # the Markov source of tokenlab/methods/lexinvariant.py
  c.data.tokenizer = "bytes"
  c.data.seq_len = seq
  # The synthetic source (used when data=synthetic; see the module docstring).
  c.source = ConfigDict(dict(vocab=32, order=2, branching=4, zipf=1.0, seed=1234))
  c.model.name = "lexinvariant"
  c.model.vocab_size = c.source.vocab if arg.data == "synthetic" else 256
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.lexinvariant = bool(arg.lexinvariant)
  return c
