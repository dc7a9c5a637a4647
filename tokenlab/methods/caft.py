"""Concept-aware fine-tuning, CAFT (Chen et al., "Improving large language models with
concept-aware fine-tuning", arXiv 2506.07833; reference code michaelchen-lab/caft-llm).

Next-token fine-tuning learns a multi-token word ("ribonucleic acid") one fragment at a time.
CAFT adds K auxiliary heads during *fine-tuning* (multi-token prediction had been a
pretraining-only objective): head i predicts token t+1+i from the base model's hidden state
at t, with a shared unembedding. Recipe:

  stage 1 (`stage="heads"`): train the auxiliary heads only, base model frozen, on general
          data: loss = sum_i alpha gamma^i s CE_i  (no CE_0; the base gets no gradient).
  stage 2 (`stage="finetune"`): fine-tune the whole model on the task:
          loss = CE_0 + sum_{i=1..K} alpha gamma^i s(step) CE_i
  inference: the heads are dropped; the base model's next-token logits are unchanged by them.

`alpha = 0` in stage 2 is plain next-token fine-tuning (the heads are then not even run), and
`stage="pretrain"` is the same thing under a clearer name for the base model's pretraining.

Follows the paper/reference: K = 4 heads of one decoder layer each on the base model's final
hidden states, shared unembedding (the base `lm_head`), label shift t+1+i per head, the
alpha * gamma^i * s(step) weighting with s in {constant, linear, sine}, heads trained alone
first, heads dropped at inference.
Simplified: each head ends in its own RMSNorm (the base's final norm is already applied to
its input; an extra norm keeps the shared unembedding's input on scale); heads start from a
random init (the reference's heads-only mode copies the base's second-to-last layer and reads
that layer's output); s(step) needs the training step, which the trainer does not pass to a
loss, so it is read from `batch["progress"]` (step / total steps, per row) when the data
provides it, and is 1 otherwise.

Starting a stage from the previous stage's parameters is the trainer's
`config.train.init_from=WORKDIR`: every parameter of the same path and shape is copied from
that run's latest checkpoint, new ones (e.g. the heads) keep their fresh init.

Synthetic task (`ConceptIterator`): text of words over a 64-token vocabulary separated by
token 0; the "domain" adds new concept words (5 tokens each, never seen in general text),
each announced by its own cue word. Evaluation metrics on concepts use the base head only.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.synthetic import StepIterator
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.multi_token_heads import MultiTokenHeads, multi_token_losses
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

STAGES = ("pretrain", "heads", "finetune")
MAX_OCC = 8   # concept occurrences tracked per row by the synthetic task
SCHEDULES = ("constant", "linear", "sine")


@dataclasses.dataclass(frozen=True)
class CAFTConfig(TransformerLMConfig):
  num_aux_heads: int = 4        # K; head i predicts token t+1+i
  head_layers: int = 1          # decoder layers per auxiliary head
  alpha: float = 0.1            # auxiliary-heads coefficient (0 = next-token training)
  gamma: float = 0.8            # decay: head i weighted gamma^i
  schedule: str = "constant"    # s(step): constant | linear | sine (needs batch["progress"])
  stage: str = "finetune"       # pretrain | heads | finetune


class CAFTModule(nn.Module):
  """tokens -> base logits (batch, length, vocab); with `heads=True` all logits
  (1 + K, batch, length, vocab), index 0 being the base head's."""
  cfg: CAFTConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, *, heads: bool = False):
    cfg = self.cfg
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.heads_dim, mlp_dim=cfg.hidden,
                 num_kv_heads=cfg.num_kv_heads or None, causal=True,
                 window=tuple(cfg.window) if cfg.window else None,
                 attention_impl=cfg.attention_impl or None, rope_theta=cfg.rope_theta)
    embed = Embed(cfg.vocab_size, cfg.d_model, name="embed")
    h = TransformerStack(cfg.num_layers, block, scan=cfg.scan_layers, remat=cfg.remat,
                         name="decoder")(embed(tokens), positions, segment_ids)
    unembed = (embed.attend if cfg.tie_embeddings else
               DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), name="lm_head"))
    base = unembed(h)
    if not (heads or self.is_initializing()):
      return base
    hs = MultiTokenHeads(cfg.num_aux_heads, block, cfg.head_layers, name="aux_heads")(
        h, positions, segment_ids)
    return jnp.concatenate([base[None], unembed(hs)], 0)


def schedule_factor(name: str, batch: Batch) -> jax.Array:
  """s(step) of the reference's schedules, from batch['progress'] = step / total steps."""
  if name == "constant" or "progress" not in batch:
    return jnp.float32(1.0)
  p = jnp.mean(batch["progress"].astype(jnp.float32))
  if name == "linear":
    return p
  return jnp.sin(p * jnp.pi / 2)


