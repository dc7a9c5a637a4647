"""Tool tokens re-initialised from the tool's name and description (arXiv 2506.14248):
a frozen transformer_lm learns only the rows of new tool tokens (tokenlab/methods/tool_tokens.py).

  tokenlab train --config experiments/tool_tokens.py:stage=pretrain --workdir runs/tt_lm
  tokenlab train --config experiments/tool_tokens.py:stage=tools,init_from=runs/tt_lm \\
      --workdir runs/tt_prior
  tokenlab repro tool_tokens

variants: size=tiny (tests) | small (2-core CPU, the reproduction) | base (accelerator);
stage=pretrain (the LM on the word corpus; every parameter trains) | tools (only the tool
rows train: config.train.freeze = tool_tokens.FREEZE; init_from = a pretrain run);
init=prior | random; reg=0.01 (weight of ||W - W_prior||^2); shots=4 (demonstrations per
tool); steps (0 = the size's budget of the stage). The data are the task's own
(config.data.name = 'method', served by tool_tokens.iterator_fns).
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule
from tokenlab.methods.tool_tokens import FREEZE, ToolTask

SIZES = {
    #        d_model layers heads  pretrain (batch, steps, lr)  tools (batch, steps, lr)
    "tiny": (32, 1, 2, (8, 3, 3e-3), (8, 3, 1e-2)),
    "small": (64, 2, 4, (32, 300, 3e-3), (16, 40, 1e-2)),
    "base": (512, 8, 8, (256, 5000, 1e-3), (64, 200, 3e-3)),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", stage="pretrain", init="prior", reg=0.01, shots=4,
                  steps=0, init_from="")
  d, layers, heads, pre, tools = choose("size", arg.size, SIZES)
  choose("stage", arg.stage, {"pretrain": 0, "tools": 0})
  batch, steps, lr = pre if arg.stage == "pretrain" else tools
  c = base_config()
  set_schedule(c, steps=arg.steps or steps, batch_size=batch, lr=lr, logs=10, evals=1,
               checkpoints=1)
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  task = ToolTask()
  c.task = ConfigDict(dict(shots=arg.shots, name_noise=task.name_noise))
  c.data.name = "method"
  c.data.seq_len = task.seq_len
  c.model.name = "tool_tokens"
  c.model.vocab_size = task.base_vocab
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.stage = arg.stage
  c.model.init = arg.init
  c.model.reg_weight = arg.reg
  if arg.stage == "tools":
    c.train.freeze = FREEZE            # the LM and the prior stay bit-identical
    c.train.init_from = arg.init_from
    # No weight decay: the regulariser is the only pull on the tool rows (decay would pull
    # the prior-initialised rows toward 0 and the random ones would not notice).
    c.optimizer.weight_decay = 0.0
  return c
