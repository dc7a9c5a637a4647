"""Tokenizer transfer (issue 20): give a trained LM a new tokenizer without retraining it.

  initializers.py  the `Initializer` interface, its registry, and the baselines `random`,
                   `mean_subtokens` (and `identity`, for the exactness check)
  harness.py       swap a run's tokenizer, evaluate bits per char/byte zero-shot and after k
                   steps of adaptation (embeddings only / full), sequence-length reduction,
                   one results table: `tokenlab transfer` (tokenlab/cli.py)
  word_vectors.py  static word vectors (PPMI + SVD of co-occurrence), Procrustes alignment,
                   subword vectors from the words holding them (WECHSEL's inputs)

Methods that make new embeddings (ZeTT, WECHSEL, TokenAdapt, ...) register an initialiser
with `@register_initializer("name")` in tokenlab/methods/<name>.py and run on this harness.
"""

from tokenlab.transfer.initializers import (Embeddings, Initializer, decompose, decompositions,
                                            get_initializer, initializer_names,
                                            register_initializer, shared_tokens)

__all__ = ["Embeddings", "Initializer", "decompose", "decompositions", "get_initializer",
           "initializer_names", "register_initializer", "shared_tokens"]
