"""cDPO: critical tokens and token-level contrastive estimation (Lin et al., "Critical Tokens
Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning Capability",
arXiv 2411.19943; reference code chenzhiling9954/Critical-Tokens-Matter).

Some tokens of an incorrect reasoning trajectory (the "critical tokens") decide that it goes
wrong. cDPO finds them without rollouts and aligns on them:

  1. positive and negative models: the same LM fine-tuned on correct vs incorrect trajectories
     (here: `stage="sft"` runs from a base SFT run with `task.kind=correct|incorrect`);
  2. contrastive estimation of every token y_t of a trajectory:
       l_cd = 2 l_pos - l_neg (logits),   s_t = softmax(l_cd)[y_t]
     a low s_t marks a token the negative model likes and the positive one does not;
  3. token-weighted DPO (`stage="preference"`, `weighting="critical"`):
       margin = sum_t s_t D+_t - sum_t (1 - s_t) D-_t,   D = log pi - log pi_ref,
       loss = -log sigmoid(beta * margin)
     so the rejected response is pushed down mostly at its critical tokens.
  `weighting="uniform"` (all weights 1) is plain DPO exactly.

Follows the paper/reference: l_cd = (1 + alpha) l_pos - alpha l_neg with alpha = 1, scores
computed once per pair before training and fed with the data, chosen weights s_t and rejected
weights 1 - s_t on the response tokens, sequence sums (no length normalisation), a frozen copy
of the starting model as pi_ref. `only_neg=True` gives the chosen tokens weight 1, the
reference code's default; the paper's equation (our default) weighs them by s_t.
Simplified: pos/neg models and the policy are full fine-tunes of a small transformer (the
reference uses LoRA on 7-70B LLMs); trajectories come from a synthetic arithmetic-chain task
(tokenlab.data.chains) whose "base model samples" have a planted mistake of known position,
instead of sampling an LLM on GSM8K/MATH, so detection can be scored against the truth.

Parameters: `stage="sft"` is a plain transformer LM; `stage="preference"` holds
{"policy": LM, "reference": LM}; `adopt_params` copies an SFT run's LM into both
(config.train.init_from) and config.train.freeze="^reference/" keeps the reference fixed.
Eval metrics include `answer_acc`: the greedy-generated final answer of held-out prompts.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokenlab.data.chains import EOS, ChainIterator, ChainTask
from tokenlab.data.preference import PairIterator, make_pair
from tokenlab.errors import ConfigError
from tokenlab.method import Average, Batch, PyTree
from tokenlab.methods.transformer_lm import TransformerLM, TransformerLMConfig, lm_loss
from tokenlab.nn.generate import sample_autoregressive
from tokenlab.nn.preference import contrastive_scores, token_logps, token_weighted_dpo_loss
from tokenlab.registry import register_method

STAGES = ("sft", "preference")
WEIGHTINGS = ("critical", "uniform")


@dataclasses.dataclass(frozen=True)
class CDPOConfig(TransformerLMConfig):
  stage: str = "sft"            # sft (LM fine-tuning: base, positive, negative) | preference
  weighting: str = "critical"   # critical: cDPO weights from the batch; uniform: plain DPO
  beta: float = 0.1
  only_neg: bool = False        # chosen tokens weighted 1 (reference code's default)


@register_method("cdpo")
class CDPO(TransformerLM):
  """A transformer LM trained by SFT, or by (token-weighted) DPO against a frozen copy."""
  Config = CDPOConfig

  def __init__(self, config: CDPOConfig):
    if config.stage not in STAGES:
      raise ConfigError(f"config.model.stage='{config.stage}' unknown; use one of {STAGES}")
    if config.weighting not in WEIGHTINGS:
      raise ConfigError(f"config.model.weighting='{config.weighting}' unknown; use one of "
                        f"{WEIGHTINGS}")
    super().__init__(config)

  @property
  def preference(self) -> bool:
    return self.config.stage == "preference"

  def init(self, rng: jax.Array, batch: Batch) -> PyTree:
    if not self.preference:
      return super().init(rng, batch)
    lm = self.module.init(rng, batch["chosen_inputs"])["params"]
    return {"policy": lm, "reference": lm}

  def adopt_params(self, fresh: PyTree, loaded: PyTree) -> PyTree:
    """An LM checkpoint (an SFT run) starts both the policy and the reference."""
    if self.preference and "policy" not in loaded:
      return {name: super(CDPO, self).adopt_params(fresh[name], loaded) for name in fresh}
    return super().adopt_params(fresh, loaded)

  def lm_logits(self, lm_params: PyTree, tokens: jax.Array) -> jax.Array:
    return self.module.apply({"params": lm_params}, tokens)

  def policy_params(self, params: PyTree) -> PyTree:
    return params["policy"] if self.preference else params

  def token_weights(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(chosen, rejected) weights (batch, length): s_t and 1 - s_t, or ones for DPO."""
    ones = jnp.ones(batch["chosen_targets"].shape, jnp.float32)
    if self.config.weighting == "uniform":
      return ones, ones
    chosen = ones if self.config.only_neg else batch["chosen_scores"]
    return chosen, 1.0 - batch["rejected_scores"]

  def loss(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    if not self.preference:
      return super().loss(params, batch, rng)
    inputs = jnp.concatenate([batch["chosen_inputs"], batch["rejected_inputs"]])
    targets = jnp.concatenate([batch["chosen_targets"], batch["rejected_targets"]])
    policy = token_logps(self.lm_logits(params["policy"], inputs), targets)
    ref = jax.lax.stop_gradient(token_logps(self.lm_logits(params["reference"], inputs),
                                            targets))
    b = batch["chosen_inputs"].shape[0]
    wc, wr = self.token_weights(batch)
    mc, mr = batch["chosen_loss_mask"], batch["rejected_loss_mask"]
    losses, margin = token_weighted_dpo_loss(policy[:b], policy[b:], ref[:b], ref[b:],
                                             mc, mr, wc, wr, self.config.beta)
    count = jnp.float32(b)
    d = policy - ref
    metrics = {"loss": Average.of(jnp.sum(losses), count),
               "margin": Average.of(jnp.sum(margin), count),
               "reward_acc": Average.of(jnp.sum((margin > 0).astype(jnp.float32)), count),
               "chosen_logratio": Average.of(jnp.sum(d[:b] * mc), count),
               "rejected_logratio": Average.of(jnp.sum(d[b:] * mr), count)}
    return jnp.mean(losses), metrics

  def eval_metrics(self, params: PyTree, batch: Batch, rng: jax.Array) -> dict:
    metrics = self.loss(params, batch, rng)[1]
    if "answer" in batch:
      prompt = batch["chosen_inputs"] if self.preference else batch["inputs"]
      metrics["answer_acc"] = self.answer_accuracy(self.policy_params(params), prompt, batch)
    return metrics

  def answer_accuracy(self, lm_params: PyTree, prompt: jax.Array, batch: Batch) -> Average:
    """Share of rows whose greedy continuation of prompt[:prompt_len] writes batch['answer']
    at batch['answer_pos']."""
    gen = sample_autoregressive(lambda t: self.lm_logits(lm_params, t), prompt,
                                batch["prompt_len"], jax.random.key(0), temperature=0.0)
    pred = jnp.take_along_axis(gen, batch["answer_pos"][:, None], 1)[:, 0]
    hits = (pred == batch["answer"]).astype(jnp.float32)
    return Average.of(jnp.sum(hits), jnp.float32(hits.shape[0]))

  def flops_per_token(self, seq_len: int) -> float:
    # Preference: policy forward+backward plus the reference's forward, on 2 rows per pair.
    base = super().flops_per_token(seq_len)
    return base * (2 * 4 / 3) if self.preference else base


# --- contrastive estimation and its evaluation ------------------------------------------------

def criticality_scores(lm: TransformerLM, pos_params: PyTree, neg_params: PyTree,
                       inputs: np.ndarray, targets: np.ndarray, alpha: float = 1.0,
                       chunk: int = 256) -> np.ndarray:
  """s_t of every target token (n, length) from the positive and negative LMs' logits."""
  @jax.jit
  def score(x, y):
    return contrastive_scores(lm.module.apply({"params": pos_params}, x),
                              lm.module.apply({"params": neg_params}, x), y, alpha)
  return np.concatenate([np.asarray(score(inputs[i:i + chunk], targets[i:i + chunk]))
                         for i in range(0, len(inputs), chunk)])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `scores` ranking positives (labels 1) first (ties: half)."""
  from scipy.stats import rankdata
  ranks = rankdata(scores)
  pos = labels.astype(bool)
  n_pos, n_neg = pos.sum(), (~pos).sum()
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_metrics(scores: np.ndarray, mask: np.ndarray, critical: np.ndarray
                      ) -> dict[str, float]:
  """How well low s_t finds the planted mistake: scores, mask (n, length), critical (n,)
  target index of the planted token. top1 = share of rows whose lowest-scored response token
  is the planted one; auroc = over all response tokens, planted vs not, ranked by -s_t."""
  masked = np.where(mask > 0, scores, np.inf)
  top1 = float(np.mean(np.argmin(masked, 1) == critical))
  labels = np.zeros_like(mask)
  labels[np.arange(len(critical)), critical] = 1
  sel = mask > 0
  return {"top1": top1, "auroc": auroc(-scores[sel], labels[sel])}


# --- the task's data --------------------------------------------------------------------------

def task_from_config(config) -> ChainTask:
  t = config.task
  return ChainTask(t.num_steps, t.p_wrong, t.p_misconception, bool(t.get("remarks", False)),
                   float(t.get("p_rare_remark", 0.1)))


def preference_pairs(task: ChainTask, n: int, data_seed: int, split: str) -> list[dict]:
  """n pairs (correct trajectory chosen, incorrect rejected) of the same prompt, with the
  final answer and the planted mistake's target index ('critical')."""
  rng = np.random.default_rng((data_seed, 2 if split == "train" else 3))
  pairs = []
  for _ in range(n):
    problem = task.problem(rng)
    good, _ = task.trajectory(problem, rng, "correct")
    bad, pos = task.trajectory(problem, rng, "incorrect")
    p = task.prompt_len
    pairs.append(make_pair(good[:p], good[p:], bad[p:], task.length - 1, EOS,
                           prompt_len=np.int32(p), answer=np.int32(good[task.answer_pos]),
                           answer_pos=np.int32(task.answer_pos), critical=np.int32(pos - 1)))
  return pairs


def add_scores(pairs: list[dict], lm: TransformerLM, pos_params: PyTree, neg_params: PyTree,
               alpha: float) -> list[dict]:
  """Each pair with chosen_scores and rejected_scores (s_t per target token)."""
  out = [dict(p) for p in pairs]
  for side in ("chosen", "rejected"):
    x = np.stack([p[f"{side}_inputs"] for p in pairs])
    y = np.stack([p[f"{side}_targets"] for p in pairs])
    s = criticality_scores(lm, pos_params, neg_params, x, y, alpha)
    for p, row in zip(out, s):
      p[f"{side}_scores"] = row.astype(np.float32)
  return out


@functools.lru_cache(maxsize=8)
def _scored_pairs(task: ChainTask, n: int, data_seed: int, split: str, lm_config: CDPOConfig,
                  pos_from: str, neg_from: str, alpha: float) -> list[dict]:
  from tokenlab.train.init_from import load_params
  pairs = preference_pairs(task, n, data_seed, split)
  if not pos_from:   # plain DPO needs no scores
    return pairs
  if not neg_from:
    raise ConfigError("config.task.pos_from is set but config.task.neg_from is not; cDPO's "
                      "scores need both the positive and the negative model's workdirs")
  lm = TransformerLM(TransformerLMConfig(**{f.name: getattr(lm_config, f.name) for f in
                                            dataclasses.fields(TransformerLMConfig)}))
  return add_scores(pairs, lm, load_params(pos_from), load_params(neg_from), alpha)


def iterator_fns(config):
  """(train_iter_fn, eval_iter_fn) for the trainer. sft: trajectories of `task.kind`, eval on
  held-out correct ones. preference: a fixed set of `task.num_pairs` pairs (scored by the
  task.pos_from / task.neg_from models for weighting=critical), eval on held-out pairs."""
  from tokenlab.method import dataclass_from_config
  task, t, m = task_from_config(config), config.task, config.model
  eval_batches = config.train.eval_batches or 8
  if m.stage == "sft":
    def train_fn(batch_size, seed):
      return ChainIterator(task, batch_size, seed, kind=t.kind, data_seed=t.data_seed)

    def eval_fn(batch_size, seed):
      return ChainIterator(task, batch_size, seed, kind="correct", split="validation",
                           data_seed=t.data_seed, num_batches=eval_batches)
    return train_fn, eval_fn

  critical = m.weighting == "critical"
  if critical and not (t.pos_from and t.neg_from):
    raise ConfigError("weighting='critical' (cDPO) needs config.task.pos_from and "
                      "config.task.neg_from: the workdirs of the positive and negative models")
  lm_config = dataclass_from_config(CDPOConfig, config.model, prefix="model")
  scored = functools.partial(_scored_pairs, task, data_seed=t.data_seed, lm_config=lm_config,
                             pos_from=t.pos_from if critical else "",
                             neg_from=t.neg_from if critical else "", alpha=t.cd_alpha)

  def train_fn(batch_size, seed):
    return PairIterator(scored(t.num_pairs, split="train"), batch_size, seed)

  def eval_fn(batch_size, seed):
    return PairIterator(scored(batch_size * eval_batches, split="validation"), batch_size,
                        seed, shuffle=False)
  return train_fn, eval_fn
