"""Fourier head (Gillman et al.): a transformer over bin tokens, Fourier vs linear head.

  tokenlab repro fourier_head
  variants: size=tiny|small|base, head=fourier|linear, freqs=8 (N), gamma=1e-6, bins=64,
  train=128 (number of fixed training sequences)

The data is the synthetic bin Markov chain of `config.task` (tokenlab.methods.fourier_head:
input-dependent, smooth, bimodal next-bin laws known exactly); it is fed through the
trainer's custom-iterator hook (`iterator_fns(config)`), as `tokenlab repro` does, so there
is no tfds source for `tokenlab train`. `size=base` is meant for an accelerator.
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr
    "tiny": (32, 1, 2, 16, 8, 4, 3e-3),
    "small": (64, 2, 2, 32, 32, 500, 3e-3),
    "base": (512, 8, 8, 256, 256, 20000, 6e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", head="fourier", freqs=8, gamma=1e-6, bins=64, train=128)
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("head", arg.head, {"fourier": 0, "linear": 0})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 8
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(num_bins=arg.bins, seq_len=seq, sigma=0.1, data_seed=1234,
                           num_train=arg.train if arg.size != "base" else 100000))
  c.data.name = "method"   # the synthetic task of tokenlab/methods/<name>.py (iterator_fns)
  c.data.seq_len = seq
  c.model.name = "fourier_head"
  c.model.vocab_size = arg.bins
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.head = arg.head
  c.model.num_frequencies = arg.freqs
  c.model.reg_gamma = arg.gamma
  return c
