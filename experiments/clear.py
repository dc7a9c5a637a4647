"""CLEAR (Liu et al. 2024, arXiv 2412.16112): a class-conditional flow DiT whose image tokens
attend within a circle of radius r, fine-tuned from its dense-attention self by distillation
(tokenlab/methods/clear.py).

Two stages, two trainings:

  tokenlab train --config experiments/clear.py:stage=teacher --workdir T
  tokenlab train --config experiments/clear.py:stage=student,radius=2 \\
      --config.train.init_from=T --workdir S
  tokenlab sample --workdir S        # PNG: validation images above samples of their labels

variants: size=tiny (tests) | small (the CPU mini-reproduction: 8 x 8 digits, one pixel per
token) | base (accelerators: 32 x 32 MNIST, patch 2 -> 16 x 16 tokens, bfloat16, FSDP);
stage=teacher (dense attention, from scratch) | student (circular local attention of
`radius`, from `init_from`); distill=1 (CLEAR's loss) | 0 (flow matching only);
finetune=attn (the paper: only q/k/v/out projections train) | all.
"""

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults
from tokenlab.config import set_schedule
from tokenlab.data import default_data_config

SIZES = {
    #        data    options      patch d_model layers heads batch
    "tiny": ("digits", {}, 1, 16, 1, 2, 8),
    "small": ("digits", {}, 1, 32, 3, 2, 32),
    "base": ("mnist", {"size": 32}, 2, 384, 12, 6, 256),
}
SCHEDULES = {
    #        teacher (steps, lr)  student (steps, lr)
    "tiny": ((4, 1e-3), (3, 1e-3)),
    "small": ((2000, 2e-3), (200, 1e-3)),
    "base": ((100_000, 3e-4), (10_000, 1e-4)),   # student: the paper's 10K iterations, lr 1e-4
}
# Every student parameter that is not in an attention module (and the frozen teacher).
FREEZE_ALL_BUT_ATTENTION = r"^teacher/|^dit/(?!block_\d+/attn/)"


def get_config(arg=None):
  arg = parse_arg(arg, size="small", stage="teacher", radius=2.0, distill=1, finetune="attn")
  data, options, patch, d_model, layers, heads, batch = choose("size", arg.size, SIZES)
  teacher, student = choose("size", arg.size, SCHEDULES)
  choose("stage", arg.stage, {"teacher": 0, "student": 0})
  choose("finetune", arg.finetune, {"attn": 0, "all": 0})
  steps, lr = teacher if arg.stage == "teacher" else student
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, evals=1, checkpoints=1)
  c.optimizer.weight_decay = 0.0
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "clear"
  c.model.num_classes = 10
  c.model.patch_size = patch
  c.model.d_model = d_model
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.sample_steps = 4 if arg.size == "tiny" else 20
  if arg.stage == "student":
    c.model.attention = "neighborhood"
    c.model.radius = float(arg.radius)
    c.model.distill = bool(arg.distill)
    if arg.finetune == "attn":
      c.train.freeze = FREEZE_ALL_BUT_ATTENTION
    elif arg.distill:
      c.train.freeze = r"^teacher/"
  c.data = default_data_config(data)
  for key, value in options.items():
    c.data.options[key] = value
  c.train.eval_batches = 4
  return c
