"""WECHSEL: initialise a new language's subword embeddings from semantically similar source
subwords (Minixhofer, Paischer & Rekabsaz, "WECHSEL: Effective initialization of subword
embeddings for cross-lingual transfer of monolingual language models", NAACL 2022; reference
code CPJKU/wechsel, read, not copied).

The initialiser `wechsel` (tokenlab/transfer: `tokenlab transfer --init wechsel`). A model
trained with tokenizer T0 on the source language (English) gets the tokenizer of a target
language; its embedding rows are made as in the paper's method section:

1. Static word embeddings of both languages. The paper takes pretrained fastText vectors;
   here they are trained on the run's own corpora (the source and target data configs' train
   splits): PPMI + SVD of windowed co-occurrence (tokenlab/transfer/word_vectors.py).
2. Alignment. The source space is rotated onto the target space by orthogonal Procrustes on
   the pairs of a bilingual dictionary (the `multilingual` dataset's en-target dictionary,
   train split only), every dictionary entry tried as written, lower-cased and title-cased on
   both sides, as the reference does.
3. Subword embeddings in the word space: a token's vector is the frequency-weighted mean of
   the vectors of the words containing it (the paper's variant for embeddings without
   subword information; its main variant asks fastText for the token's vector from
   character n-grams, which PPMI vectors do not have).
4. For every target token x_t: cosine similarity to every source token x_s in the aligned
   space, the k = 10 most similar source tokens N(x_t), weights softmax(sim / tau) with
   tau = 0.1, and e(x_t) = sum_{x_s in N(x_t)} w(x_s) e(x_s) over the source model's rows.
5. A target token no word contains (byte pieces, unseen pieces) gets a row drawn from a
   Gaussian with the source rows' per-dimension mean and std; special (control) tokens the
   two tokenizers share are copied.

Follows the paper exactly: steps 2, 4 and 5 (k, tau, the Gaussian fallback, Procrustes on a
dictionary with case variants). Simplified, and why: the word vectors are PPMI/SVD on about
50 KB of text per language instead of fastText on Common Crawl (nothing is downloaded at run
time; the corpora are what the project ships), so the alignment is rough (held-out dictionary
precision is reported by the reproduction); subword vectors come from the words containing a
token (step 3) since these vectors have no character n-grams. The paper's model ties input
and output embeddings (GPT-2, RoBERTa); transformer_lm has a separate output layer, so the
same neighbours and weights build both the input and the output rows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tokenlab.data.tokenizers import Tokenizer
from tokenlab.errors import TokenlabError
from tokenlab.transfer.initializers import (Embeddings, register_initializer, shared_tokens,
                                            vocab_bytes)
from tokenlab.transfer.word_vectors import (WordVectors, normalize_rows, ppmi_svd_vectors,
                                            procrustes, token_vectors)

# The paper's defaults (reference code: neighbors=10, temperature=0.1).
NEIGHBORS = 10
TEMPERATURE = 0.1
# Word vectors on the embedded corpora: dimension and co-occurrence window.
WORD_DIM = 64
WINDOW = 4


# --- 1-2. aligned static word embeddings -----------------------------------------------------

def dictionary_pairs(dictionary: Sequence[tuple[str, str]], source: WordVectors,
                     target: WordVectors) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (n,), (n,) of the (source word, target word) pairs of `dictionary` that both
  vocabularies hold, each side tried as written, lower-cased and title-cased (every found
  combination is a pair, as in the reference; duplicates dropped)."""
  si, ti = source.index, target.index
  out = {}
  for s, t in dictionary:
    for a in dict.fromkeys((s, s.lower(), s.title())):
      for b in dict.fromkeys((t, t.lower(), t.title())):
        if a in si and b in ti:
          out[(si[a], ti[b])] = None
  if not out:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  pairs = np.array(list(out), np.int64)
  return pairs[:, 0], pairs[:, 1]


def align(source: WordVectors, target: WordVectors,
          dictionary: Sequence[tuple[str, str]]) -> np.ndarray:
  """The orthogonal (dim, dim) W with source vectors @ W in the target space: Procrustes on
  the unit-normalised vectors of the dictionary's pairs."""
  s, t = dictionary_pairs(dictionary, source, target)
  if len(s) < 2:
    raise TokenlabError(f"WECHSEL: only {len(s)} dictionary pairs have word vectors in both "
                        "languages; the corpora and the dictionary do not overlap")
  return procrustes(normalize_rows(source.vectors[s]), normalize_rows(target.vectors[t]))


