"""Static word vectors for tokenizer transfer: PPMI + SVD, Procrustes, subword vectors.

Methods that move a model to a new tokenizer through word-level semantics (WECHSEL, the
global part of TokenAdapt, ...) need static word embeddings of a language, an alignment of two
languages' spaces, and a vector per subword token. Trained here, offline and deterministic, on
the embedded corpora (`multilingual` monolingual text):

- `ppmi_svd_vectors(docs)`: word co-occurrence counts within a window of each document
  (weight 1/distance), positive PMI with context-distribution smoothing (alpha = 0.75, Levy et
  al., 2015), a truncated SVD by randomized range finding (Halko et al., 2011); vectors =
  U sqrt(S). Cheaper than skip-gram and without sampling noise; on a few thousand strings
  the two are equally rough.
- `procrustes(a, b)`: the orthogonal W minimising ||a W - b||_F (W = U V^T from the SVD of
  a^T b), i.e. the rotation that maps paired source vectors onto target vectors.
- `token_vectors(tokenizer, vectors)`: a token's vector = the frequency-weighted mean of the
  vectors of the words whose encoding (the word alone, and after a space) contains it; a
  token no word contains gets a zero row.

Words are maximal runs of word characters, or one punctuation character (`words_of`), with
case kept: tokens are case-sensitive.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from tokenlab.data.tokenizers import Tokenizer

WORD = re.compile(r"\w+|[^\w\s]")


def words_of(text: str) -> list[str]:
  """The words of `text`: runs of word characters, and each punctuation character."""
  return WORD.findall(text)


@dataclasses.dataclass(frozen=True)
class WordVectors:
  """Static word vectors of one language.

  Attributes:
    words: W words, most frequent first.
    counts: (W,) int, corpus frequency of each word.
    vectors: (W, dim) float32, one row per word.
  """
  words: tuple[str, ...]
  counts: np.ndarray
  vectors: np.ndarray

  @property
  def index(self) -> dict[str, int]:
    return {w: i for i, w in enumerate(self.words)}


def cooccurrence(docs: Iterable[str], window: int, min_count: int = 1
                 ) -> tuple[tuple[str, ...], np.ndarray, sp.csr_matrix]:
  """Word co-occurrence within `window` words of each other in the same document.

  Returns:
    (words (W, most frequent first; ties in first-seen order), counts (W,), the symmetric
    (W, W) matrix whose (i, j) entry sums 1/distance over every pair of occurrences).
  """
  docs = [words_of(d) for d in docs]
  freq = collections.Counter(w for d in docs for w in d)
  words = tuple(w for w, n in freq.most_common() if n >= min_count)
  index = {w: i for i, w in enumerate(words)}
  rows, cols, vals = [], [], []
  for d in docs:
    ids = np.array([index[w] for w in d if w in index], np.int64)
    for dist in range(1, window + 1):
      if len(ids) <= dist:
        break
      a, b = ids[:-dist], ids[dist:]
      # Both directions: the matrix is symmetric, as a window on each side is.
      rows += [a, b]
      cols += [b, a]
      vals.append(np.full(2 * len(a), 1.0 / dist))
  n = len(words)
  if not rows:
    return words, np.array([freq[w] for w in words]), sp.csr_matrix((n, n))
  m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                    shape=(n, n)).tocsr()   # duplicates are summed
  return words, np.array([freq[w] for w in words]), m


def ppmi(counts: sp.spmatrix, alpha: float = 0.75) -> sp.csr_matrix:
  """Positive PMI of a (W, C) co-occurrence matrix: max(0, log p(w, c) / (p(w) p_alpha(c)))
  with the context distribution raised to `alpha` (so rare contexts do not dominate)."""
  m = sp.coo_matrix(counts)
  total = m.data.sum()
  if total <= 0:
    return sp.csr_matrix(m.shape)
  p_w = np.bincount(m.row, m.data, m.shape[0]) / total
  p_c = np.bincount(m.col, m.data, m.shape[1]) ** alpha
  p_c /= p_c.sum()
  pmi = np.log(m.data / total / p_w[m.row] / p_c[m.col])
  keep = pmi > 0
  return sp.csr_matrix((pmi[keep], (m.row[keep], m.col[keep])), shape=m.shape)


def randomized_svd(matrix: sp.spmatrix | np.ndarray, rank: int, *, iters: int = 4,
                   oversample: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The top `rank` left singular vectors (W, rank) and values (rank,) of `matrix`, by
  randomized range finding with `iters` power iterations (deterministic given `seed`)."""
  from threadpoolctl import threadpool_limits   # scikit-learn's dependency
  rng = np.random.default_rng(seed)
  n = matrix.shape[1]
  k = min(rank + oversample, min(matrix.shape))
  # One BLAS thread: these (W, k) factorisations are small, and threaded BLAS next to JAX's
  # threads on a 2-core machine took 7 s instead of 0.04 s (measured).
  with threadpool_limits(limits=1, user_api="blas"):
    q = np.linalg.qr(matrix @ rng.standard_normal((n, k)))[0]
    for _ in range(iters):
      # Re-orthonormalised each half step: the spectrum of PPMI matrices decays slowly.
      q = np.linalg.qr(matrix.T @ q)[0]
      q = np.linalg.qr(matrix @ q)[0]
    u, s, _ = np.linalg.svd(np.asarray((matrix.T @ q).T), full_matrices=False)
  return (q @ u)[:, :rank], s[:rank]


