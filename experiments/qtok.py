"""Qtok (Chelombitko et al.): tokenizer quality across languages; skewed vs balanced BPE.

  tokenlab repro qtok                              # the study below, size=repro, 3 seeds
  tokenlab tokenizer-report bpe:1024@ru bytes --corpus multilingual:en,ru,ja
  tokenlab train --config experiments/qtok.py:size=tiny --workdir runs/q   # then report it:
  tokenlab tokenizer-report runs/q

variants: size=tiny (tests) | repro (the 2-core CPU study) | large (an accelerator host: the
LM at `base` size; the study over all 39 languages with a 4096-token vocabulary, still CPU
work, minutes); lang (the LM's training language, default en); vocab.

`config.qtok` is the study `tokenlab repro qtok` runs (tokenlab/repro/qtok.py): BPE trained
on a skewed mix (`skew` of `budget_bytes` from `dominant`, the rest split evenly) and on a
balanced mix of the same bytes, measured on the held-out strings of `langs`
(`eval_docs` per language, 0 = all). The rest of the config trains tokenlab's transformer LM
(method `qtok`) on the multilingual monolingual text of `lang`, whose run directory
`tokenlab tokenizer-report` accepts as a tokenizer.
"""

from ml_collections import ConfigDict

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

LATIN = ("en", "de", "fr", "es")
NON_LATIN = ("ru", "el", "ar", "ja", "ko", "hi")   # Cyrillic, Greek, Arabic, Kana/Han, Hangul,
                                                   # Devanagari
SIZES = {
    #        d_model layers heads  seq  batch  steps   lr    vocab  budget  eval_docs
    "tiny": (32, 1, 2, 32, 8, 4, 3e-3, 300, 3000, 12),
    "repro": (128, 4, 4, 128, 16, 400, 2e-3, 1024, 36000, 0),
    "large": (512, 8, 8, 256, 64, 3000, 1e-3, 4096, 0, 0),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="repro", lang="en", vocab=0)
  d, layers, heads, seq, batch, steps, lr, vocab, budget, eval_docs = choose(
      "size", arg.size, SIZES)
  vocab = arg.vocab or vocab
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  c.checkpoint.async_save = False
  if arg.size == "large":
    set_accelerator_defaults(c)
  c.train.eval_batches = 10
  c.model.name = "qtok"
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.data = default_data_config("multilingual")
  c.data.options.lang = arg.lang
  c.data.options.kind = "monolingual"
  c.data.tokenizer = "bpe"
  c.data.vocab_size = vocab
  c.data.seq_len = seq
  c.model.vocab_size = vocab
  if arg.size == "tiny":
    langs = ("en", "de", "ru", "ja")
  elif arg.size == "repro":
    langs = LATIN + NON_LATIN
  else:
    from tokenlab.data import multilingual
    langs = multilingual.languages()
  # budget_bytes 0: the largest total whose English share the English train split can fill.
  c.qtok = ConfigDict(dict(langs=",".join(langs), dominant="en", skew=0.9, vocab_size=vocab,
                           budget_bytes=budget, eval_docs=eval_docs, split="validation"))
  return c
