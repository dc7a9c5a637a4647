"""Text2Token (tokenlab/methods/text2token.py): text embeddings trained to predict token
target distributions, on the synthetic many-topic corpus (tokenlab/data/topic_corpus.py).

  tokenlab train --config experiments/text2token.py --workdir runs/t2t              # data-driven
  tokenlab train --config experiments/text2token.py:objective=contrastive --workdir runs/cl
  tokenlab train --config experiments/text2token.py:objective=lm --workdir runs/t2t_lm
  tokenlab repro text2token   # kNN topic accuracy: data / model targets vs InfoNCE, 3 seeds

variants: size=tiny (tests) | small (the CPU reproduction) | base (accelerators: width 512,
6 blocks, 200 topics, 400k texts, bfloat16, FSDP); objective=data | model | contrastive | lm;
targets=data or the path of an .npz of model-derived targets (top `task.target_top_k` tokens
per text, written by the reproduction from a trained `objective=lm` run).

The corpus is fed through the trainer's in-code data hook (`iterator_fns(config)`), so there
is no tfds source; `config.task` holds the corpus parameters.
"""

from ml_collections import ConfigDict

from tokenlab.config import base_config, choose, parse_arg, set_accelerator_defaults, set_schedule

SIZES = {
    #        d_model layers heads batch steps  lr    topics words/topic  train   test
    "tiny": (16, 1, 2, 8, 3, 3e-3, 4, 8, 64, 32),
    "small": (64, 2, 4, 64, 800, 2e-3, 20, 64, 4000, 1000),
    "base": (512, 6, 8, 1024, 50000, 6e-4, 200, 256, 400000, 20000),
}


def get_config(arg=None):
  arg = parse_arg(arg, size="small", objective="data", targets="data", steps=0)
  d, layers, heads, batch, steps, lr, topics, words, train, test = choose("size", arg.size,
                                                                          SIZES)
  steps = arg.steps or steps
  c = base_config()
  set_schedule(c, steps=steps, batch_size=batch, lr=lr, logs=10, evals=2, checkpoints=1)
  c.train.eval_batches = 4
  c.checkpoint.async_save = False
  if arg.size == "base":
    set_accelerator_defaults(c)
  c.task = ConfigDict(dict(num_topics=topics, words_per_topic=words, function_words=64,
                           length=12 if arg.size != "base" else 32, p_function=0.4,
                           p_noise=0.6, num_train=train, num_test=test, seed=0,
                           targets=arg.targets,
                           target_top_k={"tiny": 16, "small": 128, "base": 256}[arg.size]))
  c.data.name = "method"   # the corpus of tokenlab/methods/text2token.py (iterator_fns)
  c.data.seq_len = c.task.length
  c.model.name = "text2token"
  c.model.vocab_size = 1 + 64 + topics * words
  c.model.d_model = d
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.objective = arg.objective
  return c
