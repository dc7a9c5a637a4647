"""CharBench (Uzan & Pinter, arXiv 2508.02591): character-level tasks and tokenization.

CharBench is a benchmark, not a model: counting and locating characters in words, with the
analysis of correctness against word length, the true count, and the length of the token
holding the queried character (longer tokens hide character positions). The benchmark lives
in `tokenlab.evals.charbench` (task generator with exact answers, a training stream of task
lines, and an evaluator for any tokenlab LM given as a logits function).

The models are tokenlab's transformer LM, unchanged; registered here as `charbench` so that
the experiment names it, with `evaluate` wiring a trained model to the benchmark. Simplified
vs the paper (which prompts large pretrained LMs): small LMs trained on the task lines of
train words, evaluated on held-out words; see tokenlab.evals.charbench.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from tokenlab.evals import charbench as bench
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.registry import register_method


@register_method("charbench")
class CharBenchLM(TransformerLM):
  """A transformer LM with a CharBench evaluation."""
  Config = TransformerLMConfig

  def evaluate(self, params, tokenizer, examples: Sequence[bench.Example], *,
               batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted answers, correct) on `examples` (see tokenlab.evals.charbench.evaluate)."""
    fn = jax.jit(lambda t: self.module.apply({"params": params}, t))
    return bench.evaluate(lambda t: np.asarray(fn(t)), tokenizer, examples,
                          batch_size=batch_size)


# `tokenlab train` with config.data.name = "method" trains on the CharBench task stream.
iterator_fns = bench.iterator_fns
