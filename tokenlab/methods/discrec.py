"""DiscRec (Liu et al., "DiscRec: Disentangled Semantic-Collaborative Modeling for Generative
Recommendation", arXiv 2506.15576; reference code Ten-Mao/DiscRec, layers/DiscRec.py), on top
of TIGER-style generative retrieval (Rajput et al., "Recommender Systems with Generative
Retrieval", 2023).

1. Semantic IDs (TIGER). Every item gets a short code from its content features: residual
   k-means (`residual_kmeans`: level l clusters the residuals left by levels < l into K
   centres), `levels` codes, plus one dedup code that numbers the items sharing the same
   k-means codes (`semantic_ids`), so each item's ID is unique. Codes of level l are tokens
   `l * K + code`; dedup codes follow all levels (`item_tokens`). A user's history becomes the
   concatenation of its items' codes, L = levels + 1 tokens per item.
2. Generative recommendation. A causal transformer (tokenlab's TransformerStack) is trained
   with next-token cross-entropy on the code sequences; the next item is generated code by
   code with beam search constrained to valid item IDs (`CodeTrie`,
   `constrained_beam_search`), and the beam's items, by score, are the ranked list that
   Recall@K and NDCG@K judge (`ranking_metrics`).
3. DiscRec's embedding layer (`DiscRecEmbedding`), the part the paper adds:
   * item-level position embeddings: each token gets the embedding of its index inside its
     item's semantic ID (level 0 .. L-1), shared by all items, so the model sees where item
     boundaries are (`token_layout` gives every token its item index, shared by the item's
     codes, and its level);
   * a semantic branch (the token embedding itself) and a collaborative branch:
     RMSNorm(embedding + item-level position) -> self-attention restricted to the codes of
     the same item (tokenlab's MultiHeadAttention with the item index as segment ids, causal;
     no RoPE: the level embedding is the position) + residual -> RMSNorm -> feed-forward +
     residual;
   * a gate fusing the two: per token, softmax over branches of <branch_b, w_b> (w a learned
     vector per branch), the input embedding = sum_b gate_b * branch_b.
   `collaborative=False` turns all three off: plain TIGER (token embedding only), the
   ablation.

Follows the paper: the level position embedding, the within-item attention branch with its
FFN, and the softmax gate over the two branches, as in the reference code. Simplified, and
why: a decoder-only transformer instead of TIGER's T5 encoder-decoder (one block type in
tokenlab; the history is the prefix and the next item its continuation), so within-item
attention is causal (a code may not see later codes of its own item, which are targets) and
the branch runs once on the whole sequence; RMSNorm for LayerNorm and SwiGLU for the ReLU
FFN (tokenlab's blocks); semantic IDs by residual k-means (as the issue asks; TIGER uses an
RQ-VAE, DiscRec takes TIGER's IDs) on synthetic item features; no dropout.

The synthetic task (tokenlab/data/item_graph.py): items in latent communities with sparse
successor transitions that the features do not reveal; each user's last item is held out.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.item_graph import ItemGraphTask, make_item_graph, sample_histories
from tokenlab.data.synthetic import StepIterator
from tokenlab.method import Batch, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.attention import MultiHeadAttention
from tokenlab.nn.layers import DenseGeneral, Embed, RMSNorm, SwiGLU, param_with_axes
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method


# --- 1. semantic IDs ----------------------------------------------------------------------

def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding. x (N, F) -> (centres (k, F), codes (N,)).
  Deterministic from `seed`; an emptied cluster keeps its centre."""
  rng = np.random.default_rng(seed)
  x = np.asarray(x, np.float64)
  centres = [x[rng.integers(len(x))]]
  for _ in range(1, k):
    d2 = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), 1)
    p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
    centres.append(x[rng.choice(len(x), p=p)])
  centres = np.asarray(centres)
  codes = np.zeros(len(x), np.int64)
  for _ in range(iters):
    codes = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), 1)
    for j in range(k):
      if np.any(codes == j):
        centres[j] = x[codes == j].mean(0)
  return centres, codes


def residual_kmeans(features: np.ndarray, levels: int, k: int, seed: int = 0) -> np.ndarray:
  """(N, F) -> (N, levels) codes: level l is k-means on what levels < l left unexplained."""
  residual = np.asarray(features, np.float64)
  out = []
  for level in range(levels):
    centres, codes = kmeans(residual, k, seed=seed + level)
    out.append(codes)
    residual = residual - centres[codes]
  return np.stack(out, 1)


