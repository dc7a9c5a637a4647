"""A synthetic many-topic corpus with exact topic labels (the task of Text2Token,
tokenlab/methods/text2token.py).

Exact and deterministic from a seed (numpy's PCG64 through `default_rng`). Texts are
sequences of word ids (one word = one token; id 0 is reserved for padding):

* `function_words` shared function words (ids 1..F) with a Zipf law (exponent 1) that is the
  same for every topic: frequent, uninformative, like "the" and "of".
* `num_topics` topics, each with `words_per_topic` content words of its own (ids after the
  function words, topic t owning a contiguous block), with a Zipf law (exponent 1) in a
  random order per topic.
* A text of topic t has `length` words; each is a function word with probability
  `p_function`, else a content word: with probability `p_noise` any content word of any
  topic (uniform: off-topic noise), else one of topic t's words by its Zipf law.

Texts are short and topics own many words, so two texts of the same topic often share few
content words: a bag-of-words nearest neighbour is far from the Bayes classifier with the
true laws (`bayes_accuracy`), and an embedding that learned which words co-occur can close
part of that gap.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TopicCorpusTask:
  num_topics: int = 20
  words_per_topic: int = 64
  function_words: int = 64
  length: int = 12
  p_function: float = 0.4
  p_noise: float = 0.6
  num_train: int = 4000
  num_test: int = 1000
  seed: int = 0

  @property
  def vocab_size(self) -> int:
    """Padding id 0, the function words, then every topic's content words."""
    return 1 + self.function_words + self.num_topics * self.words_per_topic


@dataclasses.dataclass(frozen=True)
class TopicCorpus:
  """train_tokens (num_train, length) int32 and train_labels (num_train,) int32 topic ids;
  the same for test; word_laws (num_topics, vocab) float64: each topic's exact law over
  words (rows sum to 1)."""
  task: TopicCorpusTask
  train_tokens: np.ndarray
  train_labels: np.ndarray
  test_tokens: np.ndarray
  test_labels: np.ndarray
  word_laws: np.ndarray


def _zipf(n: int) -> np.ndarray:
  p = 1.0 / np.arange(1, n + 1)
  return p / p.sum()


def word_laws(task: TopicCorpusTask, rng: np.random.Generator) -> np.ndarray:
  """(num_topics, vocab) the exact law of one word of a text of each topic."""
  f, m, t = task.function_words, task.words_per_topic, task.num_topics
  laws = np.zeros((t, task.vocab_size))
  laws[:, 1:1 + f] = task.p_function * _zipf(f)
  content = 1 - task.p_function
  laws[:, 1 + f:] = content * task.p_noise / (t * m)
  for topic in range(t):
    start = 1 + f + topic * m
    laws[topic, start:start + m] += content * (1 - task.p_noise) * _zipf(m)[rng.permutation(m)]
  return laws


def make_topic_corpus(task: TopicCorpusTask) -> TopicCorpus:
  """The corpus of `task` (see the module docstring); topics are balanced in expectation."""
  rng = np.random.default_rng(task.seed)
  laws = word_laws(task, rng)
  cdf = np.cumsum(laws, axis=1)

  def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, task.num_topics, n)
    u = rng.random((n, task.length))
    tokens = np.stack([np.searchsorted(cdf[y], row, side="right") for y, row in zip(labels, u)])
    return np.minimum(tokens, task.vocab_size - 1).astype(np.int32), labels.astype(np.int32)

  train = sample(task.num_train)
  test = sample(task.num_test)
  return TopicCorpus(task, *train, *test, laws)


def bayes_accuracy(corpus: TopicCorpus) -> float:
  """Accuracy of the Bayes classifier with the true word laws on the test texts (uniform
  topic prior): the ceiling of any topic classifier on this corpus."""
  logp = np.log(np.maximum(corpus.word_laws, 1e-300))  # (T, V); id 0 (padding) never occurs
  scores = logp[:, corpus.test_tokens].sum(-1)         # (T, N)
  return float(np.mean(scores.argmax(0) == corpus.test_labels))
