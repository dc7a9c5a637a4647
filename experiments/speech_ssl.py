"""Speech SSL units: a HuBERT-style encoder (tokenlab/methods/speech_ssl.py) trained by
masked prediction of log-mel cluster ids on the `speech` dataset, then k-means units over
one layer's features: the "semantic" speech tokens of issue 19.

  tokenlab train --config experiments/speech_ssl.py:size=cpu --workdir W
  python -m tokenlab.methods.speech_ssl --workdir W --units 50,100,200   # W/units/k*.npz
  # then: load_frozen_tokenizer(W, units=100).encode(batch) -> unit ids (B, t)

variants: size=tiny (tests: a 6-utterance corpus, 16 mel bins) | cpu (a few CPU minutes
on the default 400-utterance corpus, 80 mel bins) | base (accelerators: bfloat16, FSDP);
units=50 | 100 | 200 (the k that fit_units and load_frozen_tokenizer use by default: the
units' bitrate is 25 x log2(k) bits/s); hz=25 | 12.5 (frames per second).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config
from tokenlab.data.registry import SPEECH_TINY_OPTIONS

SIZES = {
    #       width res d_model layers heads unit_layer targets mel_bins batch steps  lr
    "tiny": (8, 0, 16, 1, 2, 1, 8, 16, 4, 3, 3e-3),
    "cpu": (32, 1, 96, 4, 4, 2, 64, 80, 16, 400, 1e-3),
    "base": (128, 2, 512, 12, 8, 6, 256, 80, 128, 100000, 3e-4),
}
UNITS = {50: 50, 100: 100, 200: 200}
STAGES = {25.0: (1, 2), 12.5: (1, 2, 2)}
# size=tiny reads SPEECH_TINY_OPTIONS (speech defaults otherwise: 400 + 100 utterances, 4 s).


def get_config(arg=None):
  arg = parse_arg(arg, size="cpu", units=100, hz=25.0)
  (width, res, d_model, layers, heads, unit_layer, targets, mel_bins, batch, steps,
   lr) = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "speech_ssl"
  c.model.mel_bins = mel_bins
  c.model.width = width
  c.model.res_blocks = res
  c.model.channel_mult = choose("hz", arg.hz, STAGES)
  c.model.d_model = d_model
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.unit_layer = unit_layer
  c.model.num_targets = targets
  c.model.num_units = choose("units", arg.units, UNITS)
  c.model.unmasked_weight = 0.0   # HuBERT's alpha = 1: the loss on masked frames only
  c.data = default_data_config("speech")
  c.data.mel_bins = mel_bins
  if arg.size == "tiny":
    c.data.options.update(SPEECH_TINY_OPTIONS)
    c.train.eval_batches = 1
    c.checkpoint.every_steps = steps   # one checkpoint and one eval, at the end
    c.train.eval_every = steps
  else:
    c.train.eval_batches = 0   # the whole validation split (100 utterances)
  return c