def semantic_ids(features: np.ndarray, levels: int, k: int, dedup: int,
                 seed: int = 0) -> np.ndarray:
  """(N, F) -> (N, levels + 1): residual k-means codes plus a dedup code (0, 1, ... among
  items with the same k-means codes, by item id), so every item's ID is unique."""
  codes = residual_kmeans(features, levels, k, seed)
  extra = np.zeros(len(codes), np.int64)
  seen: dict[tuple, int] = {}
  for i, c in enumerate(map(tuple, codes)):
    extra[i] = seen.get(c, 0)
    seen[c] = extra[i] + 1
  if extra.max() >= dedup:
    raise ValueError(f"{extra.max() + 1} items share one k-means code; dedup={dedup} codes "
                     f"cannot tell them apart (raise the dedup size or the codebook size)")
  return np.concatenate([codes, extra[:, None]], 1)


def item_tokens(ids: np.ndarray, k: int) -> np.ndarray:
  """(N, levels + 1) semantic IDs -> (N, L) tokens: level l's code c is l * K + c (the dedup
  level too, with its own range after the k-means levels)."""
  return ids + k * np.arange(ids.shape[1])[None]


def vocab_size(levels: int, k: int, dedup: int) -> int:
  return levels * k + dedup


def token_layout(length: int, codes_per_item: int) -> tuple[np.ndarray, np.ndarray]:
  """(item index (length,), level (length,)) of the tokens of a flattened history: the codes
  of one item share its item index; level = index inside the item's semantic ID."""
  t = np.arange(length)
  return t // codes_per_item, t % codes_per_item


# --- 3. DiscRec's embedding layer ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DiscRecConfig(TransformerLMConfig):
  codes_per_item: int = 4        # L = k-means levels + the dedup code
  collaborative: bool = True     # False: plain TIGER (no item positions, branch or gate)
  collab_heads: int = 2          # heads of the within-item attention (the reference: 2)


class DiscRecEmbedding(nn.Module):
  """tokens (batch, length) -> input embeddings (batch, length, d): semantic branch, and with
  `collaborative` the gated fusion with the within-item collaborative branch."""
  cfg: DiscRecConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, return_gate: bool = False):
    cfg = self.cfg
    semantic = Embed(cfg.vocab_size, cfg.d_model, name="embed")(tokens)
    if not cfg.collaborative:
      return (semantic, None) if return_gate else semantic
    item, level = token_layout(tokens.shape[1], cfg.codes_per_item)
    item_ids = jnp.broadcast_to(jnp.asarray(item, jnp.int32), tokens.shape)
    h = semantic + Embed(cfg.codes_per_item, cfg.d_model, name="item_position")(
        jnp.asarray(level))[None]
    h = RMSNorm(name="collab_attn_norm")(h)
    # Attention inside each item only: the item index as segment ids (+ causal).
    h = h + MultiHeadAttention(num_heads=cfg.collab_heads,
                               head_dim=cfg.d_model // cfg.collab_heads, causal=True,
                               use_rope=False, name="collab_attn")(h, segment_ids=item_ids)
    h = h + SwiGLU(cfg.hidden, name="collab_ffn")(RMSNorm(name="collab_ffn_norm")(h))
    w = param_with_axes(self, "gate", nn.initializers.normal(0.02), (2, cfg.d_model),
                        (None, "embed"), jnp.float32)
    branches = jnp.stack([semantic, h], -2)                        # (batch, length, 2, d)
    gate = jax.nn.softmax(jnp.einsum("btnd,nd->btn", branches, w.astype(branches.dtype)), -1)
    x = jnp.einsum("btn,btnd->btd", gate, branches)
    return (x, gate) if return_gate else x


class DiscRecModule(nn.Module):
  """code tokens (batch, length) -> next-code logits (batch, length, vocab)."""
  cfg: DiscRecConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions=None, segment_ids=None) -> jax.Array:
    cfg = self.cfg
    x = DiscRecEmbedding(cfg, name="embedding")(tokens)
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.heads_dim, mlp_dim=cfg.hidden,
                 num_kv_heads=cfg.num_kv_heads or None, causal=True,
                 attention_impl=cfg.attention_impl or None, rope_theta=cfg.rope_theta)
    x = TransformerStack(cfg.num_layers, block, scan=cfg.scan_layers, remat=cfg.remat,
                         name="decoder")(x, positions, segment_ids)
    return DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(x)


@register_method("discrec")
class DiscRec(TransformerLM):
  """Generative recommendation over semantic IDs, with (or without) DiscRec's branch."""
  Config = DiscRecConfig

  def __init__(self, config: DiscRecConfig):
    super().__init__(config)
    self.module = DiscRecModule(config)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    return lm_loss(self.logits(params, batch), batch)

  def flops_per_token(self, seq_len: int) -> float:
    c = self.config
    base = super().flops_per_token(seq_len)
    if not c.collaborative:
      return base
    # The branch: q/k/v/out projections, the FFN, and attention over at most L codes.
    return base + 6.0 * (4 * c.d_model ** 2 + 3 * c.d_model * c.hidden) + \
        3.0 * 4 * c.d_model * c.codes_per_item