def concept_metrics(logits: jax.Array, batch: Batch) -> dict:
  """Next-token metrics of the base head on concept-word tokens.

  batch['concept_occ'] (batch, length): for targets that are a concept token, the index of
  that concept occurrence in the row (0..M-1), else -1; batch['concept_first']: 1 where the
  target is a concept's first token. concept_exact = occurrences whose every token is the
  argmax (= greedy generation of the whole concept after its cue).
  """
  occ = batch["concept_occ"]
  from tokenlab.nn.losses import token_nll
  nll = token_nll(logits, batch["targets"])
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  cmask = (occ >= 0).astype(jnp.float32)
  first = batch["concept_first"].astype(jnp.float32)
  slots = jax.nn.one_hot(occ, MAX_OCC, dtype=jnp.float32)   # -1 -> all zeros
  wrong = jnp.einsum("blm,bl->bm", slots, 1.0 - correct)
  present = jnp.sum(slots, 1) > 0
  exact = jnp.logical_and(present, wrong == 0).astype(jnp.float32)
  return {"concept_nll": Average.of(jnp.sum(nll * cmask), jnp.sum(cmask)),
          "concept_first_acc": Average.of(jnp.sum(correct * first), jnp.sum(first)),
          "concept_exact": Average.of(jnp.sum(exact), jnp.sum(present.astype(jnp.float32)))}


@register_method("caft")
class CAFT(TransformerLM):
  """Transformer LM with auxiliary multi-token heads for concept-aware fine-tuning."""
  Config = CAFTConfig

  def __init__(self, config: CAFTConfig):
    if config.stage not in STAGES:
      raise ConfigError(f"config.model.stage='{config.stage}' unknown; use one of {STAGES}")
    if config.schedule not in SCHEDULES:
      raise ConfigError(f"config.model.schedule='{config.schedule}' unknown; use one of "
                        f"{SCHEDULES}")
    super().__init__(config)
    self.module = CAFTModule(config)

  def all_logits(self, params: PyTree, batch: Batch) -> jax.Array:
    """(1 + K, batch, length, vocab): the base head and the auxiliary heads."""
    return self.module.apply({"params": params}, batch["inputs"], batch.get("positions"),
                             batch.get("segment_ids"), heads=True)

  def uses_heads(self) -> bool:
    c = self.config
    return c.stage == "heads" or (c.stage == "finetune" and c.alpha > 0)

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    c = self.config
    if c.stage == "heads":  # Only the heads learn; base and shared unembedding are frozen.
      params = {k: v if k == "aux_heads" else jax.lax.stop_gradient(v)
                for k, v in params.items()}
    if self.uses_heads():
      logits = self.all_logits(params, batch)
      base = logits[0]
    else:
      base = self.logits(params, batch)
    ce, metrics = lm_loss(base, batch)
    loss = jnp.float32(0.0) if c.stage == "heads" else ce
    if self.uses_heads():
      s = schedule_factor(c.schedule, batch)
      for i, (total, count) in enumerate(multi_token_losses(logits, batch)[1:], start=1):
        loss = loss + c.alpha * c.gamma ** i * s * total / jnp.maximum(count, 1.0)
        metrics[f"head_{i}_loss"] = Average.of(total, count)
    if "concept_occ" in batch:
      metrics.update(concept_metrics(base, batch))
    return loss, metrics

  def flops_per_token(self, seq_len: int) -> float:
    c = self.config
    base = super().flops_per_token(seq_len)
    if not self.uses_heads():
      return base
    per_layer = (c.d_model * c.heads_dim * 4 * c.num_heads + 3 * c.d_model * c.hidden
                 + c.num_heads * c.heads_dim * (seq_len + 1) / 2 * 2)
    heads = c.num_aux_heads * (c.head_layers * per_layer + c.d_model * c.vocab_size)
    return base + 6.0 * heads


# --- the synthetic task: general text and a domain of new multi-token concept words ---------

