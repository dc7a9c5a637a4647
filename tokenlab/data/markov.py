"""`markov`: binary k-th order switching Markov sources, stored as '0'/'1' text.

The source of "Toward a Theory of Tokenization in LLMs" (Rajaraman, Jiao, Ramchandran,
arXiv 2404.08335): x_n depends only on x_{n-k}, with

  P(x_n = 1 | x_{n-k} = 0) = p,    P(x_n = 0 | x_{n-k} = 1) = q.

Each of the k interleaved subsequences x_{r}, x_{r+k}, ... is an independent two-state chain,
so the stationary law is pi = (q, p) / (p + q) and the entropy rate is
H = (q h(p) + p h(q)) / (p + q) bits per symbol. Every document starts in the stationary law,
so it is stationary throughout and the exact formulas below apply to every position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tokenlab.data import storage
from tokenlab.errors import ConfigError


def binary_entropy_bits(x: float) -> float:
  """Returns h(x) = -x log2 x - (1-x) log2 (1-x), with h(0) = h(1) = 0."""
  return -sum(v * math.log2(v) for v in (x, 1.0 - x) if v > 0)


def stationary(p: float, q: float) -> tuple[float, float]:
  """Returns the stationary law (P(x=0), P(x=1)) = (q, p) / (p + q)."""
  return q / (p + q), p / (p + q)


def entropy_rate_bits(p: float, q: float) -> float:
  """Returns the entropy rate (q h(p) + p h(q)) / (p + q), bits per symbol."""
  return (q * binary_entropy_bits(p) + p * binary_entropy_bits(q)) / (p + q)


def unigram_entropy_bits(p: float, q: float) -> float:
  """Returns the entropy of the stationary law, h(p / (p + q)), bits per symbol."""
  return binary_entropy_bits(p / (p + q))


def check_options(options: Mapping[str, Any]) -> None:
  """Raises ConfigError when the options do not describe a valid source."""
  k, p, q, length = options["k"], options["p"], options["q"], options["length"]
  if k < 1:
    raise ConfigError(f"markov option k={k} must be >= 1; set data.options.k to 1, 2, 4, ...")
  for name, v in (("p", p), ("q", q)):
    if not 0.0 < v <= 1.0:
      raise ConfigError(f"markov option {name}={v} must be in (0, 1]; "
                        f"set data.options.{name} to a probability such as 0.8")
  if length <= k:
    raise ConfigError(f"markov option length={length} must exceed k={k}; "
                      "set data.options.length larger")
  if options["num_train"] < 1 or options["num_validation"] < 1:
    raise ConfigError("markov options num_train and num_validation must be >= 1")


def generate(k: int, p: float, q: float, length: int, num: int,
             rng: np.random.Generator) -> np.ndarray:
  """Samples `num` stationary documents of the source.

  Args:
    k, p, q: the source (see module docstring).
    length: symbols per document.
    num: number of documents.
    rng: numpy random generator.

  Returns:
    uint8 array (num, length) of 0/1 symbols.
  """
  x = np.zeros((num, length), np.uint8)
  x[:, :k] = rng.random((num, k)) < stationary(p, q)[1]
  flip_prob = np.array([p, q])
  # The chain advances k symbols at a time: block n depends only on block n-1.
  for start in range(k, length, k):
    stop = min(start + k, length)
    prev = x[:, start - k:stop - k]
    flips = rng.random(prev.shape) < flip_prob[prev]
    x[:, start:stop] = prev ^ flips
  return x


def _split_rng(options: Mapping[str, Any], split: str) -> np.random.Generator:
  return np.random.default_rng([options["seed"], storage.SPLITS.index(split)])


def documents(split: str, options: Mapping[str, Any]) -> np.ndarray:
  """Returns the split's documents as a uint8 array (num, length) of 0/1 symbols."""
  num = options["num_train"] if split == "train" else options["num_validation"]
  return generate(options["k"], options["p"], options["q"], options["length"], num,
                  _split_rng(options, split))


class Builder(storage.OptionsBuilder):
  """tfds builder `tokenlab_markov`: records {'index', 'text'}."""
  name = "tokenlab_markov"
  VERSION = tfds.core.Version("1.0.0")

  def features(self, options):
    return tfds.features.FeaturesDict({"index": np.int64, "text": tfds.features.Text()})

  def examples(self, split, options) -> Iterator[tuple[int, dict]]:
    check_options(options)
    for i, doc in enumerate(documents(split, options)):
      yield i, {"index": i, "text": (doc + ord("0")).tobytes().decode("ascii")}


def document(record: Mapping[str, Any]) -> bytes:
  """Returns the document bytes of one record."""
  return record["text"]


def stats(options: Mapping[str, Any]) -> dict[str, float]:
  """Returns the source's exact entropies (bits per character) for `tokenlab data build`."""
  return {"unigram_entropy_bits": unigram_entropy_bits(options["p"], options["q"]),
          "entropy_rate_bits": entropy_rate_bits(options["p"], options["q"])}
