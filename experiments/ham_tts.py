"""HAM-TTS (arXiv 2403.05989; tokenlab/methods/ham_tts.py): latent SSL units predicted from the
text and fed with it to a codec-token LM. Two stages over frozen pieces (an audio_codec RVQ run
and a speech_ssl run with fitted units, same corpus and frame rate):

  # stage 1: phonemes -> the 25 Hz unit stream
  tokenlab train --config experiments/ham_tts.py:stage=units,codec=C,ssl=S --workdir runs/u
  # stage 2: phonemes + frame-aligned units -> codec codes (condition=text: without units)
  tokenlab train --config experiments/ham_tts.py:stage=tts,codec=C,ssl=S,units_lm=runs/u \
      --workdir runs/tts
  tokenlab sample --workdir runs/tts        # WAV files: units from stage 1, then codes
  tokenlab repro ham_tts                    # with vs without the units, 3 seeds

variants: size=tiny (tests: the tiny speech corpus's pieces, 16 mel bins) | cpu (the CPU
reproduction: the default 400-utterance corpus, 80 mel bins) | base (accelerators: bfloat16,
FSDP); stage=units | tts; condition=units | text; units=k (the units fitted in the ssl run);
levels=K and codebook=N (the codec's RVQ levels and entries: bitrate=mid is 2 x 256, tiny 2 x
16); codec=, ssl=, units_lm= the workdirs of the pieces (data comes from the codec run's
corpus: config.data.name='method').
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)

SIZES = {
    #        d_model layers heads batch steps  lr   max_frames units codebook
    "tiny": (16, 1, 2, 4, 3, 3e-3, 64, 8, 16),
    "cpu": (64, 3, 4, 16, 300, 2e-3, 76, 50, 256),
    "base": (512, 8, 8, 128, 50000, 4e-4, 76, 50, 256),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="cpu", stage="tts", condition="units", units=0, levels=2,
                  codebook=0, codec="", ssl="", units_lm="")
  d, layers, heads, batch, steps, lr, max_frames, units, codebook = choose("size", arg.size,
                                                                            SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=1, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.data.name = "method"              # the codec's corpus encoded once (iterator_fns)
  c.model.name = "ham_tts"
  c.model.stage = choose("stage", arg.stage, {"units": "units", "tts": "tts"})
  c.model.condition = choose("condition", arg.condition, {"units": "units", "text": "text"})
  c.model.num_units = int(arg.units) or units
  c.model.codebook_size = int(arg.codebook) or codebook
  c.model.levels = int(arg.levels)
  c.model.max_text = 32               # the corpus's longest utterance has 25 phonemes
  c.model.max_frames = max_frames     # 25 Hz frames incl. END (tiny corpus: 2.5 s)
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.temperature = 0.8
  c.model.codec_workdir = arg.codec
  c.model.ssl_workdir = arg.ssl
  c.model.units_workdir = arg.units_lm
  return c
