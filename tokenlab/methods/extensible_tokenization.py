"""Extensible Tokenization (Shao, Xiao, Liu & Dou, "Flexibly Scaling Large Language Models
Contexts Through Extensible Tokenization", arXiv 2401.07793).

The method, in the order of the paper's section:

1. A frozen LM with a context window of W positions. Here: tokenlab's `transformer_lm`
   (`TransformerLMModule` and its loss), trained first as its own run (stage 'lm': short
   key-value rows that fit the window) and frozen.
2. The extensible embedder: the far context (what does not fit the window) is cut into chunks
   of `chunk_len` tokens, each chunk encoded on its own by a transformer; its output embeddings
   are down-scaled by the scaling factor k (mean pooling of k consecutive outputs), so a chunk
   of C tokens becomes C / k "extensible embeddings".
3. The extensible embeddings take the place of the far context's raw token embeddings: the
   frozen LM reads [extensible embeddings of the far context][raw embeddings of the recent
   tokens] (`TransformerLMModule(prefix=...)`), so W positions now cover about k times more
   context.
4. Training: only the embedder learns, with the LM's own next-token loss on the recent
   tokens; k is drawn at random per batch from `scales`, so one embedder serves every k of
   that range at inference (the paper's flexibility: k is chosen per input).

What follows the paper: chunk-wise encoding, down-scaling by pooling, the embeddings fed in
place of the far context's token embeddings, the LM frozen, the LM loss, k sampled per batch.
What is simplified, and why:
- The paper's embedder is a copy of the LLM (LLaMA-2-7B) fine-tuned; here it is a small
  causal transformer (`embedder_layers` blocks, the LM's width) that reads the frozen LM's own
  token embeddings and adds a correction through a zero-initialised output projection. With
  this residual form the untrained embedder at k = 1 is exactly the identity: the LM then
  reads the raw far context (the unit test's check), and any k > 1 starts from plain mean
  pooling of raw embeddings (the untrained-embedder baseline). A 7B copy is not trainable on
  a 2-core CPU; the residual form keeps the paper's starting point (the LM's own
  representation) at toy scale.
- The paper's data are long documents (language modelling, long-context QA); here a synthetic
  key-value fact task with exact answers (tokenlab/data/kv_facts.py): facts in the far
  context, queries in the recent tokens, so "the LM used the far context" is an exact count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.kv_facts import FAR, NEAR, KVFactsTask
from tokenlab.method import Average, Batch, Method, PyTree
from tokenlab.methods.transformer_lm import (TransformerLM, TransformerLMConfig,
                                             TransformerLMModule, lm_loss)
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method


@dataclasses.dataclass(frozen=True)
class ExtensibleTokenizationConfig(TransformerLMConfig):
  """The frozen LM's fields (TransformerLMConfig) plus the embedder's."""
  chunk_len: int = 16          # far context encoded chunk by chunk, C tokens each
  scales: tuple = (2, 4, 8)    # the scaling factors k drawn per batch in training
  embedder_layers: int = 2
  stage: str = "embedder"      # 'lm': stage 1, the LM alone | 'embedder': stage 2


def lm_config(cfg: TransformerLMConfig) -> TransformerLMConfig:
  """The LM's own config out of an ExtensibleTokenizationConfig (or an LM config)."""
  return TransformerLMConfig(**{f.name: getattr(cfg, f.name)
                                for f in dataclasses.fields(TransformerLMConfig)})


