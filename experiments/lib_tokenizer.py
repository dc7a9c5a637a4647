"""LiB, the Less-is-Better tokenizer (Yang 2024): a downstream LM over LiB tokens.

  tokenlab repro lib_tokenizer                         # the study below, size=repro, 3 seeds
  tokenlab train --config experiments/lib_tokenizer.py:size=tiny --workdir runs/lib
  tokenlab tokenizer-report lib:1024 bpe:1024 --corpus multilingual:en,de --max-docs 50

variants: size=tiny (tests; seconds) | repro (the 2-core CPU study) | large (an accelerator
host: a 8-layer LM over 4096-token vocabularies); tokenizer=lib|bpe|bytes (the LM's tokens;
lib and bpe are learned once on the train split and cached); vocab (0 = the size's).

The LM is tokenlab's transformer (method `lib_tokenizer`) on `pysrc` (Python source, 4.6 MB
train split), seq_len in tokens, the same model, steps and batch for every tokenizer: equal
tokens per step, not equal bytes. `config.lib` is what `tokenlab repro lib_tokenizer` measures
besides (tokenlab/repro/lib_tokenizer.py): `eval_bytes` of the validation split for the
tokenizer-level metrics, and the count n-gram orders of the count baseline.
"""

from ml_collections import ConfigDict

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr    vocab  eval_bytes
    "tiny": (32, 1, 2, 32, 8, 3, 3e-3, 300, 20_000),
    "repro": (128, 2, 4, 128, 16, 300, 2e-3, 1024, 200_000),
    "large": (512, 8, 8, 512, 64, 5000, 1e-3, 4096, 1_000_000),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="repro", tokenizer="lib", vocab=0)
  d, layers, heads, seq, batch, steps, lr, vocab, eval_bytes = choose("size", arg.size, SIZES)
  vocab = 256 if arg.tokenizer == "bytes" else (arg.vocab or vocab)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  c.checkpoint.async_save = False
  if arg.size == "large":
    set_accelerator_defaults(c)
  c.train.eval_batches = 2 if arg.size == "tiny" else 20
  c.model.name = "lib_tokenizer"
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.vocab_size = vocab
  c.data = default_data_config("pysrc")
  c.data.tokenizer = arg.tokenizer
  c.data.vocab_size = vocab
  c.data.seq_len = seq
  c.lib = ConfigDict(dict(vocab_size=arg.vocab or SIZES[arg.size][7], eval_bytes=eval_bytes,
                          ngram_orders="2,3"))
  return c
