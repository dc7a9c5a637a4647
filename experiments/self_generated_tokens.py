"""Self-generated tokens (Cen et al.): teacher forcing vs batch-scheduled sampling (BASH) vs
reference-answer-based correction (RAC) on multi-digit addition.

  tokenlab repro self_generated_tokens
  variants: size=tiny|small|base, mode=teacher_forcing|bash|rac, mix=0.5 (mixing probability
  at the end of training), schedule=linear|constant|sigmoid, digits=8, train=1000 (fixed
  training problems), reverse=true (digits least-significant first)

The data is the addition task of `config.task` (tokenlab.data.arithmetic, served by
tokenlab.methods.self_generated_tokens.iterator_fns through the trainer's custom-iterator
hook); eval reports free-running greedy exact match on held-out problems (`exact_match`) and
on hard ones (`exact_match_hard`). `size=base` is meant for an accelerator.
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule
from tokenlab.data.arithmetic import VOCAB_SIZE, AdditionTask

SIZES = {
    #        d_model layers heads batch  steps   lr
    "tiny": (32, 1, 2, 8, 3, 3e-3),
    "small": (64, 2, 4, 64, 600, 2e-3),
    "base": (512, 8, 8, 512, 20000, 6e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", mode="teacher_forcing", mix=0.5, schedule="linear",
                  digits=8, train=1000, reverse=True)
  d, layers, heads, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("mode", arg.mode, {"teacher_forcing": 0, "bash": 0, "rac": 0})
  digits = 3 if arg.size == "tiny" else arg.digits
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 8
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(num_digits=digits, reverse=arg.reverse,
                           num_train=arg.train if arg.size != "base" else 200000,
                           data_seed=5, hard_fraction=0.5, carry_bias=0.7))
  c.data.name = "method"   # the synthetic task of tokenlab/methods/<name>.py (iterator_fns)
  c.data.seq_len = AdditionTask(digits).seq_len - 1
  c.model.name = "self_generated_tokens"
  c.model.vocab_size = VOCAB_SIZE
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mode = arg.mode
  c.model.mix_max = arg.mix
  c.model.schedule = arg.schedule
  c.model.gen_temperature = 1.0
  c.model.prompt_len = AdditionTask(digits).prompt_len   # fixed width: decoding starts there
  return c
