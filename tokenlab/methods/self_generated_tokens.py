"""Training on self-generated tokens (Cen, Liu, Zeng, Chaudhari, Rangwala, Karypis, Fakoor,
"Bridging the training-inference gap in LLMs by leveraging self-generated tokens", TMLR 2025,
arXiv 2410.14655).

A teacher-forced LM only ever conditions on ground-truth history; at inference it conditions
on its own tokens, and small errors compound (exposure bias). The paper feeds the model its
own tokens during training, two ways (`mode`):

  bash  Batch-scheduled sampling: a first pass of the model, without gradient, over the
        teacher-forced input gives its own token for every position; each answer input
        token is replaced by the model's token with probability p(progress), rising on a
        schedule; the labels stay the ground truth. p = 0 is teacher forcing exactly.
  rac   Reference-answer-based correction: the model writes its own answer free-running
        (without gradient); a row then takes the first k tokens of that answer (k uniform in
        1..answer length) as its input prefix in place of the reference's, and every target,
        inside the own prefix and after it, is the reference answer's token at that position:
        the model learns to continue correctly toward the reference from its own, possibly
        wrong, tokens (self-correction without an external oracle). A row does this with
        probability p(progress); the other rows are teacher-forced. p = 0 is teacher forcing.
  teacher_forcing  the baseline (`lm_loss` of the ground-truth inputs).

Follows the paper: own tokens only replace the response (answer), never the prompt; labels
are always the reference; the mixing probability follows a schedule over training; the own
tokens come from the current model ("batch-scheduled": regenerated for every batch, here with
staleness zero) and get no gradient.
Simplified / chosen here (the full text of the paper was not at hand, only its abstract and
this project's summary, so these are this module's reading): BASH's own tokens come from one
parallel teacher-forced pass (sampled at `gen_temperature`), as in scheduled sampling for
transformers; RAC's corrected targets are aligned to the reference by position, which is
exact for fixed-width answers such as tokenlab.data.arithmetic's (free-form text would need
an alignment of the generated and the reference answer); the schedule needs the training
step, which the trainer does not pass to a loss, so it is read from `batch["progress"]`
(step / total steps) and is max at 1 when absent.

Evaluation (`eval_metrics`) adds what the claim is about: free-running greedy decoding of the
answer from the prompt, exact match per problem (and on the rows flagged `batch["hard"]`
separately), next to teacher-forced accuracy. Data: `iterator_fns` serves multi-digit
addition (tokenlab.data.arithmetic) from a fixed training set, with held-out problems of the
training distribution and harder ones (full width, long carry chains) for evaluation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.arithmetic import AdditionTask
from tokenlab.data.synthetic import StepIterator
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.generate import sample_autoregressive
from tokenlab.nn.scheduled_sampling import (SCHEDULES, answer_region, first_region_index,
                                            mix_tokens, mixing_probability, own_prefix_mask,
                                            predicted_inputs)
from tokenlab.registry import register_method

MODES = ("teacher_forcing", "bash", "rac")


@dataclasses.dataclass(frozen=True)
class SelfGeneratedTokensConfig(TransformerLMConfig):
  mode: str = "teacher_forcing"   # teacher_forcing | bash | rac
  mix_max: float = 0.5            # mixing probability at the end of training
  schedule: str = "linear"        # constant | linear | sigmoid (of batch["progress"])
  gen_temperature: float = 1.0    # sampling temperature of the own tokens (0 = greedy)
  prompt_len: int = 0             # >0: every row's prompt has this length (fixed-width tasks),
                                  # so decoding starts there (same tokens, fewer steps);
                                  # 0: per row, from loss_mask (decoding starts at token 1)


@register_method("self_generated_tokens")
class SelfGeneratedTokens(TransformerLM):
  """A transformer LM trained on a mix of ground-truth and its own tokens (BASH / RAC)."""
  Config = SelfGeneratedTokensConfig

  def __init__(self, config: SelfGeneratedTokensConfig):
    if config.mode not in MODES:
      raise ConfigError(f"config.model.mode='{config.mode}' unknown; use one of {MODES}")
    if config.schedule not in SCHEDULES:
      raise ConfigError(f"config.model.schedule='{config.schedule}' unknown; use one of "
                        f"{SCHEDULES}")
    if not 0.0 <= config.mix_max <= 1.0:
      raise ConfigError(f"config.model.mix_max={config.mix_max} must be in [0, 1]")
    super().__init__(config)

  def _apply(self, params: PyTree, tokens: jax.Array) -> jax.Array:
    return self.module.apply({"params": params}, tokens)

  def mixing_prob(self, batch: Batch) -> jax.Array:
    """p(progress) of this batch (the schedule's end value when the batch has no progress)."""
    c = self.config
    progress = jnp.mean(batch["progress"]) if "progress" in batch else 1.0
    return mixing_probability(progress, c.mix_max, c.schedule)

  def free_run(self, params: PyTree, batch: Batch, rng: jax.Array, *,
               temperature: float) -> jax.Array:
    """The model's own answers: (batch, length + 1) tokens, the prompt (every token before
    the first loss target) followed by the model's continuation, decoded free-running."""
    tokens = jnp.concatenate([batch["inputs"][:, :1], batch["targets"]], 1)
    if self.config.prompt_len:  # A concrete length lets the loop skip the prompt's steps.
      prompt_len = np.full(tokens.shape[:1], self.config.prompt_len, np.int32)
    else:
      prompt_len = first_region_index(answer_region(batch["loss_mask"]))
    return sample_autoregressive(lambda t: self._apply(params, t), tokens, prompt_len, rng,
                                 temperature=temperature)

  def training_inputs(self, params: PyTree, batch: Batch,
                      rng: jax.Array) -> tuple[jax.Array, dict]:
    """The inputs the model trains on this step (batch, length) and mixing metrics."""
    c = self.config
    inputs = batch["inputs"]
    if c.mode == "teacher_forcing":
      return inputs, {}
    frozen = jax.lax.stop_gradient(params)   # the own tokens are data, not a path for grads
    region = answer_region(batch["loss_mask"])
    p = self.mixing_prob(batch)
    gen_rng, mix_rng = jax.random.split(rng)
    if c.mode == "bash":
      own = predicted_inputs(self._apply(frozen, inputs), inputs, gen_rng,
                             temperature=c.gen_temperature)
      mixed, replaced = mix_tokens(inputs, own, region, p, mix_rng)
    else:  # rac
      own = self.free_run(frozen, batch, gen_rng, temperature=c.gen_temperature)[:, :-1]
      row_rng, k_rng = jax.random.split(mix_rng)
      use_row = jax.random.uniform(row_rng, inputs.shape[:1]) < p
      replaced = own_prefix_mask(region, use_row, k_rng)
      mixed = jnp.where(replaced, own, inputs)
    replaced_f = replaced.astype(jnp.float32)
    wrong = (own != inputs).astype(jnp.float32)
    return mixed, {
        "mix_prob": Average.of(p, 1.0),
        "own_token_frac": Average.of(jnp.sum(replaced_f), jnp.sum(region)),
        "own_token_error": Average.of(jnp.sum(replaced_f * wrong), jnp.sum(replaced_f))}

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array):
    inputs, mix_metrics = self.training_inputs(params, batch, rng)
    loss, metrics = lm_loss(self._apply(params, inputs), batch)   # labels: ground truth
    metrics.update(mix_metrics)
    return loss, metrics

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict:
    """Teacher-forced metrics of the ground-truth inputs, and free-running greedy ones:
    exact_match (rows not flagged hard), exact_match_hard, free_token_acc (answer tokens),
    recovery_acc (answer tokens after the first wrong one). With greedy decoding a row's
    free-running exact match equals its teacher-forced one (every argmax right on the
    reference path <=> greedy decoding follows it), so tf_exact_match* double-checks it;
    exposure bias shows in what happens after the first error (free_token_acc,
    recovery_acc)."""
    logits = self.logits(params, batch)
    _, metrics = lm_loss(logits, batch)
    mask = batch["loss_mask"].astype(jnp.float32)
    free = self.free_run(params, batch, rng, temperature=0.0)[:, 1:]
    ok_free = (free == batch["targets"]).astype(jnp.float32)
    ok_tf = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    row = lambda ok: (jnp.sum((1.0 - ok) * mask, 1) == 0).astype(jnp.float32)
    hard = batch.get("hard", jnp.zeros(mask.shape[:1])).astype(jnp.float32)
    for name, weight in (("", 1.0 - hard), ("_hard", hard)):
      metrics["exact_match" + name] = Average.of(jnp.sum(row(ok_free) * weight),
                                                 jnp.sum(weight))
      metrics["tf_exact_match" + name] = Average.of(jnp.sum(row(ok_tf) * weight),
                                                    jnp.sum(weight))
    metrics["free_token_acc"] = Average.of(jnp.sum(ok_free * mask), jnp.sum(mask))
    # Error accumulation: accuracy of the answer tokens after a row's first wrong one (does
    # the model get back on track from its own mistake, or does the error cascade?).
    wrong = (1.0 - ok_free) * mask
    after = ((jnp.cumsum(wrong, 1) - wrong) > 0).astype(jnp.float32) * mask
    metrics["recovery_acc"] = Average.of(jnp.sum(ok_free * after), jnp.sum(after))
    return metrics

  def flops_per_token(self, seq_len: int) -> float:
    """The LM's training FLOPs plus the own tokens' forward passes (a forward is a third of
    forward + backward): one for BASH, one per decoded position for RAC (no KV cache)."""
    base = super().flops_per_token(seq_len)
    extra = {"teacher_forcing": 0, "bash": 1, "rac": seq_len}[self.config.mode]
    return base * (1.0 + extra / 3.0)


