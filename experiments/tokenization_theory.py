"""Toward a Theory of Tokenization (Rajaraman et al.): one transformer on characters or tokens.

  tokenlab train --config experiments/tokenization_theory.py:size=tiny --workdir runs/tt
  tokenlab repro tokenization_theory
  variants: size=tiny|small|base, tokenizer=bytes|bpe, vocab=64 (BPE), k=4, p=0.8, q=0.8

Data: the `markov` source (x_n depends on x_{n-k}). Metric: eval/bits_per_byte = bits per
character (total NLL over characters), against entropy_rate_bits(p, q) and
unigram_entropy_bits(p, q). Every arm has the same model, steps and batch of *tokens*.
`size=base` is meant for an accelerator.
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
  arg = parse_arg(arg, size="small", tokenizer="bytes", vocab=64, k=4, p=0.8, q=0.8)
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=1, checkpoints=1)
  c.train.eval_batches = 20
  c.checkpoint.async_save = False
  if arg.size == "base":
    c.train.compute_dtype = "bfloat16"
  c.data = default_data_config("markov")
  c.data.options.k = arg.k
  c.data.options.p = float(arg.p)
  c.data.options.q = float(arg.q)
  if arg.size == "base":
    c.data.options.num_train = 50000
  c.data.tokenizer = arg.tokenizer
  c.data.vocab_size = 256 if arg.tokenizer == "bytes" else arg.vocab
  c.data.seq_len = seq
  c.model.name = "tokenization_theory"
  c.model.vocab_size = c.data.vocab_size
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  return c
