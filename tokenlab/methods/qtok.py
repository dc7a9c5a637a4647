"""Qtok: evaluating multilingual tokenizer quality (Chelombitko, Safronov, Komissarov,
arXiv 2410.12989).

Qtok is a method of *measuring* tokenizers, not a model: it classifies a vocabulary's tokens
by Unicode category and script, counts complete (whole-word) tokens and the token length
distribution, and compares how tokenizers serve different languages. Its finding: tokenizers
of public LLMs distribute their tokens very unevenly across languages and scripts, biased
toward English/Latin. The measurement is `tokenlab.evals.tokenizer_report` (the command
`tokenlab tokenizer-report`), which follows the paper's vocabulary-level metrics exactly in
kind (category, script, completeness, length) and adds the per-language text metrics
(fertility, bytes per token) the paper's discussion relies on, measured directly here.

This module, read top to bottom as the method section:

1. `skewed_and_balanced_mixes`: training corpora of the same size in bytes drawn from the
   `multilingual` train split: one English-dominated (a share `skew` of the bytes English, the
   rest split evenly among the other languages), one balanced (equal bytes per language).
   The seed chooses which strings are drawn.
2. A tokenizer of the same kind and vocabulary size is trained on each (BPE here:
   `tokenlab.data.tokenizers.BPETokenizer`), plus the trivial baselines: bytes (the uniform
   tokenizer) and `count_vocabulary`, a count-based vocabulary of the same size on the same
   mix (the 256 bytes + the characters and space-prefixed words with the most bytes saved,
   frequency x (length - 1), read by greedy longest match).
3. `tokenizer_report.report` measures every tokenizer on the held-out strings of each
   language; `script_gap` summarises what Qtok's finding predicts: the skewed tokenizer's
   compression and fertility on non-Latin-script languages relative to the balanced one, and
   the share of its vocabulary in non-Latin scripts.

Simplified vs the paper: tokenlab's own small tokenizers (vocabulary 1024) trained on ~36 KB
mixes of UI strings and CLDR names stand in for 13 LLM tokenizers with 32k-256k tokens, and
the skew is controlled (90% English) rather than observed, so that the balanced mix is a
matched control; ten languages, six of them in non-Latin scripts.

Registered as `qtok`: tokenlab's transformer LM unchanged (experiments/qtok.py trains it on
the multilingual data), so that a trained run's tokenizer can be reported with
`tokenlab tokenizer-report RUN_DIR`; the method adds no model or loss of its own.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np

from tokenlab.data.tokenizers import BPETokenizer, Tokenizer
from tokenlab.data.tokenizers.lzw import LZWTokenizer
from tokenlab.evals import tokenizer_report
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.registry import register_method

report = tokenizer_report.report   # the measurement (Qtok's metrics), for callers of the method


@register_method("qtok")
class QtokLM(TransformerLM):
  """tokenlab's transformer LM (identical to `transformer_lm`), named for experiments/qtok.py."""
  Config = TransformerLMConfig


def sample_bytes(texts: Sequence[str], budget: int, rng: np.random.Generator) -> list[str]:
  """Strings drawn without replacement in a random order until `budget` UTF-8 bytes are
  reached (the last string may pass it); all of them if they hold fewer bytes."""
  out, total = [], 0
  for i in rng.permutation(len(texts)):
    if total >= budget:
      break
    out.append(texts[i])
    total += len(texts[i].encode("utf-8"))
  return out


def mix_budgets(langs: Sequence[str], dominant: str, skew: float, total: int
                ) -> tuple[dict[str, int], dict[str, int]]:
  """Bytes per language of the skewed and the balanced mix of `total` bytes.

  Skewed: `dominant` gets skew * total, every other language (1 - skew) * total / (n - 1).
  Balanced: total / n each.
  """
  n = len(langs)
  skewed = {l: int(round(total * (skew if l == dominant else (1 - skew) / (n - 1))))
            for l in langs}
  balanced = {l: int(round(total / n)) for l in langs}
  return skewed, balanced


def skewed_and_balanced_mixes(corpus: Mapping[str, Sequence[str]], dominant: str, skew: float,
                              total: int, seed: int) -> tuple[list[bytes], list[bytes]]:
  """Training documents (UTF-8) of the skewed and the balanced mix (see `mix_budgets`)."""
  skewed_b, balanced_b = mix_budgets(list(corpus), dominant, skew, total)
  rng = np.random.default_rng(seed)
  mixes = []
  for budgets in (skewed_b, balanced_b):
    docs = []
    for lang, texts in corpus.items():
      docs += [t.encode("utf-8") for t in sample_bytes(texts, budgets[lang], rng)]
    mixes.append(docs)
  return mixes[0], mixes[1]


def count_vocabulary(docs: Sequence[bytes], vocab_size: int) -> LZWTokenizer:
  """The count baseline: 256 bytes + the vocab_size - 256 strings saving the most bytes.

  Candidates are every multi-byte character and every whitespace-separated chunk, with and
  without a leading space; a candidate's score is its count x (UTF-8 length - 1), the bytes
  saved if each occurrence were one token. Encoding is greedy longest match (the trie of
  `LZWTokenizer`, which every byte keeps total).
  """
  counts: collections.Counter = collections.Counter()
  for d in docs:
    text = d.decode("utf-8")
    counts.update(c for c in text if len(c.encode("utf-8")) > 1)
    chunks = text.split(" ")
    counts.update(chunks[:1])
    counts.update(" " + w for w in chunks[1:])
  scored = sorted(((n * (len(s.encode("utf-8")) - 1), s) for s, n in counts.items()
                   if len(s.encode("utf-8")) > 1), key=lambda x: (-x[0], x[1]))
  pieces = [bytes([b]) for b in range(256)]
  pieces += [s.encode("utf-8") for _, s in scored[:max(vocab_size - 256, 0)]]
  return LZWTokenizer(pieces)


def train_bpe(docs: Sequence[bytes], vocab_size: int) -> Tokenizer:
  """BPE over all 256 bytes (every text stays encodable) on `docs`."""
  return BPETokenizer.train(docs, vocab_size, alphabet="all")


def non_latin_share(vocab: Mapping[str, object]) -> float:
  """Share of the vocabulary whose letters are in a script other than Latin (Qtok's
  distribution across scripts), from `tokenizer_report.vocabulary_report`."""
  by_script = vocab["by_script"]
  return sum(n for s, n in by_script.items() if s != "Latin") / vocab["vocab_size"]


def script_gap(skewed: Mapping, balanced: Mapping, non_latin: Sequence[str]
               ) -> dict[str, float]:
  """What the skewed tokenizer costs non-Latin languages, from two `report`s.

  Returns {'bytes_per_token_ratio': mean over non_latin of skewed / balanced bytes per token,
  'fertility_ratio': mean of skewed / balanced fertility, 'langs_worse': how many non_latin
  languages the skewed tokenizer compresses worse}.
  """
  sk, ba = skewed["languages"], balanced["languages"]
  bpt = [sk[l]["bytes_per_token"] / ba[l]["bytes_per_token"] for l in non_latin]
  fert = [sk[l]["fertility"] / ba[l]["fertility"] for l in non_latin]
  return {"bytes_per_token_ratio": float(np.mean(bpt)), "fertility_ratio": float(np.mean(fert)),
          "langs_worse": float(sum(r < 1 for r in bpt))}
