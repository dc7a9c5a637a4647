"""Insertion Language Models, ILM (Patel et al., "Insertion Language Models: Sequence
Generation with Arbitrary-Position Insertions", arXiv 2505.05755; reference code
dhruvdcoder/xlm-core, xlm-models/ilm), with its two baselines on one task.

An ILM grows a sequence by insertions: a bidirectional transformer reads the current
sequence and scores every (slot, token) pair, slot s being the gap right after token s, with
one softmax over all slots x vocabulary jointly; a stop logit read at a CLS position says
when the sequence is complete. Training is denoising by deletion: drop a random subset of the
answer's tokens, close the gaps, and train
  CE( softmax over (slot, token) of the logits, target = n(slot, token) / n_dropped )
where n(slot, token) counts the dropped tokens of that id that belong in that gap, plus a
binary stop loss (stop iff nothing was dropped). Sampling inserts the argmax (or a sample)
of the joint distribution until P(stop) > 1/2. Because the model picks where to insert, it
can write the easy tokens first: on a star graph it can build the path backwards from the
goal, where every step is a unique parent lookup.

`objective` selects the model trained on the same data:
  ilm  the insertion model above;
  ar   left-to-right next-token prediction (tokenlab's TransformerLM, loss on the answer,
       greedy `sample_autoregressive`): the baseline that falls for the Clever-Hans cheat;
  mdm  a masked-diffusion style model: bidirectional, answer tokens masked with a random rate
       t ~ U(0, 1) per row, CE on the masked tokens; decoding unmasks one position per step,
       the most confident first (`sample_unmasking`).
Evaluation (`eval_metrics`) decodes the answer from the prompt alone and reports exact match
(`path_exact`), whether the decoded answer is a valid path of the prompt's graph to the goal
(equal to exact match on a star graph, reported as a check), and the accuracy of the first
node after the start (`branch_acc`: the one decision the left-to-right cheat cannot make).

Follows the paper/reference: bidirectional encoder; token logits per position read as "insert
after this position"; one joint softmax over slot x vocab with target counts / total dropped
(`tokenlab.nn.corruption.insertion_targets`); stop loss from the CLS position with label
"nothing dropped" (the reference's binary length loss); no insertion into the prompt (slots
left of the prompt's end masked out of the softmax, as the reference masks non-droppable
positions); greedy insertion decoding with a stop threshold.
Simplified: the number of dropped tokens is uniform on 0..answer length, then a uniform
subset (the paper's noise schedule is not reproduced); the stop head is one logit (sigmoid)
rather than two classes; the CLS token is the first token of the sequence and has no slot
of its own (nothing is ever inserted before the prompt). The MDM baseline drops the 1/t loss
weight of MDLM (plain CE over masked tokens) and knows the answer length, as MDMs must.
Added (not in the paper; `neighbour_embed`, on in the experiment for all three arms alike):
each position also adds embeddings of the neighbours it may see (previous token; next token
too for the bidirectional models). The paper's models are large and trained long enough to
form the two-layer induction circuit an edge lookup needs; the CPU-sized models here did not
within the step budget (no arm learnt any lookup), and with these embeddings one attention
layer does it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.corruption import (drop_tokens, insertion_targets, mask_tokens,
                                    random_subset)
from tokenlab.nn.generate import sample_autoregressive, sample_insertions, sample_unmasking
from tokenlab.nn.layers import DenseGeneral, Embed
from tokenlab.nn.losses import token_nll
from tokenlab.nn.transformer import TransformerStack
from tokenlab.registry import register_method

OBJECTIVES = ("ilm", "ar", "mdm")


@dataclasses.dataclass(frozen=True)
class InsertionLMConfig(TransformerLMConfig):
  objective: str = "ilm"     # ilm | ar | mdm
  stop_weight: float = 1.0   # weight of the ILM's stop loss
  pad_id: int = 0            # token ids of the specials (tokenlab.data.star_graph's)
  mask_id: int = 2
  cls_id: int = 3
  answer_len: int = 0        # longest answer: the decoders' step budget (0 = sequence length)
  # Add learned embeddings of each position's visible neighbours (previous token; also the
  # next one for bidirectional models) to the token embedding: an edge "u v" then carries u
  # at v's position, so one attention layer does an edge lookup instead of a two-layer
  # induction circuit that small CPU models take thousands of steps to form.
  neighbour_embed: bool = False


class EncoderModule(nn.Module):
  """tokens (batch, length) -> logits (batch, length, vocab), and with `stop_head` also a
  stop logit (batch,) read at position 0 (the CLS). `causal` = the left-to-right model;
  otherwise bidirectional, and padding (`pad_id`) is attended by nothing but padding.

  With `cfg.neighbour_embed` every position also adds learned embeddings of its neighbours
  that the model may see: the previous token (all models) and, for bidirectional models, the
  next token (see `InsertionLMConfig`)."""
  cfg: InsertionLMConfig
  causal: bool = False
  stop_head: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array):
    cfg = self.cfg
    block = dict(num_heads=cfg.num_heads, head_dim=cfg.heads_dim, mlp_dim=cfg.hidden,
                 num_kv_heads=cfg.num_kv_heads or None, causal=self.causal,
                 rope_theta=cfg.rope_theta)
    segment_ids = None if self.causal else (tokens != cfg.pad_id).astype(jnp.int32)
    h = Embed(cfg.vocab_size, cfg.d_model, name="embed")(tokens)
    if cfg.neighbour_embed:
      prev = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=cfg.pad_id)
      h = h + Embed(cfg.vocab_size, cfg.d_model, name="prev_embed")(prev)
      if not self.causal:   # the left-to-right model must not see the next token
        nxt = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)), constant_values=cfg.pad_id)
        h = h + Embed(cfg.vocab_size, cfg.d_model, name="next_embed")(nxt)
    h = TransformerStack(cfg.num_layers, block, scan=cfg.scan_layers, remat=cfg.remat,
                         name="encoder")(h, None, segment_ids)
    logits = DenseGeneral((cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(h)
    if not self.stop_head:
      return logits
    stop = DenseGeneral((1,), ("embed", "norm"), use_bias=True, name="stop_head")(h[:, 0])
    return logits, stop[:, 0]


def ilm_loss(logits: jax.Array, stop_logit: jax.Array, counts: jax.Array,
             valid_slots: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-row insertion CE and stop BCE.

  logits, counts (batch, length, vocab); stop_logit (batch,); valid_slots (batch, length)
  bool. -> (insertion CE (batch,), 0 for rows with nothing dropped; stop BCE (batch,);
  stop label (batch,) = 1 iff nothing was dropped).
  """
  batch = logits.shape[0]
  logits = jnp.where(valid_slots[..., None], logits.astype(jnp.float32), -1e9)
  logp = jax.nn.log_softmax(logits.reshape(batch, -1), -1)
  n = jnp.sum(counts, axis=(1, 2))
  target = counts.reshape(batch, -1) / jnp.maximum(n, 1.0)[:, None]
  ce = -jnp.sum(target * logp, -1)
  stop_label = (n == 0).astype(jnp.float32)
  z = stop_logit.astype(jnp.float32)
  bce = jnp.maximum(z, 0) - z * stop_label + jnp.log1p(jnp.exp(-jnp.abs(z)))
  return ce, bce, stop_label


