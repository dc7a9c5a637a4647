"""TokenAdapt (tokenlab/methods/tokenadapt.py) on the tokenizer-transfer harness (issue 20).

The trained part is the source LM: experiments/transfer.py (transformer_lm on the English
`multilingual` corpus with T0 = sentencepiece), here with its step budget; the `transfer`
section says what the harness then does with it (`tokenlab/repro/tokenadapt.py` reads it):

  tokenlab train --config experiments/tokenadapt.py:size=small --workdir runs/t0
  tokenlab transfer --from runs/t0 --tokenizer bpe:1024,bpe:2048 \
      --init random,mean_subtokens,tokenadapt --steps 30 --mode embeddings --workdir runs/ta

variants: size=tiny (tests: 3 source steps, small targets, 2 adaptation steps) | small (the
2-core CPU reproduction: 100 source steps, the harness's note: the 400-step source overfits
its 43k-character corpus) | base (accelerators: d_model 512, 8 layers, bfloat16, FSDP);
global_weight, temperature, top_k: TokenAdapt's knobs (the authors' defaults 0.3, 0.3, 10).
"""

import os

from ml_collections import ConfigDict

from tokenlab.config import choose, load_config, parse_arg, set_schedule

SIZES = {
    #        source steps  targets (English retokenisation, supertokens)   k adaptation steps
    "tiny": (3, "bpe:300,bpe:600", 2),
    "small": (100, "bpe:1024,bpe:2048", 30),
    "base": (1000, "bpe:1024,bpe:2048", 200),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", global_weight=0.3, temperature=0.3, top_k=10)
  steps, targets, k = choose("size", arg.size, SIZES)
  c = load_config(os.path.join(os.path.dirname(__file__), "transfer.py") + f":size={arg.size}")
  with c.unlocked():    # load_config returns a locked config
    # One evaluation and one checkpoint, at the end: the harness evaluates the swapped runs.
    set_schedule(c, steps=steps, batch_size=c.train.batch_size, lr=c.optimizer.lr, evals=1,
                 checkpoints=1)
    c.transfer = ConfigDict(dict(
        init="tokenadapt", baselines="random,mean_subtokens", targets=targets, steps=k,
        mode="embeddings", global_weight=arg.global_weight, temperature=arg.temperature,
        top_k=arg.top_k, similarity_threshold=0.0))
  return c
