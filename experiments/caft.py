"""Concept-aware fine-tuning, CAFT (Chen et al.): a transformer LM with auxiliary heads.

  tokenlab repro caft
  variants: size=tiny|small|base, stage=pretrain|heads|finetune, alpha=0.1 (0 = next-token
  fine-tuning), heads=4 (K), init_from=WORKDIR (start from that run's parameters)

The data is the synthetic concept world of `config.task` (tokenlab.methods.caft): general
text for `stage=pretrain|heads`, a fixed set of domain sequences with new multi-token concept
words for `stage=finetune`; it is fed through the trainer's custom-iterator hook
(`iterator_fns(config)`), as `tokenlab repro caft` does. `size=base` is meant for an
accelerator.
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule

SIZES = {
    #        d_model layers heads  seq  batch  lr    steps: pretrain, heads, finetune
    "tiny": (32, 1, 2, 16, 8, 3e-3, (3, 3, 3)),
    "small": (64, 2, 2, 64, 16, 3e-3, (600, 200, 250)),
    "base": (512, 8, 8, 512, 128, 6e-4, (20000, 2000, 2000)),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", stage="finetune", alpha=0.1, heads=4, init_from="")
  d, layers, heads, seq, batch, lr, steps = choose("size", arg.size, SIZES)
  stage_steps = choose("stage", arg.stage, dict(zip(("pretrain", "heads", "finetune"), steps)))
  c = base_config()
  set_schedule(c, steps=stage_steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 8
  c.checkpoint.async_save = False
  if arg.stage == "heads":
    c.optimizer.weight_decay = 0.0   # frozen base parameters must not decay either
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(num_words=200, num_concepts=24, concept_len=5, world_seed=7,
                           concept_rate=0.2, domain=arg.stage == "finetune",
                           num_train=128 if arg.size != "base" else 4096, data_seed=11))
  c.data.name = "method"   # the synthetic task of tokenlab/methods/<name>.py (iterator_fns)
  c.data.seq_len = seq
  c.model.name = "caft"
  c.model.vocab_size = 64
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.num_aux_heads = arg.heads
  c.model.alpha = arg.alpha if arg.stage != "pretrain" else 0.0
  c.model.gamma = 0.8
  c.model.schedule = "constant"
  c.model.stage = arg.stage
  c.train.init_from = arg.init_from
  return c
