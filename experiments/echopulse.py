"""ECHOPulse (arXiv 2410.03143): an ECG-conditioned MaskGIT transformer over a frozen video
tokenizer's codes of the `pulse` dataset (tokenlab/methods/echopulse.py).

  # 1. the video tokenizer on pulse (16 frames of 16x16, one code per 8x8 quadrant and frame)
  tokenlab train --config experiments/video_tokenizer.py:dataset=pulse,size=cpu,causal=1,frames=16 \
      --config.model.size=16 --config.data.options.size=16 --config.model.patch_size=8 \
      --config.model.tubelet=1 --config.model.codebook_size=64 --workdir runs/pulse_tok
  # 2. the generator over its codes, conditioned on the per-frame ECG signal
  tokenlab train --config experiments/echopulse.py:tokenizer=runs/pulse_tok --workdir runs/ep
  tokenlab repro echopulse                       # the mini-reproduction (trains both)

variants: size=tiny (tests) | small (CPU reproduction) | base (accelerators: bfloat16, FSDP);
tokenizer=WORKDIR of a video_tokenizer run on pulse: its grid (t, h, w), codebook size and
frame count are read from that run's config (so they cannot disagree), and its pulse clips
(train / validation, encoded once when the run starts) are the data. Without a tokenizer the
grid, codes and frames come from `grid=T,H,W` (e.g. 16x2x2), `codes=64`, `frames=16` (a
config for tests and for `tokenlab plan`).
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)

SIZES = {
    #        d_model layers heads ECG-layers batch steps  lr   maskgit steps
    "tiny": (16, 1, 2, 0, 4, 3, 3e-3, 4),
    "small": (64, 2, 4, 1, 32, 1200, 2e-3, 8),
    "base": (512, 12, 8, 4, 256, 50000, 4e-4, 18),
}


def tokenizer_shape(workdir: str) -> tuple[tuple[int, int, int], int, int]:
  """((t, h, w), codebook size, frames per clip) of a trained video tokenizer run."""
  from tokenlab.registry import build_method
  from tokenlab.train.inference import load_config_from_workdir
  config = load_config_from_workdir(workdir)
  method = build_method(config.model)
  return tuple(method.grid), int(method.codebook_size), int(config.data.options.num_frames)


def get_config(arg=None):
  arg = parse_arg(arg, size="small", tokenizer="", grid="16x2x2", codes=64, frames=16)
  d, layers, heads, ecg_layers, batch, steps, lr, decode_steps = choose("size", arg.size, SIZES)
  if arg.tokenizer:
    grid, codes, frames = tokenizer_shape(arg.tokenizer)
  else:
    grid, codes, frames = tuple(int(g) for g in arg.grid.split("x")), arg.codes, arg.frames
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=2, checkpoints=1)
  c.train.eval_batches = 0          # the whole validation split
  c.checkpoint.async_save = False
  c.optimizer.weight_decay = 0.01
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.data.name = "method"            # the tokenizer's codes of pulse (echopulse.iterator_fns)
  c.data.seq_len = grid[0] * grid[1] * grid[2]
  c.model.name = "echopulse"
  c.model.grid = grid
  c.model.codebook_size = codes
  c.model.num_frames = frames
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.signal_layers = ecg_layers
  c.model.maskgit_steps = decode_steps
  c.model.tokenizer_workdir = arg.tokenizer
  return c
