"""LiB, the Less-is-Better tokenizer (Yang, "Rethinking Tokenization: Crafting Better
Tokenizers for Large Language Models", 2024; the learner of Yang, Frank & Frank, "Less is
Better: a cognitively inspired unsupervised model for language segmentation", 2022; reference
code ray306/The-Less-is-Better-Model, LiB.py).

The paper argues from the Principle of Least Effort that a tokenizer should lower *both* the
number of tokens a text needs and the number of types it must remember, and proposes the LiB
model, which learns an integrated vocabulary of subwords, words and multi-word expressions by
reading. Read top to bottom as its method section:

1. The lexicon and the reader (`tokenlab.data.tokenizers.lib.Lexicon`): a ranked list of
   units over the 256 bytes; the reader takes at each place the longest unit that matches
   (and notes the second-longest).
2. Memorising (`LiBLearner.read`): with probability 0.25 the previous chunk + the current
   one becomes a new unit, at the bottom of the lexicon and on probation.
3. Evaluating (`LiBLearner._settle`): every multi-byte chunk read is checked by re-reading
   from its start with its second-longest match until both readings meet; a chunk that does
   not save a chunk (or ties with worse-ranked units) is redundant: demoted, its shorter unit
   promoted; a chunk that saves one is promoted and leaves probation.
4. Updating after each article (`LiBLearner.update`): the moves (a unit at rank r moves
   int(0.2 r) + 1 places), probation (10 articles to be used well or be forgotten), the bottom
   of the lexicon back on probation, the lexicon held to twice the vocabulary cap.
5. The tokenizer (`LiBTokenizer`): the 256 bytes + the best-ranked vocab_size - 256 units,
   encoding by greedy longest match; usable everywhere as the data pipeline's tokenizer kind
   `lib` (`config.data.tokenizer = "lib"`, spec `lib:VOCAB` in `tokenlab tokenizer-report` and
   `tokenlab transfer`), learned once per dataset and vocabulary with seed 0 and cached.
6. The evaluation score (`lib_score`): log2 |lexicon| / mean chunk length, LiB.py's
   `eval_index`: bits to name one token per unit of text, i.e. the bits per byte of the
   uniform law over the vocabulary (lower is better); and `reading_stats` (tokens, types used,
   bytes per token) for the 'fewer tokens and fewer types' claim.

What follows the paper (LiB.py) exactly and what is simplified is stated in
`tokenlab/data/tokenizers/lib.py`: the reading, memorising, evaluation, moves, probation,
forgetting and hyper-parameters follow LiB.py; units are bytes with the 256 bytes as a fixed
base (lossless on any input), a vocabulary cap is added (a tokenizer needs a fixed id range;
the comparison with BPE is at equal vocabulary), and encoding is plain greedy longest match.
The mean chunk length of the score is in bytes (LiB.py: characters), since units are bytes.

Registered as `lib_tokenizer`: tokenlab's transformer LM unchanged, so experiments/
lib_tokenizer.py trains the downstream LM over LiB tokens (or BPE, bytes) through the real
trainer; the method adds a tokenizer, not a model or a loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tokenlab.data.tokenizers import Tokenizer
from tokenlab.data.tokenizers.lib import Lexicon, LiBLearner, LiBTokenizer
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig
from tokenlab.registry import register_method

__all__ = ["Lexicon", "LiBLearner", "LiBTokenizer", "LiBLM", "learn", "lib_score",
           "reading_stats"]

learn = LiBTokenizer.train   # learn(docs, vocab_size, seed=0, ...) -> LiBTokenizer


@register_method("lib_tokenizer")
class LiBLM(TransformerLM):
  """tokenlab's transformer LM (identical to `transformer_lm`), named for experiments/
  lib_tokenizer.py, which trains it over the tokens of LiB, BPE or bytes."""
  Config = TransformerLMConfig


def lib_score(lexicon_size: int, mean_chunk_bytes: float) -> float:
  """LiB's evaluation score: log2(lexicon_size) / mean chunk length (bytes); lower is better.

  At equal lexicon size it orders tokenizers as compression does; it rewards a smaller
  lexicon that reads text in as long chunks.
  """
  return math.log2(lexicon_size) / mean_chunk_bytes


def reading_stats(tok: Tokenizer, docs: Sequence[bytes]) -> dict[str, float]:
  """How `tok` reads `docs`: {'bytes', 'tokens', 'types' (distinct ids used),
  'bytes_per_token', 'lib_score' (with |lexicon| = tok.vocab_size)}."""
  ids = [np.asarray(x) for x in tok.encode_batch(list(docs))]
  n_bytes = sum(len(d) for d in docs)
  n_tokens = sum(len(x) for x in ids)
  types = len(np.unique(np.concatenate(ids))) if n_tokens else 0
  bpt = n_bytes / max(n_tokens, 1)
  return {"bytes": float(n_bytes), "tokens": float(n_tokens), "types": float(types),
          "bytes_per_token": bpt, "lib_score": lib_score(tok.vocab_size, bpt)}