# --- 2. constrained beam search and ranking metrics --------------------------------------

@dataclasses.dataclass(frozen=True)
class CodeTrie:
  """The valid item IDs as a trie over tokens. child (nodes, vocab): the node a token leads
  to, -1 if that continuation is no item's; item (nodes,): the item a leaf (depth L) stands
  for, -1 elsewhere. Node 0 is the root."""
  child: np.ndarray
  item: np.ndarray
  depth: int

  @classmethod
  def build(cls, tokens: np.ndarray, vocab: int) -> "CodeTrie":
    """tokens (N, L): every item's semantic-ID tokens."""
    child = [np.full(vocab, -1, np.int64)]
    item = [-1]
    for i, row in enumerate(tokens):
      node = 0
      for t in row:
        if child[node][t] < 0:
          child[node][t] = len(child)
          child.append(np.full(vocab, -1, np.int64))
          item.append(-1)
        node = child[node][t]
      if item[node] >= 0:
        raise ValueError(f"items {item[node]} and {i} have the same semantic ID {row}")
      item[node] = i
    return cls(np.stack(child), np.asarray(item), tokens.shape[1])


def constrained_beam_search(logits_fn: Callable[[np.ndarray], np.ndarray],
                            context: np.ndarray, trie: CodeTrie,
                            beam: int) -> tuple[np.ndarray, np.ndarray]:
  """Generates the next item's L codes after each context by beam search over valid IDs.

  logits_fn: tokens (B * beam, Tc + L - 1) -> logits (B * beam, Tc + L - 1, vocab) of a
  causal model (positions after the one read are padding and cannot change it).
  context: (B, Tc) tokens. Returns (items (B, beam), log-probabilities (B, beam)), best
  first; a beam that found no valid item (fewer than `beam` exist) has item -1, score -inf.
  """
  b, tc = context.shape
  depth = trie.depth
  seqs = np.zeros((b, beam, tc + depth - 1), np.int32)
  seqs[:, :, :tc] = context[:, None]
  node = np.zeros((b, beam), np.int64)
  score = np.full((b, beam), -np.inf)
  score[:, 0] = 0.0                              # one live beam at the start
  for level in range(depth):
    logits = np.asarray(logits_fn(seqs.reshape(b * beam, -1)), np.float64)
    logits = logits[:, tc - 1 + level].reshape(b, beam, -1)
    logp = logits - np.logaddexp.reduce(logits, -1, keepdims=True)
    nxt = trie.child[node]                        # (b, beam, vocab)
    cand = np.where(nxt >= 0, score[..., None] + logp, -np.inf).reshape(b, -1)
    top = np.argsort(-cand, 1, kind="stable")[:, :beam]
    src, tok = np.divmod(top, logits.shape[-1])
    score = np.take_along_axis(cand, top, 1)
    node = np.where(np.isfinite(score), np.take_along_axis(nxt.reshape(b, -1), top, 1), 0)
    seqs = np.take_along_axis(seqs, src[..., None], 1)
    if level < depth - 1:
      seqs[:, :, tc + level] = tok
  items = np.where(np.isfinite(score), trie.item[node], -1)
  return items, score


def ranking_metrics(ranked: np.ndarray, target: np.ndarray, k: int = 10) -> dict[str, float]:
  """ranked (B, >= k) item ids, best first; target (B,) -> Recall@k and NDCG@k (one relevant
  item: NDCG = 1 / log2(rank + 2) at its 0-based rank within the top k, else 0)."""
  hit = ranked[:, :k] == target[:, None]
  rank = np.argmax(hit, 1)
  found = hit.any(1)
  return {f"Recall@{k}": float(found.mean()),
          f"NDCG@{k}": float(np.mean(np.where(found, 1.0 / np.log2(rank + 2.0), 0.0)))}


def random_ranking_metrics(num_items: int, k: int = 10) -> dict[str, float]:
  """The expected Recall@k / NDCG@k of a uniformly random ranking (exact)."""
  return {f"Recall@{k}": k / num_items,
          f"NDCG@{k}": float(np.sum(1.0 / np.log2(np.arange(k) + 2.0)) / num_items)}


# --- the synthetic task -------------------------------------------------------------------

TASK_KEYS = tuple(f.name for f in dataclasses.fields(ItemGraphTask))


