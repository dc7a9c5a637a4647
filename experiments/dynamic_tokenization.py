"""Dynamic tokenization (tokenlab/methods/dynamic_tokenization.py): batch-level BPE merges
within words on a frozen LM, the new tokens embedded by the ZeTT hypernetwork (issue 20).

The method trains nothing of its own (it retrofits a trained model); its two trained inputs
are ZeTT's stages, which this file configures:

  tokenlab train --config experiments/dynamic_tokenization.py:stage=source --workdir runs/t0
  tokenlab train --config experiments/dynamic_tokenization.py:stage=hyper,source=runs/t0 \
      --workdir runs/hn
  tokenlab repro dynamic_tokenization      # both stages per seed, then the merge sweep

variants: size=tiny (tests) | small (the 2-core CPU reproduction: the harness's source LM at
100 steps, an 80-step hypernetwork) | base (accelerators: experiments/zett.py's base stages,
larger merge batches); stage=source | hyper (experiments/zett.py's stages; steps=0 takes the
size's budget). `config.dynamic` holds the evaluation: merges per batch (the sweep; 0 = T0),
documents per merge batch, new-token slots of the model, model batch rows, initialisers.
"""

import os

from ml_collections import ConfigDict

from tokenlab.config import choose, load_config, parse_arg

SIZES = {
    #   hyper steps, merges per batch (sweep), docs per merge batch, new slots, eval rows
    "tiny": (3, (0, 4, 16), 8, 64, 4),
    "small": (80, (0, 8, 32, 64, 256), 32, 256, 4),
    "base": (0, (0, 32, 128, 512, 2048), 128, 2048, 16),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", stage="source", source="", steps=0)
  hyper_steps, merges, batch_docs, slots, rows = choose("size", arg.size, SIZES)
  choose("stage", arg.stage, {"source": 0, "hyper": 0})
  steps = arg.steps or (hyper_steps if arg.stage == "hyper" else 0)
  c = load_config(os.path.join(os.path.dirname(__file__), "zett.py")
                  + f":size={arg.size},stage={arg.stage},source={arg.source},steps={steps}")
  with c.unlocked():    # load_config returns a locked config
    c.dynamic = ConfigDict(dict(merges=",".join(map(str, merges)), batch_docs=batch_docs,
                                new_slots=slots, batch_size=rows,
                                inits="random,mean_subtokens,zett"))
  return c
