"""Needle threading (Roberts et al.): a transformer LM trained on key-value haystacks with
dense or windowed attention, evaluated by exact match over context length, needle depth and
hops (tokenlab.evals.needle).

  tokenlab repro needle_threading
  tokenlab train --config experiments/needle_threading.py:size=small,window=32 --workdir runs/n
  tokenlab needle --run runs/n
  variants: size=tiny|small|base, window=0 (dense) or W (windowed attention, left window W),
  key_len=1 (characters per key, 0-9a-zA-Z)

size=tiny: tests; size=small: the CPU reproduction (contexts up to 128 bytes);
size=base: meant for an accelerator (contexts up to 4096 bytes, 8 layers).
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule

SIZES = {
    #        d_model layers heads  seq  batch  steps   lr
    "tiny": (32, 2, 2, 64, 4, 3, 3e-3),
    "small": (64, 2, 2, 128, 16, 1000, 3e-3),
    "base": (512, 8, 8, 4096, 64, 20000, 5e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", window=0, key_len=1)
  d, layers, heads, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=1, checkpoints=1)
  c.train.eval_batches = 2
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.01
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.needle = ConfigDict(dict(tasks="single,threading,multi_threading", weights="0.4,0.4,0.2",
                             max_hops=3, threads=2, key_len=arg.key_len))
  c.data.name = "method"   # the haystack stream of tokenlab.methods.needle_threading
  c.data.tokenizer = "bytes"
  c.data.seq_len = seq
  c.model.name = "needle_threading"
  c.model.vocab_size = 256
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.window = (arg.window, 0) if arg.window else None
  return c
