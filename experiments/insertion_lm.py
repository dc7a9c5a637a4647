"""Insertion Language Models (Patel et al.) vs left-to-right and masked-diffusion baselines
on star-graph path finding.

  tokenlab repro insertion_lm
  variants: size=tiny|small|base, objective=ilm|ar|mdm, degree=3, path=5 (nodes on the
  path, start and goal included), nodes=20 (node ids drawn per graph), neighbours=true
  (each position also embeds its visible neighbour tokens: see InsertionLMConfig)

The data is the star-graph task of `config.task` (tokenlab.data.star_graph): fresh random
graphs for training, a disjoint stream of held-out graphs for evaluation, fed through the
trainer's custom-iterator hook (`iterator_fns(config)` of tokenlab.methods.insertion_lm).
Evaluation decodes every answer from its prompt (eval/path_exact). `size=base` is meant for
an accelerator.
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule
from tokenlab.data.star_graph import StarGraphTask

SIZES = {
    #        d_model layers heads batch steps  lr
    "tiny": (32, 1, 2, 8, 3, 3e-3),
    "small": (64, 2, 4, 64, 2000, 3e-3),
    "base": (384, 6, 6, 256, 20000, 5e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", objective="ilm", degree=3, path=5, nodes=20,
                  neighbours=True)
  d, layers, heads, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("objective", arg.objective, {"ilm": 0, "ar": 0, "mdm": 0})
  task = StarGraphTask(degree=arg.degree, path_len=arg.path, num_nodes=arg.nodes)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 8
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.01
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(degree=arg.degree, path_len=arg.path, num_nodes=arg.nodes,
                           data_seed=5))
  c.data.name = "method"   # the synthetic task of tokenlab/methods/<name>.py (iterator_fns)
  c.data.seq_len = task.seq_len
  c.model.name = "insertion_lm"
  c.model.objective = arg.objective
  c.model.vocab_size = task.vocab_size
  c.model.answer_len = task.path_len
  c.model.neighbour_embed = arg.neighbours
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  return c
