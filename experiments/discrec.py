"""DiscRec (Liu et al., arXiv 2506.15576): generative recommendation over semantic IDs with
item-level positions, a within-item attention branch and a gate, vs plain TIGER.

  tokenlab repro discrec
  variants: size=tiny|small|base, collab=1|0 (0 = plain TIGER), num_items=256, num_users=2048

The data is the synthetic item graph of `config.task` (tokenlab/data/item_graph.py: latent
communities, successor transitions the item features do not reveal), semantic IDs by
residual k-means (`levels` codes of `codes` values + a dedup code); it is fed through the
trainer's custom-iterator hook (`iterator_fns(config)`), so there is no tfds source.
`size=base` is meant for an accelerator (a larger catalogue and model).
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule

SIZES = {
    #        d_model layers heads batch  steps   lr    items  users  history
    "tiny": (32, 1, 2, 8, 3, 3e-3, 64, 64, 4),
    "small": (64, 2, 4, 64, 800, 3e-3, 256, 2048, 8),
    "base": (512, 8, 8, 512, 50000, 6e-4, 16384, 100000, 20),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", collab=1, num_items=0, num_users=0)
  d, layers, heads, batch, steps, lr, items, users, history = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 4
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  items = arg.num_items or items
  codes = {"tiny": 4, "small": 8, "base": 32}[arg.size]
  dedup = {"tiny": 8, "small": 16, "base": 64}[arg.size]
  c.task = ConfigDict(dict(num_items=items, num_communities=max(items // 32, 2),
                           num_categories=max(items // 16, 4), feature_dim=16,
                           feature_noise=0.5, successors=3, p_follow=0.6, history=history,
                           num_users=arg.num_users or users, seed=0, levels=3, codes=codes,
                           dedup=dedup))
  c.data.name = "method"   # the synthetic task of tokenlab/methods/discrec.py (iterator_fns)
  c.data.seq_len = history * 4 - 1
  c.model.name = "discrec"
  c.model.vocab_size = 3 * codes + dedup
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.codes_per_item = 4
  c.model.collaborative = bool(arg.collab)
  return c
