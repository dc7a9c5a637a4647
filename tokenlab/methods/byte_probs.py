"""Exact byte-level probabilities from a tokenized LM (Phan et al., arXiv 2410.09303).

"Exact Byte-Level Probabilities from Tokenized Language Models for FIM-Tasks and Model
Ensembles" shows that a tokenized LM already defines exact byte-level probabilities: the
probability of a byte prefix is the sum of the probabilities of its cover encodings (the
Byte-Token Representation Lemma), which gives next-byte distributions, a byte-level sampler
that needs no token healing for prompts cut mid-token, and ensembles of LMs with different
tokenizers at the byte level.

The paper's method is an *inference* procedure on top of an ordinary tokenized LM, so the
trained model here is tokenlab's transformer LM, unchanged (same module, loss, sampler); this
method adds the byte-level interface. The procedure itself lives in
`tokenlab.evals.byte_level` (generic: any tokenlab tokenizer and any LM given as a
`LogprobFn`); see that module for what follows the paper exactly and what is simplified (a
fixed token context as the hard boundary instead of the last whitespace; no KV cache).

  method = ByteProbs(config); bl = method.byte_level(params, tokenizer, max_len=seq_len)
  bl.next_byte_probs([(context_ids, b"def f(x")])      # (1, 256)
  method.sample_bytes(params, tokenizer, context_ids, b"def f(x", 16, rng)
"""

from __future__ import annotations

import jax
import numpy as np

from tokenlab.evals.byte_level import ByteLevelLM, lm_logprob_fn
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.registry import register_method


@register_method("byte_probs")
class ByteProbs(TransformerLM):
  """A tokenized transformer LM with exact byte-level probabilities and a byte sampler."""
  Config = TransformerLMConfig

  def byte_level(self, params, tokenizer, *, max_len: int, check_valid: bool = True,
                 batch_size: int = 64) -> ByteLevelLM:
    """The byte-level view (prefix probability, next-byte law, healing, sampler) of params."""
    apply = jax.jit(lambda tokens: self.module.apply({"params": params}, tokens))
    return ByteLevelLM(tokenizer, lm_logprob_fn(apply, max_len=max_len, batch_size=batch_size),
                       check_valid=check_valid)

  def sample_bytes(self, params, tokenizer, context_ids, prompt: bytes, num_bytes: int,
                   rng: np.random.Generator, *, max_len: int, temperature: float = 1.0) -> bytes:
    """Continues `prompt` (bytes after the token context) by `num_bytes` sampled bytes."""
    return self.byte_level(params, tokenizer, max_len=max_len).sample_bytes(
        context_ids, prompt, num_bytes, rng, temperature=temperature)