# --- the task: multi-digit addition from a fixed training set -----------------------------

class AdditionIterator(StepIterator):
  """Checkpointable batches {inputs, targets, loss_mask, progress, hard} of addition
  problems (tokenlab.data.arithmetic), the loss on the answer tokens.

  split 'train': rows drawn (by seed and step) from a fixed set of `num_train` problems of
  the training distribution (operand lengths 1..num_digits). Otherwise held-out problems,
  fresh per batch, independent of the seed; the last `hard_fraction` of each batch's rows are
  hard (both operands full width, digit pairs biased to carry by `carry_bias`), flagged 1 in
  `hard`.
  """

  def __init__(self, task: AdditionTask, batch_size: int, seed: int, *, split: str = "train",
               num_train: int = 1000, data_seed: int = 0, total_steps: int = 1,
               num_batches: int | None = None, hard_fraction: float = 0.5,
               carry_bias: float = 0.7):
    self.task, self.batch_size, self.seed, self.split = task, batch_size, seed, split
    self.data_seed, self.total_steps, self.num_batches = data_seed, total_steps, num_batches
    self.hard_fraction, self.carry_bias = hard_fraction, carry_bias
    self.step = 0
    self.fixed = None
    if split == "train":
      self.fixed = task.problems(np.random.default_rng((data_seed, 0)), num_train)

  def __next__(self):
    if self.num_batches is not None and self.step >= self.num_batches:
      raise StopIteration
    b = self.batch_size
    hard = np.zeros((b,), np.float32)
    if self.fixed is not None:
      rng = np.random.default_rng((self.seed, 0, self.step))
      problems = self.fixed[rng.integers(0, len(self.fixed), b)]
    else:
      rng = np.random.default_rng((self.data_seed, 1, self.step))
      n_hard = int(round(b * self.hard_fraction))
      problems = np.concatenate([
          self.task.problems(rng, b - n_hard),
          self.task.problems(rng, n_hard, full_width=True, carry_bias=self.carry_bias)])
      hard[b - n_hard:] = 1.0
    progress = min(self.step / max(self.total_steps, 1), 1.0)
    self.step += 1
    batch = self.task.lm_batch(problems)
    batch.update(progress=np.full((b,), progress, np.float32), hard=hard)
    return batch


def task_from_config(config) -> AdditionTask:
  return AdditionTask(config.task.num_digits, config.task.reverse)


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn) for `tokenlab.train.loop.train`: the fixed training set
  and held-out problems (half of the training distribution, half hard)."""
  task, t = task_from_config(config), config.task
  if config.data.seq_len != task.seq_len - 1:
    raise ConfigError(f"config.data.seq_len={config.data.seq_len} but {t.num_digits}-digit "
                      f"addition has {task.seq_len - 1} input tokens; set it to that")

  def train_fn(batch_size, seed):
    return AdditionIterator(task, batch_size, seed, split="train", num_train=t.num_train,
                            data_seed=t.data_seed, total_steps=config.train.steps)

  def eval_fn(batch_size, seed):
    return AdditionIterator(task, batch_size, seed, split="validation", data_seed=t.data_seed,
                            num_batches=config.train.eval_batches or 10,
                            hard_fraction=t.hard_fraction, carry_bias=t.carry_bias)
  return train_fn, eval_fn
