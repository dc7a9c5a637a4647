"""Audio codec: a SoundStream / EnCodec-style mel codec (tokenlab/methods/audio_codec.py) on
the `speech` dataset's log-mel frames; its RVQ or FSQ codes are the acoustic tokens of the
speech methods (issue 19).

  tokenlab train --config experiments/audio_codec.py:size=cpu,quantizer=rvq,bitrate=high \
      --workdir W
  tokenlab eval --workdir W          # mel_l1 (log-mel units), usage, perplexity, bits/s

variants: size=tiny (tests: a 6-utterance corpus, 16 mel bins) | cpu (a few CPU minutes on
the default 400-utterance corpus, 80 mel bins) | base (accelerators: bfloat16, FSDP);
quantizer=rvq | fsq; bitrate=low | mid | high (rvq: 1 / 2 / 4 levels of 256 codes (tiny:
16); fsq: levels (5,5,5) / (8,5,5,5) / (8,8,8,5,5,5)); hz=25 | 12.5 (tokens per second:
2 or 3 stride-2 stages on the 100 Hz mel). Another experiment loads a trained codec frozen
with `tokenlab.train.inference.load_frozen_tokenizer(workdir)`.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config
from tokenlab.data.registry import SPEECH_TINY_OPTIONS

SIZES = {
    #       width res latent codebook mel_bins batch steps   lr
    "tiny": (8, 0, 8, 16, 16, 4, 3, 3e-3),
    "cpu": (32, 1, 32, 256, 80, 16, 600, 2e-3),
    "base": (256, 2, 128, 1024, 80, 128, 50000, 3e-4),
}
RVQ_LEVELS = {"low": 1, "mid": 2, "high": 4}
FSQ_LEVELS = {"low": (5, 5, 5), "mid": (8, 5, 5, 5), "high": (8, 8, 8, 5, 5, 5)}
STAGES = {25.0: (1, 2), 12.5: (1, 2, 2)}
# size=tiny reads SPEECH_TINY_OPTIONS (speech defaults otherwise: 400 + 100 utterances, 4 s).


def get_config(arg=None):
  arg = parse_arg(arg, size="cpu", quantizer="rvq", bitrate="high", hz=25.0)
  width, res, latent, codebook, mel_bins, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "audio_codec"
  c.model.mel_bins = mel_bins
  c.model.width = width
  c.model.res_blocks = res
  c.model.channel_mult = choose("hz", arg.hz, STAGES)
  c.model.quantizer = choose("quantizer", arg.quantizer, {"rvq": "rvq", "fsq": "fsq"})
  c.model.latent_dim = latent
  c.model.codebook_size = codebook
  c.model.rvq_levels = choose("bitrate", arg.bitrate, RVQ_LEVELS)
  c.model.fsq_levels = FSQ_LEVELS[arg.bitrate]
  # An RVQ code unused for this many EMA updates restarts from an encoder output.
  c.model.dead_after = 0 if arg.size == "tiny" else 20
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
