"""FireRedTTS-2's dual transformer (tokenlab/methods/firered_tts2.py): text (phonemes) to RVQ
codec tokens on the `speech` corpus, and the flat delay-pattern model it is compared with.

  tokenlab train --config experiments/audio_codec.py:size=cpu,bitrate=high,hz=12.5 --workdir C
  tokenlab train --config experiments/firered_tts2.py:size=cpu,arch=dual,codec=C --workdir W
  tokenlab sample --workdir W --num 4          # WAV files of generated speech

variants: size=tiny (tests: the tiny speech corpus, 16 mel bins, a tiny model) | cpu (the
reproduction's arms: d 64, 2 layers; 80 mel bins) | base (accelerators:
d 512, 12 layers, bfloat16, FSDP; point data.options at a larger corpus); arch=dual | flat;
codec=WORKDIR (a trained audio_codec rvq run whose mel bins and corpus match the size's).
The reproduction (tokenlab/repro/firered_tts2.py) feeds codes it encoded once instead of
the mel pipeline, so the codec runs once per utterance, not once per step.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config
from tokenlab.data.registry import SPEECH_TINY_OPTIONS

SIZES = {
    #      d  layers heads mlp  depth: d layers heads mlp  frames batch steps  lr
    "tiny": (16, 1, 2, 32, 8, 1, 2, 16, 16, 4, 3, 3e-3),
    "cpu": (64, 2, 4, 192, 32, 1, 2, 96, 40, 16, 2000, 2e-3),
    "base": (512, 12, 8, 2048, 256, 4, 4, 1024, 40, 128, 50000, 3e-4),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="cpu", arch="dual", codec="")
  (d, layers, heads, mlp, dd, dlayers, dheads, dmlp, frames, batch, steps,
   lr) = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "firered_tts2"
  c.model.arch = choose("arch", arg.arch, {"dual": "dual", "flat": "flat"})
  c.model.codec_workdir = arg.codec
  c.model.max_frames = frames
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mlp_dim = mlp
  c.model.depth_d_model = dd
  c.model.depth_layers = dlayers
  c.model.depth_heads = dheads
  c.model.depth_mlp_dim = dmlp
  c.model.depth_fraction = 0.125
  c.data = default_data_config("speech")
  c.data.mel_bins = 16 if arg.size == "tiny" else 80    # the codec's (audio_codec sizes)
  if arg.size == "tiny":
    c.data.options.update(SPEECH_TINY_OPTIONS)
    c.train.eval_batches = 1
    c.checkpoint.every_steps = steps
    c.train.eval_every = steps
  else:
    c.train.eval_batches = 0
  return c
