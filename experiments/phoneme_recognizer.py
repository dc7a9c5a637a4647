"""CTC phoneme recogniser on the `speech` corpus's log-mels (tokenlab/methods/
phoneme_recognizer.py): the intelligibility metric (phoneme error rate) of the audio-token
benchmark (`tokenlab audio-report`) and of the TTS methods' generated speech.

  tokenlab train --config experiments/phoneme_recognizer.py:size=cpu --workdir runs/per
  tokenlab eval --workdir runs/per       # loss: CTC nats per phoneme on the validation split

variants: size=tiny (tests: the audio tokenizers' 12-utterance corpus, 16 mel bins) | cpu (a
few CPU minutes on the default 400 + 100 utterances, 80 bins; the benchmark's) | base
(accelerators: bfloat16, FSDP; point data.options at a larger corpus); mel_bins=N (default 16
tiny, 80 otherwise: must equal the tokenizers', since it reads their decoded mels).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config
from tokenlab.data.registry import SPEECH_TINY_OPTIONS

SIZES = {
    #        d_model layers heads mlp  batch steps  lr
    "tiny": (16, 1, 2, 32, 4, 3, 3e-3),
    "cpu": (96, 3, 4, 192, 16, 600, 2e-3),
    "base": (384, 8, 6, 1024, 128, 30000, 5e-4),
}
# size=tiny reads the audio tokenizers' tiny corpus (SPEECH_TINY_OPTIONS), so a tiny
# recogniser reads their tiny runs' mels (16 bins); cpu and base use the speech defaults
# (400 + 100 utterances, 80 bins), as the cpu tokenizers do.


def get_config(arg=None):
  arg = parse_arg(arg, size="cpu", mel_bins=0)
  d_model, layers, heads, mlp, batch, steps, lr = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "phoneme_recognizer"
  c.model.stack = 4
  # The longest `speech` utterance lasts 2.87 s (module docstring of tokenlab/data/speech.py);
  # batches pad to max_seconds = 4 s, and the padding would cost a third of every step.
  c.model.max_frames = 300 if arg.size != "base" else 0
  c.model.d_model = d_model
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mlp_dim = mlp
  c.data = default_data_config("speech")
  c.data.mel_bins = arg.mel_bins or (16 if arg.size == "tiny" else 80)
  if arg.size == "tiny":
    c.data.options.update(SPEECH_TINY_OPTIONS)
  c.train.eval_batches = 0 if arg.size != "base" else 20   # cpu: all 100 utterances
  return c