def pool(x: jax.Array, k: int) -> jax.Array:
  """Down-scaling by k: x (..., L, d) -> (..., L / k, d), the mean of k consecutive rows."""
  *lead, length, d = x.shape
  if length % k:
    raise ValueError(f"a chunk of {length} embeddings does not divide by k = {k}")
  return x.reshape(*lead, length // k, k, d).mean(-2)


class ExtensibleEmbedder(nn.Module):
  """Far-context embeddings (batch, F, d) -> extensible embeddings (batch, F / k, d).

  Each chunk of `chunk_len` positions is encoded alone (causal transformer, positions from 0
  in every chunk); out = pool_k(x + W_out h), W_out zero at init (so the untrained embedder
  is the identity at k = 1).
  """
  cfg: ExtensibleTokenizationConfig

  @nn.compact
  def __call__(self, x: jax.Array, k: int) -> jax.Array:
    cfg = self.cfg
    batch, length, d = x.shape
    c = cfg.chunk_len
    if length % c:
      raise ValueError(f"the far context ({length} tokens) must be whole chunks of {c}")
    chunks = x.reshape(batch * length // c, c, d)
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.heads_dim, mlp_dim=cfg.hidden,
                 num_kv_heads=cfg.num_kv_heads or None, causal=True,
                 attention_impl=cfg.attention_impl or None, rope_theta=cfg.rope_theta)
    h = TransformerStack(cfg.embedder_layers, block, name="decoder")(chunks)
    out = chunks + DenseGeneral((d,), ("mlp", "embed"), kernel_init=nn.initializers.zeros,
                                name="out")(h)
    return pool(out, k).reshape(batch, length // k, d)


def recall_metrics(logits: jax.Array, batch: Batch) -> dict[str, Average]:
  """Accuracy on the values whose key was given in the far part / the near part.

  logits (B, L, V); batch has targets (B, L) and far_mask / near_mask (B, L)."""
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  out = {}
  for name in ("far", "near"):
    mask = batch[f"{name}_mask"].astype(jnp.float32)
    out[f"{name}_acc"] = Average.of(jnp.sum(correct * mask), jnp.sum(mask))
  return out


@register_method("extensible_tokenization")
class ExtensibleTokenization(Method):
  """stage='lm': the LM to be frozen (transformer_lm's module and loss) on short rows, params
  {embed, decoder, lm_head}. stage='embedder': the extensible embedder in front of the frozen
  LM, params {lm, embedder}."""
  Config = ExtensibleTokenizationConfig

  def __init__(self, config: ExtensibleTokenizationConfig):
    super().__init__(config)
    if config.stage not in ("lm", "embedder"):
      raise ValueError(f"model.stage='{config.stage}': use 'lm' or 'embedder'")
    self.lm = TransformerLMModule(lm_config(config))
    self.embedder = ExtensibleEmbedder(config)
    self.embed = Embed(config.vocab_size, config.d_model)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    r_lm, r_emb = jax.random.split(rng)
    lm = self.lm.init(r_lm, batch["inputs"])["params"]
    if self.config.stage == "lm":
      return lm
    far = jnp.zeros(batch["far"].shape + (self.config.d_model,), jnp.float32)
    return {"lm": lm,
            "embedder": self.embedder.init(r_emb, far, self.config.scales[0])["params"]}

  def adopt_params(self, fresh: PyTree, loaded: PyTree) -> PyTree:
    """An LM run ({embed, decoder, lm_head}) starts the frozen LM; the embedder stays fresh."""
    from tokenlab.train.init_from import overlay_params
    if "lm" not in loaded:
      loaded = {"lm": loaded}
    return overlay_params(fresh, loaded)[0]

  # --- the forward pass -----------------------------------------------------------------

  def token_embeddings(self, lm_params: PyTree, tokens: jax.Array) -> jax.Array:
    """The frozen LM's raw token embeddings (batch, L) -> (batch, L, d)."""
    return self.embed.apply({"params": lm_params["embed"]}, tokens)

  def extensible_embeddings(self, params: PyTree, far: jax.Array, k: int) -> jax.Array:
    """far tokens (batch, F) -> extensible embeddings (batch, F / k, d)."""
    lm = jax.lax.stop_gradient(params["lm"])
    return self.embedder.apply({"params": params["embedder"]},
                               self.token_embeddings(lm, far), k)

  def logits(self, params: PyTree, batch: Batch, k: int) -> jax.Array:
    """Logits (batch, L, vocab) of the recent tokens batch['inputs'] (batch, L) with the far
    context batch['far'] (batch, F) read through the embedder at scaling factor k."""
    prefix = self.extensible_embeddings(params, batch["far"], k)
    lm = jax.lax.stop_gradient(params["lm"])   # only the embedder learns
    return self.lm.apply({"params": lm}, batch["inputs"], prefix=prefix)[:, prefix.shape[1]:]

  def lm_logits(self, lm_params: PyTree, tokens: jax.Array) -> jax.Array:
    """The frozen LM alone on tokens (batch, L) -> (batch, L, vocab) (truncated or full
    context baselines)."""
    return self.lm.apply({"params": lm_params}, tokens)

  # --- training and evaluation ----------------------------------------------------------

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """The LM loss on the recent tokens at a scaling factor k drawn for this batch (stage
    'lm': the plain LM loss)."""
    if self.config.stage == "lm":
      return lm_loss(self.lm_logits(params, batch["inputs"]), batch)
    branches = [lambda p, b, k=k: self.logits(p, b, k) for k in self.config.scales]
    return lm_loss(jax.lax.switch(self.draw_scale(rng), branches, params, batch), batch)

  def draw_scale(self, rng: jax.Array) -> jax.Array:
    """The index into `scales` of this batch's k: uniform, one draw per batch."""
    return jax.random.randint(rng, (), 0, len(self.config.scales))

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict:
    if self.config.stage == "lm":
      logits = self.lm_logits(params, batch["inputs"])
      return {**lm_loss(logits, batch)[1], **recall_metrics(logits, batch)}
    out = {}
    for k in self.config.scales:
      logits = self.logits(params, batch, k)
      out.update({f"{name}_k{k}": v for name, v in
                  {**lm_loss(logits, batch)[1], **recall_metrics(logits, batch)}.items()})
    out["loss"] = out[f"loss_k{self.config.scales[0]}"]
    return out

  # --- cost -----------------------------------------------------------------------------

  def context_flops_per_token(self, k: int, lm_length: int) -> float:
    """Forward FLOPs spent per far-context token at scaling factor k: the embedder over the
    token (a chunk-local causal transformer of `embedder_layers` blocks plus its d x d output
    projection) plus 1/k of one LM position at total length `lm_length`. Counted with
    TransformerLM.flops_per_token's formula (training = 3 x forward)."""
    c = self.config
    embedder = dataclasses.replace(lm_config(c), num_layers=c.embedder_layers,
                                   vocab_size=c.d_model)   # out: d x d in place of the head
    return (TransformerLM(embedder).flops_per_token(c.chunk_len)
            + TransformerLM(lm_config(c)).flops_per_token(lm_length) / k) / 3.0

  def flops_per_token(self, seq_len: int) -> float:
    """For the trainer's MFU: the frozen LM's forward + backward per recent token only (the
    prefix and the embedder are not counted, so the logged MFU is a lower bound)."""
    return TransformerLM(lm_config(self.config)).flops_per_token(seq_len)


# --- the key-value task (tokenlab.data.kv_facts) through the trainer's custom hook -------

def task_from_config(config) -> KVFactsTask:
  t = config.task
  return KVFactsTask(num_keys=t.num_keys, num_values=t.num_values, num_filler=t.num_filler,
                     far_len=t.far_len, far_facts=t.far_facts, near_facts=t.near_facts,
                     queries=t.queries, far_repeat=t.far_repeat)


def lm_batch(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Whole rows (B, T) as an LM batch: inputs/targets (B, T - 1) shifted by one, the loss on
  the answers (every other token is a fair random draw: no signal, only noise),
  far_mask / near_mask on the answers recalled from either part."""
  tokens, kinds = rows["tokens"], rows["kinds"][:, 1:]
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_mask": (kinds > 0).astype(np.float32),
          "far_mask": (kinds == FAR).astype(np.float32),
          "near_mask": (kinds == NEAR).astype(np.float32)}


def extended_batch(rows: dict[str, np.ndarray], far_len: int) -> dict[str, np.ndarray]:
  """Rows split into far (B, F) and the recent part as an LM batch (inputs/targets (B, N - 1))."""
  near = lm_batch({"tokens": rows["tokens"][:, far_len:], "kinds": rows["kinds"][:, far_len:]})
  return {"far": rows["tokens"][:, :far_len], **near}


def iterator_fns(config):
  """(train_fn, eval_fn) of fresh key-value rows and a disjoint held-out stream: LM batches
  for the LM stage, far + recent batches for the embedder stage."""
  from tokenlab.data.kv_facts import KVFactsIterator
  task, t = task_from_config(config), config.task
  if config.model.stage == "lm":
    to_batch = lm_batch
  else:
    to_batch = lambda rows: extended_batch(rows, task.far_len)

  def train_fn(batch_size, seed):
    return KVFactsIterator(task, batch_size, seed, to_batch, split="train",
                           data_seed=t.data_seed)

  def eval_fn(batch_size, seed):
    return KVFactsIterator(task, batch_size, seed, to_batch, split="validation",
                           data_seed=t.data_seed, num_batches=config.train.eval_batches or 8)
  return train_fn, eval_fn


def numpy_params(tree: Any) -> Any:
  """Unboxed parameters as numpy arrays (what the reproduction evaluates)."""
  return jax.tree.map(np.asarray, nn.unbox(tree))
