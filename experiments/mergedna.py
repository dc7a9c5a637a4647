"""MergeDNA: learned DNA tokens by local token merging (MTR + latent MTR + AMTM losses).

  tokenlab train --config experiments/mergedna.py:size=tiny --workdir runs/mergedna
  tokenlab repro mergedna        # the mini-reproduction (size=repro arms, 3 seeds)
  variants: size=tiny|small|repro|base, tokenizer=learned|kmer (fixed k-mers at ~ the same
  compression), objective=mergedna|mlm (plain masked LM with uniformly masked bases),
  merge=row|window (row: the row's merge budget spent where adjacent tokens are most similar,
  so each window merges a data-dependent number of pairs; window: merge_r pairs in every
  window, the fixed budget of the MergeDNA reproduction; default row).

Rows are whole dna windows: seq_len = data.options.length - 1 (the pipeline's inputs), so
no merge straddles two windows.
"""

from tokenlab.config import (base_config, choose, parse_arg, set_accelerator_defaults,
                             set_schedule)
from tokenlab.data import default_data_config

SIZES = {
    #        d_model heads merge_layers r window kmer lat_enc lat_dec loc_dec length batch steps lr
    "tiny": (16, 2, 1, 2, 8, 4, 1, 1, 1, 64, 4, 20, 3e-3),
    "small": (64, 4, 3, 6, 16, 4, 2, 1, 1, 128, 16, 200, 2e-3),
    "repro": (32, 2, 3, 6, 16, 4, 1, 1, 1, 128, 16, 200, 3e-3),   # `tokenlab repro` arms (CPU)
    "base": (512, 8, 3, 6, 16, 4, 12, 2, 2, 1024, 256, 50000, 5e-4),   # accelerators
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", tokenizer="learned", objective="mergedna", merge="row")
  (d, heads, layers, r, window, kmer, lat_enc, lat_dec, loc_dec, length, batch, steps,
   lr) = choose("size", arg.size, SIZES)
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr)
  c.train.eval_batches = 10
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.model.name = "mergedna"
  c.model.vocab_size = 256
  c.model.d_model = d
  c.model.num_heads = heads
  c.model.window = window
  c.model.merge_layers = layers
  c.model.merge_r = r
  c.model.merge_scope = choose("merge", arg.merge, {"row": "row", "window": "window"})
  c.model.tokenizer = arg.tokenizer
  c.model.kmer = kmer
  c.model.latent_encoder_layers = lat_enc
  c.model.latent_decoder_layers = lat_dec
  c.model.local_decoder_layers = loc_dec
  c.model.objective = arg.objective
  c.data = default_data_config("dna")
  c.data.tokenizer = "bytes"
  c.data.options.length = length
  if arg.size == "tiny":
    c.data.options.num_motifs = 2
    c.data.options.motif_length = 8
    c.data.options.num_train = 64
    c.data.options.num_validation = 16
  c.data.seq_len = length - 1
  return c
