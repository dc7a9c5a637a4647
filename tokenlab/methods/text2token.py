"""Text2Token (An, Zhang, Nie, Wu, Zhang, Long, "Text2Token: Unsupervised Text Representation
Learning with Token Target Prediction", arXiv 2510.10224): text embeddings trained to
predict a target distribution over the vocabulary (method `text2token`).

The method, in the paper's order:

1. An encoder maps a text to one vector: token embeddings, a bidirectional transformer
   (tokenlab's TransformerStack with `causal=False`), mean pooling over the tokens:
   `embed(params, tokens)` -> (B, d). This vector is the text's representation.
2. Token target prediction: the vector goes through a head onto the vocabulary (a linear
   map d -> V, the "LM head"), q = softmax(W e), and is trained to match a target token
   distribution p of the same text: loss = KL(p || q) = sum_v p_v (log p_v - log q_v)
   (`token_target_loss`; the cross-entropy minus the target's entropy, so its minimum is 0
   exactly where q = p).
3. Two ways to build p, the paper's two kinds of key tokens:
   (a) data-driven (`data_targets`): the meaningful tokens *in* the text, each token's count
       times its inverse document frequency on the training texts, normalised to sum to 1
       (frequent uninformative tokens get little mass; padding none);
   (b) model-derived (`model_targets`): semantically related tokens *beyond* the text, from
       a language model: the LM's next-token distributions at every position of the text,
       averaged, then IDF-weighted and renormalised like (a), so (a) and (b) differ only in
       where the tokens come from (the text itself vs what the LM expects around it); stored
       as its top-k tokens, renormalised (`top_k_targets`, k = `config.task.target_top_k`).
   `objective='lm'` trains that LM (the same blocks, causal, next-token cross-entropy on the
   same texts) so the model-derived targets come from a model trained here.
4. The peer the paper compares with (unsupervised contrastive learning, as in SimCSE /
   LLM2Vec): `objective='contrastive'`, in-batch InfoNCE between the embeddings of two views
   of each text (its first and second halves), cosine similarities over a temperature
   (`info_nce`), same encoder and budget.

Follows the paper: a text embedding projected onto the vocabulary and trained with KL to a
constructed token distribution; data-driven targets from the text's own tokens and
model-derived targets from an LM; the contrastive peer. Simplified, and why: the paper starts
from a pretrained LLM (its own LM head and backbone) and trains in two stages (data-driven,
then model-derived targets); here a small encoder is trained from scratch with one kind of
target per run and a separate head, because no pretrained LLM exists at toy scale; the
model-derived targets come from a small causal LM trained on the same corpus (averaged
next-token distributions, the issue's reading of "model-derived"; the paper's exact target
construction from the backbone is not in the abstract we have); the exact IDF formula and the
filtering of tokens follow common practice (smooth IDF), not the paper's text.

The data (tokenlab/data/topic_corpus.py): a synthetic many-topic corpus with exact topic
labels; the embedding is judged by k-nearest-neighbour topic accuracy (`knn_accuracy`,
cosine) of held-out texts against the labelled training texts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.synthetic import StepIterator
from tokenlab.data.topic_corpus import TopicCorpus, TopicCorpusTask, make_topic_corpus
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

OBJECTIVES = ("data", "model", "contrastive", "lm")


# --- 3. target token distributions ------------------------------------------------------------


def token_counts(tokens: np.ndarray, vocab: int) -> np.ndarray:
  """(N, L) int token ids -> (N, V) float64 counts; padding id 0 is not counted."""
  counts = np.zeros((len(tokens), vocab))
  np.add.at(counts, (np.arange(len(tokens))[:, None], tokens), 1.0)
  counts[:, 0] = 0.0
  return counts


def idf_weights(tokens: np.ndarray, vocab: int) -> np.ndarray:
  """(N, L) training texts -> (V,) smooth inverse document frequency,
  log((1 + N) / (1 + df_v)) + 1 (a token in every text still weighs 1)."""
  rows = np.arange(len(tokens), dtype=np.int64)[:, None]
  present = np.unique(rows * vocab + tokens) % vocab      # (text, token) pairs, sparse
  df = np.bincount(present, minlength=vocab)
  return np.log((1.0 + len(tokens)) / (1.0 + df)) + 1.0


def data_targets(tokens: np.ndarray, idf: np.ndarray) -> np.ndarray:
  """Data-driven targets: (N, L) texts, (V,) idf -> (N, V) float32 distributions, count x idf
  normalised per text (invariant to word order by construction: counts only). The dense
  reference of `sparse_data_targets`."""
  w = token_counts(tokens, len(idf)) * idf
  return (w / np.maximum(w.sum(1, keepdims=True), 1e-12)).astype(np.float32)


def sparse_data_targets(tokens: np.ndarray, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The data-driven targets as batches carry them: (N, L) texts -> (ids (N, L) = the tokens,
  weights (N, L) = idf of each occurrence, 0 for padding, summing to 1 per text). Scattered
  onto the vocabulary (`densify`) they are `data_targets`: a repeated token adds up to
  count x idf. Sparse because a dense (N, V) array does not fit at accelerator scale."""
  w = np.where(tokens > 0, idf[tokens], 0.0)
  w = w / np.maximum(w.sum(1, keepdims=True), 1e-12)
  return tokens.astype(np.int32), w.astype(np.float32)