# --- 4. the target embeddings ----------------------------------------------------------------

def neighbour_weights(target_vecs: np.ndarray, source_vecs: np.ndarray, *,
                      neighbors: int = NEIGHBORS, temperature: float = TEMPERATURE
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The k most similar source tokens of every target token and their softmax weights.

  Args:
    target_vecs: (Vt, D) target token vectors; zero rows = tokens with no vector.
    source_vecs: (Vs, D) source token vectors in the same (aligned) space; zero rows are
      never chosen.
    neighbors: k.
    temperature: tau of softmax(cosine / tau).

  Returns:
    idx (Vt, k) int source ids, most similar first; weights (Vt, k) summing to 1 over k;
    found (Vt,) bool: the target token has a vector (rows where it is False are undefined).
  """
  t = normalize_rows(target_vecs)
  s = normalize_rows(source_vecs)
  found = np.linalg.norm(target_vecs, axis=1) > 0
  usable = np.linalg.norm(source_vecs, axis=1) > 0
  k = min(neighbors, int(usable.sum()))
  if k == 0:
    raise TokenlabError("WECHSEL: no source token has a word vector")
  sims = t @ s.T
  sims[:, ~usable] = -np.inf
  part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
  top = np.take_along_axis(sims, part, 1)
  order = np.argsort(-top, axis=1, kind="stable")
  idx = np.take_along_axis(part, order, 1)
  top = np.take_along_axis(top, order, 1)
  z = (top - top[:, :1]) / temperature       # max-shifted: exp never overflows
  w = np.exp(z)
  return idx, w / w.sum(1, keepdims=True), found


def combine(rows: np.ndarray, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """(Vt, d): sum_k weights[:, k] * rows[idx[:, k]], in float64."""
  return np.einsum("vk,vkd->vd", weights, np.asarray(rows, np.float64)[idx])


def gaussian_fallback(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
  """(n, d) rows drawn from N(mean, std) of `rows` per dimension (the paper's fallback)."""
  rows = np.asarray(rows, np.float64)
  rng = np.random.default_rng(seed)
  return rng.normal(rows.mean(0), rows.std(0), (n, rows.shape[1]))


def wechsel_rows(old_rows: Sequence[np.ndarray], source_vecs: np.ndarray,
                 target_vecs: np.ndarray, *, neighbors: int = NEIGHBORS,
                 temperature: float = TEMPERATURE, seed: int = 0
                 ) -> tuple[list[np.ndarray], dict[str, Any]]:
  """Steps 4-5 for each matrix of `old_rows` ((Vs, d) each: input, output rows).

  Returns the new (Vt, d) matrices (float64) and info: idx, weights, found.
  """
  idx, weights, found = neighbour_weights(target_vecs, source_vecs, neighbors=neighbors,
                                          temperature=temperature)
  out = []
  for i, rows in enumerate(old_rows):
    new = gaussian_fallback(rows, len(target_vecs), seed + i)
    new[found] = combine(rows, idx[found], weights[found])
    out.append(new)
  return out, {"idx": idx, "weights": weights, "found": found}


# --- the initialiser ---------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _documents_of(data_json: str, split: str) -> tuple[bytes, ...]:
  import json
  from ml_collections import ConfigDict
  from tokenlab.transfer.harness import held_out_documents
  return tuple(held_out_documents(ConfigDict(json.loads(data_json)), split))


def documents(data: Mapping[str, Any], split: str) -> list[bytes]:
  """A data config's (dict's) documents of `split` (cached: the corpora are read once per
  process, by the word vectors and by a reproduction's baselines alike)."""
  import json
  return list(_documents_of(json.dumps(dict(data), sort_keys=True, default=list), split))


@functools.lru_cache(maxsize=8)
def _vectors_of(data_json: str, dim: int, window: int) -> WordVectors:
  """Word vectors of a data config's train split (cached: every seed of a comparison and
  every initialiser call on the same data reuse them)."""
  import json
  docs = documents(json.loads(data_json), "train")
  return ppmi_svd_vectors([d.decode("utf-8", "replace") for d in docs], dim=dim,
                          window=window)


def corpus_vectors(data: Mapping[str, Any], dim: int = WORD_DIM,
                   window: int = WINDOW) -> WordVectors:
  """Static word vectors (PPMI + SVD) of a data config's (dict's) train documents."""
  import json
  return _vectors_of(json.dumps(dict(data), sort_keys=True, default=list), dim, window)


def translation_precision(source: WordVectors, target: WordVectors, w: np.ndarray,
                          dictionary: Sequence[tuple[str, str]],
                          ks: Sequence[int] = (1, 10)) -> dict[int, float]:
  """Word translation by the alignment (a diagnostic of step 2): for each source word of the
  `dictionary`'s pairs (held-out pairs, to measure the alignment) that both vocabularies
  hold, the target words ranked by cosine to the rotated source word; P@k = the fraction of
  those source words with a dictionary translation (any case variant) among the first k."""
  s, t = dictionary_pairs(dictionary, source, target)
  if not len(s):
    return {k: float("nan") for k in ks}
  gold: dict[int, set[int]] = {}
  for a, b in zip(s.tolist(), t.tolist()):
    gold.setdefault(a, set()).add(b)
  queries = np.array(sorted(gold))
  sims = normalize_rows(source.vectors[queries] @ w) @ normalize_rows(target.vectors).T
  ranked = np.argsort(-sims, axis=1, kind="stable")[:, :max(ks)]
  return {k: float(np.mean([bool(gold[q] & set(r[:k].tolist()))
                            for q, r in zip(queries.tolist(), ranked)])) for k in ks}


def _lang(data: Mapping[str, Any], which: str) -> str:
  lang = (data.get("options") or {}).get("lang")
  if data.get("name") != "multilingual" or not lang:
    raise TokenlabError(f"--init wechsel needs the {which} data to be the `multilingual` "
                        f"dataset with a language (its bilingual dictionary aligns the two "
                        f"languages); got dataset '{data.get('name')}'")
  return lang


def aligned_token_vectors(old_tokenizer: Tokenizer, new_tokenizer: Tokenizer,
                          aux: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict]:
  """Steps 1-3: (source token vectors rotated into the target space (Vs, D), target token
  vectors (Vt, D), info {source, target: WordVectors; W: (D, D) rotation; pairs: number of
  dictionary pairs Procrustes used})."""
  from tokenlab.data import multilingual
  src, tgt = aux["source_data"], aux["target_data"]
  src_lang, tgt_lang = _lang(src, "source"), _lang(tgt, "target")
  if src_lang != "en" or tgt_lang == "en":
    raise TokenlabError(f"--init wechsel moves an English model to another language; got "
                        f"{src_lang} -> {tgt_lang} (the dictionary is English-<language>)")
  dim, window = int(aux.get("word_dim", WORD_DIM)), int(aux.get("window", WINDOW))
  sv, tv = corpus_vectors(src, dim, window), corpus_vectors(tgt, dim, window)
  dictionary = multilingual.dictionary(tgt_lang, "train")
  w = align(sv, tv, dictionary)
  source_tok = token_vectors(old_tokenizer, sv) @ w
  target_tok = token_vectors(new_tokenizer, tv)
  info = {"source": sv, "target": tv, "W": w,
          "pairs": len(dictionary_pairs(dictionary, sv, tv)[0])}
  return source_tok, target_tok, info


@register_initializer("wechsel")
def wechsel(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
            fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """WECHSEL rows for `new_tokenizer` (module docstring). aux: source_data, target_data
  (multilingual en and the target language), seed, and optionally neighbors, temperature,
  word_dim, window."""
  source_vecs, target_vecs, _ = aligned_token_vectors(old_tokenizer, new_tokenizer, aux)
  mats = [old.input] + ([old.output] if old.output is not None else [])
  rows, _ = wechsel_rows(mats, source_vecs, target_vecs,
                         neighbors=int(aux.get("neighbors", NEIGHBORS)),
                         temperature=float(aux.get("temperature", TEMPERATURE)),
                         seed=int(aux.get("seed", 0)))
  # Special tokens are copied (the paper copies the tokenizers' shared special tokens): here
  # the control tokens (no bytes) both tokenizers have.
  new_bytes = vocab_bytes(new_tokenizer)
  for j, i in shared_tokens(old_tokenizer, new_tokenizer).items():
    if not new_bytes[j]:
      for new, src in zip(rows, mats):
        new[j] = np.asarray(src)[i]
  dtype = np.asarray(old.input).dtype
  return Embeddings(rows[0].astype(dtype), rows[1].astype(dtype) if len(rows) > 1 else None)
