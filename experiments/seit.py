"""SeiT / SeiT++ (tokenlab/methods/seit.py): a ViT trained on stored tokens of a frozen VQ
tokenizer, against the same ViT on pixels; masked token modeling, ColorAdapt, TokenAdapt.

  tokenlab train --config experiments/image_tokenizer.py:size=small,data=digits,arch=vit \\
      --config.model.patch_size=2 --config.model.codebook_size=32 --workdir runs/tok
  tokenlab train --config experiments/seit.py:tokenizer=runs/tok --workdir runs/seit_tokens
  tokenlab train --config experiments/seit.py:input=pixels --workdir runs/seit_pixels
  tokenlab train --config experiments/seit.py:tokenizer=runs/tok,objective=mtm --workdir runs/mtm
  tokenlab train --config experiments/seit.py:tokenizer=runs/tok,labels=0.1 \\
      --config.train.init_from=runs/mtm --workdir runs/mtm_ft
  tokenlab repro seit          # all arms, 3 seeds, under the reproduction protocol

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: bfloat16, FSDP);
input=tokens|pixels; objective=classify|mtm|tokenadapt; augment=none|coloradapt|tokenadapt;
labels=1.0 (fraction of labeled train images, stratified); data=digits|mnist;
tokenizer=WORKDIR (a trained image_tokenizer run; '' = a random fixed codebook, tests only);
adapter=WORKDIR (an objective=tokenadapt run, for augment=tokenadapt).
The data is the dataset encoded once by the tokenizer and stored as codes
(`config.data.name = 'method'`: the method's `iterator_fns`).
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule

SIZES = {
    #        d_model layers heads batch steps  lr
    "tiny": (32, 1, 2, 16, 4, 3e-3),
    "small": (64, 2, 4, 64, 500, 1e-3),
    "base": (384, 12, 6, 256, 50000, 5e-4),
}
# distinct pixel values of the stored images (pixel bits per value = log2 of this)
PIXEL_LEVELS = {"digits": 17, "mnist": 256}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", input="tokens", objective="classify", augment="none",
                  labels=1.0, data="digits", tokenizer="", adapter="")
  d, layers, heads, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split, exactly (masked padding)
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.05
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(dataset=arg.data, options={}, label_fraction=float(arg.labels),
                           label_seed=0))
  c.data.name = "method"              # stored tokens from tokenlab/methods/seit.py
  c.model.name = "seit"
  c.model.input = arg.input
  c.model.objective = arg.objective
  c.model.augment = arg.augment
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.patch_size = 2 if arg.data == "digits" else 4
  c.model.pixel_levels = choose("data", arg.data, PIXEL_LEVELS)
  c.model.tokenizer_workdir = arg.tokenizer
  c.model.adapter_workdir = arg.adapter
  return c