def densify(ids: jax.Array, weights: jax.Array, vocab: int) -> jax.Array:
  """(B, K) token ids and weights -> (B, V) the distribution they give (repeats add up)."""
  rows = jnp.arange(ids.shape[0])[:, None]
  return jnp.zeros((ids.shape[0], vocab), jnp.float32).at[rows, ids].add(
      weights.astype(jnp.float32))


def model_targets(next_token_probs: jax.Array, idf: jax.Array) -> jax.Array:
  """Model-derived targets: (B, L, V) an LM's next-token distributions over a text, (V,) idf
  -> (B, V): averaged over positions, IDF-weighted, renormalised (padding id 0 gets none)."""
  mean = next_token_probs.astype(jnp.float32).mean(1) * idf
  mean = mean.at[:, 0].set(0.0)
  return mean / jnp.maximum(mean.sum(-1, keepdims=True), 1e-12)


def top_k_targets(target: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """(B, V) distributions -> their k (at most V) most probable tokens (ids, weights (B, k)),
  renormalised: how model-derived targets are stored and batched (dense (N, V) targets do
  not fit at accelerator scale)."""
  w, ids = jax.lax.top_k(target, min(k, target.shape[-1]))
  return ids.astype(jnp.int32), w / jnp.maximum(w.sum(-1, keepdims=True), 1e-12)


# --- 2. and 4. the losses ------------------------------------------------------------------------


def token_target_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """(B, V) logits, (B, V) target distributions -> (B,) KL(target || softmax(logits)) in
  nats (0 log 0 = 0): minimal (0) exactly where the prediction equals the target."""
  logq = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  target = target.astype(jnp.float32)
  logp = jnp.log(jnp.where(target > 0, target, 1.0))
  return jnp.sum(target * (logp - logq), -1)


def info_nce(a: jax.Array, b: jax.Array, temperature: float) -> jax.Array:
  """(B, d), (B, d) embeddings of two views of B texts -> (B,) symmetric in-batch InfoNCE:
  row i's positive is b_i, the other rows of the batch are negatives (cosine / temperature)."""
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-6)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-6)
  sim = (a @ b.T).astype(jnp.float32) / temperature
  labels = jnp.arange(a.shape[0])
  take = lambda s: -jnp.take_along_axis(jax.nn.log_softmax(s, -1), labels[:, None], -1)[:, 0]
  return 0.5 * (take(sim) + take(sim.T))


# --- 1. the encoder ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Text2TokenConfig(TransformerLMConfig):
  objective: str = "data"       # data | model (token targets) | contrastive | lm (the teacher)
  temperature: float = 0.05     # InfoNCE temperature (SimCSE's)


