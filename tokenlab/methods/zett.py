"""ZeTT: zero-shot tokenizer transfer with a hypernetwork (issue 20, method 1).

Paper: "Zero-Shot Tokenizer Transfer" (Minixhofer, Ponti, Vulic; NeurIPS 2024). The
reference code (bminixhofer/zett, JAX/Flax) was read for the details the paper leaves open;
no code is copied.

The problem. A language model was trained with tokenizer T0 (input rows E0 (V0, d), output
rows U0 (V0, d): the lm_head kernel transposed). Given any new tokenizer T, predict its rows
without training on T, so the model works with T at once (zero-shot).

The method, in the paper's order:

1. Decompose. Each token t of T is spelt with T0: pieces p_1..p_n (`decompose`, T0's own
   encoding of t's bytes; at most `max_pieces` kept).
2. Embed the pieces with the source model's own rows: x_i = W_in [E0[p_i]; U0[p_i]] (both
   tables, concatenated, projected to the hypernetwork's width).
3. A small transformer (the project's `TransformerStack`, bidirectional: causal=False) runs
   over the n pieces of each token, one sequence per token; padding positions are their own
   segment, so no piece ever sees another token or a pad.
4. Pool and predict. The output at the first position goes through two heads, one for the
   input embedding and one for the output embedding of t (`HyperNetwork`).
5. Train the hypernetwork with the source LM frozen (`ZeTT`, config.train.freeze =
   FREEZE): each batch samples a tokenizer (`SubstringSampler`), tokenises its text with it,
   predicts the rows of that tokenizer's whole vocabulary, and takes the LM's next-token loss
   over that vocabulary; plus the auxiliary loss: for the sampled tokens T0 also has, the
   squared distance of the predicted rows to E0[t] and U0[t] (scaled by the rows' mean
   squared norm), weight `aux_weight`.
6. Transfer: `@register_initializer("zett")` predicts the rows of any target tokenizer with
   a trained hypernetwork (`tokenlab transfer --init zett --aux hypernet=RUN`).

Follows the paper: T0 decomposition, pieces embedded with the source rows (input and output),
a transformer hypernetwork pooled at the first position with separate input/output heads,
the frozen source LM, tokenizers sampled per batch, the LM loss under the sampled tokenizer
over its own vocabulary, the auxiliary loss toward the original rows of overlapping tokens,
every target token predicted by the hypernetwork (shared tokens included).

Simplified or chosen here, and why:
- Tokenizer sampling. The paper samples a UnigramLM tokenizer per batch from substring
  frequencies of the batch's text, with noise on the scores, and encodes with Viterbi. Here
  a tokenizer = the 256 bytes + a random set of frequent substrings of the training corpus
  (counted once, `SubstringSampler`: byte strings of 2..max_len bytes, spaces allowed, so
  multi-word tokens occur), drawn without replacement by Gumbel top-k over
  log-count / temperature (noisy frequencies), with a vocabulary size drawn per batch; text
  is encoded by greedy longest match. Reason: fast enough to build a tokenizer every step
  in Python on a 2-core CPU, and still a different tokenizer every batch, with a different
  encoding algorithm from the evaluation targets (tokenlab's BPE), which are never sampled.
- A residual around the mean of the pieces' rows with zero-initialised heads: at step 0
  the hypernetwork is `mean_subtokens` (for a one-piece token: exactly its row), and it
  learns a correction. Our choice, so that a short CPU budget starts from the heuristic
  rather than from random rows.
- Scale: a 1-layer hypernetwork of width 128 on a d=128 source LM, 150 steps on one
  language (the paper's hypernetworks and training runs are far larger).
- The whole sampled vocabulary (padded to `vocab_slots`) is predicted in each step.

Batch fields of the training stream (`iterator_fns`, config.data.name = 'method'): the LM
rows inputs/targets/segment_ids/positions/loss_mask/target_bytes (B, L) in ids of the
batch's own tokenizer, and that tokenizer's vocabulary spread over the batch rows so that
every array leads with the batch axis: pieces (B, S, P) int32 (T0 ids, 0 where padded),
piece_mask (B, S, P), slot_mask (B, S) (1: a real token), old_id (B, S) int32 (the T0 id of
the same bytes, -1 if none), with S = vocab_slots / B; slot j of the vocabulary is
(j // S, j % S).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.synthetic import StepIterator
from tokenlab.data.tokenizers import Tokenizer
from tokenlab.errors import ConfigError, TokenlabError
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.layers import DenseGeneral
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method
from tokenlab.transfer.initializers import (Embeddings, _longest_match_table, decompose,
                                            register_initializer, shared_tokens)

# config.train.freeze of hypernetwork training: the source LM stays bit-identical.
FREEZE = r"^lm/"
NEG = -1e9


# --- 1-4: the hypernetwork ------------------------------------------------------------------

class HyperNetwork(nn.Module):
  """Pieces' source rows -> a token's input and output rows.

  rows_in, rows_out (V, P, d): E0 and U0 rows of each token's T0 pieces; mask (V, P) bool
  (True: a real piece; every token has at least one). Returns (input (V, d), output (V, d)):
  mean of the pieces' rows + a correction read at the first position.
  """
  hidden: int
  num_layers: int
  num_heads: int

  @nn.compact
  def __call__(self, rows_in: jax.Array, rows_out: jax.Array,
               mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = rows_in.shape[-1]
    m = mask.astype(rows_in.dtype)[..., None]
    n = jnp.maximum(m.sum(1), 1.0)
    mean_in, mean_out = (rows_in * m).sum(1) / n, (rows_out * m).sum(1) / n
    x = DenseGeneral((self.hidden,), ("embed", "mlp"), name="embed_pieces")(
        jnp.concatenate([rows_in, rows_out], -1))
    # Pads are segment 0, pieces segment 1: attention stays within a token's real pieces.
    seg = mask.astype(jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(mask.shape[1], dtype=jnp.int32), mask.shape)
    block = dict(num_heads=self.num_heads, head_dim=self.hidden // self.num_heads,
                 mlp_dim=2 * self.hidden, causal=False)
    h = TransformerStack(self.num_layers, block, name="encoder")(x, pos, seg)[:, 0]
    zeros = nn.initializers.zeros_init()
    d_in = DenseGeneral((d,), ("mlp", "embed"), kernel_init=zeros, name="head_in")(h)
    d_out = DenseGeneral((d,), ("mlp", "embed"), kernel_init=zeros, name="head_out")(h)
    return mean_in + d_in, mean_out + d_out


def pieces_array(decomps: Sequence[np.ndarray | None], max_pieces: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(pieces (V, P) int32, mask (V, P) bool) from T0 decompositions (None: no spelling, a
  row of one masked pad; longer spellings keep their first `max_pieces` pieces)."""
  pieces = np.zeros((len(decomps), max_pieces), np.int32)
  mask = np.zeros((len(decomps), max_pieces), bool)
  for j, p in enumerate(decomps):
    if p is not None and len(p):
      k = min(len(p), max_pieces)
      pieces[j, :k], mask[j, :k] = p[:k], True
  return pieces, mask