def ppmi_svd_vectors(docs: Sequence[str], *, dim: int = 64, window: int = 4,
                     min_count: int = 1, seed: int = 0) -> WordVectors:
  """Static word vectors of a corpus: PPMI of windowed co-occurrence, then rank-`dim` SVD;
  vectors = U sqrt(S) (rows (W, dim), float32; dim is capped by the vocabulary)."""
  words, counts, m = cooccurrence(docs, window, min_count)
  dim = min(dim, max(len(words) - 1, 1))
  u, s = randomized_svd(ppmi(m), dim, seed=seed)
  return WordVectors(words, counts, (u * np.sqrt(s)).astype(np.float32))


def procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """The orthogonal (d, d) W minimising ||a W - b||_F for paired rows a, b (n, d)."""
  u, _, vt = np.linalg.svd(np.asarray(a, np.float64).T @ np.asarray(b, np.float64))
  return u @ vt


def normalize_rows(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero)."""
  x = np.asarray(x, np.float64)
  return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def token_vectors(tokenizer: Tokenizer, vectors: WordVectors) -> np.ndarray:
  """(V, dim) float32: row j = frequency-weighted mean of the vectors of the words whose
  encoding under `tokenizer` contains token j (the word alone and after a space, as it
  appears inside a text); zero for a token no word contains."""
  words = list(vectors.words)
  texts = [w.encode("utf-8") for w in words] + [b" " + w.encode("utf-8") for w in words]
  encoded = tokenizer.encode_batch(texts)
  tok_ids, word_ids = [], []
  for k, ids in enumerate(encoded):
    ids = np.unique(np.asarray(ids, np.int64))
    tok_ids.append(ids)
    word_ids.append(np.full(len(ids), k % len(words), np.int64))
  tok_ids, word_ids = np.concatenate(tok_ids), np.concatenate(word_ids)
  # A word counts once per token even when both of its spellings hold the token.
  pairs = np.unique(np.stack([tok_ids, word_ids], 1), axis=0)
  weight = np.asarray(vectors.counts, np.float64)[pairs[:, 1]]
  v = tokenizer.vocab_size
  mass = np.bincount(pairs[:, 0], weight, v)
  sums = np.zeros((v, vectors.vectors.shape[1]))
  np.add.at(sums, pairs[:, 0], weight[:, None] * vectors.vectors[pairs[:, 1]])
  return (sums / np.maximum(mass, 1e-30)[:, None]).astype(np.float32)
