"""Extensible tokenization (arXiv 2401.07793): a chunk-wise embedder, down-scaled by k, feeds a
frozen LM the far context it cannot fit (tokenlab/methods/extensible_tokenization.py).

  tokenlab train --config experiments/extensible_tokenization.py:stage=lm --workdir runs/et_lm
  tokenlab train --workdir runs/et_embedder \\
      --config experiments/extensible_tokenization.py:stage=embedder,init_from=runs/et_lm
  tokenlab repro extensible_tokenization

variants: size=tiny (tests) | small (2-core CPU, the reproduction) | base (accelerator);
stage=lm (the LM on rows that fit its window, every parameter trains) | embedder (rows with
a far part beyond the window; only the embedder trains: config.train.freeze = '^lm/';
init_from = an lm run); steps (0 = the size's budget).
The data are key-value facts (tokenlab/data/kv_facts.py) served by the method's
iterator_fns (config.data.name = 'method').
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule
from tokenlab.data.kv_facts import KVFactsTask

SIZES = {
    #  d_model layers heads emb_layers keys values filler  far (len, facts) for (lm, embedder)
    #  near facts, queries, chunk   lm (batch, steps, lr)  embedder (batch, steps, lr)
    "tiny": (32, 1, 2, 1, 8, 4, 4, ((4, 1), (8, 2)), 1, 2, 4, (4, 2, 3e-3), (4, 2, 3e-3)),
    "small": (64, 2, 4, 2, 16, 8, 16, ((16, 4), (32, 8)), 2, 7, 16, (32, 500, 3e-3),
              (32, 600, 3e-3)),
    "base": (512, 8, 8, 4, 1024, 64, 256, ((1024, 64), (4096, 256)), 16, 64, 128,
             (64, 20000, 5e-4), (64, 10000, 5e-4)),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", stage="lm", steps=0, init_from="")
  (d, layers, heads, emb_layers, keys, values, filler, far, near, queries, chunk, lm,
   emb) = choose("size", arg.size, SIZES)
  choose("stage", arg.stage, {"lm": 0, "embedder": 0})
  batch, steps, lr = lm if arg.stage == "lm" else emb
  far_len, far_facts = far[0] if arg.stage == "lm" else far[1]
  task = KVFactsTask(num_keys=keys, num_values=values, num_filler=filler, far_len=far_len,
                     far_facts=far_facts, near_facts=near, queries=queries)
  c = base_config()
  set_schedule(c, steps=arg.steps or steps, batch_size=batch, lr=lr, logs=10, evals=1,
               checkpoints=1)
  c.train.eval_batches = 4
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(num_keys=keys, num_values=values, num_filler=filler,
                           far_len=far_len, far_facts=far_facts, near_facts=near,
                           queries=queries, far_repeat=task.far_repeat, data_seed=7))
  c.data.name = "method"
  # The LM's window: a whole lm-stage row less one (inputs/targets shifted by one).
  c.data.seq_len = (far_len + task.near_len if arg.stage == "lm" else task.near_len) - 1
  c.model.name = "extensible_tokenization"
  c.model.stage = arg.stage
  c.model.vocab_size = task.vocab_size
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.embedder_layers = emb_layers
  c.model.chunk_len = chunk
  c.model.scales = (2, 4, 8) if chunk % 8 == 0 else (2,)   # tiny: one k (tests)
  if arg.stage == "embedder":
    c.train.freeze = "^lm/"       # the LM stays bit-identical: only the embedder learns
    c.train.init_from = arg.init_from
  return c
