"""ZeTT (tokenlab/methods/zett.py): a hypernetwork that predicts a new tokenizer's embedding
rows for a frozen source LM, trained over tokenizers sampled per batch (issue 20).

  tokenlab train --config experiments/zett.py:stage=source --workdir runs/t0
  tokenlab train --config experiments/zett.py:stage=hyper,source=runs/t0 --workdir runs/hn
  tokenlab transfer --from runs/t0 --tokenizer bpe:1024,bpe:2048 \
      --init random,mean_subtokens,zett --aux hypernet=runs/hn --steps 0 --workdir runs/zt

variants: size=tiny (tests) | small (the 2-core CPU reproduction: the harness's source LM,
100 steps as the harness note advises, then the hypernetwork) | base (accelerators: d_model
512, 8 layers, bfloat16 + FSDP); stage=source (experiments/transfer.py's transformer_lm
with T0 = sentencepiece on English) | hyper (the hypernetwork: config.model.name = 'zett',
the source LM frozen, config.data.name = 'method': the source corpus under a sampled
tokenizer per batch, tokenlab/methods/zett.py:iterator_fns); source = the source run
(hyper's init_from); steps (0 = the size's budget of the stage). `transfer` holds the unseen
evaluation targets the reproduction uses.
"""

import os

from ml_collections import ConfigDict

from tokenlab.config import choose, load_config, parse_arg, set_schedule
from tokenlab.methods.zett import FREEZE

SIZES = {
    #   source steps, hyper (steps, batch, lr), (hn_hidden, hn_layers, hn_heads),
    #   (vocab_slots, min_vocab, substring pool), evaluation targets (never sampled)
    "tiny": (3, (3, 8, 1e-3), (32, 1, 2), (512, 300, 1500), "bpe:300,bpe:600"),
    "small": (100, (150, 16, 1e-3), (128, 1, 4), (1024, 512, 6000), "bpe:1024,bpe:2048"),
    "base": (1000, (2000, 64, 3e-4), (512, 3, 8), (4096, 2048, 40000), "bpe:1024,bpe:2048"),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", stage="source", source="", steps=0, aux_weight=0.5)
  src_steps, hyper, hn, vocab, targets = choose("size", arg.size, SIZES)
  choose("stage", arg.stage, {"source": 0, "hyper": 0})
  c = load_config(os.path.join(os.path.dirname(__file__), "transfer.py") + f":size={arg.size}")
  with c.unlocked():    # load_config returns a locked config
    c.transfer = ConfigDict(dict(targets=targets, baselines="random,mean_subtokens"))
    if arg.stage == "source":
      set_schedule(c, steps=arg.steps or src_steps, batch_size=c.train.batch_size,
                   lr=c.optimizer.lr, evals=1, checkpoints=1)
      return c
    steps, batch, lr = hyper
    source_data = c.data.to_dict()
    set_schedule(c, steps=arg.steps or steps, batch_size=batch, lr=lr, logs=10, evals=1,
                 checkpoints=1)
    c.checkpoint.async_save = False
    c.train.eval_batches = 2
    c.train.init_from = arg.source
    c.train.freeze = FREEZE            # the source LM stays bit-identical
    c.optimizer.weight_decay = 0.0
    c.task = ConfigDict(dict(source_data=source_data, max_len=8, pool_size=vocab[2],
                             min_vocab=vocab[1], temperature=1.0))
    c.data = ConfigDict(dict(name="method", seq_len=c.data.seq_len))
    model = c.model.to_dict()
    model.update(name="zett", hn_hidden=hn[0], hn_layers=hn[1], hn_heads=hn[2],
                 vocab_slots=vocab[0], aux_weight=arg.aux_weight)
    c.model = ConfigDict(model)
  return c
