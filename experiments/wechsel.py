"""WECHSEL (tokenlab/methods/wechsel.py): the English source LM and the transfer settings.

  tokenlab train --config experiments/wechsel.py:size=small --workdir runs/wechsel/t0
  tokenlab transfer --from runs/wechsel/t0 --tokenizer sentencepiece:1024@de \
      --init wechsel,mean_subtokens,random --steps 100 --mode full --workdir runs/wechsel/tr
  tokenlab repro wechsel          # the mini-reproduction (tokenlab/repro/wechsel.py)

The source LM is experiments/transfer.py's (transformer_lm on the `multilingual` English
corpus with a SentencePiece T0) with fewer steps: the harness measured the small run
overfitting its 43k-character corpus by 400 steps (eval 2.40 bits/byte at step 100, 2.71 at
400), so small trains 100. `config.transfer` holds what the transfer uses: the target
tokenizer, the adaptation steps k, and WECHSEL's settings (neighbours k = 10 and temperature
0.1 as in the paper; word-vector dimension and co-occurrence window of the PPMI/SVD vectors).

variants: size=tiny (tests: 4-step source, SP-512 targets) | small (2-core CPU reproduction)
| base (accelerators: d_model 512, 8 layers, 3000 steps); lang (target language, default de).
"""

import os

from ml_collections import ConfigDict

from tokenlab.config import choose, load_config, parse_arg, set_schedule

SIZES = {
    #        source steps  target vocab  adapt steps  word dim
    "tiny": (4, 512, 2, 16),
    "small": (100, 1024, 100, 64),
    "base": (3000, 1024, 1000, 100),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", lang="de")
  steps, vocab, adapt_steps, word_dim = choose("size", arg.size, SIZES)
  # The harness's source-LM experiment (its file next to this one), with fewer steps.
  c = load_config(os.path.join(os.path.dirname(__file__), "transfer.py") + f":size={arg.size}")
  set_schedule(c, steps=steps, batch_size=c.train.batch_size, lr=c.optimizer.lr)
  with c.unlocked():   # load_config hands the loaded experiment back locked
    c.transfer = ConfigDict(dict(
        target=f"sentencepiece:{vocab}@{arg.lang}",
        adapt_steps=adapt_steps,
        neighbors=10,          # the paper's k
        temperature=0.1,       # the paper's tau
        word_dim=word_dim,
        window=4,
    ))
  return c
