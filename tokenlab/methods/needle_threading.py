"""Needle threading (Roberts, Han & Albanie, "Needle Threading: Can LLMs Follow Threads
through Near-Million-Scale Haystacks?", arXiv 2411.05000).

The paper is an evaluation, not an architecture: haystacks of key-value pairs (JSON, UUID
keys and values) from which a model must retrieve single needles, several needles, needles
meeting a condition, and *threads*, chains of pairs whose value is the next pair's key, one or
several at once; accuracy (exact match) is mapped against context length and needle depth
(where in the context the needle sits) or thread length. Its findings: accuracy falls as the
context grows (the effective context is shorter than the supported one), threads are harder
than single needles, and many models are "thread-safe" (several threads at once cost little).

Here, in order:

1. The haystacks (tokenlab.evals.needle): the paper's five tasks with exact answers, written
   compactly (`key:value,` pairs of hex keys, `key_len` characters, instead of 32-character
   UUIDs in JSON) so a toy byte-level model sees tens of pairs per context. Threads write every
   hop of the answer (`a1>5e`) instead of only the final value: a model without
   chain-of-thought would need one attention lookup per hop in one forward pass.
2. The models: tokenlab's transformer LM, unchanged (RoPE, RMSNorm, SwiGLU), with dense causal
   attention or with the windowed-attention kernel (`window=(W, 0)`, tokenlab.nn.attention),
   registered here as `needle_threading` so an experiment trains it on the haystack stream
   (`iterator_fns`, config.data.name = "method"). The paper prompts large pretrained LMs;
   toy models have no such pretraining, so they are trained on haystacks up to the longest
   context that trains on a CPU, with the loss on the answer tokens only (the random keys and
   values of the haystack carry nothing to predict). Simplified for the same reason.
3. The evaluation (`evaluate`, tokenlab.evals.needle.exact_match): the paper's exact match,
   computed without decoding (greedy decoding writes the answer iff every answer token is the
   teacher-forced argmax), on a grid of context lengths x needle depths and x hops.
   `tokenlab needle --run RUN` runs it on any trained LM run.
"""

from __future__ import annotations

import numpy as np

from tokenlab.evals import needle
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.registry import register_method


@register_method("needle_threading")
class NeedleThreadingLM(TransformerLM):
  """A transformer LM (dense or windowed attention) trained on haystacks, with the grid
  evaluation of tokenlab.evals.needle. The loss is transformer_lm's masked next-token loss
  (the stream's loss mask keeps the answer tokens)."""
  Config = TransformerLMConfig

  def evaluate(self, params, tokenizer, grid: needle.Grid, length: int,
               batch_size: int = 64) -> dict[tuple, np.ndarray]:
    """{(kind, length, depth or hops): (per_cell,) bool exact match} on `grid`."""
    import jax
    fn = jax.jit(lambda p, t: self.logits(p, {"inputs": t}))
    return needle.evaluate_grid(lambda t: np.asarray(fn(params, t)), tokenizer, grid, length,
                                batch_size)


def task_mix(config) -> needle.TaskMix:
  """The training mix of `config.needle` (tasks, weights, hops, threads, key length)."""
  n = config.needle
  return needle.TaskMix(tasks=tuple(n.tasks.split(",")),
                        weights=tuple(float(w) for w in n.weights.split(",")),
                        max_hops=n.max_hops, threads=n.threads, key_len=n.key_len)


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn): fresh haystacks every step (bytes tokenizer); the eval
  stream draws from seeds disjoint from training's."""
  from tokenlab.data.tokenizers import BytesTokenizer
  tok, mix, seq = BytesTokenizer(), task_mix(config), config.data.seq_len

  def train_fn(batch_size, seed):
    return needle.HaystackStream(tok, mix, batch_size, seq, seed)

  def eval_fn(batch_size, seed):
    return needle.HaystackStream(tok, mix, batch_size, seq, 10_000_000 + seed,
                                 num_batches=config.train.eval_batches or 4)
  return train_fn, eval_fn
