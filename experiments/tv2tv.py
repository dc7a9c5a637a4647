"""TV2TV (arXiv 2512.05103): interleaved text and video chunks in one sequence, a
Mixture-of-Transformers, text by next-token cross-entropy and chunks by flow matching
(tokenlab/methods/tv2tv.py), on `moving_shapes` clips narrated from their labelled events.

  tokenlab train --config experiments/tv2tv.py:size=small --workdir runs/tv2tv
  tokenlab train --config experiments/tv2tv.py:size=small,text=0 --workdir runs/tv2tv_notext
  tokenlab repro tv2tv                 # the mini-reproduction (with vs without text, 3 seeds)

variants: size=tiny (tests and --quick: 24 px, 3 frames, one layer of width 16) | small (the
CPU mini-reproduction: 24 px, 5 frames, 2 events, 8 x 8 patches, width 32) | base
(accelerators: 64 px, 17 frames, 4 events, chunks of 2 frames, width 512, bfloat16, FSDP);
text=1 (the text-reasoning stream) | 0 (every slot BOV only: same layout and compute).
"""

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults
from tokenlab.config import set_schedule
from tokenlab.data import default_data_config

SIZES = {
    #        size frames events chunk patch d_model layers heads mlp head(w, depth) batch
    "tiny": (24, 3, 2, 1, 12, 16, 1, 2, 32, (16, 1), 4),
    "small": (24, 5, 2, 1, 8, 32, 2, 2, 64, (128, 1), 32),
    "base": (64, 17, 4, 2, 8, 512, 12, 8, 1536, (512, 3), 128),
}
SCHEDULES = {
    #        steps   lr    sample_steps
    "tiny": (3, 3e-3, 2),
    "small": (600, 3e-3, 8),
    "base": (100_000, 3e-4, 32),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", text=1)
  (size, frames, events, chunk, patch, d_model, layers, heads, mlp, (head_w, head_d),
   batch) = choose("size", arg.size, SIZES)
  steps, lr, sample_steps = choose("size", arg.size, SCHEDULES)
  text = choose("text", arg.text, {1: True, 0: False})
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=20, evals=1, checkpoints=1)
  c.optimizer.weight_decay = 0.0
  c.checkpoint.async_save = False
  c.train.eval_batches = 2
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "tv2tv"
  c.model.image_size = size
  c.model.num_frames = frames
  c.model.num_events = events
  c.model.frames_per_chunk = chunk
  c.model.patch_size = patch
  c.model.text = text
  c.model.d_model = d_model
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.mlp_dim = mlp
  c.model.head_width = head_w
  c.model.head_depth = head_d
  c.model.sample_steps = sample_steps
  c.data = default_data_config("moving_shapes")
  c.data.options.size = size
  c.data.options.num_frames = frames
  c.data.options.num_events = events
  return c