# --- 5: the training objective ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ZeTTConfig(TransformerLMConfig):
  """The source LM's shape (vocab_size = T0's) plus the hypernetwork's."""
  hn_hidden: int = 128
  hn_layers: int = 1
  hn_heads: int = 4
  max_pieces: int = 8
  vocab_slots: int = 1024      # rows predicted per batch (the sampled vocabulary, padded)
  aux_weight: float = 0.5      # weight of the auxiliary loss


@register_method("zett")
class ZeTT(Method):
  """Frozen transformer_lm + a hypernetwork trained over sampled tokenizers.

  Parameters {'lm': the source LM at T0's vocabulary, 'hyper': HyperNetwork}; train with
  config.train.init_from = the source run and config.train.freeze = FREEZE.
  """
  Config = ZeTTConfig

  def __init__(self, config: ZeTTConfig):
    if config.tie_embeddings:
      raise ConfigError("zett predicts separate input and output rows: set "
                        "config.model.tie_embeddings=False")
    if config.hn_hidden % config.hn_heads:
      raise ConfigError(f"config.model.hn_hidden={config.hn_hidden} must be a multiple of "
                        f"hn_heads={config.hn_heads}")
    super().__init__(config)
    lm_cfg = TransformerLMConfig(**{f.name: getattr(config, f.name)
                                    for f in dataclasses.fields(TransformerLMConfig)})
    self.lm = TransformerLM(lm_cfg)
    # The same LM at the sampled vocabulary's size (its rows come from the hypernetwork).
    self.lm_slots = TransformerLM(dataclasses.replace(lm_cfg, vocab_size=config.vocab_slots))
    self.hyper = HyperNetwork(config.hn_hidden, config.hn_layers, config.hn_heads)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    r1, r2 = jax.random.split(rng)
    d, p = self.config.d_model, self.config.max_pieces
    rows = jnp.zeros((1, p, d))
    return {"lm": self.lm.init(r1, {"inputs": batch["inputs"]}),
            "hyper": self.hyper.init(r2, rows, rows, jnp.ones((1, p), bool))["params"]}

  def adopt_params(self, fresh: PyTree, loaded: PyTree) -> PyTree:
    """From a transformer_lm run (the source): its parameters frozen under 'lm'; the
    hypernetwork fresh. From a zett run: both as saved."""
    lm = loaded["lm"] if "lm" in loaded and "hyper" in loaded else loaded
    lm = jax.tree.map(lambda f, l: jnp.asarray(l, f.dtype), fresh["lm"], lm)
    hyper = fresh["hyper"]
    if "hyper" in loaded:
      hyper = jax.tree.map(lambda f, l: jnp.asarray(l, f.dtype), fresh["hyper"],
                           loaded["hyper"])
    return {"lm": lm, "hyper": hyper}

  def predict(self, params: PyTree, pieces: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """Rows of tokens spelt by T0 `pieces` (V, P) with `mask` (V, P): (input, output)
    (V, d) each, from the frozen source rows and the hypernetwork."""
    e0 = params["lm"]["embed"]["embedding"]
    u0 = params["lm"]["lm_head"]["kernel"].T
    return self.hyper.apply({"params": params["hyper"]}, e0[pieces], u0[pieces], mask)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    v = self.config.vocab_slots
    pieces = batch["pieces"].reshape(v, -1)
    pmask = batch["piece_mask"].reshape(v, -1).astype(bool)
    slot = batch["slot_mask"].reshape(v).astype(jnp.float32)
    old_id = batch["old_id"].reshape(v)
    rows_in, rows_out = self.predict(params, pieces, pmask)
    lm = params["lm"]
    lm_params = {**lm, "embed": {"embedding": rows_in},
                 "lm_head": {**lm["lm_head"], "kernel": rows_out.T}}
    logits = self.lm_slots.logits(lm_params, batch)
    # Padded slots are not tokens of the sampled tokenizer: no probability mass.
    logits = logits + (1.0 - slot) * NEG
    ce, metrics = lm_loss(logits, batch)
    # Auxiliary loss: predicted rows of tokens T0 has stay near their original rows.
    e0, u0 = lm["embed"]["embedding"], lm["lm_head"]["kernel"].T
    has = (old_id >= 0).astype(jnp.float32) * slot
    safe = jnp.maximum(old_id, 0)
    err = (jnp.sum(jnp.square(rows_in - e0[safe]), -1) / jnp.mean(jnp.sum(e0 * e0, -1))
           + jnp.sum(jnp.square(rows_out - u0[safe]), -1) / jnp.mean(jnp.sum(u0 * u0, -1)))
    count = jnp.maximum(has.sum(), 1.0)
    aux = jnp.sum(err * has) / count
    metrics["aux_loss"] = Average.of(jnp.sum(err * has), count)
    metrics["vocab_tokens"] = Average.of(slot.sum(), 1.0)
    return ce + self.config.aux_weight * aux, metrics

  def flops_per_token(self, seq_len: int) -> float:
    return self.lm.flops_per_token(seq_len)


# --- tokenizers sampled per batch -------------------------------------------------------------

class SampledTokenizer:
  """The 256 bytes + `subs` (byte strings), encoded by greedy longest match. Ids: byte b is
  id b, subs[i] is id 256 + i."""

  def __init__(self, subs: Sequence[bytes]):
    self.subs = list(subs)
    self.ids = {s: 256 + i for i, s in enumerate(self.subs)}
    self.longest = max((len(s) for s in self.subs), default=1)
    self.vocab_size = 256 + len(self.subs)

  def token_bytes(self, i: int) -> bytes:
    return bytes([i]) if i < 256 else self.subs[i - 256]

  def encode(self, data: bytes) -> list[int]:
    out, pos, n, ids = [], 0, len(data), self.ids
    while pos < n:
      for k in range(min(self.longest, n - pos), 1, -1):
        hit = ids.get(data[pos:pos + k])
        if hit is not None:
          out.append(hit)
          pos += k
          break
      else:
        out.append(data[pos])
        pos += 1
    return out


@dataclasses.dataclass
class SubstringSampler:
  """Frequent substrings of a corpus (counted once) and their T0 spellings; `sample` draws a
  tokenizer: the 256 bytes + n substrings chosen by Gumbel top-k over log(count) / temperature
  (noisy frequencies), n uniform in [min_vocab, max_vocab] - 256."""
  subs: list[bytes]
  counts: np.ndarray
  pieces: np.ndarray          # (N, P) T0 spelling of each substring
  piece_mask: np.ndarray      # (N, P)
  old_id: np.ndarray          # (N,) T0 id of the same bytes, -1 if none
  byte_pieces: np.ndarray     # (256, P) T0 spelling of each byte
  byte_mask: np.ndarray
  byte_old: np.ndarray        # (256,)

  @classmethod
  def build(cls, old_tok: Tokenizer, docs: Sequence[bytes], *, max_len: int = 8,
            min_count: int = 3, pool_size: int = 6000, max_pieces: int = 8
            ) -> "SubstringSampler":
    counts: collections.Counter = collections.Counter()
    for doc in docs:
      for k in range(2, max_len + 1):
        counts.update(doc[i:i + k] for i in range(len(doc) - k + 1))
    top = [(s, c) for s, c in counts.most_common() if c >= min_count][:pool_size]
    subs = [s for s, _ in top]
    table = _longest_match_table(old_tok)
    sp, sm = pieces_array([decompose(old_tok, s, table) for s in subs], max_pieces)
    bp, bm = pieces_array([decompose(old_tok, bytes([b]), table) for b in range(256)],
                          max_pieces)
    shared = shared_tokens(old_tok, SampledTokenizer(subs))
    old = np.array([shared.get(j, -1) for j in range(256 + len(subs))], np.int32)
    return cls(subs, np.array([c for _, c in top], np.float64), sp, sm, old[256:], bp, bm,
               old[:256])

  def sample(self, rng: np.random.Generator, min_vocab: int, max_vocab: int,
             temperature: float = 1.0) -> tuple[SampledTokenizer, np.ndarray]:
    """(tokenizer, indices of its substrings in the pool)."""
    n = int(rng.integers(min_vocab, max_vocab + 1)) - 256
    n = max(0, min(n, len(self.subs)))
    score = np.log(self.counts) / temperature + rng.gumbel(size=len(self.subs))
    idx = np.sort(np.argpartition(-score, n)[:n]) if n < len(self.subs) else np.arange(n)
    return SampledTokenizer([self.subs[i] for i in idx]), idx

  def vocab_arrays(self, idx: np.ndarray, slots: int) -> dict[str, np.ndarray]:
    """pieces (slots, P), piece_mask, slot_mask (slots,), old_id (slots,) of the tokenizer
    with pool substrings `idx` (padded slots: one masked piece 0, slot_mask 0)."""
    n = 256 + len(idx)
    if n > slots:
      raise ConfigError(f"a sampled vocabulary of {n} tokens does not fit vocab_slots={slots}")
    p = self.pieces.shape[1]
    pieces, pmask = np.zeros((slots, p), np.int32), np.zeros((slots, p), bool)
    old = np.full((slots,), -1, np.int32)
    pieces[:256], pmask[:256], old[:256] = self.byte_pieces, self.byte_mask, self.byte_old
    pieces[256:n], pmask[256:n], old[256:n] = self.pieces[idx], self.piece_mask[idx], \
        self.old_id[idx]
    pmask[n:, 0] = True    # a pad slot is one piece (id 0), its logit masked out
    slot = np.zeros((slots,), np.float32)
    slot[:n] = 1.0
    return {"pieces": pieces, "piece_mask": pmask, "slot_mask": slot, "old_id": old}


def pack_rows(tok: SampledTokenizer, docs: Sequence[bytes], rng: np.random.Generator,
              batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  """(B, L) LM rows of random documents under `tok`: concatenate-and-split like the
  pipeline (a document may continue in the next row), segment ids per document, positions
  per document, a document's first token context only."""
  keys = ("inputs", "targets", "segment_ids", "positions", "target_bytes", "loss_mask")
  out = {k: np.zeros((batch_size, seq_len), np.float32 if k == "loss_mask" else np.int32)
         for k in keys}
  row, col, seg = 0, 0, 1
  while row < batch_size:
    ids = tok.encode(docs[int(rng.integers(len(docs)))])
    if len(ids) < 2:
      continue
    for i in range(len(ids) - 1):
      if col == seq_len:
        row, col, seg = row + 1, 0, 1
        if row == batch_size:
          break
      out["inputs"][row, col], out["targets"][row, col] = ids[i], ids[i + 1]
      out["segment_ids"][row, col], out["positions"][row, col] = seg, i
      out["target_bytes"][row, col] = len(tok.token_bytes(ids[i + 1]))
      out["loss_mask"][row, col] = 1.0
      col += 1
    seg += 1
  return out


class SampledTokenizerIterator(StepIterator):
  """Batches of the source corpus, each under its own sampled tokenizer (see module doc).
  `fixed_vocab_seed`: every batch uses one tokenizer (the evaluation stream)."""

  def __init__(self, sampler: SubstringSampler, docs: Sequence[bytes], cfg: ZeTTConfig,
               batch_size: int, seq_len: int, seed: int, *, min_vocab: int,
               temperature: float, num_batches: int | None = None,
               fixed_vocab_seed: int | None = None):
    if cfg.vocab_slots % batch_size:
      raise ConfigError(f"config.model.vocab_slots={cfg.vocab_slots} must be a multiple of "
                        f"the batch size {batch_size} (the vocabulary rides on the batch rows)")
    self.sampler, self.docs, self.cfg = sampler, list(docs), cfg
    self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
    self.min_vocab, self.temperature = min_vocab, temperature
    self.num_batches, self.fixed, self.step = num_batches, fixed_vocab_seed, 0

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    rng = np.random.default_rng((self.seed, 5, self.step))
    self.step += 1
    vrng = rng if self.fixed is None else np.random.default_rng((self.fixed, 7))
    tok, idx = self.sampler.sample(vrng, self.min_vocab, self.cfg.vocab_slots, self.temperature)
    batch = pack_rows(tok, self.docs, rng, self.batch_size, self.seq_len)
    b = self.batch_size
    for k, v in self.sampler.vocab_arrays(idx, self.cfg.vocab_slots).items():
      batch[k] = v.reshape(b, -1, *v.shape[1:])
    return batch


_SAMPLERS: dict[str, SubstringSampler] = {}


def sampler_for(source_data: Mapping[str, Any], cfg: ZeTTConfig, max_len: int,
                pool_size: int) -> tuple[SubstringSampler, Tokenizer]:
  """The substring pool of the source data's train split (remembered per data config)."""
  from ml_collections import ConfigDict
  from tokenlab.data import get_tokenizer
  from tokenlab.transfer import harness
  data = ConfigDict(dict(source_data))
  key = json.dumps([dict(source_data), max_len, pool_size, cfg.max_pieces], sort_keys=True,
                   default=str)
  tok = get_tokenizer(data)
  if key not in _SAMPLERS:
    _SAMPLERS[key] = SubstringSampler.build(
        tok, harness.held_out_documents(data, "train"), max_len=max_len,
        pool_size=pool_size, max_pieces=cfg.max_pieces)
  return _SAMPLERS[key], tok


def iterator_fns(config):
  """(train_fn, eval_fn) of hypernetwork training: the source corpus (config.task.source_data,
  the source run's data config) under a sampled tokenizer per batch; evaluation: the
  validation split under one fixed sampled tokenizer."""
  from ml_collections import ConfigDict
  from tokenlab.transfer import harness
  from tokenlab.method import dataclass_from_config
  t = config.task
  cfg = dataclass_from_config(ZeTTConfig, config.model, prefix="model")
  sampler, _ = sampler_for(t.source_data.to_dict(), cfg, t.max_len, t.pool_size)
  train_docs = harness.held_out_documents(ConfigDict(t.source_data.to_dict()), "train")
  val_docs = harness.held_out_documents(ConfigDict(t.source_data.to_dict()))
  seq = config.data.seq_len

  def train_fn(batch_size, seed):
    return SampledTokenizerIterator(sampler, train_docs, cfg, batch_size, seq, seed,
                                    min_vocab=t.min_vocab, temperature=t.temperature)

  def eval_fn(batch_size, seed):
    return SampledTokenizerIterator(sampler, val_docs, cfg, batch_size, seq, 10_000,
                                    min_vocab=t.min_vocab, temperature=t.temperature,
                                    num_batches=config.train.eval_batches or 2,
                                    fixed_vocab_seed=10_000)
  return train_fn, eval_fn


# --- 6: the initialiser ----------------------------------------------------------------------

_HYPER: dict[str, tuple[ZeTT, PyTree]] = {}


def load_hypernet(workdir: str) -> tuple[ZeTT, PyTree]:
  """(method, params) of a trained zett run (remembered per path)."""
  from tokenlab import registry
  from tokenlab.train.inference import load_config_from_workdir
  from tokenlab.train.init_from import load_params
  path = os.path.abspath(workdir)
  if path not in _HYPER:
    if not os.path.isdir(os.path.join(path, "checkpoints")):
      raise TokenlabError(f"--aux hypernet={workdir}: no trained zett run there; train one "
                          f"with `tokenlab train --config experiments/zett.py:stage=hyper,"
                          f"source=RUN --workdir {workdir}`")
    config = load_config_from_workdir(path)
    if config.model.name != "zett":
      raise TokenlabError(f"--aux hypernet={workdir} holds a '{config.model.name}' run, not a "
                          f"zett hypernetwork")
    _HYPER[path] = (registry.build_method(config.model), load_params(path))
  return _HYPER[path]


def remember_hypernet(workdir: str, method: ZeTT, params: PyTree) -> None:
  """Makes `load_hypernet(workdir)` return (method, params) without reading a run (an
  in-memory hypernetwork, e.g. an untrained one in a smoke test)."""
  _HYPER[os.path.abspath(workdir)] = (method, params)


_PREDICT: dict[ZeTTConfig, Any] = {}


def predict_rows(method: ZeTT, hyper_params: PyTree, old: Embeddings,
                 decomps: Sequence[np.ndarray | None], chunk: int = 512) -> Embeddings:
  """Input and output rows (V, d) the hypernetwork predicts from T0 rows `old` for tokens
  spelt `decomps` (a None spelling gets the mean-free row 0: callers replace it)."""
  pieces, mask = pieces_array(decomps, method.config.max_pieces)
  empty = ~mask.any(1)
  mask[empty, 0] = True
  key = method.config    # one compile per hypernetwork shape, whichever instance
  if key not in _PREDICT:
    hyper = method.hyper
    _PREDICT[key] = jax.jit(lambda hp, e0, u0, p, m: hyper.apply({"params": hp}, e0[p], u0[p],
                                                                m))
  e0 = jnp.asarray(old.input, jnp.float32)
  u0 = jnp.asarray(old.output if old.output is not None else old.input, jnp.float32)
  ins, outs = [], []
  n = len(pieces)
  pad = (-n) % chunk     # one compiled shape for every vocabulary
  pieces = np.concatenate([pieces, np.zeros((pad, pieces.shape[1]), np.int32)])
  mask = np.concatenate([mask, np.ones((pad, mask.shape[1]), bool)])
  for s in range(0, len(pieces), chunk):
    a, b = _PREDICT[key](hyper_params, e0, u0, pieces[s:s + chunk], mask[s:s + chunk])
    ins.append(np.asarray(a))
    outs.append(np.asarray(b))
  return Embeddings(np.concatenate(ins)[:n], np.concatenate(outs)[:n])


@register_initializer("zett")
def zett_init(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer, *,
              fresh: Embeddings, aux: Mapping[str, Any]) -> Embeddings:
  """Every new token's rows predicted by the hypernetwork in aux['hypernet'] (a zett run)
  from its T0 pieces and the given old rows; a token T0 cannot spell keeps its fresh row."""
  from tokenlab.transfer.initializers import decompositions
  if not aux.get("hypernet"):
    raise TokenlabError("--init zett needs a trained hypernetwork: --aux hypernet=RUN (train "
                        "one with `tokenlab train --config experiments/zett.py:stage=hyper,"
                        "source=SOURCE_RUN --workdir RUN`)")
  if old.output is None:
    raise TokenlabError("--init zett predicts separate output rows; the model ties them")
  method, params = load_hypernet(str(aux["hypernet"]))
  if method.config.d_model != old.input.shape[1]:
    raise TokenlabError(f"the hypernetwork predicts rows of width {method.config.d_model}, "
                        f"the model's are {old.input.shape[1]}")
  decomps = decompositions(old_tokenizer, new_tokenizer)
  made = predict_rows(method, params["hyper"], old, decomps)
  none = np.array([p is None for p in decomps])
  ins = np.where(none[:, None], np.asarray(fresh.input), made.input).astype(old.input.dtype)
  outs = np.where(none[:, None], np.asarray(fresh.output), made.output).astype(
      old.output.dtype)
  return Embeddings(ins, outs)


def shared_cosines(old_tokenizer: Tokenizer, old: Embeddings, new_tokenizer: Tokenizer,
                   made: Embeddings) -> tuple[float, float]:
  """Mean cosine between made rows and the original rows of the new tokens T0 also has
  (input, output)."""
  shared = shared_tokens(old_tokenizer, new_tokenizer)
  new_ids = np.array(list(shared), int)
  old_ids = np.array([shared[j] for j in new_ids], int)

  def cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.mean(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1)
                                              * np.linalg.norm(b, axis=-1) + 1e-12)))
  return (cos(made.input[new_ids], old.input[old_ids]),
          cos(made.output[new_ids], old.output[old_ids]))