class Text2TokenEncoder(nn.Module):
  """tokens (B, L) -> (embedding (B, d), vocabulary logits (B, V))."""
  cfg: Text2TokenConfig

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = self.cfg
    x = Embed(cfg.vocab_size, cfg.d_model, name="embed")(tokens)
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.heads_dim, mlp_dim=cfg.hidden,
                 causal=False, attention_impl=cfg.attention_impl or None)
    mask = (tokens > 0).astype(x.dtype)[..., None]   # padding (id 0) is not pooled
    x = TransformerStack(cfg.num_layers, block, name="encoder")(x)
    e = (x * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
    return e, DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(e)


@register_method("text2token")
class Text2Token(TransformerLM):
  """Batches: {'tokens' (B, L) int32 texts, 'target_ids' (B, K) int32 and 'target_weights'
  (B, K) float32: the token target distribution, sparse (used by the 'data' and 'model'
  objectives)}."""
  Config = Text2TokenConfig

  def __init__(self, config: Text2TokenConfig):
    if config.objective not in OBJECTIVES:
      raise ConfigError(f"config.model.objective='{config.objective}'; use one of "
                        f"{', '.join(OBJECTIVES)}")
    super().__init__(config)   # objective 'lm': the causal TransformerLM module itself
    if config.objective != "lm":
      self.module = Text2TokenEncoder(config)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    # 'inputs' too: the shared helpers (transfer.harness.fresh_params) init with LM batches.
    return self.module.init(rng, batch["tokens"] if "tokens" in batch else batch["inputs"])[
        "params"]

  def encode(self, params: PyTree, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, L) texts -> (embeddings (B, d), vocabulary logits (B, V))."""
    return self.module.apply({"params": params}, tokens)

  def embed(self, params: PyTree, tokens: jax.Array) -> jax.Array:
    """(B, L) texts -> (B, d) text embeddings."""
    return self.encode(params, tokens)[0]

  def next_token_probs(self, params: PyTree, tokens: jax.Array) -> jax.Array:
    """objective 'lm': (B, L) texts -> (B, L, V) next-token distributions."""
    return jax.nn.softmax(self.module.apply({"params": params}, tokens).astype(jnp.float32))

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    tokens = batch["tokens"]
    obj = self.config.objective
    if obj == "lm":
      x = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "loss_mask": (tokens[:, 1:] > 0).astype(jnp.float32)}
      return lm_loss(self.logits(params, x), x)
    if obj == "contrastive":
      half = tokens.shape[1] // 2
      ea, eb = self.embed(params, tokens[:, :half]), self.embed(params, tokens[:, half:])
      per = info_nce(ea, eb, self.config.temperature)
      return per.mean(), {"loss": Average.of(per.sum(), per.shape[0])}
    _, logits = self.encode(params, tokens)
    target = densify(batch["target_ids"], batch["target_weights"], self.config.vocab_size)
    per = token_target_loss(logits, target)
    hit = jnp.argmax(logits, -1) == jnp.argmax(target, -1)
    return per.mean(), {"loss": Average.of(per.sum(), per.shape[0]),
                        "top1_match": Average.of(hit.astype(jnp.float32).sum(), per.shape[0])}


# --- evaluation: k-nearest-neighbour topic accuracy ----------------------------------------------


def knn_accuracy(ref: np.ndarray, ref_labels: np.ndarray, query: np.ndarray,
                 query_labels: np.ndarray, k: int) -> float:
  """Cosine k-NN classification: (R, d) labelled reference vectors, (Q, d) queries -> accuracy.
  Each query takes the majority label of its k most similar references (ties: the larger
  summed similarity)."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sim = unit(np.asarray(query, np.float64)) @ unit(np.asarray(ref, np.float64)).T   # (Q, R)
  top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else \
      np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
  rows = np.arange(len(query))[:, None]
  votes = np.zeros((len(query), int(max(ref_labels.max(), query_labels.max())) + 1))
  np.add.at(votes, (rows, ref_labels[top]), 1.0 + 1e-6 * sim[rows, top])
  return float(np.mean(votes.argmax(1) == query_labels))


# --- the data: the topic corpus through the trainer's in-code data hook -----------------------

TASK_KEYS = tuple(f.name for f in dataclasses.fields(TopicCorpusTask))


@functools.lru_cache(maxsize=4)
def corpus(task: TopicCorpusTask) -> TopicCorpus:
  """The (cached) corpus of `task`."""
  return make_topic_corpus(task)


def task_of(task_cfg: Any) -> TopicCorpusTask:
  cfg = dict(task_cfg)
  return TopicCorpusTask(**{key: cfg[key] for key in TASK_KEYS if key in cfg})


@functools.lru_cache(maxsize=4)
def targets(task: TopicCorpusTask, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train', 'test'}: (ids, weights) of every text's sparse targets. `source` 'data': the
  data-driven targets (idf of the training texts); else the path of an .npz of model-derived
  targets {'train_ids', 'train_weights', 'test_ids', 'test_weights'} (the reproduction writes
  it from a trained `objective=lm` run)."""
  c = corpus(task)
  if source == "data":
    idf = idf_weights(c.train_tokens, task.vocab_size)
    return {"train": sparse_data_targets(c.train_tokens, idf),
            "test": sparse_data_targets(c.test_tokens, idf)}
  with np.load(source) as f:
    return {split: (f[f"{split}_ids"].astype(np.int32), f[f"{split}_weights"].astype(np.float32))
            for split in ("train", "test")}


class TopicIterator(StepIterator):
  """{'tokens' (B, L), 'target_ids', 'target_weights' (B, K)} batches: 'train' rows drawn
  with (seed, step) from the training texts; 'validation' the held-out texts in order,
  `num_batches` of them."""

  def __init__(self, tokens: np.ndarray, target: tuple[np.ndarray, np.ndarray],
               batch_size: int, seed: int, train: bool, num_batches: int | None = None):
    self.tokens, self.target, self.batch_size = tokens, target, batch_size
    self.seed, self.train, self.num_batches, self.step = seed, train, num_batches, 0

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    if self.train:
      idx = np.random.default_rng((self.seed, self.step)).integers(0, len(self.tokens),
                                                                    self.batch_size)
    else:
      idx = (np.arange(self.batch_size) + self.step * self.batch_size) % len(self.tokens)
    self.step += 1
    return {"tokens": self.tokens[idx], "target_ids": self.target[0][idx],
            "target_weights": self.target[1][idx]}


def iterator_fns(config):
  """(train_fn, eval_fn) over `config.task` (the corpus, and `targets`: 'data' or the path of
  an .npz of model-derived targets, see `targets`) for `tokenlab.train.loop.train`."""
  task = task_of(config.task)
  c = corpus(task)
  t = targets(task, config.task.get("targets", "data"))

  def train_fn(batch_size, seed):
    return TopicIterator(c.train_tokens, t["train"], batch_size, seed, True)

  def eval_fn(batch_size, seed):
    return TopicIterator(c.test_tokens, t["test"], batch_size, seed, False,
                         num_batches=config.train.eval_batches or 4)
  return train_fn, eval_fn
