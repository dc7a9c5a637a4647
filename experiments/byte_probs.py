"""Exact byte-level probabilities (Phan et al.): a tokenized LM whose byte-level view is exact.

  tokenlab train --config experiments/byte_probs.py:size=tiny --workdir runs/bp
  tokenlab repro byte_probs
  variants: size=tiny|small|base, data=markov|pysrc, tokenizer=bpe|bytes, vocab=64,
  k=1 (markov order), seq=0 (0 = the size's seq_len)

The trained model is the transformer LM; the byte-level procedure runs at evaluation
(tokenlab.evals.byte_level). `size=base` is meant for an accelerator.
"""

from tokenlab.config import base_config, choose, parse_arg, set_schedule
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr
    "tiny": (32, 1, 2, 32, 8, 4, 3e-3),
    "small": (64, 2, 2, 128, 16, 300, 3e-3),
    "base": (512, 8, 8, 512, 128, 20000, 6e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", data="markov", tokenizer="bpe", vocab=64, k=1, seq=0)
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=1, checkpoints=1)
  c.train.eval_batches = 10
  c.checkpoint.async_save = False
  if arg.size == "base":
    c.train.compute_dtype = "bfloat16"
  c.data = default_data_config(arg.data)
  if arg.data == "markov":
    c.data.options.k = arg.k
    c.data.options.p = 0.3
    c.data.options.q = 0.2
    c.data.options.num_train = 400 if arg.size != "base" else 20000
    c.data.options.length = 512
  c.data.tokenizer = arg.tokenizer
  c.data.vocab_size = 256 if arg.tokenizer == "bytes" else arg.vocab
  c.data.seq_len = arg.seq or seq
  c.model.name = "byte_probs"
  c.model.vocab_size = c.data.vocab_size
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  return c
