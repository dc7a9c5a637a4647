"""ELM (arXiv 2410.16257): a class-conditional AR or masked (MLM) transformer over a frozen
binary autoencoder's codes, with vocabulary decomposition (tokenlab/methods/elm.py).

  # 1. the binary tokenizer (10 bits per 4x4 cell of 28x28 MNIST: a 7x7 grid)
  tokenlab train --config experiments/image_tokenizer.py:size=small,data=mnist,quantizer=binary \
      --config.model.num_bits=10 --workdir runs/bae
  # 2. the language model over its codes
  tokenlab train --config experiments/elm.py:objective=ar,sub_tokens=2,tokenizer=runs/bae \
      --workdir runs/elm_ar
  tokenlab sample --workdir runs/elm_ar          # class-conditional samples as a PNG
  tokenlab repro elm                             # the mini-reproduction (trains both)

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: bfloat16, FSDP);
objective=ar | mlm; sub_tokens=1 (one vocabulary of 2^bits) | 2 (two sub-tokens of bits/2);
bits=10; grid=7 (tokens per side); classes=10; data=mnist (the dataset the tokenizer was
trained on); tokenizer=WORKDIR of a binary image_tokenizer run (the data: its codes of the
dataset's train / validation splits, encoded once when the run starts).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)

SIZES = {
    #        d_model layers heads batch steps  lr
    "tiny": (16, 1, 2, 8, 3, 3e-3),
    "small": (64, 2, 4, 64, 600, 3e-3),
    "base": (512, 12, 8, 256, 50000, 4e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", objective="ar", sub_tokens=2, bits=10, grid=7,
                  classes=10, data="mnist", tokenizer="")
  d, layers, heads, batch, steps, lr = choose("size", arg.size, SIZES)
  choose("objective", arg.objective, {"ar": 0, "mlm": 0})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 0          # the whole validation split (500 MNIST images)
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.01
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.data.name = "method"            # codes of the frozen tokenizer (elm.iterator_fns)
  c.data.seq_len = arg.grid * arg.grid
  c.model.name = "elm"
  c.model.objective = arg.objective
  c.model.num_bits = arg.bits
  c.model.sub_tokens = arg.sub_tokens
  c.model.num_tokens = arg.grid * arg.grid
  c.model.num_classes = arg.classes
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.tokenizer_workdir = arg.tokenizer
  c.model.dataset = arg.data
  return c