@dataclasses.dataclass(frozen=True)
class RecData:
  """The task's data. histories (U, H + 1) item ids; communities (U,) the users'; ids (N, L) semantic IDs; tokens (N, L)
  their tokens; train (U, H * L) training token rows (items 0..H-1); test_context
  (U, (H - 1) * L) (items 1..H-1) and test_target (U,) (item H, held out)."""
  task: ItemGraphTask
  graph: object
  histories: np.ndarray
  communities: np.ndarray
  ids: np.ndarray
  tokens: np.ndarray
  vocab: int
  trie: CodeTrie

  @property
  def train(self) -> np.ndarray:
    return self.tokens[self.histories[:, :-1]].reshape(len(self.histories), -1)

  @property
  def test_context(self) -> np.ndarray:
    return self.tokens[self.histories[:, 1:-1]].reshape(len(self.histories), -1)

  @property
  def test_target(self) -> np.ndarray:
    return self.histories[:, -1]


@functools.lru_cache(maxsize=4)
def _rec_data(task: ItemGraphTask, levels: int, k: int, dedup: int) -> RecData:
  graph = make_item_graph(task)
  ids = semantic_ids(graph.features, levels, k, dedup, seed=task.seed)
  vocab = vocab_size(levels, k, dedup)
  tokens = item_tokens(ids, k)
  return RecData(task, graph, *sample_histories(graph, task), ids, tokens, vocab,
                 CodeTrie.build(tokens, vocab))


def rec_data(task_cfg) -> RecData:
  """The (cached) data of config.task: the graph, histories and semantic IDs."""
  cfg = dict(task_cfg)
  task = ItemGraphTask(**{key: cfg[key] for key in TASK_KEYS if key in cfg})
  return _rec_data(task, cfg["levels"], cfg["codes"], cfg["dedup"])


class RecIterator(StepIterator):
  """Batches {inputs, targets, loss_mask} of code sequences. 'train': rows of users'
  training sequences drawn with (seed, step); 'validation': the held-out sequences
  (items 1..H), loss only on the held-out item's codes, `num_batches` of them."""

  def __init__(self, data: RecData, batch_size: int, seed: int, split: str = "train",
               num_batches: int | None = None):
    self.data, self.batch_size, self.seed, self.split = data, batch_size, seed, split
    self.num_batches, self.step = num_batches, 0
    per = data.tokens.shape[1]
    if split == "train":
      self.rows = data.train
      self.mask = np.ones(self.rows.shape[1] - 1, np.float32)
    else:
      h = data.histories[:, 1:]
      self.rows = data.tokens[h].reshape(len(h), -1)
      self.mask = np.zeros(self.rows.shape[1] - 1, np.float32)
      self.mask[-per:] = 1.0      # targets j predict token j + 1: the last item's codes

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    if self.split == "train":
      rng = np.random.default_rng((self.seed, 0, self.step))
      idx = rng.integers(0, len(self.rows), self.batch_size)
    else:
      idx = (np.arange(self.batch_size) + self.step * self.batch_size) % len(self.rows)
    self.step += 1
    x = self.rows[idx].astype(np.int32)
    return {"inputs": x[:, :-1], "targets": x[:, 1:],
            "loss_mask": np.broadcast_to(self.mask, x[:, 1:].shape).copy()}


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn) over `config.task` for `tokenlab.train.loop.train`."""
  data = rec_data(config.task)

  def train_fn(batch_size, seed):
    return RecIterator(data, batch_size, seed, "train")

  def eval_fn(batch_size, seed):
    return RecIterator(data, batch_size, seed, "validation",
                       num_batches=config.train.eval_batches or 4)
  return train_fn, eval_fn


def recommend(method: DiscRec, params: PyTree, data: RecData, users: np.ndarray,
              beam: int = 10, chunk: int = 256) -> np.ndarray:
  """(len(users), beam) ranked item ids for the held-out item of `users`, by constrained beam
  search over the trained model (chunks of `chunk` users: one compiled shape)."""
  fwd = _forward(method.config)
  context = data.test_context[users]
  out = []
  for start in range(0, len(users), chunk):
    part = context[start:start + chunk]
    pad = np.concatenate([part, np.repeat(part[:1], chunk - len(part), 0)]) \
        if len(part) < chunk else part
    items, _ = constrained_beam_search(lambda t: fwd(params, t), pad, data.trie, beam)
    out.append(items[:len(part)])
  return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def _forward(config: DiscRecConfig):
  """One jitted forward per model configuration (arms of one configuration, trained or not,
  share its compile)."""
  method = DiscRec(config)
  return jax.jit(lambda params, tokens: method.logits(params, {"inputs": tokens}))