@dataclasses.dataclass(frozen=True)
class ConceptWorld:
  """A lexicon of general words and a set of concept words (token tuples), with a cue word
  per concept. Token 0 separates words."""
  words: tuple
  word_probs: np.ndarray
  concepts: tuple
  cues: tuple            # index into `words` of each concept's cue

  @classmethod
  def make(cls, vocab: int = 64, num_words: int = 200, num_concepts: int = 24,
           concept_len: int = 5, seed: int = 0) -> "ConceptWorld":
    rng = np.random.default_rng(seed)
    words, seen = [], set()
    while len(words) < num_words:
      w = tuple(int(t) for t in rng.integers(1, vocab, rng.integers(1, 4)))
      if w not in seen:
        seen.add(w)
        words.append(w)
    probs = 1.0 / np.arange(1, num_words + 1)
    probs /= probs.sum()
    concepts = []
    while len(concepts) < num_concepts:
      cpt = tuple(int(t) for t in rng.integers(1, vocab, concept_len))
      if cpt not in seen:
        seen.add(cpt)
        concepts.append(cpt)
    cues = tuple(int(i) for i in rng.choice(np.arange(10, num_words), num_concepts,
                                             replace=False))
    return cls(tuple(words), probs, tuple(concepts), cues)

  def text(self, rng: np.random.Generator, length: int, concept_rate: float,
           max_occ: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, concept occurrence id per token (-1 none), 1 at a concept's first token)."""
    toks, occ, first = [], [], []
    n_occ = 0
    while len(toks) < length:
      if concept_rate and n_occ < max_occ and rng.random() < concept_rate:
        j = int(rng.integers(len(self.concepts)))
        cue = self.words[self.cues[j]]
        toks += list(cue) + [0]
        occ += [-1] * (len(cue) + 1)
        first += [0] * (len(cue) + 1)
        toks += list(self.concepts[j]) + [0]
        occ += [n_occ] * len(self.concepts[j]) + [-1]
        first += [1] + [0] * len(self.concepts[j])
        n_occ += 1
      else:
        w = self.words[int(rng.choice(len(self.words), p=self.word_probs))]
        toks += list(w) + [0]
        occ += [-1] * (len(w) + 1)
        first += [0] * (len(w) + 1)
    return (np.array(toks[:length], np.int32), np.array(occ[:length], np.int32),
            np.array(first[:length], np.float32))


class ConceptIterator(StepIterator):
  """Checkpointable batches {inputs, targets, loss_mask, concept_occ, concept_first,
  progress}.

  `concept_rate` 0 = general text (no concepts). split 'train' with `num_train` > 0 draws
  rows from a fixed set of that many sequences; otherwise every row is fresh.
  """

  def __init__(self, world: ConceptWorld, batch_size: int, seq_len: int, seed: int, *,
               concept_rate: float, split: str = "train", num_train: int = 0,
               data_seed: int = 0, total_steps: int = 1, num_batches: int | None = None,
               max_occ: int = MAX_OCC):
    self.world, self.batch_size, self.seq_len, self.seed = world, batch_size, seq_len, seed
    self.rate, self.split, self.data_seed = concept_rate, split, data_seed
    self.total_steps, self.num_batches, self.max_occ = total_steps, num_batches, max_occ
    self.step = 0
    self.fixed = None
    if split == "train" and num_train:
      rng = np.random.default_rng((data_seed, 0))
      self.fixed = [world.text(rng, seq_len + 1, concept_rate, max_occ)
                    for _ in range(num_train)]

  def __next__(self):
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    if self.fixed is not None:
      rng = np.random.default_rng((self.seed, 0, self.step))
      rows = [self.fixed[i] for i in rng.integers(0, len(self.fixed), self.batch_size)]
    else:
      salt = 0 if self.split == "train" else 1
      rng = np.random.default_rng((self.data_seed, salt, self.seed if salt == 0 else 0,
                                   self.step))
      rows = [self.world.text(rng, self.seq_len + 1, self.rate, self.max_occ)
              for _ in range(self.batch_size)]
    progress = min(self.step / max(self.total_steps, 1), 1.0)
    self.step += 1
    x, occ, first = (np.stack(r) for r in zip(*rows))
    b, n = self.batch_size, self.seq_len
    return {"inputs": x[:, :-1], "targets": x[:, 1:],
            "loss_mask": np.ones((b, n), np.float32),
            "concept_occ": occ[:, 1:], "concept_first": first[:, 1:],
            "progress": np.full((b,), progress, np.float32)}


def world_from_config(config) -> ConceptWorld:
  t = config.task
  return ConceptWorld.make(config.model.vocab_size, t.num_words, t.num_concepts,
                           t.concept_len, t.world_seed)


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn) for `tokenlab.train.loop.train`: the train split is
  general text (`task.domain=False`) or the fixed domain set; eval is fresh domain text."""
  world, t = world_from_config(config), config.task
  seq = config.data.seq_len

  def train_fn(batch_size, seed):
    rate = t.concept_rate if t.domain else 0.0
    return ConceptIterator(world, batch_size, seq, seed, concept_rate=rate, split="train",
                           num_train=t.num_train if t.domain else 0, data_seed=t.data_seed,
                           total_steps=config.train.steps)

  def eval_fn(batch_size, seed):
    return ConceptIterator(world, batch_size, seq, seed, concept_rate=t.concept_rate,
                           split="validation", data_seed=t.data_seed,
                           num_batches=config.train.eval_batches or 10)
  return train_fn, eval_fn
