"""DualSpeechLM (arXiv 2508.08961): an understanding-driven speech tokenizer (USTokenizer) over
a frozen speech encoder, and one LM that reads USTokens and writes acoustic codec tokens
(tokenlab/methods/dualspeechlm.py), on the `speech` corpus.

  # the frozen pieces: the acoustic codec (2 RVQ levels, 25 Hz) and the CTC recogniser
  tokenlab train --config experiments/audio_codec.py:size=cpu,quantizer=rvq,bitrate=mid --workdir runs/codec
  tokenlab train --config experiments/phoneme_recognizer.py:size=cpu --workdir runs/per
  P="--config.model.codec_workdir=runs/codec --config.model.encoder_workdir=runs/per"
  # 1. the USTokenizer (text=0: the reconstruction-only VQ of the same size)
  tokenlab train --config experiments/dualspeechlm.py:size=cpu,stage=tokenizer $P --workdir runs/ust
  # 2. the LM: USTokens in, acoustic tokens out (input=acoustic: acoustic tokens only)
  tokenlab train --config experiments/dualspeechlm.py:size=cpu,stage=lm $P \
      --config.model.tokenizer_workdir=runs/ust --workdir runs/dual
  tokenlab sample --workdir runs/dual            # WAV files of generated speech
  tokenlab repro dualspeechlm                    # the mini-reproduction (trains all of it)

variants: size=tiny (tests: the tiny speech corpus's pieces, width 16, 3 steps) | cpu (the
CPU reproduction: d 64, 2 layers) | base (accelerators: d 512, 8 layers, bfloat16, FSDP);
stage=tokenizer | lm; text=1 | 0 (tokenizer: with or without the text-prediction loss);
input=ustokens | acoustic (lm: dual tokens, or acoustic tokens only).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)

SIZES = {
    #       d_model layers heads us_codebook latent width batch  lr
    "tiny": (16, 1, 2, 16, 8, 16, 4, 3e-3),
    "cpu": (64, 2, 4, 128, 32, 64, 32, 2e-3),
    "base": (512, 8, 8, 1024, 64, 512, 256, 3e-4),
}
STEPS = {  # (tokenizer, lm)
    "tiny": (3, 3),
    "cpu": (200, 500),
    "base": (20_000, 100_000),
}
# The LM's batch (its rows hold both tasks: ~170 positions per utterance); the tokenizer
# uses the SIZES batch. cpu: 16 (a step of 32 took 164 ms on the 2-core box, 16 took 83 ms).
LM_BATCH = {"tiny": 4, "cpu": 16, "base": 256}


def get_config(arg=None):
  arg = parse_arg(arg, size="cpu", stage="lm", text=1, input="ustokens")
  d, layers, heads, us_codebook, latent, width, batch, lr = choose("size", arg.size, SIZES)
  stage = choose("stage", arg.stage, {"tokenizer": "tokenizer", "lm": "lm"})
  steps = STEPS[arg.size][0 if stage == "tokenizer" else 1]
  c = base_config()
  if stage == "lm":
    batch = LM_BATCH[arg.size]
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 0            # the whole validation split
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  if arg.size == "tiny":
    c.train.eval_every = steps        # one eval, at the end
  c.data.name = "method"              # the corpus through the frozen pieces (iterator_fns)
  c.data.seq_len = 0
  c.model.name = "dualspeechlm"
  c.model.stage = stage
  c.model.codec_workdir = ""
  c.model.encoder_workdir = ""
  c.model.tokenizer_workdir = ""
  c.model.max_frames = 300
  # The acoustic levels' shape; read from the codec run when codec_workdir is set.
  c.model.codec_levels = 2
  c.model.codec_codebook = 16 if arg.size == "tiny" else 256
  c.model.us_codebook = us_codebook
  c.model.us_latent = latent
  c.model.us_width = width
  c.model.text_weight = 5.0 if arg.text else 0.0
  c.model.dead_after = 0 if arg.size == "tiny" else 20
  c.model.speech_input = choose("input", arg.input, {"ustokens": "ustokens",
                                                     "acoustic": "acoustic"})
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  return c