@register_method("insertion_lm")
class InsertionLM(TransformerLM):
  """Insertion LM (objective='ilm') and its left-to-right / masked-diffusion baselines on
  answer-given-prompt data: batch {inputs (B, L) prompt then answer, answer_mask (B, L)}."""
  Config = InsertionLMConfig

  def __init__(self, config: InsertionLMConfig):
    if config.objective not in OBJECTIVES:
      raise ConfigError(f"config.model.objective='{config.objective}' unknown; use one of "
                        f"{OBJECTIVES}")
    super().__init__(config)
    self.module = EncoderModule(config, causal=config.objective == "ar",
                                stop_head=config.objective == "ilm")

  # --- views of the batch ----------------------------------------------------------------

  def with_cls(self, tokens: jax.Array) -> jax.Array:
    """(B, L) -> (B, 1 + L): the CLS token in front (the ILM's stop position)."""
    cls = jnp.full((tokens.shape[0], 1), self.config.cls_id, tokens.dtype)
    return jnp.concatenate([cls, tokens], 1)

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    tokens = batch["inputs"]
    if self.config.objective == "ar":
      return self.module.init(rng, tokens[:, :-1])["params"]
    if self.config.objective == "ilm":
      tokens = self.with_cls(tokens)
    return self.module.init(rng, tokens)["params"]

  def apply(self, params: PyTree, tokens: jax.Array):
    return self.module.apply({"params": params}, tokens)

  # --- losses ----------------------------------------------------------------------------

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    objective = self.config.objective
    if objective == "ar":
      return self.ar_loss(params, batch)
    if objective == "mdm":
      return self.mdm_loss(params, batch, rng)
    return self.ilm_loss(params, batch, rng)

  def ar_loss(self, params: PyTree, batch: Batch):
    x, answer = batch["inputs"], batch["answer_mask"]
    view = {"inputs": x[:, :-1], "targets": x[:, 1:], "loss_mask": answer[:, 1:]}
    return lm_loss(self.apply(params, view["inputs"]), view)

  def mdm_loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    x = batch["inputs"]
    corrupted, masked = mask_tokens(rng, x, batch["answer_mask"] > 0, self.config.mask_id)
    logits = self.apply(params, corrupted)
    mask = masked.astype(jnp.float32)
    nll = token_nll(logits, x)
    total, count = jnp.sum(nll * mask), jnp.sum(mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == x) * mask)
    return total / jnp.maximum(count, 1.0), {"loss": Average.of(total, count),
                                              "masked_accuracy": Average.of(correct, count)}

  def ilm_corrupt(self, batch: Batch, rng: jax.Array):
    """(kept tokens with CLS (B, 1 + L), counts (B, 1 + L, V), valid slots (B, 1 + L)):
    a uniform number 0..answer length of answer tokens dropped, a uniform subset."""
    c = self.config
    tokens = self.with_cls(batch["inputs"])
    droppable = jnp.pad(batch["answer_mask"] > 0, ((0, 0), (1, 0)))
    r_count, r_subset = jax.random.split(rng)
    n_answer = jnp.sum(droppable, -1)
    count = jax.random.randint(r_count, n_answer.shape, 0, n_answer + 1)
    drop = random_subset(r_subset, droppable, count)
    kept, slot = drop_tokens(tokens, drop, c.pad_id)
    counts = insertion_targets(tokens, drop, slot, c.vocab_size)
    # Slots: after the prompt's last token (the separator) up to the last kept token.
    prompt_len = 1 + jnp.sum(batch["answer_mask"] <= 0, -1)
    num_kept = jnp.sum(~drop, -1)
    s = jnp.arange(tokens.shape[1])[None]
    valid = jnp.logical_and(s >= prompt_len[:, None] - 1, s < num_kept[:, None])
    return kept, counts, valid

  def ilm_loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    kept, counts, valid = self.ilm_corrupt(batch, rng)
    logits, stop_logit = self.apply(params, kept)
    ce, bce, stop_label = ilm_loss(logits, stop_logit, counts, valid)
    rows = jnp.float32(ce.shape[0])
    inserting = 1.0 - stop_label
    loss = jnp.mean(ce) + self.config.stop_weight * jnp.mean(bce)
    stop_correct = ((stop_logit > 0) == (stop_label > 0)).astype(jnp.float32)
    return loss, {"loss": Average.of(jnp.sum(ce) + self.config.stop_weight * jnp.sum(bce),
                                     rows),
                  "insertion_ce": Average.of(jnp.sum(ce * inserting), jnp.sum(inserting)),
                  "stop_bce": Average.of(jnp.sum(bce), rows),
                  "stop_accuracy": Average.of(jnp.sum(stop_correct), rows)}

  # --- decoding ----------------------------------------------------------------------------

  def generate(self, params: PyTree, batch: Batch, rng: jax.Array, *,
               temperature: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Decodes the answer from the prompt alone.

    -> (tokens (B, L) = prompt then decoded answer, ok (B,) bool: the decoding produced an
    answer of the right length and, for the ILM, stopped by itself).
    """
    c = self.config
    x, answer = batch["inputs"], batch["answer_mask"] > 0
    prompt_len = jnp.sum(~answer, -1).astype(jnp.int32)
    n_answer = c.answer_len or x.shape[1]
    if c.objective == "ar":
      logits_fn = lambda t: self.apply(params, t)
      out = sample_autoregressive(logits_fn, jnp.where(answer, c.pad_id, x), prompt_len, rng,
                                  temperature=temperature)
      return out, jnp.ones(x.shape[:1], bool)
    if c.objective == "mdm":
      out = sample_unmasking(lambda t: self.apply(params, t),
                             jnp.where(answer, c.mask_id, x), c.mask_id, rng,
                             steps=n_answer, temperature=temperature)
      return out, jnp.ones(x.shape[:1], bool)
    # ILM: a buffer of CLS + prompt + answer + one spare position, so that a model that would
    # insert too many tokens is seen to (its length overshoots) instead of being cut off.
    buf = jnp.pad(self.with_cls(jnp.where(answer, c.pad_id, x)), ((0, 0), (0, 1)),
                  constant_values=c.pad_id)
    length = 1 + prompt_len
    out, length, stopped = sample_insertions(
        lambda t: self.apply(params, t), buf, length, length - 1, rng,
        max_insertions=n_answer + 2, temperature=temperature)
    ok = jnp.logical_and(stopped, length == x.shape[1] + 1)
    return out[:, 1:-1], ok

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict:
    metrics = dict(self.loss(params, batch, rng)[1])
    x, answer = batch["inputs"], batch["answer_mask"] > 0
    out, ok = self.generate(params, batch, rng)
    same = jnp.logical_or(out == x, ~answer)
    exact = jnp.logical_and(jnp.all(same, -1), ok).astype(jnp.float32)
    # The node after the start: the first answer position + 1.
    first = jnp.argmax(answer, -1) + 1
    branch = (jnp.take_along_axis(out, first[:, None], -1) ==
              jnp.take_along_axis(x, first[:, None], -1))[:, 0].astype(jnp.float32)
    rows = jnp.float32(x.shape[0])
    if self.config.objective == "ar":
      metrics["lookup_acc"] = self.lookup_accuracy(params, batch)
    metrics.update({"path_exact": Average.of(jnp.sum(exact), rows),
                    "branch_acc": Average.of(jnp.sum(branch), rows),
                    "decode_ok": Average.of(jnp.sum(ok.astype(jnp.float32)), rows)})
    return metrics

  def lookup_accuracy(self, params: PyTree, batch: Batch) -> Average:
    """Left-to-right model, teacher forced: accuracy on the answer tokens after the branch
    node (the third answer token on), each the child of the token before it on a star graph
    (or the goal). Near 1 = the model learnt the edge lookup (the Clever-Hans rule)."""
    x, answer = batch["inputs"], batch["answer_mask"] > 0
    after = jnp.logical_and(answer, jnp.cumsum(answer, -1) >= 3)[:, 1:].astype(jnp.float32)
    pred = jnp.argmax(self.apply(params, x[:, :-1]), -1)
    return Average.of(jnp.sum((pred == x[:, 1:]) * after), jnp.sum(after))

  def flops_per_token(self, seq_len: int) -> float:
    c = self.config
    base = super().flops_per_token(seq_len)
    if c.objective == "ar":
      return base
    # Bidirectional: every query attends to the whole sequence, not (L + 1) / 2 keys.
    return base + 3.0 * c.num_layers * 4 * c.num_heads * c.heads_dim * (seq_len - 1) / 2


# --- the star-graph task (tokenlab.data.star_graph) through the trainer's custom hook -----

def task_from_config(config):
  from tokenlab.data.star_graph import StarGraphTask
  t = config.task
  return StarGraphTask(degree=t.degree, path_len=t.path_len, num_nodes=t.num_nodes)


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn): fresh star graphs for training, a disjoint stream of
  held-out graphs for evaluation."""
  from tokenlab.data.star_graph import StarGraphIterator
  task, t = task_from_config(config), config.task

  def train_fn(batch_size, seed):
    return StarGraphIterator(task, batch_size, seed, split="train", data_seed=t.data_seed)

  def eval_fn(batch_size, seed):
    return StarGraphIterator(task, batch_size, seed, split="validation", data_seed=t.data_seed,
                             num_batches=config.train.eval_batches or 8)
  return train_fn, eval_fn
