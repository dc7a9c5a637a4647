"""TokenFormer (Wang et al.): a byte-level LM whose projections are Pattention layers.

  tokenlab train --config experiments/tokenformer.py:size=tiny --workdir runs/tf
  tokenlab grow runs/tf --workdir runs/tf_x4 --factor 4 --steps 500   # progressive scaling
  tokenlab repro tokenformer
  variants: size=tiny|small|base, tokens=N (parameter tokens: N for q/k/v and the output
  projection, 4N for the feed-forward layer; 0 = the size's default), data=pysrc|markov|dna

`size=base` has the layout of the reference's 12-layer d=768 configs (576 / 2304 tokens;
85M parameters here with a 256-byte vocabulary) and is meant for an accelerator.
Parameter-token counts are config keys: config.model.qkv_tokens, proj_tokens, ffn_tokens
(and norm_tokens, set by `tokenlab grow`).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model layers heads tokens  seq  batch  steps  lr
    "tiny": (32, 1, 2, 8, 32, 4, 4, 3e-3),
    "small": (64, 2, 4, 64, 128, 16, 800, 3e-3),
    "base": (768, 12, 12, 576, 1024, 256, 20000, 6e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", tokens=0, data="pysrc")
  d, layers, heads, tokens, seq, batch, steps, lr = choose("size", arg.size, SIZES)
  tokens = arg.tokens or tokens
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, evals=5, checkpoints=1)
  if arg.size == "base":
    set_accelerator_defaults(c)
    # Theta(A) keeps (batch, length, n) scores per Pattention: `tokenlab plan --devices 8`
    # estimates 88.7 GiB per device at 256 x 1024 tokens at once, 22.3 GiB in 4 micro-batches.
    c.train.grad_accum_steps = 4
  else:
    c.train.eval_batches = 8
    c.checkpoint.async_save = False
  c.model.name = "tokenformer"
  c.model.vocab_size = 256
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.qkv_tokens = tokens
  c.model.proj_tokens = tokens
  c.model.ffn_tokens = 4 * tokens
  c.model.norm_tokens = ()
  c.model.grow_init = "zero_keys"
  c.model.scan_layers = arg.size == "base"
  c.data = default_data_config(arg.data)
  c.data.tokenizer = "bytes"
  c.data.seq_len = seq
  return c
