"""Toward a Theory of Tokenization in LLMs (Rajaraman, Jiao, Ramchandran, arXiv 2404.08335).

The paper's claim: on k-th order Markov sources (k > 1) a transformer trained on characters
learns slowly and predicts like a unigram model (cross-entropy near the unigram entropy),
while with a good tokenizer (BPE, LZW-style dictionaries) the same transformer approaches the
source's entropy rate; even a *unigram model over tokens* gets close to the entropy rate as
the dictionary grows.

This module is deliberately thin, and says so: the models of the paper are tokenlab's own
transformer LM trained on characters or on tokens (registered here as `tokenization_theory`:
exactly `transformer_lm`, named for the experiment), plus

  * `UnigramTokenModel`: the count-based unigram model over tokens (add-alpha smoothing);
  * `bits_per_char`: the metric, total NLL over the number of characters (exact for any
    tokenizer; the trainer reports the same as `bits_per_byte` from `target_bytes`);
  * the exact source quantities (`entropy_rate_bits`, `unigram_entropy_bits` of
    `tokenlab.data.markov`) and a plug-in estimate of the source's conditional entropy
    (`empirical_conditional_entropy_bits`) that checks the generator.

Tokenizers: characters ('bytes'), BPE (`tokenlab.data.tokenizers.bpe`), and an LZW-style
dictionary (`tokenlab.data.tokenizers.lzw`, count-based models only: not in the pipeline).
Simplified vs the paper: toy sizes and step budgets; a 2-layer transformer; vocabularies
16..256 (the theory's asymptotics are in the dictionary size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tokenlab.data.markov import entropy_rate_bits, unigram_entropy_bits  # noqa: F401
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.registry import register_method


@register_method("tokenization_theory")
class TokenizationTheoryLM(TransformerLM):
  """The transformer LM of the paper's experiments (identical to `transformer_lm`)."""
  Config = TransformerLMConfig


def bits_per_char(total_nll_nats: float, num_chars: int) -> float:
  """Total NLL (nats) over the number of characters it covers, in bits per character."""
  return total_nll_nats / math.log(2.0) / max(num_chars, 1)


class UnigramTokenModel:
  """P(token) from counts over tokenized training documents, with add-`alpha` smoothing.

  A sequence's probability is the product of its tokens' probabilities (tokens independent).
  """

  def __init__(self, vocab_size: int, alpha: float = 0.5):
    self.vocab_size, self.alpha = vocab_size, alpha
    self.counts = np.zeros(vocab_size, np.float64)

  def fit(self, token_docs: Sequence[np.ndarray]) -> "UnigramTokenModel":
    for ids in token_docs:
      self.counts += np.bincount(np.asarray(ids, np.int64), minlength=self.vocab_size)
    return self

  @property
  def logprobs(self) -> np.ndarray:
    """Natural-log probabilities of every token, (vocab_size,)."""
    c = self.counts + self.alpha
    return np.log(c / c.sum())

  def bits_per_char(self, token_docs: Sequence[np.ndarray], token_lengths: np.ndarray) -> float:
    """Total NLL of `token_docs` in bits over their number of characters."""
    lp, nll, chars = self.logprobs, 0.0, 0
    for ids in token_docs:
      ids = np.asarray(ids, np.int64)
      nll -= lp[ids].sum()
      chars += int(token_lengths[ids].sum())
    return bits_per_char(nll, chars)


def empirical_conditional_entropy_bits(docs: Sequence[bytes], k: int) -> float:
  """Plug-in H(x_n | x_{n-k}) in bits from symbol counts of `docs` (checks the generator)."""
  pairs: dict[tuple[int, int], int] = {}
  for d in docs:
    a = np.frombuffer(bytes(d), np.uint8).astype(np.int64)
    keys, counts = np.unique(a[:-k] * 256 + a[k:], return_counts=True)
    for key, c in zip(keys, counts):
      pairs[divmod(int(key), 256)] = pairs.get(divmod(int(key), 256), 0) + int(c)
  total = sum(pairs.values())
  prev: dict[int, int] = {}
  for (a, _), c in pairs.items():
    prev[a] = prev.get(a, 0) + c
  return -sum(c / total * math.log2(c / prev[a]) for (a, _), c in pairs.items())
